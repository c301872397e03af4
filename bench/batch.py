"""What batching saves: N short jobs as one `latentsync infer` process per job (the baseline), as `latentsync
batch` with one worker, and with two Ray workers on a local cluster.

Tiny random-weight models (the demo's, so no download) on generated clips of a few seconds: the networks' own
work is small, so the figures show the cost around them, which is what batching removes (interpreter and
library start, model loading, per job) or keeps (decode, face alignment, encode). On a lent GPU, pass the real
checkpoints with --checkpoints and --version to get videos per GPU-hour.

Prints jobs per hour of each way and its ratio against the baseline, the model loading time that batching
saves, and the per-job time outside the networks (decode, align, restore+encode) from the manifest.

    .venv/bin/python bench/batch.py [--jobs 8] [--seconds 2] [--steps 1] [--no-ray] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latentsync.demo import UNET_CONFIG_NAME, make_talking_clip, synth_speech, write_tiny_checkpoints
from latentsync.media import write_wav

OUTSIDE_NETWORKS = ("decode", "align", "restore+encode")


def _cli(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSYNC_")}
    done = subprocess.run([sys.executable, "-m", "latentsync", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"latentsync {args[0]} failed:\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each clip and its speech")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoints", type=Path, default=None, help="real weights (default: the tiny ones)")
    parser.add_argument("--version", default=None)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="latentsync-bench-batch-"))
    if args.checkpoints is None:
        checkpoints = write_tiny_checkpoints(work / "checkpoints")
        model = ["--checkpoints", str(checkpoints), "--unet-config", str(checkpoints / UNET_CONFIG_NAME)]
    else:
        model = ["--checkpoints", str(args.checkpoints)] + (["--version", args.version] if args.version else [])
    common = [*model, "--steps", str(args.steps), "--guidance", "1", "--device", args.device, "--quiet"]
    rows = []
    for i in range(args.jobs):
        make_talking_clip(work / f"v{i}.mp4", seconds=args.seconds)
        write_wav(work / f"s{i}.wav", synth_speech(args.seconds, seed=i), 16_000)
        rows.append(f"v{i}.mp4,s{i}.wav")
    jobs = work / "jobs.csv"
    jobs.write_text("video,audio\n" + "\n".join(rows) + "\n")

    figures: dict[str, float] = {}
    (work / "single").mkdir()
    t = time.perf_counter()
    for i in range(args.jobs):
        _cli("infer", "--video", str(work / f"v{i}.mp4"), "--audio", str(work / f"s{i}.wav"),
             "--out", str(work / "single" / f"v{i}.mp4"), *common)
    figures["infer_per_job_s"] = (time.perf_counter() - t) / args.jobs

    ways = [("batch_1_worker", ["--workers", "1"])]
    if not args.no_ray:
        ways.append(("ray_2_workers", ["--ray", "--workers", "2"]))
    for name, extra in ways:
        out = work / name
        t = time.perf_counter()
        _cli("batch", str(jobs), "--out-dir", str(out), *common, *extra)
        figures[f"{name}_per_job_s"] = (time.perf_counter() - t) / args.jobs
        summary = json.loads((out / "batch-summary.json").read_text())
        figures[f"{name}_model_load_s"] = summary["model_load_s"]
        records = [json.loads(line) for line in (out / "batch-manifest.jsonl").read_text().splitlines()]
        outside = [sum(r["seconds"].get(k, 0.0) for k in OUTSIDE_NETWORKS) for r in records]
        figures[f"{name}_outside_networks_per_job_s"] = sum(outside) / len(outside)

    base = figures["infer_per_job_s"]
    result = {"jobs": args.jobs, "clip_seconds": args.seconds, **{k: round(v, 3) for k, v in figures.items()},
              "infer_jobs_per_hour": round(3600 / base, 1)}
    for name, _ in ways:
        per_job = figures[f"{name}_per_job_s"]
        result[f"{name}_jobs_per_hour"] = round(3600 / per_job, 1)
        result[f"{name}_speedup_vs_infer"] = round(base / per_job, 2)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.jobs} jobs of {args.seconds:g} s ({'tiny' if args.checkpoints is None else 'real'} weights, "
          f"{args.steps} step(s), {args.device})")
    print(f"  one `latentsync infer` per job: {base:6.2f} s/job, {3600 / base:7.0f} jobs/hour (baseline)")
    for name, _ in ways:
        per_job = figures[f"{name}_per_job_s"]
        print(f"  {name.replace('_', ' '):<30}{per_job:6.2f} s/job, {3600 / per_job:7.0f} jobs/hour, "
              f"{base / per_job:.2f}x the baseline; models loaded in {figures[f'{name}_model_load_s']:.1f} s once; "
              f"{figures[f'{name}_outside_networks_per_job_s']:.2f} s/job outside the networks")


if __name__ == "__main__":
    main()
