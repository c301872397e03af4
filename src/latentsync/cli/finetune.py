"""`latentsync finetune`: raw videos in, a fine-tuned model out (data pipeline, stage-2 training, export)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import FINETUNE_STEPS, LORA_RANK
from .options import add_device_option, add_model_choice, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune the published UNet on your own videos (LoRA by default), resumable",
        usage="latentsync finetune RAW_DIR --out RUN_DIR [options] [KEY=VALUE ...]",
        description=(
            "From a folder of raw talking-head videos to a fine-tuned model in one command: the data pipeline "
            "(as latentsync preprocess) into RUN_DIR/data, stage-2 training from the published UNet of the "
            "version into RUN_DIR/train (a LoRA adapter, or --full), then the best save (by the validation "
            "clip's sync confidence, else the last) exported as RUN_DIR/adapter.safetensors (use it with "
            "latentsync infer --lora) or RUN_DIR/latentsync_unet.pt (--full, or --merge; use it with --unet). "
            "Run the same command again after any stop and it goes on where it stopped; a larger --steps "
            "trains on. KEY=VALUE items override the UNet config (optimizer.lr=5e-5, data.batch_size=2, "
            "run.trepa_loss_weight=0 to save memory); preprocess.KEY=VALUE ones the data pipeline "
            "(preprocess.sync_conf_threshold=2.5). Needs the training weights (latentsync download --with "
            "training) and peft for LoRA (pip install 'latentsync[finetune]')."
        ),
    )
    p.add_argument("raw_dir", type=Path, metavar="RAW_DIR", help="folder of videos (searched recursively); "
                                                                 "never modified")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                   help="the run folder: data, training state, exports (rerun with the same one to resume)")
    p.set_defaults(overrides=[])  # KEY=VALUE items anywhere on the line: main() collects them
    add_model_choice(p, lora=False)  # the published model to start from, or --unet PATH another base UNet
    how = p.add_mutually_exclusive_group()
    how.add_argument("--lora-rank", type=positive_int, default=LORA_RANK, metavar="R",
                     help="the LoRA adapter's rank, on the attention and feed-forward projections (default: "
                          "%(default)s)")
    how.add_argument("--full", action="store_true",
                     help="train the stage-2 modules (temporal layers and attention) instead of an adapter, as "
                          "latentsync train unet does (an estimated 20 GB of GPU memory at 256 px, 30 GB at 512, "
                          "against LoRA's 10 and 22)")
    p.add_argument("--steps", type=positive_int, default=FINETUNE_STEPS,
                   help="train to this step (default: %(default)s); rerun with more to go on")
    p.add_argument("--val-clip", type=Path, default=None, metavar="VIDEO",
                   help="a held-out video lip-synced at every save (with --val-audio); its sync confidence "
                        "picks the exported step when the evaluation SyncNet is in the checkpoints folder")
    p.add_argument("--val-audio", type=Path, default=None, metavar="AUDIO", help="the speech for --val-clip")
    p.add_argument("--merge", action="store_true",
                   help="also write the adapter merged into the published format (RUN_DIR/latentsync_unet.pt)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="the data pipeline's worker processes (default: %(default)s)")
    add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from ..finetune import finetune

    result = finetune(args.raw_dir, args.out, version=args.version, unet_config=args.unet_config, unet=args.unet,
                      checkpoints=args.checkpoints, lora_rank=args.lora_rank, full=args.full, steps=args.steps,
                      val_clip=args.val_clip, val_audio=args.val_audio, merge=args.merge, overrides=args.overrides,
                      device=args.device, workers=args.workers, progress=not args.quiet)
    if not args.quiet:
        made = [str(p) for p in (result.adapter, result.unet) if p is not None]
        print(f"fine-tuned on {result.clips} clips to step {result.step}; step {result.exported_step} exported: "
              f"{', '.join(made)}", file=sys.stderr)
        if result.adapter is not None:
            print(f"use it: latentsync infer --lora {result.adapter} --video V --audio A --out O", file=sys.stderr)
    return 0
