"""The optimizers the study compares, each with its own key knob.

Every optimizer is built from the package's (or optax's) public API through
``optax.inject_hyperparams``, so that the learning rate and the knob are
state, not constants: one compiled program trains the whole grid
(learning rates x knob values x seeds) side by side under ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import optax

from htga_jax import baselines, optimizers

__all__ = ["AXIS", "HTGA_EVERY_K", "OptimizerSpec", "STUDY_OPTIMIZERS"]

#: Name of the vmapped axis the study trains models along (HTGA reduces its
#: loop predicates over it: ``scale_by_tail_index(batch_axis_name=...)``).
AXIS = "models"

#: HTGA in the study re-estimates every 50 steps (runs are short).
HTGA_EVERY_K = 50

# ...and names the vmapped axis.
_HTGA_STATIC = dict(every_k=HTGA_EVERY_K, batch_axis_name=AXIS)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One optimizer of the study.

  Attributes:
    name: the study's name for it.
    factory: called as ``factory(learning_rate=..., **{knob: value})``; must
      work under ``optax.inject_hyperparams``.
    knob: the method's own key hyperparameter tuned beside the learning rate
      (``None``: only the learning rate).
    knob_grid: values tried for ``knob``.
    family: ``"htga"`` or ``"baseline"``, for the paired comparison.
    description: one line for the report.
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  knob: str | None
  knob_grid: tuple[float, ...]
  family: str
  description: str

  def make(self, learning_rate, knob_value=None) -> optax.GradientTransformation:
    """The optimizer with injectable (traceable) learning rate and knob."""
    kwargs = {"learning_rate": learning_rate}
    if self.knob is not None:
      kwargs[self.knob] = knob_value
    return optax.inject_hyperparams(self.factory)(**kwargs)


def _spec(name, factory, knob, grid, family, description):
  return OptimizerSpec(name, factory, knob, tuple(grid), family, description)


STUDY_OPTIMIZERS: dict[str, OptimizerSpec] = {
  s.name: s
  for s in (
    _spec("sgd", optax.sgd, None, (), "baseline", "SGD"),
    _spec(
      "momentum",
      functools.partial(optax.sgd, momentum=0.9),
      None,
      (),
      "baseline",
      "SGD, heavy-ball momentum 0.9",
    ),
    _spec("adam", optax.adam, None, (), "baseline", "Adam"),
    _spec(
      "clipped_sgd",
      baselines.clipped_sgd,
      "max_norm",
      (1.0, 10.0),
      "baseline",
      "global-norm clipped SGD (knob: max_norm)",
    ),
    _spec(
      "normalized_sgd",
      baselines.normalized_sgd,
      "momentum",
      (0.0, 0.9),
      "baseline",
      "normalized SGD (knob: momentum before normalising)",
    ),
    _spec(
      "tailopt",
      baselines.tailopt,
      "lower",
      (0.01, 1.0),
      "baseline",
      "TailOPT, BiClip + Adam (knob: lower threshold d)",
    ),
    _spec(
      "htga",
      functools.partial(optimizers.htga, **_HTGA_STATIC),
      "gamma",
      (0.5, 1.0),
      "htga",
      "HTGA over SGD (knob: gamma)",
    ),
    _spec(
      "htga_momentum",
      functools.partial(optimizers.htga, momentum=0.9, **_HTGA_STATIC),
      "gamma",
      (0.5, 1.0),
      "htga",
      "HTGA over momentum 0.9 (knob: gamma)",
    ),
    _spec(
      "htga_adam",
      functools.partial(optimizers.htga_adam, **_HTGA_STATIC),
      "gamma",
      (0.5, 1.0),
      "htga",
      "HTGA over Adam, lambda on Adam's step (knob: gamma)",
    ),
  )
}
