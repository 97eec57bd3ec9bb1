"""Train a small Flax NNX CNN on MNIST-1D with HTGA, printing per-layer tail indices.

MNIST-1D (Greydanus & Kobak, 2020) is generated procedurally by the
``mnist1d`` package: 4000 training and 1000 test sequences of length 40, no
download. Published reference points on this split: logistic regression ~32%,
MLP ~68%, CNN ~94% test accuracy.

    python examples/train_mnist1d.py                 # HTGA, default settings
    python examples/train_mnist1d.py --optimizer sgd # the SGD baseline
    python examples/train_mnist1d.py --help
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import htga_jax


def load_mnist1d(seed: int = 42) -> dict[str, np.ndarray]:
  """MNIST-1D's default 4000/1000 split, generated offline."""
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.seed = seed
  data = make_dataset(args)  # procedural: never touches the network
  return {
    "x": data["x"].astype(np.float32),
    "y": data["y"].astype(np.int32),
    "x_test": data["x_test"].astype(np.float32),
    "y_test": data["y_test"].astype(np.int32),
  }


class CNN(nnx.Module):
  """Three 1-D convolutions and a linear read-out, as in the MNIST-1D paper."""

  def __init__(self, *, rngs: nnx.Rngs, channels: int = 32, classes: int = 10):
    self.conv1 = nnx.Conv(1, channels, kernel_size=(5,), strides=(2,), rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, kernel_size=(3,), strides=(2,), rngs=rngs)
    self.conv3 = nnx.Conv(channels, channels, kernel_size=(3,), strides=(2,), rngs=rngs)
    self.dense = nnx.Linear(channels * 5, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x[..., None]  # (batch, 40, 1)
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.conv3(x))
    return self.dense(x.reshape(x.shape[0], -1))


def make_optimizer(name: str, lr: float, every_k: int) -> optax.GradientTransformation:
  if name == "htga":
    return htga_jax.htga(lr, momentum=0.9, every_k=every_k)
  if name == "sgd":
    return optax.sgd(lr, momentum=0.9)
  raise ValueError(f"--optimizer must be 'htga' or 'sgd', got {name!r}")


def format_report(opt_state) -> str:
  rows = htga_jax.tail_index_report(opt_state)
  width = max(len(name) for name in rows)
  lines = [f"  {'layer':<{width}}  alpha   scale"]
  for name, r in rows.items():
    alpha = f"{r['alpha']:6.2f}" if r["alpha"] > 0 else "     -"
    lines.append(f"  {name:<{width}}  {alpha}  {r['scale']:5.2f}")
  return "\n".join(lines)


def train(
  optimizer: str = "htga",
  steps: int = 6000,
  batch_size: int = 128,
  lr: float = 0.05,
  every_k: int = 100,
  seed: int = 0,
  report_every: int = 1000,
  progress: bool = True,
) -> dict[str, float]:
  """Trains the CNN and returns final train/test accuracy and loss."""
  data = load_mnist1d()
  model = CNN(rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = make_optimizer(optimizer, lr, every_k)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def evaluate(params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  rng = np.random.default_rng(seed)
  n = len(data["y"])
  start = time.perf_counter()
  bar = tqdm(range(1, steps + 1), desc=f"{optimizer} mnist1d", disable=not progress)
  for step in bar:
    idx = rng.integers(0, n, batch_size)
    params, opt_state, loss = train_step(params, opt_state, data["x"][idx], data["y"][idx])
    if step % 100 == 0:
      bar.set_postfix(loss=f"{float(loss):.3f}")
    if optimizer == "htga" and report_every and step % report_every == 0:
      tqdm.write(f"step {step}: per-layer tail index (HTGA)\n{format_report(opt_state)}")
  elapsed = time.perf_counter() - start

  train_loss, train_acc = evaluate(params, data["x"], data["y"])
  test_loss, test_acc = evaluate(params, data["x_test"], data["y_test"])
  result = {
    "train_loss": float(train_loss),
    "train_acc": float(train_acc),
    "test_loss": float(test_loss),
    "test_acc": float(test_acc),
    "seconds": elapsed,
  }
  print(
    f"{optimizer}: train acc {result['train_acc']:.3f}, test acc {result['test_acc']:.3f} "
    f"(test loss {result['test_loss']:.3f}) in {elapsed:.1f}s"
  )
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--optimizer", choices=["htga", "sgd"], default="htga")
  parser.add_argument("--steps", type=int, default=6000, help="training steps (default 6000)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=0.05, help="base learning rate (momentum 0.9)")
  parser.add_argument("--every-k", type=int, default=100, help="HTGA re-estimation period")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--report-every", type=int, default=1000, help="steps between tail reports")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  train(
    optimizer=args.optimizer,
    steps=args.steps,
    batch_size=args.batch_size,
    lr=args.lr,
    every_k=args.every_k,
    seed=args.seed,
    report_every=args.report_every,
    progress=not args.no_progress,
  )


if __name__ == "__main__":
  main()
