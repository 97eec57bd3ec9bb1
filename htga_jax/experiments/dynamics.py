"""The dynamics suite: Lévy-driven SDE exits, and escape from a sharp basin.

Three experiments, each a function returning plain dicts (``run`` calls them
and ``dynamics_report`` writes them out):

* :func:`sde_exits`: the SDE of :mod:`htga_jax.sde` in a quadratic well:
  exit time against the noise scale (log-log slope ``-alpha``), against the
  basin's width and depth (stable: width; Brownian: depth, Kramers), and the
  HTGA-modulated SDE against the plain one;
* :func:`escape`: discrete optimizers on :class:`TwoBasins` (1-D and 2-D),
  started at the sharp minimum, many seeds vmapped: the fraction that
  escape within ``steps``, first exit times, final sharpness, the fraction
  that settle in the wide basin, and HTGA's realised multiplier;
* :func:`neural_escape`: an MLP on MNIST-1D started at a sharp minimum
  (full-batch gradient descent), then each optimizer with small batches:
  final sharpness and test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import htga_jax
from htga_jax import sde
from htga_jax.experiments import stats
from htga_jax.experiments.landscapes import TwoBasins

STABLE = 1.5  # the injected noise's stability index
KINDS = ("gaussian", "gaussian+gaussian", "gaussian+stable")
# The escape table's plain SGD row of each noise kind: what the others are paired against.
SGD_OF_KIND = {
  "gaussian": "SGD",
  "gaussian+gaussian": "SGD + Gaussian",
  "gaussian+stable": "SGD + stable",
}
HTGA_LANDSCAPE = dict(window=64, every_k=16, k=0.25, sample_size=8)  # 1-2 coordinates per leaf


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson's 95% interval for a binomial proportion."""
  if n == 0:
    return (math.nan, math.nan)
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return (centre - half, centre + half)


# --- 1. SDE exits -----------------------------------------------------------


def _well(depth: float, width: float):
  """Drift of U(x) = depth (x / width)^2, a quadratic well of that depth at |x| = width."""
  return lambda x: -2.0 * depth * x / width**2


def censored_mean(tau, horizon: float) -> float:
  """Mean exit time from times censored at ``horizon`` (inf: never left).

  The exponential model's maximum-likelihood mean, time observed over exits
  (``sum min(tau, horizon) / exits``): the plain mean when none is
  censored; small-noise exits from a well are close to exponential
  (Imkeller and Pavlyukevich 2006). NaN when nothing left.
  """
  tau = np.asarray(tau, float)
  exits = np.isfinite(tau).sum()
  return float(np.minimum(tau, horizon).sum() / exits) if exits else math.nan


def _mean_exit(key, alpha, eps, depth, width, n_paths, dt, max_steps) -> float:
  tau = sde.first_exit_times(
    key,
    alpha=alpha,
    half_width=width,
    dt=dt,
    n_paths=n_paths,
    max_steps=max_steps,
    drift=_well(depth, width),
    noise_scale=eps,
  )
  return censored_mean(tau, dt * max_steps)


def sde_exits(
  key, *, n_paths: int, dt: float = 2e-3, max_steps: int = 200_000, points: int = 4, tick=None
):
  """Exit-time scaling of the SDE in a quadratic well, and the modulated SDE.

  Returns ``{"noise": rows, "shape": rows, "modulated": dict}``: mean exit
  time (:func:`censored_mean`) against ``eps`` (the last ``points`` of a
  factor-sqrt(2) grid) for alpha 1.5 and 1.8 with the first-order theory's
  slope ``-alpha`` (Imkeller and Pavlyukevich 2006); against the well's
  width and depth for alpha 1.5 and 2; and the HTGA-modulated SDE's exit
  times against the plain SDE's in the unit well.
  """
  tick = tick or (lambda: None)
  keys = iter(jax.random.split(key, 64))
  noise = []
  grids = {1.5: (0.1, 0.14, 0.2, 0.28), 1.8: (0.2, 0.28, 0.4, 0.56)}
  for alpha in (1.5, 1.8):
    for eps in grids[alpha][-points:]:
      t = _mean_exit(next(keys), alpha, eps, 1.0, 1.0, n_paths, dt, max_steps)
      noise.append({"alpha": alpha, "eps": eps, "mean_exit": t})
      tick()
  for alpha in (1.5, 1.8):
    pts = [(math.log(r["eps"]), math.log(r["mean_exit"])) for r in noise if r["alpha"] == alpha]
    slope = float(np.polyfit(*zip(*pts, strict=True), 1)[0])
    for r in noise:
      if r["alpha"] == alpha:
        r["fitted_slope"] = slope
  shape = []
  for alpha, eps in ((1.5, 0.2), (2.0, 0.6)):
    shapes = ((0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (1.0, 1.5), (1.0, 2.0))
    for depth, width in shapes[-points - 1 :]:
      t = _mean_exit(next(keys), alpha, eps, depth, width, n_paths, dt, max_steps)
      shape.append({"alpha": alpha, "eps": eps, "depth": depth, "width": width, "mean_exit": t})
      tick()
  common = dict(half_width=1.0, dt=dt, n_paths=n_paths, max_steps=max_steps)
  k_plain, k_mod = next(keys), next(keys)
  modulated = {}
  for alpha, eps in ((1.5, 0.2), (2.0, 0.6)):
    plain = sde.first_exit_times(
      k_plain, alpha=alpha, drift=_well(1.0, 1.0), noise_scale=eps, **common
    )
    mod = sde.modulated_exit_times(
      k_mod, alpha=alpha, drift=_well(1.0, 1.0), noise_scale=eps, window=200, k=20, **common
    )
    modulated[str(alpha)] = {
      "eps": eps,
      "plain": np.asarray(plain).tolist(),
      "modulated": np.asarray(mod.times).tolist(),
      "scale_at_exit": np.asarray(mod.scale).tolist(),
      "alpha_hat_at_exit": np.asarray(mod.alpha_hat).tolist(),
    }
    tick()
  return {"noise": noise, "shape": shape, "modulated": modulated}


# --- 2. Escape on the analytic landscape ------------------------------------


def oracle(kind: str, sigma: float, scale: float) -> Callable:
  """Gradient noise: base Gaussian ``sigma`` plus an injected part.

  ``kind``: ``"gaussian"`` (base only), ``"gaussian+gaussian"`` (plus a
  Gaussian of standard deviation ``sqrt(2) scale``: the alpha = 2 member of
  the stable family at the same scale parameter, since infinite-variance
  noise has no variance to match), ``"gaussian+stable"`` (plus ``scale``
  times a symmetric alpha-stable(1.5) sample).
  """

  def draw(key, shape):
    k1, k2 = jax.random.split(key)
    g = sigma * jax.random.normal(k1, shape)
    if kind == "gaussian+gaussian":
      g = g + math.sqrt(2.0) * scale * jax.random.normal(k2, shape)
    elif kind == "gaussian+stable":
      g = g + scale * htga_jax.symmetric_stable(k2, STABLE, shape)
    return g

  return draw


def escape_optimizers(lr: float, only=None) -> list[tuple[str, str, optax.GradientTransformation]]:
  """``(name, noise kind, optimizer)`` rows of the escape table, all at ``lr``.

  ``only``: optional names to keep (ValueError naming any unknown one).
  """
  heavy, light = "gaussian+stable", "gaussian"
  rows = [
    *((name, kind, optax.sgd(lr)) for kind, name in SGD_OF_KIND.items()),
    ("HTGA", heavy, htga_jax.htga(lr, **HTGA_LANDSCAPE)),
    ("HTGA (Gaussian noise)", light, htga_jax.htga(lr, **HTGA_LANDSCAPE)),
    ("momentum 0.9", heavy, optax.sgd(lr, momentum=0.9)),
    ("HTGA + momentum 0.9", heavy, htga_jax.htga(lr, momentum=0.9, **HTGA_LANDSCAPE)),
    ("clipped SGD (c=1)", heavy, htga_jax.clipped_sgd(lr, 1.0)),
    ("normalized SGD", heavy, htga_jax.normalized_sgd(lr)),
    ("TailOPT BiClip-SGD", heavy, htga_jax.tailopt(lr, variant="sgd", lower=0.01, upper=1.0)),
    (
      "HTGA + curvature (beta=-0.5)",
      heavy,
      htga_jax.htga_curvature(lr, beta=-0.5, curvature_every_k=16, **HTGA_LANDSCAPE),
    ),
  ]
  if only is None:
    return rows
  unknown = sorted(set(only) - {r[0] for r in rows})
  if unknown:
    raise ValueError(f"unknown optimizer(s) {unknown}; choose from {[r[0] for r in rows]}")
  return [r for r in rows if r[0] in only]


def _htga_parts(state):
  is_part = lambda s: isinstance(
    s, (htga_jax.ScaleByTailIndexState, htga_jax.ScaleByCurvatureState)
  )
  return [s for s in jax.tree.leaves(state, is_leaf=is_part) if is_part(s)]


def _alpha_and_scale(state) -> tuple[jax.Array, jax.Array]:
  """HTGA's mean alpha over leaves and its full multiplier (NaN, NaN for other optimizers)."""
  alpha, scale = jnp.float32(jnp.nan), jnp.float32(jnp.nan)
  for part in _htga_parts(state):
    if isinstance(part, htga_jax.ScaleByTailIndexState):
      alpha = jnp.mean(jnp.stack(jax.tree.leaves(part.alpha)))
      factor = jnp.mean(jnp.stack(jax.tree.leaves(part.scale)))
    else:
      factor = part.scale
    scale = jnp.where(jnp.isnan(scale), 1.0, scale) * factor
  return alpha, scale


def escape_runs(tx, land: TwoBasins, draw, key, *, n_seeds: int, steps: int, record: int = 10):
  """Runs ``tx`` from the sharp minimum for ``n_seeds`` vmapped seeds.

  Returns ``(final x, first exit step or -1, alpha trajectory, scale
  trajectory)``, the trajectories averaged over seeds every ``record`` steps.
  """

  tx = optax.with_extra_args_support(tx)

  def one(key):
    x = jnp.zeros(land.dim)
    value_fn = land.value

    def body(carry, t):
      x, s, first = carry
      g = land.grad(x) + draw(jax.random.fold_in(key, t), x.shape)
      u, s = tx.update(g, s, x, value_fn=value_fn)
      x = x + u
      first = jnp.where((first < 0) & land.escaped(x), t + 1, first)
      return (x, s, first), _alpha_and_scale(s)

    (x, _, first), (alpha, scale) = jax.lax.scan(
      body, (x, tx.init(x), jnp.int32(-1)), jnp.arange(steps)
    )
    return x, first, alpha[::record], scale[::record]

  x, first, alpha, scale = jax.jit(jax.vmap(one))(jax.random.split(key, n_seeds))
  return x, first, jnp.nanmean(alpha, axis=0), jnp.nanmean(scale, axis=0)


def escape(
  key,
  *,
  dims=(1, 2),
  n_seeds: int,
  steps: int,
  lr=0.05,
  sigma=1.0,
  scale=0.25,
  only=None,
  tick=None,
):
  """The escape table on :class:`TwoBasins` in each of ``dims``."""
  tick = tick or (lambda: None)
  rows, curves, exits = [], {}, {}
  for dim in dims:
    land = TwoBasins(dim=dim)
    sharpness = jax.jit(jax.vmap(land.sharpness))
    for name, kind, tx in escape_optimizers(lr, only):
      # The same seeds for every optimizer of a noise kind: paired draws.
      k = jax.random.fold_in(key, 10 * dim + KINDS.index(kind))
      x, first, alpha, lam = escape_runs(
        tx, land, oracle(kind, sigma, scale), k, n_seeds=n_seeds, steps=steps
      )
      first = np.asarray(first)
      out = first >= 0
      lo, hi = wilson(int(out.sum()), n_seeds)
      lam_np = np.asarray(lam)
      rows.append(
        {
          "dim": dim,
          "optimizer": name,
          "noise": kind,
          "escaped": float(out.mean()),
          "escaped_lo": lo,
          "escaped_hi": hi,
          "median_exit": float(np.median(first[out])) if out.any() else math.nan,
          "mean_exit": float(np.mean(first[out])) if out.any() else math.nan,
          "exit_se": float(np.std(first[out]) / math.sqrt(out.sum())) if out.any() else math.nan,
          "final_sharpness": float(np.mean(np.asarray(sharpness(x)))),
          "settled_wide": float(np.mean(np.asarray(land.settled_wide(x)))),
          "scale_mean": float(np.nanmean(lam_np)) if np.isfinite(lam_np).any() else math.nan,
          "scale_min": float(np.nanmin(lam_np)) if np.isfinite(lam_np).any() else math.nan,
          "scale_max": float(np.nanmax(lam_np)) if np.isfinite(lam_np).any() else math.nan,
        }
      )
      exits[f"{dim}/{name}"] = first.tolist()
      if np.isfinite(lam_np).any():
        curves[f"{dim}d/{name}"] = {
          "alpha": np.asarray(alpha).tolist(),
          "scale": lam_np.tolist(),
          "every": 10,
        }
      tick()
  _paired_against_sgd(rows, exits, steps)
  sde_side = _escape_sde(key, TwoBasins(dim=1), sigma, scale, lr)
  tick()
  return {
    "rows": rows,
    "curves": curves,
    "exits": exits,
    "sde": sde_side,
    "settings": dict(n_seeds=n_seeds, steps=steps, lr=lr, sigma=sigma, scale=scale),
  }


def _paired_against_sgd(rows, exits, steps: int) -> None:
  """Adds to each row the paired difference of its exit steps from SGD's on the same noise.

  Runs of one noise kind share their seeds' draws, so the difference is
  paired; a run that never left counts as ``steps`` (censored, which
  understates differences between slow rows).
  """
  censor = lambda v: np.where(np.asarray(v) < 0, steps, np.asarray(v))
  for r in rows:
    base = SGD_OF_KIND[r["noise"]]
    ref = exits.get(f"{r['dim']}/{base}")
    if ref is None or r["optimizer"] == base:
      r["vs_sgd"] = None
    else:
      r["vs_sgd"] = stats.paired_difference(
        censor(exits[f"{r['dim']}/{r['optimizer']}"]), censor(ref)
      )


def _escape_sde(key, land: TwoBasins, sigma, scale, lr):
  """The SDE analogue of the 1-D escape: plain and modulated exits from the sharp basin.

  SGD with step ``lr`` on noise ``scale * S_alpha`` matches, at ``dt = lr``,
  ``dX = -U'(X) dt + eps dL`` with ``eps = scale * lr^(1 - 1/alpha)`` (the
  Gaussian base noise left out: it alone does not escape).
  """
  eps = scale * lr ** (1 - 1 / STABLE)
  common = dict(
    alpha=STABLE,
    half_width=land.escape_radius,
    dt=lr,
    n_paths=512,
    max_steps=20_000,
    drift=lambda x: -land.grad(x[None])[0],
    noise_scale=eps,
  )
  plain = np.asarray(sde.first_exit_times(key, **common)) / lr
  mod = sde.modulated_exit_times(key, window=64, k=16, every_k=16, **common)
  return {
    "eps": eps,
    "plain_steps": plain.tolist(),
    "modulated_steps": (np.asarray(mod.times) / lr).tolist(),
    "modulated_scale": np.asarray(mod.scale).tolist(),
  }


# --- 3. Escape on a neural network ------------------------------------------


def _mlp_init(key, sizes=(40, 64, 64, 10)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (a, b)) * math.sqrt(2.0 / a), "b": jnp.zeros(b)}
    for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def _mlp_loss(params, x, y):
  h = x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  logits = h @ params[-1]["w"] + params[-1]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def neural_escape(
  key,
  *,
  n_seeds: int = 16,
  sharp_steps: int = 1500,
  steps: int = 1000,
  lr: float = 0.1,
  batch: int = 16,
  checks: int = 10,
  scale: float = 0.003,
  only=None,
  tick=None,
):
  """MNIST-1D MLP: a sharp minimum by full-batch descent, then each optimizer.

  The start is the end of ``sharp_steps`` of full-batch gradient descent at
  ``lr`` (no gradient noise: large-batch training's sharp solutions). From
  there every optimizer runs ``steps`` mini-batch steps of ``batch``
  examples at the same ``lr`` for ``n_seeds`` vmapped seeds (the same
  batches for all). Sharpness is the top Hessian eigenvalue on 1000 training
  examples (:func:`htga_jax.hessian_top_eigenvalues`), checked ``checks``
  times; a run *escaped* once it fell below half the start's.
  """
  from htga_jax.experiments.datasets import load_mnist1d

  tick = tick or (lambda: None)
  data = load_mnist1d()
  mu, sd = data.x_train.mean(), data.x_train.std()
  xtr, ytr = jnp.asarray((data.x_train - mu) / sd), jnp.asarray(data.y_train)
  xte, yte = jnp.asarray((data.x_test - mu) / sd), jnp.asarray(data.y_test)
  loss = lambda p, x, y: _mlp_loss(p, x, y)[0]
  k_init, k_runs = jax.random.split(key)

  @jax.jit
  def full_batch_descent(p):
    step = lambda _, p: jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p, xtr, ytr))
    return jax.lax.fori_loop(0, sharp_steps, step, p)

  start = full_batch_descent(_mlp_init(k_init))
  sub = (xtr[:1000], ytr[:1000])

  @jax.jit
  def sharpness(p):
    return htga_jax.hessian_top_eigenvalues(loss, p, *sub, max_iters=30, tol=1e-3).eigenvalues[0]

  def accuracy(p):
    return jnp.mean(jnp.argmax(_mlp_loss(p, xte, yte)[1], -1) == yte)

  sharp0 = float(sharpness(start))
  tick()
  rows = []
  per_check = steps // checks
  for name, kind, tx in escape_optimizers(lr, only):
    tx = optax.with_extra_args_support(tx)
    draw = oracle(kind, 0.0, scale)  # the mini-batch is the base noise
    chunk = _minibatch_chunk(tx, draw, loss, (xtr, ytr), batch, per_check)
    keys = jax.random.split(k_runs, n_seeds)  # the same batches for every optimizer
    p = jax.tree.map(lambda a: jnp.stack([a] * n_seeds), start)
    s = jax.vmap(tx.init)(p)
    sharp, lams = [], []
    for c in range(checks):
      p, s, lam = chunk(p, s, keys, c * per_check)
      sharp.append(np.asarray(jax.vmap(sharpness)(p)))
      lams.append(np.asarray(lam))
    sharp = np.stack(sharp, 1)  # (seeds, checks)
    below = sharp < 0.5 * sharp0
    first = np.where(below.any(1), (below.argmax(1) + 1) * per_check, -1)
    lam = np.concatenate(lams, 1)
    lo, hi = wilson(int((first >= 0).sum()), n_seeds)
    finite = np.isfinite(sharp[:, -1])
    rows.append(
      {
        "optimizer": name,
        "noise": kind.replace("gaussian", "mini-batch", 1),
        "escaped": float((first >= 0).mean()),
        "escaped_lo": lo,
        "escaped_hi": hi,
        "first_check_below_half": float(np.median(first[first >= 0]))
        if (first >= 0).any()
        else math.nan,
        "final_sharpness": float(np.median(sharp[finite, -1])) if finite.any() else math.nan,
        "diverged": float(1 - finite.mean()),
        "test_accuracy": float(np.mean(np.asarray(jax.vmap(accuracy)(p)))),
        "scale_mean": float(np.nanmean(lam)) if np.isfinite(lam).any() else math.nan,
      }
    )
    tick()
  return {
    "start_sharpness": sharp0,
    "start_accuracy": float(accuracy(start)),
    "rows": rows,
    "settings": dict(
      n_seeds=n_seeds, sharp_steps=sharp_steps, steps=steps, lr=lr, batch=batch, scale=scale
    ),
  }


def _minibatch_chunk(tx, draw, loss, data, batch: int, length: int):
  """A jitted, seed-vmapped run of ``length`` mini-batch steps of ``tx`` with ``draw``'s noise.

  ``chunk(params, states, keys, t0) -> (params, states, lambda per step)``.
  """
  xtr, ytr = data

  def run_chunk(p, s, key, t0):
    def body(carry, t):
      p, s = carry
      kb, kn = jax.random.split(jax.random.fold_in(key, t))
      idx = jax.random.randint(kb, (batch,), 0, xtr.shape[0])
      g = jax.grad(loss)(p, xtr[idx], ytr[idx])
      leaves, treedef = jax.tree.flatten(g)
      noise = [draw(jax.random.fold_in(kn, i), x.shape) for i, x in enumerate(leaves)]
      g = treedef.unflatten([a + b for a, b in zip(leaves, noise, strict=True)])
      value_fn = lambda q: loss(q, xtr[idx], ytr[idx])
      u, s = tx.update(g, s, p, value_fn=value_fn)
      return (optax.apply_updates(p, u), s), _alpha_and_scale(s)[1]

    (p, s), lam = jax.lax.scan(body, (p, s), t0 + jnp.arange(length))
    return p, s, lam

  return jax.jit(jax.vmap(run_chunk, in_axes=(0, 0, 0, None)))


# --- The suite ----------------------------------------------------------------

#: Sizes of the full run (about 5 minutes on 2 CPU cores) and of ``--quick``.
FULL = dict(sde_paths=400, seeds=128, steps=3000, neural_seeds=16, neural_steps=1000)
QUICK = dict(sde_paths=16, seeds=8, steps=200, neural_seeds=2, neural_steps=50)


def run(seed: int = 0, quick: bool = False, progress: bool = True, only=None) -> dict:
  """Runs the three experiments; returns their results and the run's metadata.

  ``only``: optional optimizer names (of :func:`escape_optimizers`) to run.
  """
  import time

  from tqdm.auto import tqdm

  from htga_jax.experiments import outputs

  n = QUICK if quick else FULL
  k_sde, k_esc, k_neu = jax.random.split(jax.random.key(seed), 3)
  t0 = time.perf_counter()
  m = len(escape_optimizers(0.1, only))
  total = (10 if quick else 20) + 3 * m + 2
  with tqdm(total=total, desc="dynamics", unit="run", disable=not progress) as bar:
    tick = lambda: bar.update()
    sde_res = sde_exits(
      k_sde,
      n_paths=n["sde_paths"],
      max_steps=2_000 if quick else 200_000,
      points=2 if quick else 4,
      tick=tick,
    )
    esc = escape(k_esc, n_seeds=n["seeds"], steps=n["steps"], only=only, tick=tick)
    neu = neural_escape(
      k_neu,
      n_seeds=n["neural_seeds"],
      steps=n["neural_steps"],
      sharp_steps=50 if quick else 1500,
      only=only,
      tick=tick,
    )
  return {
    "sde": sde_res,
    "escape": esc,
    "neural": neu,
    "seed": seed,
    "quick": quick,
    "seconds": time.perf_counter() - t0,
    "machine": outputs.machine(),
  }
