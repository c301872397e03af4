"""One lip-sync job over one video: the streaming stages between a decoded video and the output frames.

    decode (reader thread) -> detect + align (prepare thread, warps in a pool) -> denoise (caller's thread)
        -> paste back + encode (writer thread)

`LipSync` (`inference.py`) loads the models and starts a `Job` per call; the job owns the per-video state (the
face tracker, the aligner, the alignment of each source frame) and the threads, joined by `streaming.Stage`s.

Progress (`inference.Progress`): a callable hears ("lip sync", frames written, frames) as chunks leave the writer;
a `StepProgress` also hears ("denoise", frame-steps done, frames x steps) after every UNet step of every chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio import frame_window
from .defaults import FPS
from .errors import InputError
from .face.align import FaceAligner, restore_frames, warp_face
from .face.detect import load_face_backend
from .face.mask import mouth_mask_tensor
from .face.tracking import INFERENCE_FILTER, MISS_NONE, MISS_RULE, MISS_SMALL, FaceTracker, check_rule
from .media import VideoReader
from .pipeline import CHUNK_FRAMES
from .streaming import DONE, Stage

if TYPE_CHECKING:
    from .inference import InferenceOptions, LipSync, Progress

log = logging.getLogger(__name__)

REVERSE_SEGMENT_FRAMES = 32  # frames decoded at once to play a stretch of video backwards
# In flight between stages: a few full frames from the decoder, one chunk each between the other stages (enough
# for decoding/alignment of chunk k+1 and paste-back/encoding of chunk k-1 to overlap denoising of chunk k).
# At 1080p a frame is 6 MB: about 90 frames, 0.5 GB, are in memory at the peak, whatever the video's length.
READ_AHEAD_FRAMES = CHUNK_FRAMES // 2
QUEUE_CHUNKS = 1
MAX_PENDING_FRAMES = 4 * CHUNK_FRAMES  # a chunk is closed early when this many frames wait (long faceless runs)
# A video whose frames run out well before the duration its container declares is damaged.
TRUNCATED_FRACTION = 0.9
TRUNCATED_SLACK_FRAMES = 2
# More than this share of the frames without a face to sync is worth a warning (a wide shot's face too small,
# a face the detector does not know): the result is then largely the input with the new sound.
MISSED_WARNING_FRACTION = 0.03
MISS_PHRASES = {
    MISS_NONE: "with no face found",
    MISS_SMALL: f"with faces too small (under {INFERENCE_FILTER.min_width:g} px)",
    MISS_RULE: "without the chosen face (fewer faces than its number)",
}


def describe_misses(missed: dict[str, int], lead: str = ": ") -> str:
    """The frames without a face by reason, most first: "120 with faces too small (under 24 px), 5 with ..."."""
    if not missed:
        return ""
    return lead + ", ".join(f"{n} {MISS_PHRASES.get(reason, reason)}"
                            for reason, n in sorted(missed.items(), key=lambda kv: -kv[1]))


def pingpong_index(j: int, n: int) -> int:
    """Source frame shown at output position j when a video of n frames is looped forward, backward, ...
    as the reference does (the turn repeats the end frame: ..., n-2, n-1, n-1, n-2, ...)."""
    period, pos = divmod(j, n)
    return pos if period % 2 == 0 else n - 1 - pos


def loop_index(j: int, n: int, loop: str = "pingpong") -> int:
    """Source frame shown at output position j of a video of n frames looped as `loop` says (`LOOP_MODES`):
    pingpong, repeat (0, ..., n-1, 0, ...) or freeze (the last frame held)."""
    if loop == "pingpong":
        return pingpong_index(j, n)
    return j % n if loop == "repeat" else min(j, n - 1)


@dataclass
class _Frame:
    index: int  # output position
    source: int  # source frame index
    image: np.ndarray  # (h, w, 3) uint8 RGB
    face: np.ndarray | None = None  # (R, R, 3) uint8 aligned crop
    matrix: np.ndarray | None = None  # (2, 3) frame -> crop


@dataclass
class _Chunk:
    frames: list[_Frame]
    synced: torch.Tensor | None = None  # (n_with_face, R, R, 3) float32, unclamped (the paste-back clamps)

    @property
    def with_face(self) -> list[_Frame]:
        return [f for f in self.frames if f.face is not None]


class Job:
    """One run: owns the threads and the per-video state (tracker, aligner, alignment of each source frame)."""

    def __init__(self, lipsync: LipSync, video: Path, expected_frames: int, hidden: torch.Tensor, total: int,
                 options: InferenceOptions, progress: Progress):
        self.ls, self.video, self.hidden, self.total = lipsync, video, hidden, total
        self.expected_frames = expected_frames  # from the container's duration, to recognise truncated files
        self.options, self.sampling, self.progress = options, lipsync.sampling_for(options), progress
        self.resolution = lipsync.resolution
        self.mask = mouth_mask_tensor(self.resolution, source=options.mask)  # 1 R R, this job's only
        rule = check_rule(options.face)
        # A fresh backend per job: trackers carry state from frame to frame. Faces from the inference filter's
        # size (wide shots) at this job's detection threshold.
        backend = load_face_backend(lipsync.face_backend_name, lipsync.checkpoints, threshold=options.face_threshold)
        self.tracker = FaceTracker(backend, rule=rule, detect_every=options.detect_every,
                                   limits=INFERENCE_FILTER.with_score(options.face_threshold))
        self.aligner = FaceAligner(lipsync.resolution)
        self.alignment: dict[int, np.ndarray | None] = {}  # source index -> matrix (None: no face)
        self.miss: dict[int, str] = {}  # source index -> why it has no face (`FaceTracker.miss`)
        self.missed: dict[str, int] = {}  # output frames without a face, by reason
        # More output frames than this without a face fail the job (`min_face_fraction`), as soon as it is sure.
        self.most_missing = (total if not options.min_face_fraction
                             else int(np.floor((1 - options.min_face_fraction) * total + 1e-9)))
        self.frames_with_face = 0
        self.timings = {"decode": 0.0, "align": 0.0, "denoise": 0.0, "restore+encode": 0.0}
        # Denoising progress in frame-steps (`StepProgress`): every output frame needs `steps` of them.
        self.step_progress = progress if isinstance(progress, StepProgress) else None
        self.denoised, self.denoise_total = 0, total * self.sampling.num_steps
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="latentsync-warp")

    # ---- stage 1: source frames in output order ------------------------------------------------------
    def _read(self, emit) -> None:
        reader = VideoReader(self.video, fps=FPS)
        j = 0  # output position
        t = time.perf_counter()
        for i, image in enumerate(reader.frames()):
            self.timings["decode"] += time.perf_counter() - t
            if j == self.total:  # the video is longer than the audio: cut
                return
            emit(_Frame(index=j, source=i, image=image))
            j += 1
            t = time.perf_counter()
        n_source = j
        if n_source == 0:
            raise InputError(f"{self.video}: no video frame could be decoded")
        if n_source < TRUNCATED_FRACTION * self.expected_frames - TRUNCATED_SLACK_FRAMES:
            raise InputError(f"{self.video}: the video stops after {n_source} of about {self.expected_frames} "
                             "frames (truncated or corrupt file)")
        # The audio is longer: loop the video (`loop_index`). Freezing holds the last frame (decoded again: the
        # first pass's copy has been handed on). Ping-pong's backward passes decode a segment at a time and
        # reverse it, so memory holds one segment, not the video.
        if self.options.loop == "freeze":
            last = next(iter(reader.frames(n_source - 1, n_source)))
            for j in range(j, self.total):
                emit(_Frame(index=j, source=n_source - 1, image=last.copy()))
            return
        segments = [(s, min(s + REVERSE_SEGMENT_FRAMES, n_source)) for s in range(0, n_source, REVERSE_SEGMENT_FRAMES)]
        while j < self.total:
            backward = self.options.loop == "pingpong" and (j // n_source) % 2 == 1
            for start, stop in reversed(segments) if backward else segments:
                t = time.perf_counter()
                images = list(reader.frames(start, stop))
                self.timings["decode"] += time.perf_counter() - t
                sources = range(start, start + len(images))
                pairs = zip(reversed(sources), reversed(images)) if backward else zip(sources, images)
                for source, image in pairs:
                    if j == self.total:
                        return
                    emit(_Frame(index=j, source=source, image=image))
                    j += 1

    # ---- stage 2: faces, alignment, chunks ------------------------------------------------------------
    def _prepare(self, emit) -> None:
        frames = Stage("latentsync-read", self._read, depth=READ_AHEAD_FRAMES)
        try:
            pending: list[_Frame] = []
            with_face = 0
            for frame in frames:
                t = time.perf_counter()
                if frame.source not in self.alignment:
                    face = self.tracker.track(frame.image)
                    self.alignment[frame.source] = (
                        None if face is None else self.aligner.matrix(face.points)
                    )
                    if face is None:
                        self.miss[frame.source] = self.tracker.miss or MISS_NONE
                frame.matrix = self.alignment[frame.source]
                if frame.matrix is None:
                    self._missed(frame)
                pending.append(frame)
                with_face += frame.matrix is not None
                self.timings["align"] += time.perf_counter() - t
                if with_face == CHUNK_FRAMES or len(pending) >= MAX_PENDING_FRAMES:
                    emit(self._warp(pending))
                    pending, with_face = [], 0
            if pending:
                emit(self._warp(pending))
        finally:
            frames.close()

    def _missed(self, frame: _Frame) -> None:
        reason = self.miss[frame.source]
        self.missed[reason] = self.missed.get(reason, 0) + 1
        missing = sum(self.missed.values())
        if missing > self.most_missing:
            share = self.options.min_face_fraction
            raise InputError(f"{self.video}: {missing} of {self.total} frames have no face to sync"
                             f"{describe_misses(self.missed)}; the job asks for a face in at least {share:.0%} of them")

    def _warp(self, frames: list[_Frame]) -> _Chunk:
        t = time.perf_counter()
        todo = [f for f in frames if f.matrix is not None]
        crops = self.pool.map(lambda f: warp_face(f.image, f.matrix, self.resolution), todo)
        for f, crop in zip(todo, crops):
            f.face = crop
        self.timings["align"] += time.perf_counter() - t
        return _Chunk(frames)

    # ---- stage 4: paste back and encode --------------------------------------------------------------
    def _finish(self, chunks: "queue.Queue", sink: Callable[[np.ndarray], None], bar) -> None:
        while True:
            chunk = chunks.get()
            if chunk is DONE:
                return
            t = time.perf_counter()
            faced = chunk.with_face
            images = [f.image for f in faced]
            faces = [chunk.synced[k].numpy() for k in range(len(faced))]
            restored = restore_frames(images, faces, [f.matrix for f in faced], pool=self.pool, inplace=True)
            for f, image in zip(faced, restored):
                f.image = image
            for f in chunk.frames:
                sink(f.image)
            self.timings["restore+encode"] += time.perf_counter() - t
            if bar is not None:
                bar.update(len(chunk.frames))

    # ---- stage 3 (caller's thread): denoise ----------------------------------------------------------
    def run(self, sink: Callable[[np.ndarray], None]) -> None:
        bar = _progress_bar(self.total, self.progress)
        noise = self.ls.pipeline.initial_noise(self.options.seed)
        generator = torch.Generator().manual_seed(self.options.seed)
        chunks = Stage("latentsync-prepare", self._prepare, depth=QUEUE_CHUNKS)
        finished: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        errors: list[BaseException] = []

        def finish() -> None:
            try:
                self._finish(finished, sink, bar)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                while finished.get() is not DONE:  # drain so the producer never blocks
                    pass

        consumer = threading.Thread(target=finish, name="latentsync-write", daemon=True)
        consumer.start()
        batch: list[_Chunk] = []  # full-length chunks waiting to share one UNet call
        self._denoised(0)

        def denoise(group: list[_Chunk]) -> None:
            if not group:
                return
            t = time.perf_counter()
            faces = torch.from_numpy(np.stack([np.stack([f.face for f in c.with_face]) for c in group]))
            tokens = torch.stack([self._tokens([f.index for f in c.with_face]) for c in group])
            synced = self.ls.pipeline(faces, tokens, self.sampling, generator=generator, latents=noise, mask=self.mask,
                                      output_type="float",  # n f R R 3, float in ~[0, 255], unclamped
                                      on_step=self._step_reporter(faces.shape[0] * faces.shape[1]))
            self.timings["denoise"] += time.perf_counter() - t
            for c, out in zip(group, synced):
                c.synced = out
                finished.put(c)
            group.clear()

        try:
            for chunk in chunks:
                if errors:
                    break
                n_faces = len(chunk.with_face)
                self.frames_with_face += n_faces
                if n_faces < len(chunk.frames):  # frames without a face need no denoising: all their steps are done
                    self._denoised((len(chunk.frames) - n_faces) * self.sampling.num_steps)
                if n_faces == CHUNK_FRAMES:
                    batch.append(chunk)
                    if len(batch) == self.options.batch_chunks:
                        denoise(batch)
                    continue
                denoise(batch)  # chunks leave in order: the waiting ones first
                if n_faces:
                    denoise([chunk])
                else:
                    finished.put(chunk)
            if not errors:
                denoise(batch)
        finally:
            chunks.close()
            finished.put(DONE)
            consumer.join()
            self.pool.shutdown()
            self.tracker.close()
            if bar is not None:
                bar.close()
        if errors:
            raise errors[0]

    def _denoised(self, frame_steps: int) -> None:
        """Count `frame_steps` more done and tell a `StepProgress`."""
        if self.step_progress is not None:
            self.denoised += frame_steps
            self.step_progress("denoise", self.denoised, self.denoise_total)

    def _step_reporter(self, faces: int) -> Callable[[int, int], None] | None:
        """The pipeline's `on_step` for one UNet call over `faces` frames: each step ends with `faces` more
        frame-steps done, and its wall time (from the previous step, or the loop's start) goes to the timing."""
        if self.step_progress is None:
            return None
        last = [0.0]

        def on_step(i: int, n: int) -> None:
            now = time.perf_counter()
            if i:
                if self.step_progress.timing is not None:
                    self.step_progress.timing(faces, now - last[0])
                self._denoised(faces)
            last[0] = now

        return on_step

    def _tokens(self, indices: list[int]) -> torch.Tensor:
        """Audio tokens of the given output frames, (n, t, d), sliced from the 50 Hz hidden states."""
        if indices == list(range(indices[0], indices[0] + len(indices))):
            return frame_window(self.hidden, indices[0], len(indices), fps=FPS)
        return torch.cat([frame_window(self.hidden, i, 1, fps=FPS) for i in indices])


class StepProgress:
    """A `progress` for `LipSync.run` / `process` that also reports every denoising step as it ends.

    `callback(stage, done, total)` hears what any callable `progress` hears ("audio features", then "lip sync"
    in frames written) and, in between, ("denoise", done, total) after each UNet step of each chunk, counted in
    frame-steps: a step over k faces adds k, a frame without a face adds all its steps as it passes, so `done`
    reaches `total` = frames x steps exactly, moving once per step instead of once per 16-frame chunk.
    `timing(faces, seconds)`, if given, hears each step's faces and wall time (the UNet's step alone: not the
    VAE, not the wait for frames; on a GPU, launch-bound, so its sum can trail the device by a step).
    Both are called from the job's threads; an exception either raises ends the job, as any `progress`
    callable's does (`LipSync.run` then leaves nothing at its output)."""

    def __init__(self, callback: Callable[[str, int, int], None],
                 timing: Callable[[int, float], None] | None = None):
        self.callback, self.timing = callback, timing

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.callback(stage, done, total)


class _CallbackBar:
    """The two methods of a tqdm bar the job uses, reporting to a `progress(stage, done, total)` callable."""

    def __init__(self, callback: Callable[[str, int, int], None], total: int, stage: str):
        self.callback, self.total, self.stage, self.done = callback, total, stage, 0
        callback(stage, 0, total)

    def update(self, n: int) -> None:
        self.done += n
        self.callback(self.stage, self.done, self.total)

    def close(self) -> None:
        pass


def _progress_bar(total: int, progress: Progress):
    if callable(progress):
        return _CallbackBar(progress, total, "lip sync")
    if not progress:
        return None
    return tqdm(total=total, desc="lip sync", unit="frame", dynamic_ncols=True)
