"""Options and argument types that several subcommands share."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

# The original's `scripts/inference.py` flags, accepted as aliases of ours so that its users' scripts keep
# working; `--help` lists only ours (README, "Compatibility notes").
ORIGINAL_FLAGS = {
    "--video_path": "--video", "--audio_path": "--audio", "--video_out_path": "--out",
    "--inference_steps": "--steps", "--guidance_scale": "--guidance", "--seed": "--seed",
    "--unet_config_path": "--unet-config", "--inference_ckpt_path": "--unet", "--enable_deepcache": "--deepcache",
}
ALIASES = {ours: [theirs for theirs, o in ORIGINAL_FLAGS.items() if o == ours and theirs != ours]
           for ours in set(ORIGINAL_FLAGS.values())}


def flags(name: str) -> list[str]:
    """`name` and the original's spelling of it, if any (`ORIGINAL_FLAGS`)."""
    return [name, *ALIASES.get(name, [])]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own layout, with the original's flag spellings left out of the option lists."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = [s for s in action.option_strings if s in ORIGINAL_FLAGS and s not in ALIASES]
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)


def add_inference_options(p: argparse.ArgumentParser) -> None:
    from ..defaults import (
        DEFAULT_CRF,
        DEFAULT_DETECT_EVERY,
        DEFAULT_GUIDANCE,
        DEFAULT_PRESET,
        DEFAULT_SEED,
        DEFAULT_STEPS,
        LOOP_MODES,
        MAX_CRF,
        MIN_FACE_SCORE,
        TRIM_MODES,
        X264_PRESETS,
    )

    g = p.add_argument_group("sampling")
    g.add_argument(*flags("--steps"), dest="steps", type=positive_int, default=DEFAULT_STEPS,
                   help="denoising steps (default: %(default)s)")
    g.add_argument(*flags("--guidance"), dest="guidance", type=at_least_one, default=DEFAULT_GUIDANCE,
                   help="classifier-free guidance scale; 1 disables guidance and halves the UNet's work "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="noise seed; -1 draws one and prints it, as the original does (default: %(default)s)")
    g.add_argument("--scheduler", choices=["ddim", "dpm++"], default="ddim",
                   help="ddim: the published sampler; dpm++: DPM-Solver++, good with fewer steps (default: ddim)")
    g.add_argument(*flags("--deepcache"), dest="deepcache", nargs="?", type=positive_int, const=3, default=0,
                   metavar="N",
                   help="reuse the UNet's deep features: a full pass only every N steps (N=3 if not given, as the "
                        "published demo does); about 2x faster, slightly different output (default: off)")
    g.add_argument("--batch-chunks", type=positive_int, default=1, metavar="N",
                   help="denoise N 16-frame chunks per UNet call: faster on a large GPU, same results, more "
                        "memory (default: 1)")
    g.add_argument("--low-memory", action="store_true",
                   help="for small GPUs: guidance's two branches one after the other, the UNet's feed-forward "
                        "in slices, the VAE and Whisper in host memory while idle; same results, somewhat "
                        "slower (1.6: about 3 GB of tensors at the peak instead of 4.7, `bench/vram_estimate.py`)")
    g = p.add_argument_group("video")
    g.add_argument("--face", type=face_rule, default="largest",
                   help="which face to sync when there are several: largest (default), center, or N (the N-th "
                        "from the left, 0-based); it is then followed from frame to frame")
    g.add_argument("--loop", choices=LOOP_MODES, default="pingpong",
                   help="a video shorter than the audio: pingpong plays it forward, backward, forward, ... (as "
                        "published), repeat starts it again, freeze holds its last frame (default: %(default)s)")
    g.add_argument("--trim", choices=TRIM_MODES, default="audio",
                   help="a video longer than the audio: audio cuts it where the speech ends (as published), video "
                        "keeps all of it and pads the speech with silence, the mouth closed (default: %(default)s)")
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
    g.add_argument("--crf", type=crf, default=DEFAULT_CRF,
                   help=f"H.264 constant rate factor, 0 (lossless) to {MAX_CRF}: lower is better quality and "
                        "larger files (default: %(default)s, visually lossless)")
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
    add_device_option(g)
    g.add_argument("--dtype", choices=["auto", "fp16", "bf16", "fp32"], default="auto",
                   help="auto: fp16 on CUDA, fp32 elsewhere (default: auto)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and the VAE decoder: a slow first chunk, faster afterwards")
    add_face_backend_option(g)
    return g


def add_device_option(p) -> None:
    p.add_argument("--device", default="auto",
                   help="where the networks run: auto (CUDA if there is a GPU, else Apple's MPS, else the CPU), "
                        "cpu, cuda, cuda:1, mps (default: auto)")


def add_face_backend_option(p) -> None:
    p.add_argument("--face-backend", choices=["auto", "insightface", "mediapipe"], default="auto",
                   help="auto: InsightFace (as published) when its ONNX files are in the checkpoints folder, "
                        "else mediapipe (works offline) (default: auto)")


def add_json_option(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_crop_option(p) -> None:
    p.add_argument("--crop", choices=["face", "center", "none"], default="face",
                   help="what the network sees of each frame: face (the face box found by mediapipe, as "
                        "LatentSync's evaluation crops), center (a centred square) or none (the whole frame) "
                        "(default: face)")


def at_least_one(text: str) -> float:
    value = float(text)
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (1: no guidance), got {text}")
    return value


def crf(text: str) -> int:
    from ..defaults import MAX_CRF

    value = int(text)
    if not 0 <= value <= MAX_CRF:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_CRF}, got {value}")
    return value


def face_rule(text: str) -> str:
    if text not in ("largest", "center") and not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected largest, center or N (0-based from the left), got {text!r}")
    return text


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


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


def add_model_choice(p: argparse.ArgumentParser, lora: bool = True) -> argparse._MutuallyExclusiveGroup:
    """--checkpoints, --version or --unet-config (the group is returned for further choices), --unet, and with
    `lora` --lora and --lora-scale."""
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="weights folder (default: $LATENTSYNC_CHECKPOINTS or ./checkpoints)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", choices=["1.6", "1.5"], default=None,
                       help="1.6: 512 px faces, 1.5: 256 px (default: what `latentsync download` installed, "
                            "else 1.6)")
    which.add_argument(*flags("--unet-config"), dest="unet_config", default=None,
                       help="a UNet config YAML instead of --version")
    p.add_argument(*flags("--unet"), dest="unet", type=Path, default=None, metavar="PATH",
                   help="a UNet checkpoint (latentsync_unet.pt format) to use instead of the checkpoints folder's, "
                        "e.g. your own fine-tuned one; give --unet-config or --version to match its architecture")
    if not lora:
        return which
    p.add_argument("--lora", type=Path, default=None, metavar="ADAPTER",
                   help="a LoRA adapter (latentsync finetune's adapter.safetensors) applied to the UNet without "
                        "merging; refused when it was trained on another UNet file (needs: pip install peft)")
    p.add_argument("--lora-scale", type=float, default=1.0, metavar="S",
                   help="how much of the adapter's update to apply: 1 as trained, 0 none (default: %(default)s)")
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
