"""Ready-made optimizers built from the package's transformations."""

from __future__ import annotations

from typing import Any

import optax

from htga_jax.transforms import scale_by_tail_index

__all__ = ["htga"]


def htga(
  learning_rate: optax.ScalarOrSchedule,
  alpha_target: float = 3.0,
  gamma: float = 0.5,
  momentum: float | None = None,
  **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD whose step is rescaled by the gradients' estimated tail index (HTGA).

  Exactly ``optax.chain(scale_by_tail_index(alpha_target, gamma, **kwargs),
  optax.sgd(learning_rate, momentum))``:

  .. math::

    \theta_{t+1} = \theta_t - \eta_t \lambda_t g_t, \qquad
    \lambda_t = \operatorname{clip}\big((\alpha_{target}/\hat\alpha_t)^{\gamma}\big).

  With momentum the multiplier scales the gradient before it enters the
  momentum buffer, so the buffer averages amplified gradients.

  Args:
    learning_rate: base step size eta (float or optax schedule); the design's
      default is 0.1.
    alpha_target: tail index at which the multiplier is 1.
    gamma: exponent of the multiplier.
    momentum: optional heavy-ball momentum for ``optax.sgd``.
    **kwargs: forwarded to :func:`htga_jax.scale_by_tail_index` (``window``,
      ``every_k``, ``min_scale``, ...). Passed this way, they stay static under
      ``optax.inject_hyperparams``.

  Returns:
    The chained ``optax.GradientTransformationExtraArgs``; its first state is a
    :class:`htga_jax.ScaleByTailIndexState`.

  Example:
    >>> import htga_jax
    >>> opt = htga_jax.htga(0.1, every_k=50)
  """
  # optax.inject_hyperparams binds a factory's **kwargs as one argument named
  # "kwargs" and passes it back as such: unwrap it (it is static there).
  kwargs = {**kwargs.pop("kwargs", {}), **kwargs}
  return optax.chain(
    scale_by_tail_index(alpha_target, gamma, **kwargs),
    optax.sgd(learning_rate, momentum),
  )
