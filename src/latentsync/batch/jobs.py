"""A batch's jobs: read from a CSV or JSONL file or paired from two folders, checked before anything runs, and
keyed by what they read and how (the manifest's key).

A jobs file has the columns (CSV header) or keys (one JSON object per line) `video`, `audio`, optionally `output`
(default `OUT_DIR/<video stem>_<audio stem>.mp4`) and optionally any per-job inference option (`JOB_OPTIONS`:
steps, guidance, seed, face, ...), which overrides the batch's own for that job. Relative paths are relative to
the jobs file. An empty CSV cell means "the batch's value".
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import field_value
from ..errors import ConfigError, OptionError
from ..fileio import same_file, sha256_file
from ..inference import InferenceOptions

JOB_COLUMNS = ("video", "audio", "output")
# Inference options a job may set for itself: every `InferenceOptions` field.
JOB_OPTIONS = tuple(f.name for f in dataclasses.fields(InferenceOptions))
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".png", ".jpg", ".jpeg")
KEY_VERSION = "latentsync.batch-job.v1"  # in every key: a change in what a key covers is a new version


@dataclass(frozen=True)
class Job:
    """One lip-sync job of a batch: `video` to `audio`, written to `output`, with `options` (checked)."""

    video: Path
    audio: Path
    output: Path
    options: InferenceOptions
    line: str = ""  # where it was read ("jobs.csv line 3"), for messages
    overrides: dict[str, Any] = field(default_factory=dict)  # the options the job set itself

    @property
    def name(self) -> str:
        return self.output.name


def make_job(row: dict[str, Any], base: InferenceOptions, out_dir: Path, folder: Path, where: str) -> Job:
    """A checked `Job` from one row of a jobs file (paths relative to `folder`)."""
    unknown = sorted(set(row) - set(JOB_COLUMNS) - set(JOB_OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown column(s) {', '.join(unknown)}; expected video, audio, output and "
                          f"inference options ({', '.join(JOB_OPTIONS)})")
    missing = [c for c in ("video", "audio") if not str(row.get(c) or "").strip()]
    if missing:
        raise ConfigError(f"{where}: no {' and no '.join(missing)}")
    video, audio = (folder / str(row[c]).strip() for c in ("video", "audio"))
    output = row.get("output")
    output = folder / str(output).strip() if output not in (None, "") else out_dir / f"{video.stem}_{audio.stem}.mp4"
    # Values as `key=value` overrides take them (text read as YAML, then the field's type); a mask is a path.
    overrides = {k: str(folder / str(v)) if k == "mask" else field_value(InferenceOptions, k, v, f"{where}: {k}")
                 for k, v in row.items() if k in JOB_OPTIONS and v not in (None, "")}
    options = dataclasses.replace(base, **overrides)
    try:
        options.check()
    except OptionError as e:
        raise ConfigError(f"{where}: {e.option}: {e.reason}") from None
    return Job(video=video, audio=audio, output=output, options=options, line=where, overrides=overrides)


def read_jobs(path: str | Path, out_dir: str | Path, base: InferenceOptions | None = None) -> list[Job]:
    """The jobs of a CSV (a header row) or JSONL (an object per line) file; ConfigError naming the line of the
    first unusable one."""
    path, out_dir, base = Path(path), Path(out_dir), base or InferenceOptions()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the jobs file ({e.__class__.__name__})") from None
    folder = path.absolute().parent
    rows: list[tuple[str, dict]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} line {number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {number}: expected an object with video and audio")
            rows.append((f"{path} line {number}", row))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise ConfigError(f"{path}: a CSV jobs file needs a header row with video and audio columns")
        for number, row in enumerate(reader, 2):
            if any(v not in (None, "") for v in row.values()):
                rows.append((f"{path} line {number}", {k: v for k, v in row.items() if k is not None}))
    if not rows:
        raise ConfigError(f"{path}: no jobs")
    return check_jobs([make_job(row, base, out_dir, folder, where) for where, row in rows])


def pair_folders(videos: str | Path, audios: str | Path, out_dir: str | Path,
                 base: InferenceOptions | None = None) -> list[Job]:
    """A job for each video of `videos` whose name (without extension) has an audio file in `audios`."""
    videos, audios, out_dir, base = Path(videos), Path(audios), Path(out_dir), base or InferenceOptions()
    for folder in (videos, audios):
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder")
    sounds = {p.stem: p for p in sorted(audios.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS + VIDEO_EXTENSIONS}
    jobs = [Job(video=v, audio=sounds[v.stem], output=out_dir / f"{v.stem}_{sounds[v.stem].stem}.mp4",
                options=base.check(), line=str(v))
            for v in sorted(videos.iterdir()) if v.suffix.lower() in VIDEO_EXTENSIONS and v.stem in sounds]
    if not jobs:
        raise ConfigError(f"{videos}, {audios}: no video with an audio file of the same name")
    return check_jobs(jobs)


def check_jobs(jobs: list[Job]) -> list[Job]:
    """ConfigError when two jobs write one file, or a job would write over any job's input."""
    seen: dict[Path, Job] = {}
    for job in jobs:
        key = job.output.absolute()
        if key in seen:
            raise ConfigError(f"{job.line}: writes {job.output}, as {seen[key].line} does")
        seen[key] = job
    inputs = [(role, getattr(j, role)) for j in jobs for role in ("video", "audio")]
    for job in jobs:
        for role, path in inputs:
            if same_file(job.output, path):
                raise ConfigError(f"{job.line}: the output {job.output} is a {role} of the batch; it would be "
                                  "overwritten: choose another output")
    return jobs


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes ("missing" if it cannot be read: the job then fails, and is retried when fixed)."""
    try:
        return sha256_file(path)
    except OSError:
        return "missing"


def job_key(job: Job, model: dict[str, Any], digests: dict[Path, str] | None = None) -> str:
    """What identifies a job's result: its inputs' content, its options, the model and where it is written."""
    digests = digests if digests is not None else {}
    for path in (job.video, job.audio):
        if path not in digests:
            digests[path] = file_digest(path)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(job.options).items()}
    payload = {"version": KEY_VERSION, "video": digests[job.video], "audio": digests[job.audio],
               "options": options, "model": model, "output": str(job.output.absolute())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
