"""Specification of htga_jax.estimators: the Hill estimator."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import htga_jax
from htga_jax import estimators
from tests import reference as ref

N = 100_000
K = 300  # bias below 0.5 standard errors for every law below at this n (measured)


class TestHillAgainstNumpyReference(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_reference_on_heavy_and_light_data(self):
    rng = np.random.default_rng(0)
    hill = self.variant(htga_jax.hill, static_argnames="k")
    cases = [
      (ref.student_t(rng, 2.5, (64, 100)), 50),
      (rng.standard_normal(5000), 7),
      (ref.symmetric_pareto(rng, 1.0, (10, 10, 10)), 1),
      (ref.stable(rng, 1.5, 2048), 200),
    ]
    for x, k in cases:
      x32 = np.asarray(x, np.float32)
      got = float(hill(jnp.asarray(x32), k=k))
      want = ref.hill(x32, k)  # same float32 data, float64 arithmetic
      np.testing.assert_allclose(got, want, rtol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_mask_selects_entries(self):
    rng = np.random.default_rng(1)
    x = ref.student_t(rng, 2.0, 4000).astype(np.float32)
    mask = rng.random(4000) < 0.5
    hill = self.variant(lambda x, m: htga_jax.hill(x, 40, mask=m))
    np.testing.assert_allclose(float(hill(x, mask)), ref.hill(x[mask], 40), rtol=2e-5)
    # The largest value masked out must change the estimate.
    top = np.argmax(np.abs(x))
    mask2 = np.ones_like(mask)
    mask2[top] = False
    np.testing.assert_allclose(float(hill(x, mask2)), ref.hill(np.delete(x, top), 40), rtol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_non_finite_and_zero_entries_are_ignored(self):
    rng = np.random.default_rng(2)
    x = ref.student_t(rng, 3.0, 1000).astype(np.float32)
    dirty = np.concatenate([x, [np.nan, np.inf, -np.inf, 0.0, -0.0, np.nan]]).astype(np.float32)
    rng.shuffle(dirty)
    hill = self.variant(htga_jax.hill, static_argnames="k")
    np.testing.assert_allclose(float(hill(dirty, k=20)), ref.hill(x, 20), rtol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_too_few_usable_values_is_nan_never_inf(self):
    hill = self.variant(htga_jax.hill, static_argnames="k")
    # Shorter than k + 1: padded internally, not an exception under jit.
    assert np.isnan(hill(jnp.arange(1.0, 4.0), k=3))
    # Long enough but only k usable values.
    x = jnp.array([1.0, 2.0, 3.0, 0.0, jnp.nan, jnp.inf, 0.0])
    assert np.isnan(hill(x, k=3))
    assert np.isfinite(hill(x, k=2))
    # k + 1 largest all equal: no spread, NaN rather than inf.
    assert np.isnan(hill(jnp.ones(100), k=10))
    assert np.isnan(hill(jnp.zeros(100), k=10))
    assert np.isnan(hill(jnp.zeros((0,)), k=1))


@pytest.mark.parametrize(
  "law, alpha",
  [
    ("pareto", 0.8),
    ("pareto", 1.5),
    ("pareto", 3.0),
    ("student_t", 2.0),
    ("student_t", 3.0),
    ("stable", 1.2),
  ],
)
def test_recovers_known_tail_index_within_four_standard_errors(law, alpha):
  rng = np.random.default_rng(int(alpha * 100))
  sampler = {"pareto": ref.symmetric_pareto, "student_t": ref.student_t, "stable": ref.stable}
  x = sampler[law](rng, alpha, N)  # float64 draws, then float32 (<= 1e5: no saturation)
  est = float(htga_jax.hill(jnp.asarray(x, jnp.float32), K))
  se = alpha / np.sqrt(K)
  assert abs(est - alpha) < 4 * se, (law, alpha, est)


def test_gaussian_reads_as_light_tailed():
  # Light-tail control: finite moments of all orders give large estimates
  # (about 11 at k = 300 of 1e5), far above any heavy-tailed law above.
  x = np.random.default_rng(3).standard_normal(N)
  assert float(htga_jax.hill(jnp.asarray(x, jnp.float32), K)) > 8.0


def test_confidence_interval_covers_true_index_at_nominal_rate():
  # alpha_hat +- 1.96 alpha_hat / sqrt(k) should cover the truth ~95% of the
  # time on exact Pareto data; 400 replications give a binomial sd of ~1.1%.
  rng = np.random.default_rng(4)
  alpha, k = 1.7, 200
  x = ref.symmetric_pareto(rng, alpha, (400, 5000)).astype(np.float32)
  est = jax.vmap(lambda r: htga_jax.hill(r, k))(jnp.asarray(x))
  se = htga_jax.hill_standard_error(est, k)
  covered = np.mean(np.abs(np.asarray(est) - alpha) <= 1.96 * np.asarray(se))
  assert 0.91 <= covered <= 0.99, covered


def test_vmap_equals_loop():
  rng = np.random.default_rng(5)
  x = ref.student_t(rng, 2.0, (6, 3000)).astype(np.float32)
  batched = jax.vmap(lambda r: htga_jax.hill(r, 30))(jnp.asarray(x))
  np.testing.assert_allclose(batched, [ref.hill(r, 30) for r in x], rtol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_any_float_dtype_estimated_in_float32(dtype):
  rng = np.random.default_rng(6)
  x = jnp.asarray(ref.student_t(rng, 2.0, 5000), dtype)
  got = htga_jax.hill(x, 50)
  assert got.dtype == jnp.float32
  # Reference on the same (rounded) values: f16 overflow to inf is ignored.
  np.testing.assert_allclose(float(got), ref.hill(np.asarray(x.astype(jnp.float32)), 50), rtol=2e-5)


def test_hill_from_top_accepts_per_row_traced_k():
  rng = np.random.default_rng(7)
  x = np.abs(ref.student_t(rng, 2.0, (4, 2000))).astype(np.float32)
  ks = np.array([5, 50, 200, 399])
  top = estimators.top_magnitudes(jnp.asarray(x), 400)
  got = jax.jit(estimators.hill_from_top)(top, jnp.asarray(ks))
  np.testing.assert_allclose(got, [ref.hill(r, k) for r, k in zip(x, ks, strict=True)], rtol=2e-5)


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(k=-3), ValueError, "k must be >= 1"),
    (dict(k=2.5), TypeError, "k must be an int"),
    (dict(k=True), TypeError, "k must be an int"),
    (dict(k=3, mask=np.ones(5, bool)), ValueError, "mask must have the shape"),
  ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, match):
  with pytest.raises(error, match=match):
    htga_jax.hill(np.ones(10, np.float32), **kwargs)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 31, 32, 64, 65, 100])
@pytest.mark.parametrize("axis", [0, 1])
def test_median_matches_numpy(n, axis):
  # n <= 64 uses the sorting network, larger n falls back to jnp.median.
  rng = np.random.default_rng(n)
  x = ref.student_t(rng, 1.5, (n, 37) if axis == 0 else (5, n, 3)).astype(np.float32)
  x[..., :2] = np.round(x[..., :2])  # ties
  got = jax.jit(estimators.median, static_argnums=1)(x, axis)
  np.testing.assert_allclose(got, np.median(x, axis=axis), rtol=1e-6)


def test_median_is_vmappable():
  x = np.random.default_rng(0).standard_normal((4, 9, 6)).astype(np.float32)
  np.testing.assert_allclose(
    jax.vmap(lambda r: estimators.median(r, 0))(x), np.median(x, axis=1), rtol=1e-6
  )
