"""Command line for the study: ``python -m htga_jax.experiments`` or ``htga-study``.

htga-study                          # the default study, embedded datasets
htga-study --quick                  # a smoke run (about a minute)
htga-study --tasks mnist1d --fractions 1 0.1 --optimizers sgd htga --seeds 3
htga-study --tasks cifar10 --data-dir ~/data --steps 20000
htga-study --noise-scale 1 --noise-alpha 1.5 --noise-ratio 0.5
htga-study --config study.json      # flags given on the command line win
"""

from __future__ import annotations

import argparse
import json
import sys

from htga_jax.experiments import grid, study
from htga_jax.experiments.registry import STUDY_OPTIMIZERS
from htga_jax.experiments.tasks import DEFAULT_TASKS, TASKS


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="htga-study",
    description="Compare HTGA with SGD, momentum, Adam, clipped SGD, normalized SGD and "
    "TailOPT across tasks, data fractions and seeds; write tables and plots.",
    epilog=__doc__.split("\n\n")[1],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--out", default="runs/study", help="run directory (default runs/study)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
  p.add_argument("--config", metavar="JSON", help="study settings as JSON (StudyConfig fields)")
  p.add_argument("--quick", action="store_true", help="smoke run: 2 fractions, 2 seeds, 50 steps")
  p.add_argument(
    "--tasks", nargs="+", choices=sorted(TASKS), help=f"default: {' '.join(DEFAULT_TASKS)}"
  )
  p.add_argument("--fractions", nargs="+", type=float, help="default: 1 0.3 0.2 0.1")
  p.add_argument("--optimizers", nargs="+", choices=list(STUDY_OPTIMIZERS), help="default: all")
  p.add_argument("--seeds", type=int, help="evaluation seeds (default 5)")
  p.add_argument("--steps", type=int, help="training steps for every task (default per task)")
  p.add_argument("--batch-size", type=int, help="batch size for every task (default per task)")
  p.add_argument("--lr-grid", nargs="+", type=float, help="default: 0.001 0.01 0.1")
  p.add_argument("--no-knob", action="store_true", help="tune the learning rate only")
  p.add_argument("--noise-scale", type=float, help="inject gradient noise of this size x RMS")
  p.add_argument("--noise-alpha", type=float, help="its stable index (default 1.5)")
  p.add_argument("--noise-ratio", type=float, help="its heavy-to-Gaussian weight (default 0.5)")
  p.add_argument("--label-noise", type=float, help="fraction of training labels flipped")
  p.add_argument("--data-dir", help="directory holding CIFAR / WikiText-2 / PTB")
  p.add_argument("--no-measure", action="store_true", help="skip sharpness and noise statistics")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return p


def config_from(args: argparse.Namespace) -> study.StudyConfig:
  """Defaults, then the JSON config, then the flags given."""
  settings = {}
  if args.config:
    with open(args.config) as fh:
      settings = json.load(fh)
    if "noise" in settings:
      settings["noise"] = grid.NoiseConfig(**settings["noise"])
    for key in ("tasks", "fractions", "optimizers", "lr_grid"):
      if key in settings:
        settings[key] = tuple(settings[key])
  flags = {
    "tasks": args.tasks,
    "fractions": args.fractions,
    "optimizers": args.optimizers,
    "seeds": args.seeds,
    "steps": args.steps,
    "batch_size": args.batch_size,
    "lr_grid": args.lr_grid,
    "label_noise": args.label_noise,
    "data_dir": args.data_dir,
  }
  for key, value in flags.items():
    if value is not None:
      settings[key] = tuple(value) if isinstance(value, list) else value
  if args.no_knob:
    settings["tune_knob"] = False
  if args.no_measure:
    settings["measure"] = False
  noise = settings.get("noise", grid.NoiseConfig())
  noise_flags = {"scale": args.noise_scale, "alpha": args.noise_alpha, "ratio": args.noise_ratio}
  settings["noise"] = grid.NoiseConfig(
    **{**vars(noise), **{k: v for k, v in noise_flags.items() if v is not None}}
  )
  return study.quick_config(**settings) if args.quick else study.StudyConfig(**settings)


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    cfg = config_from(args)
    result = study.run_study(cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
  except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
    print(f"htga-study: error: {e}", file=sys.stderr)
    return 2
  print(
    f"wrote {result['dir']}: results.csv, results.json, summary.md and "
    f"{len(result['figures'])} figures"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
