"""Trains many models of one task with one optimizer at once, under ``jax.vmap``.

A *grid* is a list of models, each with its own seed, learning rate and knob
value. All of them run in one compiled program: parameters, optimizer states
and seeds are stacked along the vmapped axis ``registry.AXIS``; the data, the
subset and the training-set size are arguments, so the same program serves
every data fraction. A model's seed alone decides its initial parameters and
its mini-batch sequence, so models with the same seed are paired across
optimizers and learning rates.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from htga_jax import data as data_lib
from htga_jax import diagnostics, estimators, noise, sharpness
from htga_jax.experiments.registry import AXIS, OptimizerSpec
from htga_jax.experiments.tasks import Task

__all__ = ["GridResult", "NoiseConfig", "Prepared", "TaskPrograms", "Trainer", "prepare"]

# Evaluation runs over whole splits in chunks of this many examples
# (sequences for LMs); the training-set metrics use one chunk of the subset.
_EVAL_CHUNK = 2000
_LM_EVAL_CHUNK = 128


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """Gradient noise injected before the optimizer (see ``noise.heavy_tailed_noise``)."""

  alpha: float = 1.5
  ratio: float = 0.5
  scale: float = 0.0  # 0: no injected noise


@dataclasses.dataclass
class Prepared:
  """One task's data, ready for a data fraction (device arrays, fixed shapes)."""

  task: Task
  dataset: Any
  arrays: dict[str, jax.Array]  # inputs of the compiled program
  n_train: int  # examples (or tokens) in the training subset
  fraction: float


def prepare(
  task: Task, dataset, fraction: float, *, data_seed: int, val_fraction: float, label_noise: float
) -> Prepared:
  """Carves validation from the training set, then takes the training subset.

  Classification: a stratified ``val_fraction`` of the official training
  set is held out for tuning (the same for every fraction); the training
  subset is a stratified, nested ``fraction`` of the rest; with
  ``label_noise`` that share of the training labels is flipped. Language
  models: the official validation split is used, and the training subset is
  the first ``fraction`` of the training tokens.
  """
  if task.kind == "classification":
    pool, val = data_lib.validation_split(dataset.y_train, val_fraction, data_seed)
    sub = pool[data_lib.stratified_subset(dataset.y_train[pool], fraction, data_seed)]
    y = dataset.y_train
    if label_noise > 0:
      y = data_lib.corrupt_labels(y, label_noise, dataset.num_classes, data_seed + 1)
    train_idx = np.zeros(len(pool), np.int32)
    train_idx[: len(sub)] = sub
    arrays = {
      "x": jnp.asarray(dataset.x_train),
      "y": jnp.asarray(y),
      "train_idx": jnp.asarray(train_idx),
      "x_val": jnp.asarray(dataset.x_train[val]),
      "y_val": jnp.asarray(dataset.y_train[val]),  # clean labels: tuning is not corrupted
      "x_test": jnp.asarray(dataset.x_test),
      "y_test": jnp.asarray(dataset.y_test),
    }
    return Prepared(task, dataset, arrays, len(sub), fraction)
  t = task.seq_len
  n_tokens = max(int(fraction * len(dataset.train)), 2 * (t + 1))
  windows = lambda s: jnp.asarray(_windows(s, t))
  arrays = {
    "stream": jnp.asarray(dataset.train),
    "val": windows(dataset.valid),
    "test": windows(dataset.test),
  }
  return Prepared(task, dataset, arrays, n_tokens, fraction)


def _windows(stream: np.ndarray, t: int, cap: int | None = None) -> np.ndarray:
  """Non-overlapping ``(n, t + 1)`` windows from the start of a stream (all of
  them, or the first ``cap``)."""
  n = (len(stream) - 1) // t
  n = n if cap is None else min(cap, n)
  if n < 1:
    raise ValueError(f"a split of {len(stream)} tokens is too short for sequences of {t}")
  return np.stack([stream[i * t : i * t + t + 1] for i in range(n)])


@dataclasses.dataclass
class GridResult:
  """What one grid run measured; arrays have a leading model axis."""

  final: dict[str, np.ndarray]  # val/test/train loss and metric, sharpness, noise stats
  curves: dict[str, np.ndarray]  # "step" (C,), "train_loss" (C, M), "val_metric" (C, M)
  alpha: dict[str, np.ndarray]  # HTGA's per-leaf estimate (C, M), by leaf path
  seconds_per_step: float  # wall time of one step of the whole program (all models)
  peak_rss_mb: float  # this process's peak resident memory so far


class TaskPrograms:
  """The compiled pieces of a task that do not depend on the optimizer.

  Built once per task and shared by every optimizer's :class:`Trainer`:
  evaluation, sharpness, gradient-noise statistics, and parameter
  initialisation (eager, per seed, cached, so every optimizer starts a given
  seed from the same parameters).
  """

  def __init__(self, task: Task, dataset):
    self.task, self.dataset = task, dataset
    self.graphdef, _ = nnx.split(task.model(dataset, nnx.Rngs(0)), nnx.Param)
    self._params: dict[int, Any] = {}
    self.is_lm = task.kind == "lm"
    is_lm = self.is_lm

    def losses(params, inputs, targets):
      logits = nnx.merge(self.graphdef, params)(inputs)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
      return nll, correct

    def batch_of(key, arrays, n_train, size):
      if is_lm:
        start = jax.random.randint(key, (size,), 0, n_train - task.seq_len - 1)
        take = lambda s: jax.lax.dynamic_slice(arrays["stream"], (s,), (task.seq_len + 1,))
        seqs = jax.vmap(take)(start)
        return seqs[:, :-1], seqs[:, 1:]
      pick = jax.random.randint(key, (size,), 0, n_train)
      idx = arrays["train_idx"][pick]
      return arrays["x"][idx], arrays["y"][idx]

    def loss_fn(params, inputs, targets):
      return losses(params, inputs, targets)[0].mean()

    def evaluate(params, inputs, targets, weights):
      """Weighted sums (loss, correct, weight) over one chunk: chunks add up."""
      nll, correct = losses(params, inputs, targets)
      if is_lm:  # per-token means within each window (all windows equal length)
        nll, correct = nll.mean(-1), correct.mean(-1)
      return jnp.sum(weights * nll), jnp.sum(weights * correct), jnp.sum(weights)

    def noise_stats(params, seed, arrays, n_train):
      """Per-leaf variance, kurtosis and tail index of gradient noise at the
      end: 8 mini-batch gradients minus a large-batch gradient."""
      key = jax.random.fold_in(jax.random.key(seed), 2**31 - 1)  # a stream no step uses
      big = batch_of(key, arrays, n_train, 64 if is_lm else 1024)
      reference = jax.grad(loss_fn)(params, *big)
      keys = jax.random.split(jax.random.fold_in(key, 1), 8)
      grad_of = lambda k: jax.grad(loss_fn)(params, *batch_of(k, arrays, n_train, task.batch_size))
      small = jax.vmap(grad_of)(keys)
      samples = jax.tree.map(lambda g, r: (g - r[None]).ravel(), small, reference)
      stats = {}
      for path, x in jax.tree_util.tree_leaves_with_path(samples):
        d = x - jnp.mean(x)
        m2 = jnp.mean(d * d)
        k = max(10, round(0.02 * x.size)) if x.size >= 500 else 0
        stats[diagnostics.path_name(path)] = {
          "variance": m2,
          "kurtosis": jnp.mean(d**4) / jnp.where(m2 > 0, m2 * m2, 1.0) - 3.0,
          "alpha": estimators.hill(x, k) if k else jnp.asarray(jnp.nan),
        }
      return stats

    def sharpness_of(params, arrays, n_train):
      key = jax.random.key(12345)  # the same examples for every model
      inputs, targets = batch_of(key, arrays, n_train, 32 if is_lm else 512)
      top = sharpness.hessian_top_eigenvalues(
        loss_fn, params, inputs, targets, max_iters=20, tol=1e-2
      )
      return top.eigenvalues[0]

    self.batch_of, self.loss_fn = batch_of, loss_fn
    self.evaluate = jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None)))
    self.noise_stats = jax.jit(jax.vmap(noise_stats, in_axes=(0, 0, None, None)))
    self.sharpness = jax.jit(jax.vmap(sharpness_of, in_axes=(0, None, None)))

  def init_params(self, seeds) -> Any:
    """Stacked initial parameters, one model per seed (cached per seed)."""
    for seed in set(int(s) for s in seeds) - set(self._params):
      key = jax.random.fold_in(jax.random.key(seed), 0)
      model = self.task.model(self.dataset, nnx.Rngs(params=key))
      self._params[seed] = nnx.split(model, nnx.Param)[1]
    return jax.tree.map(lambda *p: jnp.stack(p), *(self._params[int(s)] for s in seeds))

  def eval_sets(self, prep: Prepared) -> dict[str, list[tuple]]:
    """Evaluation chunks ``(inputs, targets, weights)`` per split, all of one
    shape (zero-weight padding) so one compiled evaluation serves every chunk.

    Validation and test: the whole split. Training: one chunk of the
    training subset (its first 2000 examples, or 128 sequences), an estimate
    for the generalisation gap.
    """
    a = prep.arrays
    if self.is_lm:
      chunk = _LM_EVAL_CHUNK
      train = _windows(np.asarray(a["stream"][: prep.n_train]), self.task.seq_len, chunk)
      sets = {
        k: (w[:, :-1], w[:, 1:])
        for k, w in {"val": a["val"], "test": a["test"], "train": jnp.asarray(train)}.items()
      }
      weights = {k: jnp.ones(len(x)) for k, (x, _) in sets.items()}
    else:
      chunk = _EVAL_CHUNK
      idx = a["train_idx"][:chunk]
      sets = {
        "val": (a["x_val"], a["y_val"]),
        "test": (a["x_test"], a["y_test"]),
        "train": (a["x"][idx], a["y"][idx]),
      }
      weights = {k: jnp.ones(len(y)) for k, (_, y) in sets.items()}
      weights["train"] = (jnp.arange(len(idx)) < prep.n_train).astype(jnp.float32)
    size = min(chunk, max(len(w) for w in weights.values()))  # the same for every fraction

    def chunks(x, y, w):
      out = []
      for i in range(0, len(w), size):
        part = [v[i : i + size] for v in (x, y, w)]
        pad = size - len(part[2])
        out.append(
          tuple(jnp.concatenate([v, jnp.zeros((pad, *v.shape[1:]), v.dtype)]) for v in part)
        )
      return out

    return {k: chunks(*sets[k], weights[k]) for k in sets}

  def evaluate_split(self, params, chunks) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and mean accuracy per model over all chunks of a split."""
    parts = [[np.asarray(v, np.float64) for v in self.evaluate(params, *c)] for c in chunks]
    loss, correct, weight = (sum(p) for p in zip(*parts, strict=True))
    return loss / weight, correct / weight


class Trainer:
  """Compiled training for one (task, optimizer): the grid's init and steps."""

  def __init__(
    self,
    programs: TaskPrograms,
    spec: OptimizerSpec,
    steps: int,
    noise_cfg: NoiseConfig,
    measure: bool = True,
  ):
    self.programs, self.spec, self.steps, self.measure = programs, spec, steps, measure
    task = programs.task
    self.task = task
    # Learning rate and knob are read from the state (inject_hyperparams), so
    # any concrete values build the update function.
    self.tx = spec.make(1e-3, spec.knob_grid[0] if spec.knob else None)
    self.eval_every = min(task.eval_every, steps)
    batch_of, loss_fn = programs.batch_of, programs.loss_fn

    def init_state(params, lr, knob):
      return spec.make(lr, knob if spec.knob else None).init(params)

    def run_chunk(params, opt_state, seed, t0, arrays, n_train):
      def body(carry, t):
        p, s = carry
        k_batch, k_noise = jax.random.split(jax.random.fold_in(jax.random.key(seed), t + 1))
        inputs, targets = batch_of(k_batch, arrays, n_train, task.batch_size)
        loss, grads = jax.value_and_grad(loss_fn)(p, inputs, targets)
        if noise_cfg.scale > 0:
          grads = noise.heavy_tailed_noise(
            k_noise, grads, alpha=noise_cfg.alpha, ratio=noise_cfg.ratio, scale=noise_cfg.scale
          )
        updates, s = self.tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

      (params, opt_state), chunk_losses = jax.lax.scan(
        body, (params, opt_state), t0 + jnp.arange(self.eval_every)
      )
      return params, opt_state, jnp.mean(chunk_losses)

    self._init_state = jax.jit(jax.vmap(init_state))
    chunk = jax.vmap(run_chunk, in_axes=(0, 0, 0, None, None, None), axis_name=AXIS)
    self._chunk = jax.jit(chunk, donate_argnums=(0, 1))

  def _metric(self, loss, accuracy):
    """Classification is scored by accuracy, language models by perplexity."""
    return np.exp(np.asarray(loss)) if self.task.kind == "lm" else np.asarray(accuracy)

  def run(self, prep: Prepared, seeds, lrs, knobs, progress=None) -> GridResult:
    """Trains the grid; ``seeds``, ``lrs``, ``knobs`` have one entry per model."""
    programs = self.programs
    params = programs.init_params(seeds)
    opt_state = self._init_state(
      params, jnp.asarray(lrs, jnp.float32), jnp.asarray(knobs, jnp.float32)
    )
    seeds = jnp.asarray(seeds, jnp.int32)
    n_train = jnp.asarray(prep.n_train, jnp.int32)
    sets = programs.eval_sets(prep)
    curves = {"step": [], "train_loss": [], "val_metric": []}
    alpha: dict[str, list] = {}
    timed = []
    for t0 in range(0, self.steps, self.eval_every):
      start = time.perf_counter()
      params, opt_state, train_loss = self._chunk(
        params, opt_state, seeds, t0, prep.arrays, n_train
      )
      jax.block_until_ready(train_loss)
      if t0 > 0:  # the first chunk includes compilation
        timed.append((time.perf_counter() - start) / self.eval_every)
      curves["step"].append(t0 + self.eval_every)
      curves["train_loss"].append(np.asarray(train_loss))
      curves["val_metric"].append(self._metric(*programs.evaluate_split(params, sets["val"])))
      if self.spec.family == "htga":
        for name, r in _alpha_by_leaf(opt_state).items():
          alpha.setdefault(name, []).append(r)
      if progress is not None:
        progress(self.eval_every)
    final = {}
    for split, chunks in sets.items():
      loss, acc = programs.evaluate_split(params, chunks)
      final[f"{split}_loss"] = np.asarray(loss)
      final[f"{split}_metric"] = self._metric(loss, acc)
    if self.measure:
      final["sharpness"] = np.asarray(programs.sharpness(params, prep.arrays, n_train))
      stats = programs.noise_stats(params, seeds, prep.arrays, n_train)
      for name, s in stats.items():
        for key, value in s.items():
          final[f"noise_{key}/{name}"] = np.asarray(value)
    return GridResult(
      final=final,
      curves={k: np.asarray(v) for k, v in curves.items()},
      alpha={k: np.asarray(v) for k, v in alpha.items()},
      seconds_per_step=float(np.median(timed)) if timed else float("nan"),
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


def _alpha_by_leaf(opt_state) -> dict[str, np.ndarray]:
  """HTGA's per-leaf alpha, one value per model (0 = no estimate -> NaN)."""
  tree = optax.tree_utils.tree_get(opt_state, "alpha")
  out = {}
  for path, value in jax.tree_util.tree_leaves_with_path(tree):
    v = np.asarray(value, np.float64)
    out[diagnostics.path_name(path)] = np.where(v > 0, v, np.nan)
  return out
