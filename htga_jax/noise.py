"""Heavy-tailed noise with a known tail index, for tests and noise injection."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from htga_jax import _validation

__all__ = ["heavy_tailed_noise", "symmetric_stable"]


def symmetric_stable(
  key: jax.Array,
  alpha: float | jax.Array,
  shape: tuple[int, ...] = (),
  dtype=jnp.float32,
  scale: float | jax.Array = 1.0,
) -> jax.Array:
  r"""Symmetric alpha-stable samples by the Chambers-Mallows-Stuck method.

  With :math:`V \sim U(-\pi/2, \pi/2)` and :math:`W \sim \mathrm{Exp}(1)`
  independent,

  .. math::

    X = \frac{\sin(\alpha V)}{\cos(V)^{1/\alpha}}
        \Big(\frac{\cos((1-\alpha) V)}{W}\Big)^{(1-\alpha)/\alpha},

  and :math:`X = \tan V` at :math:`\alpha = 1`, has characteristic function
  :math:`\exp(-|t|^\alpha)`: Gaussian with variance 2 at ``alpha = 2``,
  Cauchy at 1, and tail index ``alpha`` (``P(|X| > x) ~ x ** -alpha``) below
  2. Computed in float32 (or float64 when requested and enabled), then cast.

  Args:
    key: a JAX PRNG key.
    alpha: stability index in (0, 2]; may be traced (and then is not checked).
    shape: output shape.
    dtype: output floating dtype.
    scale: multiplies the samples (the stable law's scale parameter).

  Returns:
    An array of ``shape`` and ``dtype``.

  References:
    Chambers, Mallows, Stuck, "A method for simulating stable random
    variables", JASA 71(354), 1976. Weron, "On the Chambers-Mallows-Stuck
    method", Statistics & Probability Letters 28, 1996.
  """
  if not _validation.is_traced(alpha):
    a = float(alpha)
    if not 0.0 < a <= 2.0:
      raise ValueError(f"alpha must be in (0, 2], got {alpha!r}")
  work = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
  k_v, k_w = jax.random.split(key)
  half_pi = jnp.asarray(jnp.pi / 2, work)
  v = jax.random.uniform(k_v, shape, work, -half_pi, half_pi)
  w = jax.random.exponential(k_w, shape, work)
  a = jnp.asarray(alpha, work)
  is_cauchy = a == 1.0
  a_safe = jnp.where(is_cauchy, 0.5, a)  # keeps the unused branch finite
  general = (
    jnp.sin(a_safe * v)
    / jnp.cos(v) ** (1.0 / a_safe)
    * (jnp.cos((1.0 - a_safe) * v) / w) ** ((1.0 - a_safe) / a_safe)
  )
  x = jnp.where(is_cauchy, jnp.tan(v), general)
  return (jnp.asarray(scale, work) * x).astype(dtype)


def heavy_tailed_noise(key: jax.Array, updates, *, alpha: float, ratio: float, scale: float):
  r"""Adds noise of a chosen tail to each leaf of ``updates``.

  For a leaf ``g`` with root-mean-square ``rms(g)``:

  .. math::

    g + \text{scale}\cdot\operatorname{rms}(g)\,\big(r\,S_\alpha + (1 - r)\,Z\big),

  where :math:`S_\alpha` is symmetric alpha-stable (characteristic function
  :math:`e^{-|t|^\alpha}`) and :math:`Z` is Gaussian of the same family at
  alpha = 2 (variance 2), drawn independently per coordinate. ``ratio`` r is
  the heavy-to-Gaussian weight: for r > 0 and alpha < 2 the noise's tail
  index is alpha (the heavier part dominates the tail); r = 0 is Gaussian.
  Sizing by ``rms(g)`` keeps one setting meaningful across layers and tasks.

  Args:
    key: PRNG key (use a fresh one per step).
    updates: a pytree of gradients.
    alpha: stable index in (0, 2].
    ratio: heavy weight r in [0, 1].
    scale: noise size relative to each leaf's gradient RMS (>= 0).

  Returns:
    ``updates`` plus noise, each leaf in its own dtype.
  """
  if not _validation.is_traced(ratio) and not 0.0 <= float(ratio) <= 1.0:
    raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
  if not _validation.is_traced(scale) and not float(scale) >= 0.0:
    raise ValueError(f"scale must be >= 0, got {scale!r}")
  leaves, treedef = jax.tree.flatten(updates)
  keys = jax.random.split(key, 2 * max(1, len(leaves)))
  noisy = []
  for i, g in enumerate(leaves):
    g32 = g.astype(jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(g32)))
    heavy = symmetric_stable(keys[2 * i], alpha, g.shape)
    gauss = symmetric_stable(keys[2 * i + 1], 2.0, g.shape)
    noisy.append((g32 + scale * rms * (ratio * heavy + (1.0 - ratio) * gauss)).astype(g.dtype))
  return treedef.unflatten(noisy)
