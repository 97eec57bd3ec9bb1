"""Specification of htga_jax._order_stats: partial selection and the fast median."""

import jax
import numpy as np
import pytest

from htga_jax import _order_stats
from tests import reference as ref


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 31, 32, 64, 65, 100])
@pytest.mark.parametrize("axis", [0, 1])
def test_median_matches_numpy(n, axis):
  # n <= 64 uses the sorting network, larger n falls back to jnp.median.
  rng = np.random.default_rng(n)
  x = ref.student_t(rng, 1.5, (n, 37) if axis == 0 else (5, n, 3)).astype(np.float32)
  x[..., :2] = np.round(x[..., :2])  # ties
  got = jax.jit(_order_stats.median, static_argnums=1)(x, axis)
  np.testing.assert_allclose(got, np.median(x, axis=axis), rtol=1e-6)


def test_median_is_vmappable():
  x = np.random.default_rng(0).standard_normal((4, 9, 6)).astype(np.float32)
  np.testing.assert_allclose(
    jax.vmap(lambda r: _order_stats.median(r, 0))(x), np.median(x, axis=1), rtol=1e-6
  )


def test_top_magnitudes_pads_short_rows_with_missing_values():
  x = np.array([[3.0, 1.0, 2.0]], np.float32)
  np.testing.assert_array_equal(_order_stats.top_magnitudes(x, 5), [[3.0, 2.0, 1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(_order_stats.top_magnitudes(x, 2), [[3.0, 2.0]])


def test_median_of_a_broadcast_consumer_is_computed_once_and_correct():
  # The centring pattern HTGA uses: the median broadcast back over its axis.
  x = ref.student_t(np.random.default_rng(1), 2.0, (3, 32, 50)).astype(np.float32)
  centred = jax.jit(lambda b: b - _order_stats.median(b, axis=1)[:, None, :])(x)
  np.testing.assert_allclose(centred, x - np.median(x, axis=1, keepdims=True), rtol=1e-6, atol=1e-6)
