"""`latentsync batch`: many jobs, the models loaded once per worker, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_inference_options, add_model_choice, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="lip-sync a list of jobs (CSV or JSONL, or two folders), resumable, locally or on Ray",
        description=(
            "Run many lip-sync jobs with workers that each load the models once. JOBS is a CSV file (a header "
            "row) or a JSONL file (an object per line) with video, audio, optionally output (default: "
            "OUT_DIR/<video stem>_<audio stem>.mp4) and optionally any inference option for that job (steps, "
            "guidance, seed, face, crf, loop, trim, ...); relative paths are relative to JOBS. Or --videos DIR "
            "--audios DIR pairs files by name. OUT_DIR/batch-manifest.jsonl records each job's outcome: run the "
            "same command again after any stop and it skips what is done (--retry-failed: and retries what "
            "failed). A bad job is recorded and the batch goes on; a job whose worker dies is given to another, "
            "at most twice more. Outputs are those of `latentsync infer` with the same options, byte for byte. "
            "Exit status: 0 when every job is done, 1 when some failed (listed), 2 for unusable arguments."
        ),
    )
    p.add_argument("jobs", nargs="?", type=Path, default=None, metavar="JOBS",
                   help="the jobs file (.csv, or .jsonl); or give --videos and --audios")
    p.add_argument("--out-dir", type=Path, required=True, help="where outputs, the manifest and the summary go")
    p.add_argument("--videos", type=Path, default=None, metavar="DIR", help="a folder of videos (with --audios)")
    p.add_argument("--audios", type=Path, default=None, metavar="DIR",
                   help="a folder of speech tracks, each paired with the video of the same name")
    add_model_choice(p)
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="worker processes on this machine, each with its own copy of the models; with several "
                        "GPUs and --device auto, worker i uses GPU i mod their number; with --ray, how many "
                        "actors (default: 1; with --ray, one per GPU of the cluster)")
    g.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run the workers as Ray actors: auto (the default when given alone) starts a local "
                        "cluster, an address joins one (e.g. ray://head:10001) (default: no Ray)")
    g.add_argument("--gpus-per-worker", type=positive_float, default=None, metavar="G",
                   help="GPUs each Ray actor asks for: 1 by default when the cluster has GPUs, 0.5 puts two on "
                        "one GPU")
    g.add_argument("--retry-failed", action="store_true", help="run again the jobs that failed last time")
    add_inference_options(p)
    p.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from ..batch import pair_folders, read_jobs, run_batch
    from ..errors import ConfigError
    from .infer import job_options

    base = job_options(args)
    if (args.jobs is None) == (args.videos is None and args.audios is None):
        raise ConfigError("give either a jobs file or --videos DIR --audios DIR")
    if args.jobs is not None:
        jobs = read_jobs(args.jobs, args.out_dir, base)
    elif args.videos is None or args.audios is None:
        raise ConfigError("--videos and --audios go together")
    else:
        jobs = pair_folders(args.videos, args.audios, args.out_dir, base)
    model = dict(checkpoints=args.checkpoints, version=args.version, unet_config=args.unet_config, unet=args.unet,
                 device=args.device, dtype=args.dtype, face_backend=args.face_backend, compile=args.compile,
                 channels_last=args.channels_last, offload=args.low_memory, lora=args.lora, lora_scale=args.lora_scale)
    summary = run_batch(jobs, args.out_dir, model=model, workers=args.workers, ray=args.ray,
                        gpus_per_worker=args.gpus_per_worker, retry_failed=args.retry_failed, progress=not args.quiet)
    if not args.quiet or summary.failed:
        print(summary.format(), file=sys.stderr)
    return 1 if summary.failed else 0
