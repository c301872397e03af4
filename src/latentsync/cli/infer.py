"""`latentsync infer`: lip-sync a video to a speech track (and the job runner `demo` shares)."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .options import add_inference_options, add_model_choice, flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="lip-sync a video to an audio track",
        description=(
            "Regenerate the mouth in VIDEO to match AUDIO and write OUT. The output runs at 25 fps with one frame "
            "per 40 ms of audio plus two, as published (3.0 s of audio give 77 frames): a shorter video is "
            "looped (--loop), a longer one cut (--trim). Frames without a face are kept as they are. The audio "
            "of OUT is AUDIO itself (not a 16 kHz copy). The original's flags (--video_path, --audio_path, "
            "--video_out_path, --inference_steps, --guidance_scale, --seed, --unet_config_path, "
            "--inference_ckpt_path, --enable_deepcache) are accepted too."
        ),
    )
    p.add_argument(*flags("--video"), dest="video", type=Path, required=True,
                   help="input video (any format FFmpeg reads), or a still image")
    p.add_argument(*flags("--audio"), dest="audio", type=Path, required=True,
                   help="speech: an audio file, or a video with sound")
    p.add_argument(*flags("--out"), dest="out", type=Path, required=True, help="output video (.mp4, .mov or .mkv)")
    p.add_argument("--temp_dir", help=argparse.SUPPRESS)  # the original's; we write no temporary frames
    add_model_choice(p)
    add_inference_options(p)
    p.set_defaults(func=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from ..face.mask import mask_image
    from ..inference import LipSync, check_inputs

    options = job_options(args)  # every option checked before minutes of model loading
    check_inputs(args.video, args.audio, args.out)
    mask_image(args.mask)
    lipsync = LipSync(args.checkpoints, version=args.version, unet_config=args.unet_config, device=args.device,
                      dtype=args.dtype, face_backend=args.face_backend, compile=args.compile,
                      channels_last=args.channels_last, offload=args.low_memory, unet=args.unet, lora=args.lora,
                      lora_scale=args.lora_scale)
    return run_job(lipsync, args.video, args.audio, args.out, options, args)


def job_options(args: argparse.Namespace):
    """The job's `InferenceOptions` from the command line, checked (an unusable one: a ConfigError naming its
    flag). A seed of -1 is drawn at random and printed, as the original's -1 is."""
    from ..errors import ConfigError, OptionError
    from ..inference import InferenceOptions

    seed = args.seed
    if seed == -1:
        seed = random.randrange(2**31)
        if not args.quiet:
            print(f"seed: {seed}", file=sys.stderr)
    options = InferenceOptions(steps=args.steps, guidance=args.guidance, seed=seed, scheduler=args.scheduler,
                               deepcache=args.deepcache, batch_chunks=args.batch_chunks,
                               low_memory=args.low_memory, face=args.face, crf=args.crf, preset=args.preset,
                               detect_every=args.detect_every, mask=args.mask, face_threshold=args.face_threshold,
                               min_face_fraction=args.min_face_fraction, loop=args.loop, trim=args.trim)
    try:
        return options.check()
    except OptionError as e:
        raise ConfigError(f"--{e.option.replace('_', '-')}: {e.reason}") from None


def run_job(lipsync, video: Path, audio: Path, out: Path, options, args: argparse.Namespace) -> int:
    if args.compile and lipsync.device.type == "cpu" and not args.quiet:
        print("note: --compile on the CPU spends minutes compiling; it pays off on long videos on a GPU",
              file=sys.stderr)
    if not args.quiet:
        print(f"faces: {lipsync.face_backend} backend; {lipsync.resolution} px; {lipsync.device}, "
              f"{str(lipsync.dtype).removeprefix('torch.')}", file=sys.stderr)
    result = lipsync.run(video, audio, out, options, progress=not args.quiet)
    if not args.quiet:
        busy = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        missing = f" ({result.missing_summary()})" if result.frames_without_face else ""
        print(f"wrote {result.output}: {result.frames} frames{missing}; {busy}", file=sys.stderr)
    return 0
