"""`latentsync infer`: lip-sync a video to a speech track (and the job runner `demo` shares)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_inference_options, add_model_choice


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="lip-sync a video to an audio track",
        description=(
            "Regenerate the mouth in VIDEO to match AUDIO and write OUT. The output has one frame per 40 ms of "
            "audio at 25 fps: a shorter video is looped forward and backward, a longer one is cut. Frames "
            "without a face are kept as they are. The audio of OUT is AUDIO itself (not a 16 kHz copy)."
        ),
    )
    p.add_argument("--video", type=Path, required=True, help="input video (any format FFmpeg reads)")
    p.add_argument("--audio", type=Path, required=True, help="speech: an audio file, or a video with sound")
    p.add_argument("--out", type=Path, required=True, help="output video (.mp4, .mov or .mkv)")
    add_model_choice(p)
    add_inference_options(p)
    p.set_defaults(func=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from ..face.mask import mask_image
    from ..inference import LipSync, check_inputs

    check_inputs(args.video, args.audio, args.out)  # before minutes of model loading
    mask_image(args.mask)
    lipsync = LipSync(args.checkpoints, version=args.version, unet_config=args.unet_config, device=args.device,
                      dtype=args.dtype, face_backend=args.face_backend, compile=args.compile,
                      channels_last=args.channels_last, offload=args.low_memory)
    return run_job(lipsync, args.video, args.audio, args.out, args)


def run_job(lipsync, video: Path, audio: Path, out: Path, args: argparse.Namespace) -> int:
    from ..inference import InferenceOptions

    if args.compile and lipsync.device.type == "cpu" and not args.quiet:
        print("note: --compile on the CPU spends minutes compiling; it pays off on long videos on a GPU",
              file=sys.stderr)

    options = InferenceOptions(steps=args.steps, guidance=args.guidance, seed=args.seed, scheduler=args.scheduler,
                               deepcache=args.deepcache, batch_chunks=args.batch_chunks,
                               low_memory=args.low_memory, face=args.face, crf=args.crf, preset=args.preset,
                               detect_every=args.detect_every, mask=args.mask, face_threshold=args.face_threshold,
                               min_face_fraction=args.min_face_fraction)
    if not args.quiet:
        print(f"faces: {lipsync.face_backend} backend; {lipsync.resolution} px; {lipsync.device}, "
              f"{str(lipsync.dtype).removeprefix('torch.')}", file=sys.stderr)
    result = lipsync.run(video, audio, out, options, progress=not args.quiet)
    if not args.quiet:
        busy = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        missing = f" ({result.missing_summary()})" if result.frames_without_face else ""
        print(f"wrote {result.output}: {result.frames} frames{missing}; {busy}", file=sys.stderr)
    return 0
