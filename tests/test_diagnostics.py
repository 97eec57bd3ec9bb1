"""Specification of htga_jax.diagnostics: per-layer reports from HTGA's state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import htga_jax
from tests import reference as ref


def test_path_name_reads_dicts_sequences_and_nnx_variables():
  class Net(nnx.Module):
    def __init__(self):
      self.dense = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      self.blocks = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(1))])

  _, params = nnx.split(Net(), nnx.Param)
  names = [htga_jax.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert names == ["blocks/0/bias", "blocks/0/kernel", "dense/bias", "dense/kernel"]
  tree = {"a": [jnp.ones(1), {"b": jnp.ones(1)}]}
  names = [htga_jax.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  assert names == ["a/0", "a/1/b"]


def test_report_gives_alpha_and_scale_per_leaf_through_a_chain():
  opt = optax.apply_if_finite(htga_jax.htga(0.1, momentum=0.9, window=4, every_k=2), 3)
  params = {"dense": {"kernel": jnp.zeros((30, 20)), "bias": jnp.zeros(2)}}
  state = opt.init(params)
  rng = np.random.default_rng(0)
  for _ in range(4):
    g = {
      "dense": {
        "kernel": jnp.asarray(ref.student_t(rng, 2.0, (30, 20)), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(2), jnp.float32),
      }
    }
    _, state = opt.update(g, state, params)
  report = htga_jax.tail_index_report(state)
  assert list(report) == ["dense/bias", "dense/kernel"]
  alpha = optax.tree_utils.tree_get(state, "alpha")
  scale = optax.tree_utils.tree_get(state, "scale")
  assert report["dense/kernel"] == {
    "alpha": float(alpha["dense"]["kernel"]),
    "scale": float(scale["dense"]["kernel"]),
  }
  assert report["dense/kernel"]["alpha"] > 0
  assert report["dense/bias"] == {"alpha": 0.0, "scale": 1.0}  # too small for min_k


def test_report_without_or_with_two_htga_states_is_a_clear_error():
  params = {"w": jnp.zeros(3)}
  with pytest.raises(ValueError, match="no HTGA state"):
    htga_jax.tail_index_report(optax.sgd(0.1).init(params))
  two = optax.chain(htga_jax.scale_by_tail_index(), htga_jax.scale_by_tail_index())
  with pytest.raises(ValueError, match="several HTGA states"):
    htga_jax.tail_index_report(two.init(params))
