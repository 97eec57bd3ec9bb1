"""The study end to end: every task and optimizer, outputs, determinism, failures, CLI."""

import csv
import json
import math

import pytest

from htga_jax.experiments import NoiseConfig, StudyConfig, run_study
from htga_jax.experiments import __main__ as cli
from htga_jax.experiments.registry import STUDY_OPTIMIZERS
from htga_jax.experiments.tasks import TASKS
from tests import datafiles

TINY = dict(steps=2, seeds=2, lr_grid=(0.01,), fractions=(1.0,), batch_size=8)


def finals(rows):
  return [r for r in rows if r["phase"] == "final"]


def test_every_optimizer_end_to_end_with_outputs(tmp_path):
  out = tmp_path / "run"
  cfg = StudyConfig(
    tasks=("mnist1d",),
    **{**TINY, "fractions": (1.0, 0.5)},
    noise=NoiseConfig(alpha=1.5, ratio=0.5, scale=0.5),
    label_noise=0.1,
  )
  result = run_study(cfg, out, progress=False)
  rows = result["rows"]
  assert {r["optimizer"] for r in rows} == set(STUDY_OPTIMIZERS)
  # One row per trained model: the tuning grid (one seed) and the final seeds.
  for opt, spec in STUDY_OPTIMIZERS.items():
    tuned = [
      r for r in rows if r["optimizer"] == opt and r["phase"] == "tune" and r["fraction"] == 1.0
    ]
    assert len(tuned) == (len(spec.knob_grid) if spec.knob else 1)
    assert len([r for r in finals(rows) if r["optimizer"] == opt and r["fraction"] == 1.0]) == 2
  for r in finals(rows):
    assert math.isfinite(r["test_metric"]) and math.isfinite(r["sharpness"])
    assert r["grad_noise_scale"] == 0.5 and r["label_noise"] == 0.1
  # The same training subset for every optimizer at a fraction.
  for f in (1.0, 0.5):
    assert len({r["n_train"] for r in rows if r["fraction"] == f}) == 1
  names = sorted(p.name for p in out.iterdir())
  for expected in (
    "config.json",
    "results.csv",
    "results.json",
    "summary.md",
    "loss_curves_mnist1d.png",
    "metric_vs_fraction_mnist1d.png",
    "tail_index_mnist1d.png",
  ):
    assert expected in names
  with open(out / "results.csv") as fh:
    assert len(list(csv.DictReader(fh))) == len(rows)
  curves = json.loads((out / "curves.json").read_text())
  c = curves["mnist1d/1/htga"]
  assert len(c["step"]) == len(c["train_loss"]) and len(c["train_loss"][0]) == 2  # seeds
  assert "hidden/0/kernel" in c["alpha"]  # HTGA runs record per-layer alpha ...
  assert curves["mnist1d/1/sgd"]["alpha"] == {}  # ... the others have none
  assert "## HTGA against the best baseline" in (out / "summary.md").read_text()
  assert not list(tmp_path.glob("*.partial-*"))  # nothing left behind


def test_every_task_end_to_end(tmp_path):
  datafiles.write_cifar10(tmp_path / "data")
  datafiles.write_cifar100(tmp_path / "data")
  datafiles.write_wikitext2(tmp_path / "data")
  datafiles.write_ptb(tmp_path / "data" / "ptb")
  tasks = tuple(t for t in TASKS if t != "mnist1d")
  # One optimizer keeps this under a minute or two on 2 cores (it compiles
  # every model); every optimizer runs end to end in the test above.
  cfg = StudyConfig(
    tasks=tasks,
    optimizers=("htga_adam",),
    data_dir=str(tmp_path / "data"),
    measure=False,
    **TINY,
  )
  rows = run_study(cfg, tmp_path / "run", progress=False)["rows"]
  assert {r["task"] for r in rows} == set(tasks)
  for r in finals(rows):
    assert math.isfinite(r["test_metric"]), r
    if r["kind"] == "lm":
      assert r["test_metric"] > 1 and math.isfinite(r["bits_per_token"])


def test_same_seed_same_numbers(tmp_path):
  cfg = StudyConfig(tasks=("mnist1d",), optimizers=("sgd", "htga"), **{**TINY, "steps": 3})
  a = run_study(cfg, tmp_path / "a", progress=False)["rows"]
  b = run_study(cfg, tmp_path / "b", progress=False)["rows"]
  keys = ("test_metric", "val_metric", "train_loss", "sharpness", "noise_kurtosis")
  for ra, rb in zip(a, b, strict=True):
    for k in keys:
      assert ra[k] == rb[k] or (math.isnan(ra[k]) and math.isnan(rb[k])), (k, ra[k], rb[k])


def test_missing_or_malformed_data_fail_before_anything_is_written(tmp_path):
  out = tmp_path / "run"
  with pytest.raises(FileNotFoundError, match="--data-dir"):
    run_study(StudyConfig(tasks=("cifar10",), **TINY), out, progress=False)
  folder = datafiles.write_cifar10(tmp_path / "data")
  (folder / "data_batch_2.bin").write_bytes(b"\x01" * 100)
  with pytest.raises(ValueError, match="data_batch_2.bin"):
    run_study(
      StudyConfig(tasks=("mnist1d", "cifar10"), data_dir=str(tmp_path / "data"), **TINY),
      out,
      progress=False,
    )
  assert not out.exists() and not list(tmp_path.glob("*.partial-*"))


def test_existing_run_directory_is_not_overwritten_silently(tmp_path):
  out = tmp_path / "run"
  out.mkdir()
  (out / "keep.txt").write_text("earlier results")
  cfg = StudyConfig(tasks=("mnist1d",), optimizers=("sgd",), measure=False, **TINY)
  with pytest.raises(FileExistsError, match="overwrite"):
    run_study(cfg, out, progress=False)
  assert (out / "keep.txt").read_text() == "earlier results"
  run_study(cfg, out, overwrite=True, progress=False)
  assert not (out / "keep.txt").exists() and (out / "summary.md").exists()


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(tasks=("imagenet",)), "tasks"),
    (dict(optimizers=("lion",)), "optimizers"),
    (dict(fractions=(0.0,)), "fractions"),
    (dict(fractions=(0.5, 0.5)), "repeat"),
    (dict(seeds=0), "seeds"),
    (dict(lr_grid=(-0.1,)), "lr_grid"),
    (dict(label_noise=1.0), "label_noise"),
    (dict(noise=NoiseConfig(alpha=2.5, scale=1.0)), "noise"),
    (dict(tuning_seed=2), "tuning_seed"),
  ],
)
def test_bad_settings_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    StudyConfig(**kwargs)


def test_command_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  assert cli.main(["--fractions", "1.5", "--out", str(tmp_path / "x")]) == 2
  assert "fractions must be in (0, 1]" in capsys.readouterr().err
  config = tmp_path / "study.json"
  config.write_text(
    json.dumps(
      {
        "tasks": ["mnist1d"],
        "optimizers": ["sgd"],
        "seeds": 2,
        "steps": 2,
        "lr_grid": [0.01],
        "measure": False,
        "noise": {"scale": 0.2},
      }
    )
  )
  args = cli.parser().parse_args(["--config", str(config), "--fractions", "1", "0.5", "--quick"])
  cfg = cli.config_from(args)
  assert cfg.fractions == (1.0, 0.5) and cfg.optimizers == ("sgd",) and cfg.noise.scale == 0.2
  assert (
    cli.main(
      ["--config", str(config), "--fractions", "1", "--out", str(tmp_path / "r"), "--no-progress"]
    )
    == 0
  )
  assert "wrote" in capsys.readouterr().out and (tmp_path / "r" / "summary.md").exists()
