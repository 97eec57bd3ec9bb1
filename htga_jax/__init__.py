"""htga_jax: Heavy-Tail Gradient Amplification for JAX and Optax.

Estimates the tail index of the gradients during training and rescales the
step by ``(alpha_target / alpha_hat) ** gamma``, clamped.
"""

from htga_jax.diagnostics import path_name, tail_index_report
from htga_jax.estimators import hill, hill_from_top, hill_standard_error
from htga_jax.optimizers import htga
from htga_jax.transforms import (
  GRANULARITIES,
  MULTIPLIERS,
  STATIC_ARGS,
  ScaleByTailIndexState,
  scale_by_tail_index,
)

__version__ = "0.1.0"

__all__ = [
  "GRANULARITIES",
  "MULTIPLIERS",
  "STATIC_ARGS",
  "ScaleByTailIndexState",
  "hill",
  "hill_from_top",
  "hill_standard_error",
  "htga",
  "path_name",
  "scale_by_tail_index",
  "tail_index_report",
]
