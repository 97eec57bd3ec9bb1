"""Specification of htga_jax.experiments.report: selection, paired intervals, verdicts."""

import math

import numpy as np

from htga_jax.experiments import report


def test_paired_difference_known_answer():
  # d = [1, 2, 3, 4, 5]: mean 3, sd sqrt(2.5), se sqrt(0.5); t(0.975, 4) = 2.7764451.
  ci = report.paired_difference([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
  half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
  assert ci["mean"] == 3.0 and ci["n"] == 5
  np.testing.assert_allclose([ci["low"], ci["high"]], [3 - half, 3 + half], rtol=1e-6)
  assert math.isnan(report.paired_difference([1.0], [0.0])["low"])  # one pair: no interval
  assert math.isnan(report.paired_difference([1.0, math.nan], [0.0, 0.0])["low"])


def rows_for(task, kind, values, fraction=1.0):
  """Final-phase rows: values[opt] = (family, [test metric per seed], val metric)."""
  rows = []
  for opt, (family, tests, val) in values.items():
    for seed, t in enumerate(tests):
      rows.append(
        dict(
          task=task,
          kind=kind,
          fraction=fraction,
          optimizer=opt,
          family=family,
          phase="final",
          seed=seed,
          lr=0.1,
          knob=math.nan,
          knob_name="",
          test_metric=t,
          val_metric=val,
          train_loss=0.1,
          gen_gap=0.0,
          sharpness=1.0,
          noise_kurtosis=0.0,
          noise_alpha=3.0,
          us_per_model_step=10.0,
          diverged=False,
        )
      )
  return rows


def test_verdicts_follow_the_interval_and_the_metric_direction():
  base = [0.80, 0.82, 0.81, 0.79, 0.80]
  cases = {
    "better": [b + 0.05 + 0.001 * i for i, b in enumerate(base)],
    "worse": [b - 0.05 + 0.001 * i for i, b in enumerate(base)],
    "none": [b + (0.01 if i % 2 else -0.01) for i, b in enumerate(base)],
  }
  expected = {"better": "HTGA better", "worse": "HTGA worse", "none": "no significant difference"}
  for name, htga in cases.items():
    rows = rows_for(
      "t",
      "classification",
      {
        "htga": ("htga", htga, 0.9),
        "sgd": ("baseline", base, 0.5),
        "adam": ("baseline", [0.99] * 5, 0.4),  # best on test, worse on validation
      },
    )
    (c,) = report.compare(rows)
    assert c["baseline"] == "sgd"  # chosen on validation, never on test
    assert c["verdict"] == expected[name], (name, c)
  # Perplexity: lower is better, so a negative difference is a win.
  rows = rows_for(
    "lm",
    "lm",
    {
      "htga_adam": ("htga", [9.0, 9.1, 9.05, 8.95, 9.0], 9.0),
      "adam": ("baseline", [10.0, 10.1, 10.0, 9.9, 10.05], 10.0),
    },
  )
  (c,) = report.compare(rows)
  assert c["difference"] < 0 and c["verdict"] == "HTGA better"


def test_selection_prefers_best_validation_and_treats_divergence_as_worst():
  rows = [
    dict(lr=0.1, knob=1.0, val_metric=0.7),
    dict(lr=0.01, knob=1.0, val_metric=0.8),
    dict(lr=1.0, knob=1.0, val_metric=math.nan),  # diverged
  ]
  assert report.select_config(rows, "higher") == (0.01, 1.0)
  assert report.select_config(rows, "lower") == (0.1, 1.0)


def test_markdown_summary_has_tables_and_comparisons():
  rows = rows_for(
    "t",
    "classification",
    {"htga": ("htga", [0.8, 0.81, 0.82], 0.9), "sgd": ("baseline", [0.79, 0.8, 0.8], 0.5)},
  )
  text = report.markdown_summary(rows, {"tasks": ["t"], "peak_rss_mb": 100.0})
  assert "## t: test accuracy" in text and "| htga | 0.810 ± 0.010 |" in text
  assert "## HTGA against the best baseline" in text and "| t | 100% | htga | sgd |" in text
