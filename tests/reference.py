"""Independent NumPy references and samplers for the tests (float64, full sorts).

Nothing here imports htga_jax: these are the yardsticks the package is
measured against.
"""

from __future__ import annotations

import numpy as np


def hill(samples, k: int, mask=None) -> float:
  """Hill on |samples| by a full descending sort, in float64.

  alpha = k / sum_{i<=k} (log X(i) - log X(k+1)); NaN with fewer than k + 1
  usable (finite, non-zero, unmasked) values or no spread.
  """
  x = np.abs(np.asarray(samples, np.float64)).ravel()
  use = np.isfinite(x) & (x > 0)
  if mask is not None:
    use &= np.asarray(mask, bool).ravel()
  x = np.sort(x[use])[::-1]
  if x.size < k + 1:
    return float("nan")
  spread = np.sum(np.log(x[:k]) - np.log(x[k]))
  return float(k / spread) if spread > 0 else float("nan")


def window_alpha(stream: np.ndarray, k: int, centered: bool = True) -> float:
  """HTGA's estimate for one leaf by hand: ``stream`` is (window, coords).

  Centres each coordinate by its median over the window, then Hill on all
  magnitudes.
  """
  x = np.asarray(stream, np.float64)
  if centered:
    x = x - np.median(x, axis=0, keepdims=True)
  return hill(x, k)


def power_scale(alpha, alpha_target=3.0, gamma=0.5, lo=0.5, hi=2.0):
  return float(np.clip((alpha_target / alpha) ** gamma, lo, hi))


# --- samplers with a known tail index, in float64 (see tail-estimation notes:
# float32 inverse-CDF Pareto samples saturate at (2**23) ** (1 / alpha)).


def symmetric_pareto(rng: np.random.Generator, alpha: float, size) -> np.ndarray:
  """|X| ~ Pareto(alpha) on [1, inf), random sign: P(|X| > x) = x ** -alpha."""
  return rng.choice([-1.0, 1.0], size) * (1.0 + rng.pareto(alpha, size))


def student_t(rng: np.random.Generator, nu: float, size) -> np.ndarray:
  """Student-t with nu degrees of freedom: tail index nu."""
  return rng.standard_t(nu, size)


def stable(rng: np.random.Generator, alpha: float, size) -> np.ndarray:
  """Symmetric alpha-stable by Chambers-Mallows-Stuck: tail index alpha < 2."""
  v = rng.uniform(-np.pi / 2, np.pi / 2, size)
  w = rng.exponential(1.0, size)
  if alpha == 1.0:
    return np.tan(v)
  return (
    np.sin(alpha * v)
    / np.cos(v) ** (1.0 / alpha)
    * (np.cos((1.0 - alpha) * v) / w) ** ((1.0 - alpha) / alpha)
  )


def _desc_usable(samples, mask=None):
  x = np.abs(np.asarray(samples, np.float64)).ravel()
  use = np.isfinite(x) & (x > 0)
  if mask is not None:
    use &= np.asarray(mask, bool).ravel()
  return np.sort(x[use])[::-1]


def moment(samples, k: int) -> float:
  """Dekkers-Einmahl-de Haan: gamma = M1 + 1 - 1/2 (1 - M1^2/M2)^-1; alpha = 1/gamma."""
  x = _desc_usable(samples)
  if x.size < k + 1:
    return float("nan")
  d = np.log(x[:k]) - np.log(x[k])
  m1, m2 = d.mean(), (d**2).mean()
  gamma = m1 + 1 - 0.5 / (1 - m1**2 / m2)
  return float(1 / gamma) if gamma > 0 else float("nan")


def pickands(samples, k: int) -> float:
  """gamma = log((X(k) - X(2k)) / (X(2k) - X(4k))) / log 2 (1-based order stats)."""
  x = _desc_usable(samples)
  if x.size < 4 * k:
    return float("nan")
  gamma = np.log((x[k - 1] - x[2 * k - 1]) / (x[2 * k - 1] - x[4 * k - 1])) / np.log(2)
  return float(1 / gamma) if gamma > 0 else float("nan")


def stable_index(samples, k1: int) -> float:
  """Mohammadi et al. 2015 on consecutive blocks of k1 (rows are vectors if 2-D)."""
  x = np.asarray(samples, np.float64)
  k2 = x.shape[0] // k1
  x = x[: k1 * k2]
  y = x.reshape(k2, k1, *x.shape[1:]).sum(axis=1)
  size = np.abs if x.ndim == 1 else (lambda v: np.linalg.norm(v, axis=-1))
  inv = (np.mean(np.log(size(y))) - np.mean(np.log(size(x)))) / np.log(k1)
  return float(1 / inv)
