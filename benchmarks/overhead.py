"""Overhead of HTGA against plain SGD: time per step and state memory.

Times, interleaved in one run, jitted steps of a small MLP and a small CNN:
  * the full training step (forward, backward, update, apply), and
  * the update alone (``tx.update`` + ``optax.apply_updates``),
with ``htga_jax.htga(lr, every_k=K)`` and ``optax.sgd(lr)``. Each round runs
``K`` steps of every variant in turn (so each HTGA round contains exactly one
re-estimation: its cost is amortised as in training), and the report gives the
median time per step over rounds, the ratio HTGA / SGD of those medians with a
paired-bootstrap 95% interval, and the device name. Params and optimizer
state are donated, as in a real training loop. Also prints HTGA's
optimizer-state size next to the params'. A second, separately compiled SGD
(the A/A column) measures the machine's noise floor. The last row trains
``--members`` copies of the MLP side by side under ``jax.vmap`` (several seeds
at once, as ``htga-study`` does); its times are per vmapped step of all
members.

    python benchmarks/overhead.py            # full run
    python benchmarks/overhead.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import htga_jax


class MLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs, inputs: int = 784, hidden: int = 512, classes: int = 10):
    self.l1 = nnx.Linear(inputs, hidden, rngs=rngs)
    self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.l3 = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


class CNN(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs, channels: int = 16, classes: int = 10):
    self.c1 = nnx.Conv(1, channels, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
    self.c2 = nnx.Conv(channels, 2 * channels, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
    self.out = nnx.Linear(2 * channels * 7 * 7, classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.c1(x))
    x = nnx.relu(self.c2(x))
    return self.out(x.reshape(x.shape[0], -1))


def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def build(
  model: nnx.Module, tx: optax.GradientTransformation, batch: int, seed: int, members: int = 0
):
  """Returns (full_step, update_only, carry) for one model and optimizer.

  With ``members > 0`` the steps run that many copies side by side under
  ``jax.vmap``.
  """
  graphdef, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def full(params, state):
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def update_only(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jit = lambda f: jax.jit(f, donate_argnums=(0, 1))
  copy = lambda t: jax.tree.map(jnp.array, t)  # donation consumes buffers
  stack = lambda t: jax.tree.map(lambda x: jnp.stack([x] * members), t)
  wrap = copy if not members else stack
  vm = jit if not members else lambda f: jit(jax.vmap(f))
  init = tx.init if not members else jax.vmap(tx.init)
  # Gradients are an argument, not a closed-over constant, so XLA cannot
  # fold them into the update at compile time.
  grads = wrap(jax.grad(loss_fn)(params))
  update = vm(update_only)
  return vm(full), lambda p, s: update(p, s, grads), lambda: (wrap(params), init(wrap(params)))


def time_steps(fn: Callable, carry, steps: int):
  """Seconds per step over ``steps`` calls, and the carry to continue with."""
  jax.block_until_ready(carry)
  start = time.perf_counter()
  for _ in range(steps):
    carry = fn(*carry)
  jax.block_until_ready(carry)
  return (time.perf_counter() - start) / steps, carry


def ratio_with_ci(htga: list[float], sgd: list[float], seed: int, resamples: int = 2000):
  """Ratio of median block times HTGA / SGD, with a 95% bootstrap interval.

  Rounds are resampled in pairs (each round timed both optimizers back to
  back), so slow phases of a shared machine hit numerator and denominator
  alike.
  """
  h, s = np.asarray(htga), np.asarray(sgd)
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(h), (resamples, len(h)))
  boot = np.median(h[idx], axis=1) / np.median(s[idx], axis=1)
  return float(np.median(h) / np.median(s)), tuple(np.percentile(boot, [2.5, 97.5]))


def benchmark(name: str, make_model: Callable, args, members: int = 0) -> list[dict]:
  # "sgd (A/A)" is a second, separately compiled SGD: its ratio to "sgd" is
  # the noise floor of this machine, against which HTGA's ratio is read.
  optimizers = {
    "sgd": optax.sgd(args.lr),
    "sgd (A/A)": optax.sgd(args.lr),
    "htga": htga_jax.htga(args.lr, every_k=args.every_k),
  }
  order_rng = np.random.default_rng(args.seed)
  rows = []
  for mode in ("full step", "update only"):
    fns, carries = {}, {}
    for opt_name, tx in optimizers.items():
      full, update, fresh = build(make_model(), tx, args.batch_size, args.seed, members)
      fns[opt_name] = full if mode == "full step" else update
      carry = fresh()
      for _ in range(args.warmup):  # compile, and pass one estimation
        carry = fns[opt_name](*carry)
      carries[opt_name] = carry
    times = {k: [] for k in optimizers}
    for _ in range(args.rounds):
      # Each block is every_k steps, so each HTGA block holds exactly one
      # re-estimation (its amortised cost); the order within a round is random.
      for opt_name in order_rng.permutation(list(optimizers)):
        t, carries[opt_name] = time_steps(fns[opt_name], carries[opt_name], args.every_k)
        times[opt_name].append(t)
    params = nnx.state(make_model(), nnx.Param)
    rows.append(
      {
        "model": name,
        "mode": mode,
        "sgd_us": statistics.median(times["sgd"]) * 1e6,
        "htga_us": statistics.median(times["htga"]) * 1e6,
        "htga": ratio_with_ci(times["htga"], times["sgd"], args.seed),
        "aa": ratio_with_ci(times["sgd (A/A)"], times["sgd"], args.seed),
        "params_bytes": nbytes(params) * max(members, 1),
        "state_bytes": nbytes(jax.eval_shape(optimizers["htga"].init, params)) * max(members, 1),
      }
    )
  return rows


def print_report(rows: list[dict]) -> None:
  """Markdown table, then the full-step ratio implied by the update's cost."""
  fmt = lambda r: f"{r[0]:.3f} [{r[1][0]:.3f}, {r[1][1]:.3f}]"
  print(
    "| model | timed | SGD (us/step) | HTGA (us/step) | HTGA / SGD [95% CI] "
    "| A/A: SGD / SGD [95% CI] | params | HTGA state |"
  )
  print("|---|---|---:|---:|---|---|---:|---:|")
  for r in rows:
    print(
      f"| {r['model']} | {r['mode']} | {r['sgd_us']:.0f} | {r['htga_us']:.0f} | "
      f"{fmt(r['htga'])} | {fmt(r['aa'])} | {r['params_bytes'] / 2**20:.2f} MiB | "
      f"{r['state_bytes'] / 2**10:.0f} KiB |"
    )
  print("\nTimes are medians over rounds of every_k steps; ratios are ratios of those")
  print("medians with paired-bootstrap intervals. The A/A column times two identical")
  print("SGD programs: the noise floor of this machine.\n")
  for full, update in zip(rows[::2], rows[1::2], strict=True):
    extra = update["htga_us"] - update["sgd_us"]
    print(
      f"{full['model']}: HTGA's update costs {extra:+.0f} us/step over SGD's; on a "
      f"{full['sgd_us']:.0f} us SGD step that implies a full-step ratio of "
      f"{1 + extra / full['sgd_us']:.3f}."
    )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
  parser.add_argument("--every-k", type=int, default=100, help="HTGA every_k = steps per round")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=0.1)
  parser.add_argument("--warmup", type=int, default=150, help="untimed steps per variant")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--members", type=int, default=5, help="MLP copies vmapped in the last row (0: skip it)"
  )
  parser.add_argument("--quick", action="store_true", help="smoke run: 2 short rounds")
  args = parser.parse_args(argv)
  if args.quick:
    args.rounds, args.every_k, args.warmup = 2, 5, 6

  dev = jax.devices()[0]
  devices = f"{jax.device_count()} device(s)"
  print(f"device: {dev.platform} / {dev.device_kind} ({devices}), jax {jax.__version__}")
  print(f"rounds={args.rounds}, steps/round=every_k={args.every_k}, batch={args.batch_size}\n")
  models = {
    "MLP 784-512-512-10": lambda: MLP(rngs=nnx.Rngs(0)),
    "CNN 2 conv + linear": lambda: CNN(rngs=nnx.Rngs(0)),
  }
  rows = []
  for name, make in models.items():
    rows += benchmark(name, make, args)
  if args.members > 0:
    rows += benchmark(
      f"MLP x{args.members} under vmap", models["MLP 784-512-512-10"], args, args.members
    )
  print_report(rows)


if __name__ == "__main__":
  main()
