"""The study's figures (matplotlib, PNG): loss curves, metric vs data, tail indices."""

from __future__ import annotations

import pathlib
from collections import defaultdict

import numpy as np

__all__ = ["plot_all"]


def _figure(ncols=1, width=6.5):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False)
  return fig, axes[0]


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  """Writes and closes the figure (a study draws many; open ones leak)."""
  import matplotlib.pyplot as plt

  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _row_mean(a) -> np.ndarray:
  """Mean over the seed axis of the finite values (NaN where none is)."""
  a = np.asarray(a, float)
  ok = np.isfinite(a)
  n = ok.sum(axis=1)
  return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def _style(name: str) -> dict:
  return {
    "linestyle": "-" if name.startswith("htga") else "--",
    "linewidth": 2.0 if name.startswith("htga") else 1.3,
  }


def plot_all(curves: dict, rows: list[dict], out: pathlib.Path) -> list[pathlib.Path]:
  """Writes the figures into ``out``; returns their paths.

  Args:
    curves: ``{(task, fraction, optimizer): {"step", "train_loss", "val_metric",
      "alpha": {leaf: (C, seeds)}}}`` of the final runs.
    rows: the study's rows (for metric vs data fraction).
    out: the directory to write into.
  """
  written = []
  tasks = sorted({t for t, _, _ in curves})
  kinds = {r["task"]: r["kind"] for r in rows}
  for task in tasks:
    written.append(_loss_curves(task, curves, out))
    written.append(_metric_vs_fraction(task, kinds[task], rows, out))
    tail = _tail_indices(task, curves, out)
    if tail is not None:
      written.append(tail)
  return written


def _loss_curves(task, curves, out):
  fractions = sorted({f for t, f, _ in curves if t == task}, reverse=True)
  shown = [fractions[0]] + ([fractions[-1]] if len(fractions) > 1 else [])
  fig, axes = _figure(len(shown))
  for ax, fraction in zip(axes, shown, strict=True):
    for (t, f, opt), c in sorted(curves.items()):
      if t == task and f == fraction:
        ax.plot(c["step"], _row_mean(c["train_loss"]), label=opt, **_style(opt))
    ax.set_title(f"{task}, {fraction:.0%} of the training data")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[-1].legend(fontsize="small", ncol=2)
  return _save(fig, out / f"loss_curves_{task}.png")


def _metric_vs_fraction(task, kind, rows, out):
  values = defaultdict(lambda: defaultdict(list))
  for r in rows:
    if r["task"] == task and r["phase"] == "final":
      values[r["optimizer"]][r["fraction"]].append(r["test_metric"])
  fig, axes = _figure()
  ax = axes[0]
  for opt, by_f in values.items():
    fs = sorted(by_f)
    mean = [np.mean(by_f[f]) for f in fs]
    sd = [np.std(by_f[f], ddof=1) if len(by_f[f]) > 1 else 0.0 for f in fs]
    ax.errorbar(fs, mean, yerr=sd, marker="o", capsize=3, label=opt, **_style(opt))
  ax.set_xscale("log")
  ax.set_xticks(sorted({f for by_f in values.values() for f in by_f}))
  ax.set_xticklabels([f"{f:.0%}" for f in ax.get_xticks()])
  ax.set_xlabel("fraction of the training data")
  ax.set_ylabel("test accuracy" if kind == "classification" else "test perplexity")
  ax.set_title(f"{task}: test metric vs data (mean ± sd over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", ncol=2)
  return _save(fig, out / f"metric_vs_fraction_{task}.png")


def _tail_indices(task, curves, out):
  candidates = [(f, o) for t, f, o in curves if t == task and curves[(t, f, o)]["alpha"]]
  if not candidates:
    return None
  fraction = max(f for f, _ in candidates)
  opts = sorted(o for f, o in candidates if f == fraction)
  fig, axes = _figure(len(opts), width=5.5)
  for ax, opt in zip(axes, opts, strict=True):
    c = curves[(task, fraction, opt)]
    for leaf, a in c["alpha"].items():
      if np.any(np.isfinite(a)):  # leaves too small for an estimate have none
        ax.plot(c["step"], _row_mean(a), label=leaf)
    ax.set_title(f"{task}, {opt}: per-layer tail index")
    ax.set_xlabel("step")
    ax.set_ylabel("alpha (Hill, mean over seeds)")
    ax.grid(alpha=0.3)
    if ax.get_lines():
      ax.legend(fontsize="x-small", ncol=2)
    else:  # e.g. runs too short for a first estimate
      ax.text(0.5, 0.5, "no estimate yet", ha="center", transform=ax.transAxes)
  return _save(fig, out / f"tail_index_{task}.png")
