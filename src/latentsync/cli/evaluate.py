"""`latentsync eval`: sync confidence, FVD, FID, frame metrics and SyncNet accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (add_crop_option, add_device_option, add_face_backend_option, add_json_option, check_device,
                      checkpoint_layout, positive_int, print_result)


def register(sub: argparse._SubParsersAction) -> None:
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
    add_face_backend_option(q)
    q.add_argument("--vshift", type=positive_int, default=15, help="offsets searched, in frames (default: 15)")
    add_device_option(q)
    add_json_option(q)
    q.set_defaults(func=_run_eval_sync)

    q = ev.add_parser("fvd", help="Fréchet Video Distance between two sets of videos (Kinetics-400 I3D)",
                      description="FVD as LatentSync's evaluation computes it: 16 frames from frame 20 of each "
                                  "video, the face crop resized to 224, I3D logits, Fréchet distance. Needs many "
                                  "videos per side (hundreds) for a stable number.")
    _add_two_sets(q)
    add_crop_option(q)
    q.add_argument("--value-range", choices=["latentsync", "standard"], default="latentsync",
                   help="latentsync: pixels in [0, 1] as LatentSync's eval feeds I3D (comparable with its "
                        "numbers); standard: [-1, 1] as I3D was trained (default: latentsync)")
    q.add_argument("--batch-size", type=positive_int, default=8,
                   help="videos per I3D call: more is faster and needs more memory (default: %(default)s)")
    add_device_option(q)
    add_json_option(q)
    q.set_defaults(func=_run_eval_fvd)

    q = ev.add_parser("fid", help="FID over video frames (Inception pool3 features)",
                      description="Fréchet Inception Distance over frames: 16 evenly spread frames of every video, "
                                  "face-cropped like FVD, resized to 299. Needs pytorch-fid's Inception weights "
                                  "(pt_inception-2015-12-05-6726825d.pth) in auxiliary/ of the checkpoints folder.")
    _add_two_sets(q)
    q.add_argument("--weights", type=Path, default=None, help="the Inception weight file (default: auxiliary/)")
    q.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    q.add_argument("--frames", type=positive_int, default=16, help="frames per video (default: %(default)s)")
    add_crop_option(q)
    add_device_option(q)
    add_json_option(q)
    q.set_defaults(func=_run_eval_fid)

    q = ev.add_parser("frames", help="PSNR and SSIM of a generated video against its source",
                      description="Frame-by-frame PSNR and SSIM (self-reconstruction: the video lip-synced to "
                                  "its own audio against the original). Both videos must have the same length.")
    q.add_argument("source", type=Path, help="the original video")
    q.add_argument("generated", type=Path, help="the same video lip-synced to its own audio")
    add_json_option(q)
    q.set_defaults(func=_run_eval_frames)

    q = ev.add_parser("syncnet-accuracy", help="accuracy of a StableSyncNet on processed clips",
                      description="How often a StableSyncNet tells in-sync from shifted pairs (cosine similarity "
                                  "> 0.5), on clips from the data pipeline.")
    q.add_argument("--config", default="syncnet_16_pixel_attn", help="SyncNet config (default: %(default)s)")
    q.add_argument("--checkpoint", type=Path, default=None,
                   help="weights (default: stable_syncnet.pt in the checkpoints folder)")
    q.add_argument("--checkpoints", type=Path, default=None, help="weights folder (default: ./checkpoints)")
    q.add_argument("--data", type=Path, required=True, help="folder of processed clips, or a files list")
    q.add_argument("--samples", type=positive_int, default=2048, help="pairs to score (default: %(default)s)")
    q.add_argument("--batch-size", type=positive_int, default=None,
                   help="pairs per SyncNet call (default: the config's data.batch_size)")
    q.add_argument("--seed", type=int, default=0, help="which clips and shifts are drawn (default: %(default)s)")
    add_device_option(q)
    add_json_option(q)
    q.set_defaults(func=_run_eval_syncnet_accuracy)


def _add_two_sets(q: argparse.ArgumentParser) -> None:
    """The real and generated clips that FVD and FID compare."""
    q.add_argument("real", type=Path, help="folder (searched recursively) or video of real clips")
    q.add_argument("generated", type=Path, help="folder or video of generated clips")


def _run_eval_sync(args: argparse.Namespace) -> int:
    from ..evaluation.sync_confidence import evaluate_videos, format_results
    from ..face.detect import load_face_backend

    layout = checkpoint_layout(args)
    checkpoint = args.checkpoint or layout.require("syncnet_v2")[0]
    with load_face_backend(args.face_backend, layout.root) as backend:
        # One bad video is reported in its row; the others are still scored.
        results = evaluate_videos(args.videos, checkpoint, backend=backend, vshift=args.vshift,
                                  device=check_device(args.device), skip_errors=True)
    print(format_results(results, as_json=args.json))
    return 2 if any(r.error for r in results) else 0


def _run_eval_fvd(args: argparse.Namespace) -> int:
    from ..evaluation.fvd import fvd

    value = fvd(args.real, args.generated, crop=args.crop, value_range=args.value_range,
                batch_size=args.batch_size, device=check_device(args.device))
    print_result({"fvd": value}, args.json, f"FVD {value:.2f}")
    return 0


def _run_eval_fid(args: argparse.Namespace) -> int:
    from ..evaluation.fid import frame_fid

    weights = args.weights or checkpoint_layout(args).fid_inception
    value = frame_fid(args.real, args.generated, weights=weights, frames_per_video=args.frames, crop=args.crop,
                      device=check_device(args.device))
    print_result({"fid": value}, args.json, f"FID {value:.2f}")
    return 0


def _run_eval_frames(args: argparse.Namespace) -> int:
    from ..evaluation.frames import compare_videos

    r = compare_videos(args.source, args.generated)
    print_result(r, args.json, f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  ({r['frames']} frames)")
    return 0


def _run_eval_syncnet_accuracy(args: argparse.Namespace) -> int:
    import dataclasses

    from ..evaluation.syncnet_accuracy import syncnet_accuracy

    checkpoint = args.checkpoint or checkpoint_layout(args).require("syncnet")[0]
    r = syncnet_accuracy(args.config, checkpoint, args.data, num_samples=args.samples, batch_size=args.batch_size,
                         device=check_device(args.device), seed=args.seed)
    print_result(dataclasses.asdict(r), args.json,
                  f"accuracy {r.accuracy:.4f} over {r.num_samples} pairs ({r.positives} in sync, {r.negatives} "
                  f"shifted; mean cosine {r.mean_cos_positive:.3f} / {r.mean_cos_negative:.3f}; {r.clips} clips)")
    return 0
