"""Runs the study end to end and writes its run directory.

For each task, data fraction and optimizer:

1. *tune*: one program trains the learning-rate grid (x the optimizer's knob
   grid) with one tuning seed; the setting with the best validation metric is
   kept;
2. *final*: one program trains that setting with the evaluation seeds and
   records test metrics, curves, HTGA's tail-index trajectories, sharpness
   and gradient-noise statistics.

Outputs (written into a temporary directory, renamed into place only when
everything succeeded, so a failed run leaves nothing half-written):
``results.json`` and ``results.csv`` (one row per trained model),
``curves.json`` (loss, validation and HTGA tail-index curves of the final
runs, per seed), ``summary.md``, ``config.json``, and PNG figures.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import pathlib
import shutil
import time

import jax
import numpy as np

from htga_jax.experiments import grid, plots, report
from htga_jax.experiments.registry import STUDY_OPTIMIZERS
from htga_jax.experiments.tasks import DEFAULT_TASKS, TASKS

__all__ = ["StudyConfig", "run_study"]

DEFAULT_FRACTIONS = (1.0, 0.3, 0.2, 0.1)
DEFAULT_LR_GRID = (1e-3, 1e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Everything that defines a study; validated on construction.

  Attributes:
    tasks: task names (see ``tasks.TASKS``); default: ``DEFAULT_TASKS``
      (MNIST-1D and digits with MLPs, the character LM).
    fractions: fractions of the training data, each in (0, 1].
    optimizers: names from ``registry.STUDY_OPTIMIZERS``.
    seeds: evaluation seeds per configuration (0 .. seeds-1).
    steps: training steps for every task (None: each task's default).
    batch_size: examples (sequences) per step for every task (None: each
      task's default).
    lr_grid: learning rates tried for every optimizer.
    tune_knob: also tune each optimizer's own knob (else its first value).
    noise: gradient noise injected before the optimizer (scale 0: none).
    label_noise: fraction of training labels flipped (classification only).
    data_dir: directory with CIFAR / WikiText-2 / PTB, for those tasks.
    val_fraction: share of the training set held out for tuning.
    data_seed: seeds the validation split, the subsets and label flips.
    tuning_seed: the seed of the tuning runs (not an evaluation seed).
    measure: compute sharpness and gradient-noise statistics at the end.
  """

  tasks: tuple[str, ...] = DEFAULT_TASKS
  fractions: tuple[float, ...] = DEFAULT_FRACTIONS
  optimizers: tuple[str, ...] = tuple(STUDY_OPTIMIZERS)
  seeds: int = 5
  steps: int | None = None
  batch_size: int | None = None
  lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
  tune_knob: bool = True
  noise: grid.NoiseConfig = grid.NoiseConfig()
  label_noise: float = 0.0
  data_dir: str | None = None
  val_fraction: float = 0.1
  data_seed: int = 0
  tuning_seed: int = 1000
  measure: bool = True

  def __post_init__(self):
    unknown = [t for t in self.tasks if t not in TASKS]
    if unknown or not self.tasks:
      raise ValueError(f"tasks must be among {sorted(TASKS)}, got {list(self.tasks)}")
    unknown = [o for o in self.optimizers if o not in STUDY_OPTIMIZERS]
    if unknown or not self.optimizers:
      raise ValueError(
        f"optimizers must be among {sorted(STUDY_OPTIMIZERS)}, got {unknown or '[]'}"
      )
    if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
      raise ValueError(f"fractions must be in (0, 1], got {list(self.fractions)}")
    if len(set(self.fractions)) != len(self.fractions):
      raise ValueError(f"fractions repeat: {list(self.fractions)}")
    if self.seeds < 1:
      raise ValueError(f"seeds must be >= 1, got {self.seeds}")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    if self.batch_size is not None and self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if not self.lr_grid or any(not (math.isfinite(lr) and lr > 0) for lr in self.lr_grid):
      raise ValueError(f"lr_grid must hold finite learning rates > 0, got {list(self.lr_grid)}")
    if not 0.0 <= self.label_noise < 1.0:
      raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
    if (
      not 0.0 < self.noise.alpha <= 2.0
      or not 0.0 <= self.noise.ratio <= 1.0
      or self.noise.scale < 0
    ):
      raise ValueError(
        f"noise needs alpha in (0, 2], ratio in [0, 1], scale >= 0; got {self.noise}"
      )
    if not 0.0 < self.val_fraction < 0.5:
      raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
    if self.tuning_seed < self.seeds:
      raise ValueError("tuning_seed must differ from the evaluation seeds 0..seeds-1")

  def steps_for(self, task: str) -> int:
    return self.steps or TASKS[task].steps

  def task(self, name: str):
    """The task with this study's overrides (steps, batch size) applied."""
    t = TASKS[name]
    return dataclasses.replace(
      t, steps=self.steps_for(name), batch_size=self.batch_size or t.batch_size
    )


def quick_config(**overrides) -> StudyConfig:
  """A smoke-test study: two fractions, two seeds, 50 steps, two learning rates."""
  base = dict(fractions=(1.0, 0.1), seeds=2, steps=50, lr_grid=(1e-2, 1e-1))
  return StudyConfig(**{**base, **overrides})


def _grid(spec, cfg: StudyConfig):
  knobs = spec.knob_grid if (spec.knob and cfg.tune_knob) else (spec.knob_grid[:1] or (0.0,))
  return [(lr, k) for lr in cfg.lr_grid for k in knobs]


def _pad(values, n):
  """Repeats the last entry so every program of an optimizer has n models."""
  return list(values) + [values[-1]] * (n - len(values))


def _rows_for(result, cfg, task, prep, spec, phase, seeds, lrs, knobs, n_real, steps):
  kind = task.kind
  rows = []
  layer_stats = [k for k in result.final if k.startswith("noise_")]
  for i in range(n_real):
    f = {k: float(v[i]) for k, v in result.final.items()}
    if kind == "classification":
      gap = f["train_metric"] - f["test_metric"]
    else:
      gap = f["test_loss"] - f["train_loss"]
    per_layer = {k: f[k] for k in layer_stats}
    kurt = [v for k, v in per_layer.items() if k.startswith("noise_kurtosis/") and math.isfinite(v)]
    alph = [v for k, v in per_layer.items() if k.startswith("noise_alpha/") and math.isfinite(v)]
    diverged = not all(math.isfinite(f[k]) for k in ("val_loss", "test_loss", "train_loss"))
    rows.append(
      {
        "task": task.name,
        "kind": kind,
        "fraction": prep.fraction,
        "n_train": prep.n_train,
        "optimizer": spec.name,
        "family": spec.family,
        "phase": phase,
        "seed": int(seeds[i]),
        "lr": float(lrs[i]),
        "knob_name": spec.knob or "",
        "knob": float(knobs[i]) if spec.knob else math.nan,
        "steps": steps,
        "val_metric": f["val_metric"],
        "test_metric": f["test_metric"],
        "train_metric": f["train_metric"],
        "train_loss": f["train_loss"],
        "val_loss": f["val_loss"],
        "test_loss": f["test_loss"],
        "bits_per_token": f["test_loss"] / math.log(2) if kind == "lm" else math.nan,
        "gen_gap": gap,
        "diverged": diverged,
        "sharpness": f.get("sharpness", math.nan),
        "noise_kurtosis": float(np.mean(kurt)) if kurt else math.nan,
        "noise_alpha": float(np.median(alph)) if alph else math.nan,
        "us_per_model_step": result.seconds_per_step / len(lrs) * 1e6,
        "peak_rss_mb": result.peak_rss_mb,
        "noise_by_layer": per_layer,
        "label_noise": cfg.label_noise if kind == "classification" else 0.0,
        "grad_noise_scale": cfg.noise.scale,
      }
    )
  return rows


def run_study(
  cfg: StudyConfig, out_dir: str | os.PathLike, *, overwrite: bool = False, progress: bool = True
) -> dict:
  """Runs the study and writes ``out_dir``; returns the rows and paths.

  Every dataset is loaded (and so validated) before anything is trained or
  written. Outputs go to ``<out_dir>.partial-<pid>`` and are renamed to
  ``out_dir`` only at the end.

  Raises:
    FileExistsError: ``out_dir`` exists, holds files and ``overwrite`` is False.
    FileNotFoundError, ValueError: from the data loaders, before any output.
  """
  from tqdm.auto import tqdm

  out = pathlib.Path(out_dir)
  if out.exists() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(f"{out} exists and is not empty: pass overwrite=True (--overwrite)")
  datasets = {name: TASKS[name].load(cfg.data_dir) for name in cfg.tasks}  # fail early

  n_seeds = cfg.seeds
  total = sum(2 * cfg.steps_for(t) * len(cfg.fractions) * len(cfg.optimizers) for t in cfg.tasks)
  bar = tqdm(total=total, desc="study", unit="step", disable=not progress, smoothing=0.05)
  started = time.perf_counter()
  rows, curves = [], {}
  for task_name in cfg.tasks:
    task, dataset = cfg.task(task_name), datasets[task_name]
    steps = cfg.steps_for(task_name)
    programs = grid.TaskPrograms(task, dataset)
    preps = {
      f: grid.prepare(
        task,
        dataset,
        f,
        data_seed=cfg.data_seed,
        val_fraction=cfg.val_fraction,
        label_noise=cfg.label_noise,
      )
      for f in cfg.fractions
    }
    for opt_name in cfg.optimizers:
      spec = STUDY_OPTIMIZERS[opt_name]
      settings = _grid(spec, cfg)
      n_models = max(len(settings), n_seeds)
      trainer = grid.Trainer(programs, spec, steps, cfg.noise, measure=cfg.measure)
      for fraction, prep in preps.items():
        bar.set_description(f"{task_name} {fraction:.0%} {opt_name}")
        # 1. tune: the grid with the tuning seed.
        trainer.measure = False
        lrs = _pad([lr for lr, _ in settings], n_models)
        knobs = _pad([k for _, k in settings], n_models)
        seeds = [cfg.tuning_seed] * n_models
        res = trainer.run(prep, seeds, lrs, knobs, progress=bar.update)
        tuned = _rows_for(
          res, cfg, task, prep, spec, "tune", seeds, lrs, knobs, len(settings), steps
        )
        lr, knob = report.select_config(tuned, report.better(task.kind))
        # 2. final: the chosen setting with every evaluation seed.
        trainer.measure = cfg.measure
        seeds = _pad(list(range(n_seeds)), n_models)
        res = trainer.run(
          prep, seeds, [lr] * n_models, [knob if spec.knob else 0.0] * n_models, progress=bar.update
        )
        rows += tuned + _rows_for(
          res,
          cfg,
          task,
          prep,
          spec,
          "final",
          seeds,
          [lr] * n_models,
          [knob] * n_models,
          n_seeds,
          steps,
        )
        curves[(task_name, fraction, opt_name)] = {
          "step": res.curves["step"],
          "train_loss": res.curves["train_loss"][:, :n_seeds],
          "val_metric": res.curves["val_metric"][:, :n_seeds],
          "alpha": {k: v[:, :n_seeds] for k, v in res.alpha.items()},
        }
  bar.close()
  elapsed = time.perf_counter() - started
  meta = _meta(cfg, elapsed, rows)
  return _write(out, overwrite, cfg, meta, rows, curves)


def _meta(cfg: StudyConfig, elapsed: float, rows: list[dict]) -> dict:
  dev = jax.devices()[0]
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "device": f"{dev.platform} / {dev.device_kind}",
    "jax": jax.__version__,
    "tasks": list(cfg.tasks),
    "fractions": ", ".join(f"{f:.0%}" for f in cfg.fractions),
    "optimizers": ", ".join(cfg.optimizers),
    "seeds": f"{cfg.seeds} evaluation seeds, tuning seed {cfg.tuning_seed}",
    "learning-rate grid": ", ".join(f"{lr:g}" for lr in cfg.lr_grid),
    "knobs tuned": cfg.tune_knob,
    "steps": cfg.steps or {t: TASKS[t].steps for t in cfg.tasks},
    "injected gradient noise": (
      f"alpha={cfg.noise.alpha}, heavy ratio={cfg.noise.ratio}, scale={cfg.noise.scale} x RMS"
      if cfg.noise.scale > 0
      else "none"
    ),
    "label noise": cfg.label_noise,
    "wall time": f"{elapsed / 60:.1f} min",
    "peak_rss_mb": round(max((r["peak_rss_mb"] for r in rows), default=float("nan"))),
  }


def _jsonable(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, (np.floating, np.integer)):
    return _jsonable(v.item())
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  return v


def _curves_for_json(curves: dict) -> dict:
  """``{"task/fraction/optimizer": {"step": [...], "train_loss": [[per seed]...],
  "val_metric": [...], "alpha": {leaf: [[per seed]...]}}}`` (final runs)."""
  out = {}
  for (task, fraction, opt), c in curves.items():
    out[f"{task}/{fraction:g}/{opt}"] = {
      "step": np.asarray(c["step"]).tolist(),
      "train_loss": np.asarray(c["train_loss"]).tolist(),
      "val_metric": np.asarray(c["val_metric"]).tolist(),
      "alpha": {leaf: np.asarray(a).tolist() for leaf, a in c["alpha"].items()},
    }
  return out


def _write(out: pathlib.Path, overwrite: bool, cfg, meta, rows, curves) -> dict:
  tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    (tmp / "config.json").write_text(json.dumps(_jsonable(dataclasses.asdict(cfg)), indent=2))
    (tmp / "results.json").write_text(json.dumps(_jsonable({"meta": meta, "rows": rows}), indent=1))
    (tmp / "curves.json").write_text(json.dumps(_jsonable(_curves_for_json(curves))))
    flat = [{k: v for k, v in r.items() if k != "noise_by_layer"} for r in rows]
    with open(tmp / "results.csv", "w", newline="") as fh:
      writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
      writer.writeheader()
      writer.writerows(flat)
    (tmp / "summary.md").write_text(report.markdown_summary(rows, meta))
    figures = plots.plot_all(curves, rows, tmp)
    if out.exists():
      if not overwrite and any(out.iterdir()):
        raise FileExistsError(f"{out} appeared while the study ran")
      shutil.rmtree(out)
    tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {
    "rows": rows,
    "dir": out,
    "figures": [out / p.name for p in figures],
    "summary": out / "summary.md",
  }
