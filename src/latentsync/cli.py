"""The `latentsync` command: one entry with subcommands, each a thin adapter over a library call.

Errors the user can cause (missing files, bad configs, unusable media) are reported in one line on stderr with
exit status 2; anything else is a bug and keeps its traceback. Ctrl-C exits with 130 and SIGTERM with 143,
both after the same clean-up (no temporary file is left).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .errors import LatentSyncError


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the published weights into the checkpoints folder",
        description=(
            "Download the published LatentSync weights from the Hugging Face Hub into one layout that every "
            "other command reads by default: latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt, "
            "sd-vae-ft-mse/ and auxiliary/. Files already present are kept. Without network access it names "
            "each missing file and where to put it."
        ),
    )
    p.add_argument("--version", choices=["1.6", "1.5"], default="1.6",
                   help="1.6: 512 px faces (sharper, needs ~18 GB VRAM); 1.5: 256 px (default: %(default)s)")
    p.add_argument("--dir", type=Path, default=None,
                   help="checkpoints folder (default: $LATENTSYNC_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--with", dest="groups", action="append", default=[],
                   choices=["training", "eval", "insightface", "all"],
                   help="also fetch the weights for training, evaluation, or the InsightFace aligner (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from .weights import default_checkpoints_dir, download

    root = args.dir if args.dir is not None else default_checkpoints_dir()
    groups = ["inference", *args.groups]
    paths = download(version=args.version, root=root, groups=groups, progress=not args.quiet)
    if not args.quiet:
        print(f"{len(paths)} file(s) ready under {root}")
    return 0


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    from .defaults import (
        DEFAULT_DETECT_EVERY,
        DEFAULT_GUIDANCE,
        DEFAULT_PRESET,
        DEFAULT_SEED,
        DEFAULT_STEPS,
        MIN_FACE_SCORE,
        X264_PRESETS,
    )

    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS, help="denoising steps (default: %(default)s)")
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help="classifier-free guidance scale; 1 disables guidance and halves the UNet's work "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="noise seed (default: %(default)s)")
    g.add_argument("--scheduler", choices=["ddim", "dpm++"], default="ddim",
                   help="ddim: the published sampler; dpm++: DPM-Solver++, good with fewer steps (default: ddim)")
    g.add_argument("--deepcache", nargs="?", type=_positive_int, const=3, default=0, metavar="N",
                   help="reuse the UNet's deep features: a full pass only every N steps (N=3 if not given, as the "
                        "published demo does); about 2x faster, slightly different output")
    g.add_argument("--batch-chunks", type=_positive_int, default=1, metavar="N",
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
    g.add_argument("--detect-every", type=_positive_int, default=DEFAULT_DETECT_EVERY, metavar="N",
                   help="run the face detector every N frames and follow the face with the landmark model in "
                        "between (faster; 1 detects on every frame, as published) (default: %(default)s)")
    g.add_argument("--face-threshold", type=_fraction, default=MIN_FACE_SCORE, metavar="T",
                   help="the least detection score of a face, between 0 and 1 (default: %(default)s, as "
                        "published); lower it for stylised, anime or 3D faces, which the models were not "
                        "trained on")
    g.add_argument("--min-face-fraction", type=_fraction, default=0.0, metavar="F",
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
    g = _add_hardware_options(p)
    g.add_argument("--channels-last", action="store_true",
                   help="convolution weights in channels-last (NHWC) layout, which GPU tensor cores prefer; same "
                        "results within rounding")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def _add_hardware_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_model_choice(p: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--checkpoints, and --version or --unet-config (the group is returned for further choices)."""
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="weights folder (default: $LATENTSYNC_CHECKPOINTS or ./checkpoints)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", choices=["1.6", "1.5"], default=None,
                       help="1.6: 512 px faces, 1.5: 256 px (default: what `latentsync download` installed, "
                            "else 1.6)")
    which.add_argument("--unet-config", default=None, help="a UNet config YAML instead of --version")
    return which


def _add_infer(sub: argparse._SubParsersAction) -> None:
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
    _add_model_choice(p)
    _add_inference_options(p)
    p.set_defaults(func=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from .face.mask import mask_image
    from .inference import LipSync, check_inputs

    check_inputs(args.video, args.audio, args.out)  # before minutes of model loading
    mask_image(args.mask)
    lipsync = LipSync(args.checkpoints, version=args.version, unet_config=args.unet_config, device=args.device,
                      dtype=args.dtype, face_backend=args.face_backend, compile=args.compile,
                      channels_last=args.channels_last, offload=args.low_memory)
    return _run_job(lipsync, args.video, args.audio, args.out, args)


def _run_job(lipsync, video: Path, audio: Path, out: Path, args: argparse.Namespace) -> int:
    from .inference import InferenceOptions

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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline offline on tiny random weights (no download)",
        description=(
            "Writes tiny random-weight checkpoints (UNet, Whisper, VAE) into WORKDIR/checkpoints, makes a short "
            "clip from a portrait shipped with matplotlib and synthetic speech, and lip-syncs them with the same "
            "code as `latentsync infer`, into WORKDIR/demo.mp4. Random weights show the pipeline working, not "
            "real lip sync: for that, run `latentsync download` and `latentsync infer`."
        ),
    )
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="folder to write into (default: ./demo)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the demo clip (default: %(default)s)")
    _add_inference_options(p)
    p.set_defaults(func=_run_demo, steps=8)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import UNET_CONFIG_NAME, prepare_demo
    from .inference import LipSync

    checkpoints, video, audio = prepare_demo(args.workdir, seconds=args.seconds)
    lipsync = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device=args.device, dtype=args.dtype,
                      face_backend=args.face_backend, audio_cache=False, compile=args.compile,
                      channels_last=args.channels_last, offload=args.low_memory)
    _run_job(lipsync, video, audio, args.workdir / "demo.mp4", args)
    if not args.quiet:
        print("note: these are random weights, so the mouth is regenerated by an untrained network and does not "
              "follow the speech. For real lip sync: `latentsync download` then `latentsync infer --video ... "
              "--audio ... --out ...`.", file=sys.stderr)
    return 0


def _add_app(sub: argparse._SubParsersAction) -> None:
    from .app import DEFAULT_HOST, DEFAULT_PORT, AppSettings

    d = AppSettings()
    p = sub.add_parser(
        "app",
        help="serve the lip-sync web page (Gradio) over models loaded once",
        description=(
            "Serve a web page where you upload a video and a speech track (or record one) and get the lip-synced "
            "video back. The models load once, when the server starts; requests wait in a queue and at most "
            "--concurrency run at once, each in a private folder removed when it ends. It listens on 127.0.0.1 "
            "(this machine only) unless --host says otherwise, and never opens a public share link. Needs "
            "Gradio: pip install 'latentsync[app]'."
        ),
    )
    which = _add_model_choice(p)
    which.add_argument("--demo", action="store_true",
                       help="tiny random-weight models written into a temporary folder: try the page with no "
                            "download (no real lip sync)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on; 0.0.0.0 serves the whole network (default: %(default)s)")
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    g.add_argument("--concurrency", type=_positive_int, default=d.concurrency,
                   help="jobs running at once on the shared models; more needs more GPU memory (default: "
                        "%(default)s)")
    g.add_argument("--queue-size", type=_positive_int, default=d.queue_size,
                   help="requests allowed to wait; more are turned away (default: %(default)s)")
    g.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                   help="largest upload accepted, per file, in MB (default: %(default)g)")
    g.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="longest video or audio accepted, in seconds; 0: no limit (default: %(default)g)")
    g.add_argument("--keep-minutes", type=float, default=d.keep_minutes,
                   help="how long uploads and results stay on the server (default: %(default)g)")
    g.add_argument("--lazy", action="store_true",
                   help="load the models on the first request instead of at start")
    g = _add_hardware_options(p)
    g.add_argument("--low-memory", action="store_true",
                   help="every job in the low-memory mode (for small GPUs; see `latentsync infer --help`)")
    p.add_argument("--quiet", action="store_true", help="no start-up messages")
    p.set_defaults(func=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    from .app import AppSettings, serve

    try:
        settings = AppSettings(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                               concurrency=args.concurrency, queue_size=args.queue_size,
                               keep_minutes=args.keep_minutes, low_memory=args.low_memory)
    except ValueError as e:
        raise LatentSyncError(str(e)) from None
    serve(settings, checkpoints=args.checkpoints, version=args.version, unet_config=args.unet_config,
          demo=args.demo, host=args.host, port=args.port, lazy=args.lazy, device=args.device, dtype=args.dtype,
          face_backend=args.face_backend, compile=args.compile, quiet=args.quiet)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="sync confidence (LSE-C/LSE-D), FVD, PSNR/SSIM, SyncNet accuracy",
        description="The numbers lip-sync papers report, computed the standard way.",
    )
    ev = p.add_subparsers(dest="metric", metavar="METRIC", required=True)

    q = ev.add_parser("sync", help="LSE-C / LSE-D of videos (face detection and tracking first)",
                      description="Sync confidence with the joonson SyncNet (syncnet_v2.model), as in the lip-sync "
                                  "literature: per video the audio-video offset in frames, LSE-D (distance, lower "
                                  "is better) and LSE-C (confidence, higher is better), and their mean.")
    q.add_argument("videos", nargs="+", type=Path, help="videos with their sound track")
    q.add_argument("--checkpoint", type=Path, default=None,
                   help="syncnet_v2.model (default: auxiliary/syncnet_v2.model in the checkpoints folder)")
    q.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    q.add_argument("--face-backend", choices=["auto", "insightface", "mediapipe"], default="auto")
    q.add_argument("--vshift", type=_positive_int, default=15, help="offsets searched, in frames (default: 15)")
    q.add_argument("--device", default="auto")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=_run_eval_sync)

    q = ev.add_parser("fvd", help="Fréchet Video Distance between two sets of videos (Kinetics-400 I3D)",
                      description="FVD as LatentSync's evaluation computes it: 16 frames from frame 20 of each "
                                  "video, the face crop resized to 224, I3D logits, Fréchet distance. Needs many "
                                  "videos per side (hundreds) for a stable number.")
    q.add_argument("real", type=Path, help="folder (searched recursively) or video of real clips")
    q.add_argument("generated", type=Path, help="folder or video of generated clips")
    q.add_argument("--crop", choices=["face", "center", "none"], default="face")
    q.add_argument("--value-range", choices=["latentsync", "standard"], default="latentsync",
                   help="latentsync: pixels in [0, 1] as LatentSync's eval feeds I3D (comparable with its "
                        "numbers); standard: [-1, 1] as I3D was trained (default: latentsync)")
    q.add_argument("--batch-size", type=_positive_int, default=8)
    q.add_argument("--device", default="auto")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run_eval_fvd)

    q = ev.add_parser("fid", help="FID over video frames (Inception pool3 features)",
                      description="Fréchet Inception Distance over frames: 16 evenly spread frames of every video, "
                                  "face-cropped like FVD, resized to 299. Needs pytorch-fid's Inception weights "
                                  "(pt_inception-2015-12-05-6726825d.pth) in auxiliary/ of the checkpoints folder.")
    q.add_argument("real", type=Path)
    q.add_argument("generated", type=Path)
    q.add_argument("--weights", type=Path, default=None, help="the Inception weight file (default: auxiliary/)")
    q.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    q.add_argument("--frames", type=_positive_int, default=16, help="frames per video (default: %(default)s)")
    q.add_argument("--crop", choices=["face", "center", "none"], default="face")
    q.add_argument("--device", default="auto")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run_eval_fid)

    q = ev.add_parser("frames", help="PSNR and SSIM of a generated video against its source",
                      description="Frame-by-frame PSNR and SSIM (self-reconstruction: the video lip-synced to "
                                  "its own audio against the original). Both videos must have the same length.")
    q.add_argument("source", type=Path)
    q.add_argument("generated", type=Path)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run_eval_frames)

    q = ev.add_parser("syncnet-accuracy", help="accuracy of a StableSyncNet on processed clips",
                      description="How often a StableSyncNet tells in-sync from shifted pairs (cosine similarity "
                                  "> 0.5), on clips from the data pipeline.")
    q.add_argument("--config", default="syncnet_16_pixel_attn", help="SyncNet config (default: %(default)s)")
    q.add_argument("--checkpoint", type=Path, default=None,
                   help="weights (default: stable_syncnet.pt in the checkpoints folder)")
    q.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    q.add_argument("--data", type=Path, required=True, help="folder of processed clips, or a files list")
    q.add_argument("--samples", type=_positive_int, default=2048, help="pairs to score (default: %(default)s)")
    q.add_argument("--batch-size", type=_positive_int, default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_run_eval_syncnet_accuracy)


def _layout(args: argparse.Namespace):
    from .weights import CheckpointLayout, default_checkpoints_dir

    return CheckpointLayout(args.checkpoints if args.checkpoints is not None else default_checkpoints_dir())


def _print_result(data: dict, as_json: bool, text: str) -> None:
    import json

    print(json.dumps(data, indent=2) if as_json else text)


def _run_eval_sync(args: argparse.Namespace) -> int:
    from .evaluation.sync_confidence import evaluate_videos, format_results
    from .face.detect import load_face_backend

    layout = _layout(args)
    checkpoint = args.checkpoint or layout.require("syncnet_v2")[0]
    with load_face_backend(args.face_backend, layout.root) as backend:
        # One bad video is reported in its row; the others are still scored.
        results = evaluate_videos(args.videos, checkpoint, backend=backend, vshift=args.vshift,
                                  device=_device(args.device), skip_errors=True)
    print(format_results(results, as_json=args.json))
    return 2 if any(r.error for r in results) else 0


def _run_eval_fvd(args: argparse.Namespace) -> int:
    from .evaluation.fvd import fvd

    value = fvd(args.real, args.generated, crop=args.crop, value_range=args.value_range,
                batch_size=args.batch_size, device=_device(args.device))
    _print_result({"fvd": value}, args.json, f"FVD {value:.2f}")
    return 0


def _run_eval_fid(args: argparse.Namespace) -> int:
    from .evaluation.fid import frame_fid

    weights = args.weights or _layout(args).fid_inception
    value = frame_fid(args.real, args.generated, weights=weights, frames_per_video=args.frames, crop=args.crop,
                      device=_device(args.device))
    _print_result({"fid": value}, args.json, f"FID {value:.2f}")
    return 0


def _run_eval_frames(args: argparse.Namespace) -> int:
    from .evaluation.frames import compare_videos

    r = compare_videos(args.source, args.generated)
    _print_result(r, args.json, f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  ({r['frames']} frames)")
    return 0


def _run_eval_syncnet_accuracy(args: argparse.Namespace) -> int:
    import dataclasses

    from .evaluation.syncnet_accuracy import syncnet_accuracy

    checkpoint = args.checkpoint or _layout(args).require("syncnet")[0]
    r = syncnet_accuracy(args.config, checkpoint, args.data, num_samples=args.samples, batch_size=args.batch_size,
                         device=_device(args.device), seed=args.seed)
    _print_result(dataclasses.asdict(r), args.json,
                  f"accuracy {r.accuracy:.4f} over {r.num_samples} pairs ({r.positives} in sync, {r.negatives} "
                  f"shifted; mean cosine {r.mean_cos_positive:.3f} / {r.mean_cos_negative:.3f}; {r.clips} clips)")
    return 0


def _device(name: str):
    from .models.checkpoint import resolve_device

    return resolve_device(name)


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--workers", type=_positive_int, default=1, help="parallel worker processes (default: 1)")
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
    f.add_argument("output_dir", type=Path)
    f.set_defaults(func=_run_fileslist)


def _run_preprocess(args: argparse.Namespace) -> int:
    from .config import load_preprocess_config
    from .preprocess.runner import Runner
    from .weights import default_checkpoints_dir

    overrides = list(args.overrides) + ([f"resolution={args.resolution}"] if args.resolution else [])
    config = load_preprocess_config(args.config, overrides)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    runner = Runner(args.input_dir, args.output_dir, config, steps=steps, workers=args.workers,
                    device=str(_device(args.device)), ray=args.ray, progress=not args.quiet,
                    checkpoints=args.checkpoints or default_checkpoints_dir())
    summary = runner.run()
    if not args.quiet:
        print(summary.format(), file=sys.stderr)
    for step, item, error in summary.failures[:5]:  # internal errors: shown even with --quiet
        print(f"failed at {step}: {item}: {error.splitlines()[0]} (retried on the next run)", file=sys.stderr)
    return 1 if summary.failures else 0


def _run_fileslist(args: argparse.Namespace) -> int:
    from .preprocess.runner import passed_clips

    for path in passed_clips(args.output_dir):
        print(path)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("model", choices=["unet", "syncnet"])
    p.add_argument("--config", required=True, help="a config YAML or packaged name (stage2, syncnet_16_pixel_attn)")
    # KEY=VALUE overrides may stand anywhere on the line; main() collects them (argparse cannot place a
    # variable-length positional between options).
    p.set_defaults(overrides=[])
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run folder (default: data.train_output_dir/<config name>)")
    p.add_argument("--resume", default="auto",
                   help="auto: continue the run folder's latest state if any (default); never: start over; or "
                        "the path of a training state")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this step (default: config)")
    p.add_argument("--data", type=Path, default=None, help="training clips (folder or files list) for this run")
    p.add_argument("--init-sd15", type=Path, default=None,
                   help="unet: start from a diffusers Stable Diffusion 1.5 UNet (stage 1)")
    p.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .config import load_syncnet_config, load_unet_config

    name = Path(str(args.config)).stem
    if args.model == "unet":
        from .training.train_unet import train_unet

        cfg = load_unet_config(args.config, args.overrides)
        run_dir = args.run_dir or Path(cfg.data.train_output_dir) / name
        result = train_unet(args.config, run_dir, overrides=args.overrides, resume=args.resume,
                            max_steps=args.max_steps, device=args.device, progress=not args.quiet,
                            checkpoints=args.checkpoints, init_sd15=args.init_sd15, data=args.data)
    else:
        from .training.train_syncnet import train_syncnet

        cfg = load_syncnet_config(args.config, args.overrides)
        run_dir = args.run_dir or Path(cfg.data.train_output_dir) / name
        result = train_syncnet(args.config, run_dir, overrides=args.overrides, resume=args.resume,
                               max_steps=args.max_steps, device=args.device, progress=not args.quiet,
                               checkpoints=args.checkpoints, data=args.data)
    if not args.quiet:
        print(f"stopped at step {result.get('step')} in {run_dir}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentsync",
        description="Audio-driven lip sync with latent diffusion (LatentSync 1.5 / 1.6).",
    )
    parser.add_argument("--version", action="version", version=f"latentsync {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (loading reports, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_infer(sub)
    _add_demo(sub)
    _add_eval(sub)
    _add_preprocess(sub)
    _add_train(sub)
    _add_app(sub)
    _add_download(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "train":
        args.overrides = [a for a in unknown if "=" in a and not a.startswith("-")]
        unknown = [a for a in unknown if a not in args.overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in ("infer", "demo", "eval", "preprocess", "app"):
        from . import stderr_filter

        stderr_filter.install()  # mediapipe prints C++ notices whenever its graph starts
    try:
        with _sigterm_as_interrupt():
            if getattr(args, "device", None) not in (None, "auto"):
                _device(args.device)  # a device that is not there: one line before anything is read or loaded
            return args.func(args)
    except LatentSyncError as e:
        print(f"latentsync {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that every command cleans up the same way."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM (job schedulers, containers, `timeout`) raises `Terminated` in the main thread:
    the same unwinding as Ctrl-C (temporary files removed, workers stopped). The old handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
