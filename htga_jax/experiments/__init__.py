"""The study: HTGA against its rivals across tasks, data fractions and seeds.

Run it with ``htga-study`` (or ``python -m htga_jax.experiments``); see
:func:`run_study` and :class:`StudyConfig` for the programmatic interface.
"""

from htga_jax.experiments.grid import NoiseConfig
from htga_jax.experiments.report import compare, paired_difference
from htga_jax.experiments.study import StudyConfig, quick_config, run_study

__all__ = [
  "NoiseConfig",
  "StudyConfig",
  "compare",
  "paired_difference",
  "quick_config",
  "run_study",
]
