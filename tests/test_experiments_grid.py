"""Specification of htga_jax.experiments.grid: data preparation and evaluation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from htga_jax.experiments import grid, registry, tasks


def prepared(name, fraction=1.0, **task_overrides):
  task = dataclasses.replace(tasks.TASKS[name], **task_overrides)
  ds = task.load(None)
  prep = grid.prepare(task, ds, fraction, data_seed=0, val_fraction=0.1, label_noise=0.0)
  return task, ds, prep, grid.TaskPrograms(task, ds)


@pytest.mark.parametrize("name", ["digits", "charlm"])
def test_evaluation_covers_whole_splits_and_matches_a_direct_computation(name):
  task, ds, prep, programs = prepared(name)
  sets = programs.eval_sets(prep)
  if task.kind == "lm":
    n_test = (len(ds.test) - 1) // task.seq_len
  else:
    n_test = len(ds.y_test)
  assert sum(float(c[2].sum()) for c in sets["test"]) == n_test  # every example, once
  assert len({c[0].shape for split in sets.values() for c in split}) == 1  # one shape
  params = programs.init_params([3])
  loss, acc = programs.evaluate_split(params, sets["test"])
  # Direct: the untrained model of seed 3 on the whole test split at once.
  model = task.model(ds, nnx.Rngs(params=jax.random.fold_in(jax.random.key(3), 0)))
  if task.kind == "lm":
    w = np.stack(
      [ds.test[i * task.seq_len : i * task.seq_len + task.seq_len + 1] for i in range(n_test)]
    )
    logits = model(jnp.asarray(w[:, :-1]))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(w[:, 1:]))
    want = float(nll.mean())
  else:
    logits = model(jnp.asarray(ds.x_test))
    want = float(
      optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(ds.y_test)).mean()
    )
    np.testing.assert_allclose(
      acc[0], float(jnp.mean(jnp.argmax(logits, -1) == ds.y_test)), rtol=1e-6
    )
  np.testing.assert_allclose(loss[0], want, rtol=1e-5)


def test_validation_is_carved_from_training_and_subsets_shrink():
  _, ds, full, _ = prepared("digits", 1.0)
  _, _, tenth, _ = prepared("digits", 0.1)
  n_val = len(full.arrays["y_val"])
  assert n_val == len(tenth.arrays["y_val"]) and 0 < n_val < len(ds.y_train) * 0.15
  assert full.n_train + n_val == len(ds.y_train)
  assert abs(tenth.n_train - 0.1 * full.n_train) <= 10  # ceil per class
  # Training indices never touch the validation examples.
  val_rows = {tuple(np.asarray(x).ravel()) for x in full.arrays["x_val"]}
  train = np.asarray(full.arrays["train_idx"][: full.n_train])
  assert not any(tuple(ds.x_train[i].ravel()) in val_rows for i in train[:200])


def test_same_seed_pairs_initial_parameters_and_batches_across_optimizers():
  task, ds, prep, programs = prepared("mnist1d", steps=20)
  a = programs.init_params([0, 1])
  b = programs.init_params([0])
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[0], y[0]), a, b)
  # A zero learning rate leaves the parameters at their paired start whatever
  # the optimizer; the recorded training loss is then the same batch loss.
  losses = []
  for opt in ("sgd", "htga"):
    tr = grid.Trainer(
      programs, registry.STUDY_OPTIMIZERS[opt], 20, grid.NoiseConfig(), measure=False
    )
    res = tr.run(prep, [5, 5], [0.0, 0.0], [0.5, 0.5])
    losses.append(res.curves["train_loss"])
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
