"""`latentsync preprocess` and `latentsync fileslist`: the data pipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import check_device, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="turn raw talking-head videos into training clips (7 resumable steps)",
        description=(
            "Runs, in order: check (reject broken videos), resample (25 fps, 16 kHz; the picture is copied when "
            "it already is 25 fps), shots (PySceneDetect), segments (5-10 s), align (faces as inference aligns "
            "them), sync (joonson SyncNet confidence and offset; the sound is moved to offset 0), quality "
            "(hyperIQA). Interrupt it at any time and run it again: finished work is kept. Nothing in INPUT_DIR "
            "is modified. Thresholds: configs/preprocess.yaml, or --set key=value."
        ),
    )
    p.add_argument("input_dir", type=Path, help="folder of videos (searched recursively)")
    p.add_argument("output_dir", type=Path, help="where clips, state and the manifest go")
    p.add_argument("--resolution", type=int, choices=[256, 512], default=None,
                   help="aligned face size: 256 for LatentSync 1.5, 512 for 1.6 (default: the config's, 256)")
    p.add_argument("--steps", default=None,
                   help="comma-separated subset of check,resample,shots,segments,align,sync,quality (default: all)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel worker processes (default: 1)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run the steps as Ray tasks: 'auto' starts a local cluster, an address joins one")
    p.add_argument("--config", type=Path, default=None, help="a preprocess YAML (default: configs/preprocess.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sync_conf_threshold=2.5 (repeatable)")
    p.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    p.add_argument("--device", default="auto", help="where the model-based steps run (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.set_defaults(func=_run_preprocess)

    f = sub.add_parser("fileslist", help="print the training clips a preprocess run kept, one per line",
                       description="Prints the paths of the clips that passed every step of `latentsync "
                                   "preprocess OUTPUT_DIR`, one per line (for data.train_fileslist).")
    f.add_argument("output_dir", type=Path, help="the OUTPUT_DIR of a `latentsync preprocess` run")
    f.set_defaults(func=_run_fileslist)


def _run_preprocess(args: argparse.Namespace) -> int:
    from ..config import load_preprocess_config
    from ..preprocess.runner import Runner
    from ..weights import default_checkpoints_dir

    overrides = list(args.overrides) + ([f"resolution={args.resolution}"] if args.resolution else [])
    config = load_preprocess_config(args.config, overrides)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    runner = Runner(args.input_dir, args.output_dir, config, steps=steps, workers=args.workers,
                    device=str(check_device(args.device)), ray=args.ray, progress=not args.quiet,
                    checkpoints=args.checkpoints or default_checkpoints_dir())
    summary = runner.run()
    if not args.quiet:
        print(summary.format(), file=sys.stderr)
    for step, item, error in summary.failures[:5]:  # internal errors: shown even with --quiet
        print(f"failed at {step}: {item}: {error.splitlines()[0]} (retried on the next run)", file=sys.stderr)
    return 1 if summary.failures else 0


def _run_fileslist(args: argparse.Namespace) -> int:
    from ..preprocess.runner import passed_clips

    for path in passed_clips(args.output_dir):
        print(path)
    return 0
