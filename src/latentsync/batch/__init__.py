"""`latentsync batch`: many lip-sync jobs over workers that each load the models once, on this machine or on a
Ray cluster, resumable after any stop.

`run_batch(jobs, out_dir, model=...)` skips the jobs the manifest (`OUT_DIR/batch-manifest.jsonl`) records as
done (by a key of their inputs' content, options, model and output), runs the rest, and with `retry_failed`
also those that failed. Each output is written by `LipSync.run` exactly as `latentsync infer` writes it (under a
temporary name, renamed when complete), so a batch stopped at any moment and run again ends as an uninterrupted
one, with no partial file. A summary goes to `OUT_DIR/batch-summary.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..defaults import FPS
from ..fileio import atomic_write
from ..weights import CheckpointLayout, default_checkpoints_dir, installed_version
from .jobs import Job, job_key, pair_folders, read_jobs
from .manifest import DONE, FAILED, MANIFEST_NAME, SUMMARY_NAME, JobRecord, Manifest
from .workers import MAX_ATTEMPTS, LocalWorkers, Outcome, RayWorkers, Task

__all__ = ["BatchSummary", "Job", "JobRecord", "MANIFEST_NAME", "MAX_ATTEMPTS", "SUMMARY_NAME", "model_identity",
           "pair_folders", "read_jobs", "run_batch"]


@dataclass
class BatchSummary:
    """What a batch did: the record of every job (this run's and earlier ones'), and this run's figures."""

    records: list[JobRecord]
    skipped: int  # done before this run
    wall_s: float
    workers: int
    model_load_s: float = 0.0

    @property
    def done(self) -> list[JobRecord]:
        return [r for r in self.records if r.status == DONE]

    @property
    def failed(self) -> list[JobRecord]:
        return [r for r in self.records if r.status == FAILED]

    @property
    def video_seconds(self) -> float:
        return sum(r.video_seconds for r in self.done)

    def to_json(self) -> dict[str, Any]:
        ran = len(self.done) - self.skipped  # videos made by this run
        return {"jobs": len(self.records), "done": len(self.done), "failed": len(self.failed),
                "skipped_as_done": self.skipped, "video_seconds": round(self.video_seconds, 3),
                "wall_s": round(self.wall_s, 3), "model_load_s": round(self.model_load_s, 3),
                "workers": self.workers,
                "videos_per_hour": round(3600 * ran / self.wall_s, 1) if ran and self.wall_s > 0 else None,
                "failures": [{"video": r.video, "audio": r.audio, "reason": r.reason} for r in self.failed]}

    def format(self) -> str:
        s = self.to_json()
        lines = [f"{s['done']} done ({s['skipped_as_done']} earlier), {s['failed']} failed of {s['jobs']} jobs; "
                 f"{s['video_seconds']:.1f} s of video; {s['wall_s']:.1f} s wall"
                 + (f", {s['videos_per_hour']} videos/hour" if s["videos_per_hour"] else "")]
        lines += [f"  failed: {f['video']} + {f['audio']}: {f['reason']}" for f in s["failures"]]
        return "\n".join(lines)


def _file_identity(path: Path) -> list:
    try:
        stat = path.stat()
        return [str(path.absolute()), stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [str(path.absolute())]


def model_identity(model: dict[str, Any]) -> dict[str, Any]:
    """What of the model goes into a job's key: the UNet file (path, size, modification time), its config, and
    a LoRA adapter's file and scale when there is one."""
    root = Path(model.get("checkpoints") or default_checkpoints_dir())
    unet = Path(model.get("unet") or CheckpointLayout(root).unet)
    version = model.get("version") or installed_version(root)
    identity = {"unet": _file_identity(unet), "unet_config": str(model.get("unet_config") or ""),
                "version": version or "", "dtype": str(model.get("dtype", "auto"))}
    if model.get("lora"):
        identity["lora"] = [*_file_identity(Path(model["lora"])), float(model.get("lora_scale", 1.0))]
    return identity


def run_batch(jobs: list[Job], out_dir: str | Path, *, model: dict[str, Any] | None = None, workers: int = 1,
              ray: str | None = None, gpus_per_worker: float | None = None, devices: list[str] | None = None,
              retry_failed: bool = False, progress: bool = True) -> BatchSummary:
    """Run `jobs` (`read_jobs`, `pair_folders`) into `out_dir` with the models `model` describes (`LipSync`'s
    keyword arguments: checkpoints, version, unet_config, unet, dtype, face_backend, ...).

    `workers` local processes (worker i on `devices[i % len(devices)]`, default `model["device"]`), or with
    `ray` ("auto" for a local cluster, or an address) Ray actors: one per GPU by default, `gpus_per_worker` for
    fractions or more, `workers` to say how many. Returns the `BatchSummary`; raises LatentSyncError only
    for a batch that cannot start (the models cannot be loaded)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = {"audio_cache": None, **(model or {})}
    manifest = Manifest(out_dir)
    identity = model_identity(model)
    digests: dict[Path, str] = {}
    keys = [job_key(job, identity, digests) for job in jobs]
    todo = [Task(i, job) for i, (job, key) in enumerate(zip(jobs, keys))
            if not manifest.done(key) and (retry_failed or not manifest.failed(key))]
    skipped = sum(manifest.done(k) for k in keys)
    for task in todo:
        task.job.output.parent.mkdir(parents=True, exist_ok=True)
    bar = _progress(len(jobs), len(jobs) - len(todo), progress)
    current: dict[str, str] = {}  # worker -> the output it is making
    made = [sum(r.video_seconds for k in keys if (r := manifest.records.get(k)) and manifest.done(k))]

    def show(refresh: bool = True) -> None:
        workers = ", ".join(f"{w}: {n}" for w, n in sorted(current.items()))
        bar.set_postfix_str(f"{made[0]:.1f} s of video" + (f"; {workers}" if workers else ""), refresh=refresh)

    def on_start(worker: str, task: Task) -> None:
        current[worker] = task.job.name
        show()

    def on_outcome(task: Task, outcome: Outcome) -> None:
        current.pop(outcome.worker, None)
        made[0] += outcome.frames / FPS if outcome.ok else 0.0
        show(refresh=False)
        job = task.job
        manifest.add(JobRecord(key=keys[task.index], status=DONE if outcome.ok else FAILED, video=str(job.video),
                               audio=str(job.audio), output=str(job.output), reason=outcome.reason,
                               frames=outcome.frames, video_seconds=round(outcome.frames / FPS, 3),
                               seconds={k: round(v, 3) for k, v in (outcome.seconds or {}).items()},
                               attempts=outcome.attempts, worker=outcome.worker))
        bar.update(1)

    pool = None
    load_s, count = 0.0, 0
    try:
        if todo:
            t = time.perf_counter()
            if ray:
                pool = RayWorkers(model, workers if workers > 1 else None, ray, gpus_per_worker)
                count = pool.count
            else:
                count = max(1, min(workers, len(todo)))
                pool = LocalWorkers(model, count, devices or [str(model.get("device", "auto"))])
            load_s = time.perf_counter() - t
            pool.run(todo, on_start, on_outcome)
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    records = [manifest.records[k] for k in keys if k in manifest.records]
    summary = BatchSummary(records, skipped, time.perf_counter() - start, workers=count, model_load_s=load_s)
    with atomic_write(out_dir / SUMMARY_NAME, suffix=".json") as tmp:
        tmp.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="batch", unit="job", disable=not enabled)
