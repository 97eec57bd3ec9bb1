"""Specification of the argument checks shared by the factories."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htga_jax import _validation as v


def test_traced_numbers_pass_unchecked_concrete_ones_are_checked():
  # Under jit a hyperparameter may be a tracer: it cannot be inspected.
  jax.jit(lambda x: v.check_positive("lr", x) or x)(jnp.asarray(-1.0))
  jax.jit(lambda a, b: v.check_le("lo", a, "hi", b) or a)(2.0, 1.0)
  v.check_positive("lr", np.float32(0.1))
  v.check_positive("lr", jnp.asarray(0.1))
  for bad in (0.0, -1.0, float("nan"), float("inf"), jnp.asarray(-2.0)):
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
      v.check_positive("lr", bad)
  with pytest.raises(TypeError, match="lr must be a real"):
    v.check_positive("lr", "fast")
  with pytest.raises(TypeError, match="lr must be a real scalar"):
    v.check_positive("lr", np.ones(2))


def test_static_int_accepts_concrete_integers_only():
  assert v.static_int("window", 3) == 3
  assert v.static_int("window", np.int64(3)) == 3
  assert v.static_int("window", jnp.asarray(3)) == 3  # inject_hyperparams at init
  for bad in (3.0, True, "3", np.ones(2, int)):
    with pytest.raises(TypeError, match="window must be an int"):
      v.static_int("window", bad)
  with pytest.raises(ValueError, match="window must be >= 1"):
    v.static_int("window", 0, minimum=1)
  with pytest.raises(TypeError, match="static_args"):
    jax.jit(lambda w: v.static_int("window", w))(3)


def test_int_or_fraction():
  assert v.static_int_or_fraction("k", 5) == 5
  assert v.static_int_or_fraction("k", 0.25) == 0.25
  assert v.static_int_or_fraction("k", jnp.asarray(0.25)) == 0.25
  for bad, err in (
    (0, ValueError),
    (1.0, ValueError),
    (0.0, ValueError),
    (True, TypeError),
    ("a", TypeError),
  ):
    with pytest.raises(err, match="k"):
      v.static_int_or_fraction("k", bad)


def test_choice():
  assert v.check_choice("mode", "a", ("a", "b")) == "a"
  with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
    v.check_choice("mode", "c", ("a", "b"))
