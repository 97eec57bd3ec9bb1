"""Turns the study's rows into decisions and a report: selection, paired CIs, Markdown.

Rules: hyperparameters are chosen on validation, never on test; HTGA is
compared with the best baseline (also chosen on validation) by the paired
difference of their test metrics over seeds; a verdict is "better" or
"worse" only when the 95% interval excludes zero, and "no significant
difference" otherwise.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

__all__ = [
  "better",
  "compare",
  "markdown_summary",
  "paired_difference",
  "select_config",
  "summarise",
]


def better(kind: str) -> str:
  """``"higher"`` for accuracy (classification), ``"lower"`` for perplexity (LM)."""
  return "higher" if kind == "classification" else "lower"


def _score(values: Iterable[float], direction: str) -> float:
  """Mean of a metric, signed so that larger is better; a run that diverged
  (NaN or inf) makes its configuration the worst."""
  v = np.asarray(list(values), float)
  if v.size == 0 or not np.all(np.isfinite(v)):
    return -math.inf
  return float(v.mean() if direction == "higher" else -v.mean())


def select_config(rows: list[dict], direction: str) -> tuple[float, float | None]:
  """The (learning rate, knob) with the best mean validation metric."""
  groups = defaultdict(list)
  for r in rows:
    groups[(r["lr"], r["knob"])].append(r["val_metric"])
  best = max(groups, key=lambda key: (_score(groups[key], direction), -key[0]))
  return best


def paired_difference(a, b, level: float = 0.95) -> dict[str, float]:
  """Mean of ``a - b`` over paired seeds, with a Student-t interval.

  ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)``; with fewer than two pairs
  (or non-finite values) the interval is NaN.
  """
  from scipy import stats

  d = np.asarray(a, float) - np.asarray(b, float)
  n = d.size
  mean = float(d.mean()) if n else math.nan
  if n < 2 or not np.all(np.isfinite(d)):
    return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
  half = float(stats.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
  return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def _verdict(ci: dict[str, float], direction: str) -> str:
  lo, hi = ci["low"], ci["high"]
  if not (math.isfinite(lo) and math.isfinite(hi)):
    return "undetermined (too few finite pairs)"
  good = (lo > 0) if direction == "higher" else (hi < 0)
  bad = (hi < 0) if direction == "higher" else (lo > 0)
  if good:
    return "HTGA better"
  if bad:
    return "HTGA worse"
  return "no significant difference"


def summarise(rows: list[dict]) -> dict:
  """Per (task, fraction, optimizer): mean and sd over the final seeds."""
  out = defaultdict(dict)
  groups = defaultdict(list)
  for r in rows:
    if r["phase"] == "final":
      groups[(r["task"], r["fraction"], r["optimizer"])].append(r)
  for (task, fraction, opt), rs in groups.items():
    entry = {
      "lr": rs[0]["lr"],
      "knob": rs[0]["knob"],
      "knob_name": rs[0]["knob_name"],
      "family": rs[0]["family"],
      "kind": rs[0]["kind"],
      "n": len(rs),
    }
    for key in (
      "test_metric",
      "val_metric",
      "train_loss",
      "gen_gap",
      "sharpness",
      "noise_kurtosis",
      "noise_alpha",
      "us_per_model_step",
    ):
      v = np.asarray([r.get(key, math.nan) for r in rs], float)
      entry[key] = (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan)
    entry["diverged"] = sum(bool(r["diverged"]) for r in rs)
    out[(task, fraction)][opt] = entry
  return dict(out)


def _best_of_family(by_opt: dict, families: dict, family: str, direction: str):
  """The optimizer of ``family`` with the best mean validation metric (or None)."""
  members = [o for o in by_opt if families[o] == family]
  score = lambda o: _score((r["val_metric"] for r in by_opt[o].values()), direction)
  return max(members, key=score, default=None)


def compare(rows: list[dict], level: float = 0.95) -> list[dict]:
  """HTGA (its best variant) against the best baseline, per task and fraction.

  Both are chosen by mean *validation* metric over the final seeds; the
  comparison is the paired difference of their *test* metrics, seed by seed
  (same seed: same initial parameters and mini-batch order).
  """
  finals = defaultdict(lambda: defaultdict(dict))
  for r in rows:
    if r["phase"] == "final":
      finals[(r["task"], r["fraction"])][r["optimizer"]][r["seed"]] = r
  results = []
  for (task, fraction), by_opt in sorted(finals.items()):
    kind = next(iter(next(iter(by_opt.values())).values()))["kind"]
    direction = better(kind)
    families = {o: next(iter(s.values()))["family"] for o, s in by_opt.items()}
    h = _best_of_family(by_opt, families, "htga", direction)
    b = _best_of_family(by_opt, families, "baseline", direction)
    if h is None or b is None:
      continue
    seeds = sorted(set(by_opt[h]) & set(by_opt[b]))
    ci = paired_difference(
      [by_opt[h][s]["test_metric"] for s in seeds],
      [by_opt[b][s]["test_metric"] for s in seeds],
      level,
    )
    results.append(
      {
        "task": task,
        "fraction": fraction,
        "kind": kind,
        "htga": h,
        "baseline": b,
        "difference": ci["mean"],
        "ci_low": ci["low"],
        "ci_high": ci["high"],
        "pairs": ci["n"],
        "verdict": _verdict(ci, direction),
      }
    )
  return results


def _pm(pair, digits=3) -> str:
  mean, sd = pair
  if not math.isfinite(mean):
    return "diverged"
  return f"{mean:.{digits}f} ± {sd:.{digits}f}" if math.isfinite(sd) else f"{mean:.{digits}f}"


def markdown_summary(rows: list[dict], meta: dict) -> str:
  """The study's report in Markdown: setup, results per task, comparisons, costs."""
  summary = summarise(rows)
  comparisons = compare(rows)
  tasks = sorted(
    {t for t, _ in summary},
    key=lambda t: meta.get("tasks", []).index(t) if t in meta.get("tasks", []) else 99,
  )
  lines = ["# HTGA study", ""]
  names = {"peak_rss_mb": "peak memory (process, MiB)"}
  lines += [f"- {names.get(k, k)}: {v}" for k, v in meta.items() if k != "tasks"]
  lines += [f"- tasks: {', '.join(tasks)}", ""]
  lines += [
    "Protocol: for every task, data fraction and optimizer, the learning rate "
    "(and the optimizer's knob) is chosen on a validation split carved from "
    "the training set, with one tuning seed; the chosen setting is then run "
    "with the evaluation seeds, whose test metrics are reported (mean ± sd). "
    "Numbers come from this one run; a verdict needs the 95% interval to "
    "exclude zero.",
    "",
  ]
  for task in tasks:
    fractions = sorted({f for t, f in summary if t == task}, reverse=True)
    kind = next(iter(summary[(task, fractions[0])].values()))["kind"]
    metric = "test accuracy" if kind == "classification" else "test perplexity"
    opts = list(summary[(task, fractions[0])])
    lines += [
      f"## {task}: {metric} ({'higher' if kind == 'classification' else 'lower'} is better)",
      "",
    ]
    head = "| optimizer | " + " | ".join(f"{f:.0%} data" for f in fractions) + " |"
    lines += [head, "|---|" + "---:|" * len(fractions)]
    for o in opts:
      cells = [
        _pm(summary[(task, f)][o]["test_metric"], 3 if kind == "classification" else 2)
        if o in summary[(task, f)]
        else "-"
        for f in fractions
      ]
      lines.append(f"| {o} | " + " | ".join(cells) + " |")
    gap = "train − test accuracy" if kind == "classification" else "test − train loss (nats)"
    lines += [
      "",
      f"Generalisation gap ({gap}), sharpness (top Hessian eigenvalue) and "
      "gradient-noise statistics at the end, on all data:",
      "",
    ]
    f0 = fractions[0]
    lines += [
      "| optimizer | lr | knob | gap | sharpness | noise kurtosis | noise alpha (median layer) |",
      "|---|---:|---|---:|---:|---:|---:|",
    ]
    for o in opts:
      e = summary[(task, f0)][o]
      knob = f"{e['knob_name']}={e['knob']:g}" if e["knob_name"] else "-"
      lines.append(
        f"| {o} | {e['lr']:g} | {knob} | {_pm(e['gen_gap'])} | {_pm(e['sharpness'], 2)} | "
        f"{_pm(e['noise_kurtosis'], 1)} | {_pm(e['noise_alpha'], 2)} |"
      )
    lines.append("")
  lines += [
    "## HTGA against the best baseline",
    "",
    "Both chosen on validation; difference of test metrics, HTGA − baseline, "
    "paired by seed, with a 95% t-interval.",
    "",
    "| task | data | HTGA variant | best baseline | difference | 95% CI | verdict |",
    "|---|---:|---|---|---:|---|---|",
  ]
  order = {t: i for i, t in enumerate(tasks)}
  for c in sorted(comparisons, key=lambda c: (order.get(c["task"], 99), -c["fraction"])):
    ci = f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" if math.isfinite(c["ci_low"]) else "-"
    lines.append(
      f"| {c['task']} | {c['fraction']:.0%} | {c['htga']} | {c['baseline']} | "
      f"{c['difference']:+.4f} | {ci} | {c['verdict']} |"
    )
  lines += [
    "",
    "## Cost",
    "",
    "Median wall time per step of one model (the whole vmapped program's "
    "step divided by its models), on all data; peak process memory: "
    f"{meta.get('peak_rss_mb', float('nan')):.0f} MiB.",
    "",
    "| task | " + " | ".join(opts) + " |",
    "|---|" + "---:|" * len(opts),
  ]
  for task in tasks:
    f0 = max(f for t, f in summary if t == task)
    cells = [
      f"{summary[(task, f0)][o]['us_per_model_step'][0]:.0f} µs"
      if o in summary[(task, f0)]
      else "-"
      for o in opts
    ]
    lines.append(f"| {task} | " + " | ".join(cells) + " |")
  lines.append("")
  return "\n".join(lines)
