"""The web app without Gradio: `LipSyncService` runs the page's requests over one shared `LipSync`.

Each request works in a folder of its own under a private root, removed when it ends. A request is a job with
an id (`new_job`), registered to the browser session that asked for it, so that the page's Stop button
(`stop_session`) or a closed page ends it: a running job stops at its next denoising step (or the next stage
that reports progress), a waiting one before it starts; it raises `JobStopped`, its files are removed and its
concurrency slot is free when `run` returns. The service measures its own speed on each job that runs to its
end alone on the server (`Speed`), from which the page estimates the time of the next one.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from .defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .errors import InputError

if TYPE_CHECKING:  # the models load with the server, not when its options are listed (`latentsync app --help`)
    from .app_faces import FacePreview
    from .inference import InferenceOptions, InferenceResult, LipSync


@dataclass
class AppSettings:
    """Limits and defaults of the web app (each is a `latentsync app` option, or set by `--demo`)."""

    max_upload_mb: float = 500  # per file; Gradio refuses larger uploads before they reach us
    max_seconds: float = 600  # longest video or audio accepted, in seconds (0: no limit)
    concurrency: int = 1  # jobs running at once on the shared models (more needs more GPU memory)
    queue_size: int = 32  # jobs waiting at most; further requests are turned away until one finishes
    keep_minutes: float = 60  # how long uploads and results stay in Gradio's cache
    steps: int = DEFAULT_STEPS  # the page's default number of denoising steps
    guidance: float = DEFAULT_GUIDANCE  # the page's default guidance scale (1: off)
    low_memory: bool = False  # every job in the low-memory mode, the VAE and Whisper offloaded while idle

    def __post_init__(self):
        if self.concurrency < 1 or self.queue_size < 1:
            raise ValueError("concurrency and queue size must be at least 1")
        if self.max_upload_mb <= 0 or self.max_seconds < 0 or self.keep_minutes <= 0:
            raise ValueError("upload limit and keep time must be positive, the duration limit 0 or more")
        if self.steps < 1 or self.guidance < 1:
            raise ValueError("steps must be at least 1 and guidance at least 1")


class JobStopped(Exception):
    """A job ended by `LipSyncService.stop` / `stop_session` (the page's Stop button, a closed page); the
    message says how far it got. Not an error: nothing is wrong with the inputs."""


@dataclass(frozen=True)
class Speed:
    """What a job costs on this server, measured on the last job that ran to its end alone on it
    (`LipSyncService.speed`).

    A linear model: every output frame costs `other_s` (audio features, decoding, faces, the VAE, encoding,
    all that does not grow with the steps) plus `unet_s` per denoising step and guidance branch (guidance
    doubles the UNet's batch). `unet_s` is the UNet's steps as timed by `job.StepProgress`, `other_s` the rest
    of the job's wall time. Jobs sharing the server take longer; DeepCache jobs less (they are not measured)."""

    unet_s: float  # seconds per frame, per step, per guidance branch
    other_s: float  # seconds per output frame
    frames: int  # the measured job's length, for the page to say what it measured

    def seconds(self, frames: int, steps: int, guidance: float) -> float:
        """The estimated wall time of a job of `frames` output frames."""
        branches = 2 if guidance > 1 else 1
        return frames * (self.other_s + steps * branches * self.unet_s)


@dataclass
class _Ticket:
    """One job, waiting or running: whose it is and its stop flag."""

    session: str | None
    created: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    running: bool = False


LipSyncSource = Union["LipSync", Callable[[], "LipSync"]]


class LipSyncService:
    """Runs lip-sync requests for the app: one `LipSync` (or a function making it, called once on the first
    request) shared by every request, each request in a folder of its own under a private root."""

    def __init__(self, lipsync: LipSyncSource, settings: AppSettings | None = None, root: str | Path | None = None):
        from .inference import LipSync

        self.settings = settings or AppSettings()
        self._lipsync = lipsync if isinstance(lipsync, LipSync) else None
        self._make = None if isinstance(lipsync, LipSync) else lipsync
        self._load_lock = threading.Lock()
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="latentsync-app-")) if root is None else Path(root)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "results").mkdir(parents=True, exist_ok=True)
        self._tickets: dict[str, _Ticket] = {}
        self._tickets_lock = threading.Lock()
        self._starts = 0  # jobs started so far, to tell whether a job ran alone
        self.speed: Speed | None = None  # None until a job has run to its end alone

    @property
    def lipsync(self) -> LipSync:
        if self._lipsync is None:
            with self._load_lock:  # concurrent first requests load the models once
                if self._lipsync is None:
                    self._lipsync = self._make()
        return self._lipsync

    # ---- jobs: ids, stopping ------------------------------------------------------------------------------
    def new_job(self, session: str | None = None) -> str:
        """An id for `run(job=...)`, registered to `session` (a browser session) before the job waits in a queue,
        so that `stop_session` reaches it there too. Ids never run are forgotten after `keep_minutes`."""
        job = uuid.uuid4().hex
        with self._tickets_lock:
            old = time.monotonic() - self.settings.keep_minutes * 60
            for stale in [k for k, t in self._tickets.items() if not t.running and t.created < old]:
                del self._tickets[stale]
            self._tickets[job] = _Ticket(session)
        return job

    def stop(self, job: str) -> bool:
        """Stop job `job`, running or waiting; False if there is no such job (it has ended)."""
        with self._tickets_lock:
            ticket = self._tickets.get(job)
            if ticket is not None:
                ticket.stop.set()
        return ticket is not None

    def stop_session(self, session: str) -> int:
        """Stop every job of browser session `session`, running or waiting; returns how many."""
        with self._tickets_lock:
            tickets = [t for t in self._tickets.values() if t.session == session]
            for ticket in tickets:
                ticket.stop.set()
        return len(tickets)

    @property
    def running(self) -> int:
        """The number of jobs running now."""
        with self._tickets_lock:
            return sum(t.running for t in self._tickets.values())

    def _claim(self, job: str | None, session: str | None) -> tuple[str, _Ticket, int | None]:
        """The job's id and ticket, marked running; and the number of jobs started, if it is the only one."""
        with self._tickets_lock:
            ticket = self._tickets.get(job) if job else None
            if ticket is None:  # an API call with no id, or one that has ended or been forgotten: a new one
                job = uuid.uuid4().hex
                ticket = self._tickets[job] = _Ticket(session)
            ticket.running = True
            self._starts += 1
            alone = sum(t.running for t in self._tickets.values()) == 1
            return job, ticket, self._starts if alone else None

    def _ran_alone(self, starts: int | None) -> bool:
        """Whether a job that began alone (`_claim`'s count) is still alone, no job having started since."""
        with self._tickets_lock:
            return starts is not None and self._starts == starts

    # ---- one request -----------------------------------------------------------------------------------
    def run(self, video: str | Path | None, audio: str | Path | None, options: InferenceOptions,
            progress: Callable[[str, int, int], None] | None = None,
            results: str | Path | None = None, job: str | None = None,
            session: str | None = None) -> tuple[Path, InferenceResult]:
        """Lip-sync one request; returns the result's path (in a folder of its own under `results`, by default
        `root/results`) and the job's summary. `video`: a video or a still image; `audio`: a speech track, or a
        video with sound. `progress(stage, done, total)` hears the stages of `LipSync.run` and every denoising
        step ("denoise", in frame-steps: `job.StepProgress`). `job`: its id from `new_job` (else a new one,
        registered to `session`). Raises LatentSyncError with the message for the page, or JobStopped."""
        from .job import StepProgress

        job, ticket, starts = self._claim(job, session)
        denoised = [0.0]  # the share of the denoising done, for the message when stopped
        steps: list[tuple[int, float]] = []  # (faces, seconds) of each UNet step, for `speed`

        def report(stage: str, done: int, total: int) -> None:
            if ticket.stop.is_set():
                where = f" at {denoised[0]:.0%} of the denoising" if denoised[0] else " before the denoising began"
                raise JobStopped(f"stopped{where}")
            if stage == "denoise" and total:
                denoised[0] = done / total
            if progress is not None:
                progress(stage, done, total)

        work = self.root / "jobs" / job
        try:
            if ticket.stop.is_set():
                raise JobStopped("stopped before it started")
            if not video:
                raise InputError("no video: upload a video or a still image with a face")
            if not audio:
                raise InputError("no audio: upload or record a speech track, or upload a video with sound")
            video, audio = Path(video), Path(audio)
            self._check_duration(video, audio)
            work.mkdir()
            out = work / f"{_safe_stem(video)}_lipsync.mp4"
            t0 = time.perf_counter()
            result = self.lipsync.run(video, audio, out, options,
                                      progress=StepProgress(report, timing=lambda f, s: steps.append((f, s))))
            if self._ran_alone(starts):
                self._measure(result.frames, time.perf_counter() - t0, steps, options)
            kept = Path(results or self.root / "results") / job
            kept.mkdir(parents=True)
            final = kept / out.name
            shutil.move(out, final)  # a rename, unless `results` is on another file system
            result.output = final
            return final, result
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with self._tickets_lock:
                self._tickets.pop(job, None)

    def _measure(self, frames: int, seconds: float, steps: list[tuple[int, float]], options: InferenceOptions):
        """Keep this job's speed (`Speed`), unless DeepCache (cheaper steps) ran or no step was timed."""
        branch_frames = sum(f for f, _ in steps) * (2 if options.guidance > 1 else 1)
        if options.deepcache or not branch_frames or not frames:
            return
        unet = sum(s for _, s in steps)
        self.speed = Speed(unet_s=unet / branch_frames, other_s=max(seconds - unet, 0.0) / frames, frames=frames)

    def calibrate(self, video: str | Path, audio: str | Path, options: InferenceOptions | None = None) -> Speed:
        """Run one short job (by default 2 steps without guidance) to measure `speed` before any user's job;
        its output is deleted."""
        from .inference import InferenceOptions

        folder = Path(tempfile.mkdtemp(prefix="calibration-", dir=self.root))
        try:
            self.run(video, audio, options or InferenceOptions(steps=2, guidance=1.0), results=folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return self.speed

    def faces(self, video: str | Path) -> FacePreview:
        """The faces a job would find on the first frame of `video`, numbered from the left (`app_faces`), with
        this service's face backend. InputError for a file that cannot be read."""
        from .app_faces import find_faces

        if not video:
            raise InputError("no video: upload a video or a still image with a face")
        return find_faces(video, self.lipsync.face_backend_name, self.lipsync.checkpoints)

    def _check_duration(self, video: Path, audio: Path) -> None:
        from .media import audio_duration_s, probe_video

        limit = self.settings.max_seconds
        info = probe_video(video)  # InputError: unreadable, no video stream
        seconds = audio_duration_s(audio)  # InputError: unreadable, no audio track
        if seconds <= 0:
            raise InputError(f"{audio}: the audio track is empty")
        if limit:
            for path, length, what in ((video, info.duration_s, "video"), (audio, seconds, "audio")):
                if length > limit:
                    raise InputError(f"{path}: the {what} lasts {length:.0f} s, longer than this server's "
                                     f"limit of {limit:.0f} s")

    def close(self) -> None:
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def public_message(error: BaseException, *uploads: str | Path | None) -> str:
    """The error's one-line message with the server's paths of the uploads replaced by their file names."""
    message = str(error)
    for path in uploads:
        if path:
            message = message.replace(str(path), Path(path).name)
    return message


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60]
    return stem or "video"
