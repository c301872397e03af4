"""`latentsync train`: the UNet and SyncNet trainers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_device_option, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the SyncNet or the UNet (resumable; torchrun for several GPUs)",
        usage="latentsync train {unet,syncnet} --config CONFIG [KEY=VALUE ...] [options]",
        description=(
            "Train with a config in the published layout, overriding values as key=value (e.g. run.seed=7 "
            "data.batch_size=4). The run folder holds the resolved config, full training states (with a "
            "'latest' pointer), published-format weights in exports/, metrics.jsonl and PNG charts. Run the "
            "same command again to continue a stopped run. Several GPUs or nodes: "
            "torchrun --nproc_per_node N -m latentsync train ..."
        ),
    )
    p.add_argument("model", choices=["unet", "syncnet"], help="unet: the lip-sync UNet; syncnet: StableSyncNet")
    p.add_argument("--config", required=True, help="a config YAML or packaged name (stage2, syncnet_16_pixel_attn)")
    # KEY=VALUE overrides may stand anywhere on the line; main() collects them (argparse cannot place a
    # variable-length positional between options).
    p.set_defaults(overrides=[])
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run folder (default: data.train_output_dir/<config name>)")
    p.add_argument("--resume", default="auto",
                   help="auto: continue the run folder's latest state if any (default); never: start over; or "
                        "the path of a training state")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this step (default: config)")
    p.add_argument("--data", type=Path, default=None, help="training clips (folder or files list) for this run")
    p.add_argument("--init-sd15", type=Path, default=None,
                   help="unet: start from a diffusers Stable Diffusion 1.5 UNet (stage 1)")
    p.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars and no closing line; metrics.jsonl and "
                                                        "the charts are written all the same")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..config import load_syncnet_config, load_unet_config

    name = Path(str(args.config)).stem
    if args.model == "unet":
        from ..training.train_unet import train_unet

        cfg = load_unet_config(args.config, args.overrides)
        run_dir = args.run_dir or Path(cfg.data.train_output_dir) / name
        result = train_unet(args.config, run_dir, overrides=args.overrides, resume=args.resume,
                            max_steps=args.max_steps, device=args.device, progress=not args.quiet,
                            checkpoints=args.checkpoints, init_sd15=args.init_sd15, data=args.data)
    else:
        from ..training.train_syncnet import train_syncnet

        cfg = load_syncnet_config(args.config, args.overrides)
        run_dir = args.run_dir or Path(cfg.data.train_output_dir) / name
        result = train_syncnet(args.config, run_dir, overrides=args.overrides, resume=args.resume,
                               max_steps=args.max_steps, device=args.device, progress=not args.quiet,
                               checkpoints=args.checkpoints, data=args.data)
    if not args.quiet:
        print(f"stopped at step {result.get('step')} in {run_dir}", file=sys.stderr)
    return 0
