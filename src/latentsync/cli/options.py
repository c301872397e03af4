"""Options and argument types that several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_inference_options(p: argparse.ArgumentParser) -> None:
    from ..defaults import (
        DEFAULT_DETECT_EVERY,
        DEFAULT_GUIDANCE,
        DEFAULT_PRESET,
        DEFAULT_SEED,
        DEFAULT_STEPS,
        MIN_FACE_SCORE,
        X264_PRESETS,
    )

    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="denoising steps (default: %(default)s)")
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help="classifier-free guidance scale; 1 disables guidance and halves the UNet's work "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="noise seed (default: %(default)s)")
    g.add_argument("--scheduler", choices=["ddim", "dpm++"], default="ddim",
                   help="ddim: the published sampler; dpm++: DPM-Solver++, good with fewer steps (default: ddim)")
    g.add_argument("--deepcache", nargs="?", type=positive_int, const=3, default=0, metavar="N",
                   help="reuse the UNet's deep features: a full pass only every N steps (N=3 if not given, as the "
                        "published demo does); about 2x faster, slightly different output")
    g.add_argument("--batch-chunks", type=positive_int, default=1, metavar="N",
                   help="denoise N 16-frame chunks per UNet call: faster on a large GPU, same results, more "
                        "memory (default: 1)")
    g.add_argument("--low-memory", action="store_true",
                   help="for small GPUs: guidance's two branches one after the other, the UNet's feed-forward "
                        "in slices, the VAE and Whisper in host memory while idle; same results, somewhat "
                        "slower (1.6: about 3 GB of tensors at the peak instead of 4.7, `bench/vram_estimate.py`)")
    g = p.add_argument_group("video")
    g.add_argument("--face", default="largest",
                   help="which face to sync when there are several: largest (default), center, or N (the N-th "
                        "from the left, 0-based); it is then followed from frame to frame")
    g.add_argument("--detect-every", type=positive_int, default=DEFAULT_DETECT_EVERY, metavar="N",
                   help="run the face detector every N frames and follow the face with the landmark model in "
                        "between (faster; 1 detects on every frame, as published) (default: %(default)s)")
    g.add_argument("--face-threshold", type=fraction, default=MIN_FACE_SCORE, metavar="T",
                   help="the least detection score of a face, between 0 and 1 (default: %(default)s, as "
                        "published); lower it for stylised, anime or 3D faces, which the models were not "
                        "trained on")
    g.add_argument("--min-face-fraction", type=fraction, default=0.0, metavar="F",
                   help="fail (exit 2, no output) when fewer than this share of the frames have a face to sync, "
                        "e.g. 0.9; by default frames without a face are kept as they are and counted in the "
                        "summary")
    g.add_argument("--mask", type=Path, default=None, metavar="PNG",
                   help="the mouth mask: a square black-and-white image, black = regenerated (e.g. larger, with "
                        "the chin); default: the published mask.png the models were trained with")
    g.add_argument("--crf", type=int, default=18,
                   help="H.264 quality, lower is better (default: 18, visually lossless)")
    g.add_argument("--preset", choices=X264_PRESETS, default=DEFAULT_PRESET,
                   help="H.264 encoder speed: slower presets make smaller files at the same quality "
                        "(default: %(default)s)")
    g = add_hardware_options(p)
    g.add_argument("--channels-last", action="store_true",
                   help="convolution weights in channels-last (NHWC) layout, which GPU tensor cores prefer; same "
                        "results within rounding")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def add_hardware_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--device, --dtype, --compile and --face-backend (infer, demo, app); the group is returned for more."""
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                   help="auto: fp16 on CUDA, fp32 elsewhere (default: auto)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and the VAE decoder: a slow first chunk, faster afterwards")
    g.add_argument("--face-backend", choices=["auto", "insightface", "mediapipe"], default="auto",
                   help="auto: InsightFace (as published) when its ONNX files are in the checkpoints folder, "
                        "else mediapipe (works offline)")
    return g


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_model_choice(p: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--checkpoints, and --version or --unet-config (the group is returned for further choices)."""
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="weights folder (default: $LATENTSYNC_CHECKPOINTS or ./checkpoints)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", choices=["1.6", "1.5"], default=None,
                       help="1.6: 512 px faces, 1.5: 256 px (default: what `latentsync download` installed, "
                            "else 1.6)")
    which.add_argument("--unet-config", default=None, help="a UNet config YAML instead of --version")
    return which


def checkpoint_layout(args: argparse.Namespace):
    from ..weights import CheckpointLayout, default_checkpoints_dir

    return CheckpointLayout(args.checkpoints if args.checkpoints is not None else default_checkpoints_dir())


def print_result(data: dict, as_json: bool, text: str) -> None:
    import json

    print(json.dumps(data, indent=2) if as_json else text)


def check_device(name: str):
    from ..devices import resolve_device

    return resolve_device(name)
