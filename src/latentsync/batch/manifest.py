"""`OUT_DIR/batch-manifest.jsonl`: what became of each job, one JSON line per outcome, by the job's key.

Lines are only ever appended, each flushed to disk before the batch goes on, so a kill at any moment loses at
most the line being written; a line cut off that way is dropped (and the file trimmed) when the manifest is
next opened. The latest line of a key is its outcome: "done" (with its output, frames and timings) or "failed"
(with its one-line reason). An output is renamed into place before its "done" line is written, so a job
without one is simply run again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "batch-manifest.jsonl"
SUMMARY_NAME = "batch-summary.json"
DONE, FAILED = "done", "failed"


@dataclass
class JobRecord:
    """The outcome of one job (a manifest line)."""

    key: str
    status: str  # DONE or FAILED
    video: str
    audio: str
    output: str
    reason: str = ""  # why it failed, in one line
    frames: int = 0
    video_seconds: float = 0.0  # seconds of video produced
    seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage, and "total"
    attempts: int = 1  # runs it took (a worker that died mid-job costs one)
    worker: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Manifest:
    """The manifest of one output folder: `records` by key, as the file says."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / MANIFEST_NAME
        self.records: dict[str, JobRecord] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        keep = 0  # bytes of whole lines
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # cut off by a kill while it was written
            try:
                record = JobRecord(**json.loads(line))
            except (ValueError, TypeError):
                break
            self.records[record.key] = record
            keep += len(line)
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def add(self, record: JobRecord) -> None:
        """Append `record` and make it durable before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write((json.dumps(record.to_json(), sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.records[record.key] = record

    def done(self, key: str) -> bool:
        """Whether the job of `key` is done and its output is still there."""
        record = self.records.get(key)
        return record is not None and record.status == DONE and Path(record.output).is_file()

    def failed(self, key: str) -> bool:
        record = self.records.get(key)
        return record is not None and record.status == FAILED
