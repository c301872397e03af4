"""The one inference entry that touches files: stream a video in, lip-sync it to an audio track, stream it out.

    decode (reader thread) -> detect + align (prepare thread, warps in a pool) -> denoise (caller's thread)
        -> paste back + encode (writer thread)

Stages are joined by bounded queues, so memory holds a few chunks of frames whatever the video's length
(the reference keeps the whole video, every aligned face and every generated face in memory; spec 11).

Lengths follow the reference (spec 2.2 steps 5, 10): the output has one frame per audio frame,
`floor(N50 / 2) + 2` at 25 fps. A shorter video is played forward, backward, forward, ... ("ping-pong"); a
longer one is cut. Alignment is computed once per source frame and reused when the frame comes back, as the
reference does. Frames without a face are passed through untouched; the job fails only if no frame has one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import torch

from .audio import MIN_SAMPLES, SAMPLE_RATE_HZ, WhisperAudioEncoder, frame_window, num_video_frames
from .config import load_unet_config
from .defaults import DEFAULT_CRF, DEFAULT_DETECT_EVERY, FPS
from .devices import resolve_device, resolve_dtype
from .errors import ConfigError, InputError, ResourceError
from .fileio import refuse_overwriting_inputs
from .face.align import FaceAligner, restore_frames, warp_face
from .face.detect import load_face_backend
from .defaults import MIN_FACE_SCORE
from .face.tracking import (
    INFERENCE_FILTER,
    MISS_NONE,
    MISS_RULE,
    MISS_SMALL,
    FaceTracker,
    check_rule,
    check_threshold,
)
from .face.mask import mouth_mask, mouth_mask_tensor
from .media import (DEFAULT_PRESET, VideoReader, VideoWriter, check_output_path, decode_audio, probe_audio,
                    probe_video)
from .models.unet import load_unet
from .models.vae import load_vae
from .pipeline import CHUNK_FRAMES, DEFAULT_GUIDANCE, DEFAULT_SEED, DEFAULT_STEPS, LipSyncPipeline, SamplingOptions
from .weights import UNET_CONFIG_FOR_VERSION, CheckpointLayout, default_checkpoints_dir, installed_version

log = logging.getLogger(__name__)

DEFAULT_VERSION = "1.6"
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
# Low-memory jobs run the UNet's feed-forward on at most this many tokens at a time: 4 frames of the 64x64 latent
# at 512 px (`estimate.estimate_chunk_memory`: with guidance split, 1.6's activation peak falls from 1.1 to 0.7
# GB; it is no longer the largest term below that, so smaller slices only add kernel launches).
LOW_MEMORY_FEED_FORWARD_ROWS = 16_384


# --------------------------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------------------------


# `progress` of `LipSync.run` / `process`: True for tqdm bars on stderr, False for none, or a callable
# `(stage, done, total)` called as each stage advances ("audio features", then "lip sync" in frames), from the
# job's threads (a web page's progress bar, a job queue's status).
Progress = Union[bool, Callable[[str, int, int], None]]


@dataclass
class InferenceOptions:
    """Per-job settings. `face`: "largest" (the reference), "center", or the index of a face from the left."""

    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = DEFAULT_SEED
    scheduler: str = "ddim"
    deepcache: int = 0  # reuse deep UNet features: a full pass every N steps (3 as published); 0: off
    batch_chunks: int = 1  # 16-frame chunks per UNet call (more: faster on a large GPU, same results)
    low_memory: bool = False  # guidance's branches as two UNet calls, the feed-forward in slices: ~1/3 the activations
    face: str | int = "largest"
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    audio_window: str = "overlap"
    detect_every: int = DEFAULT_DETECT_EVERY  # face detection every N frames, landmarks alone in between
    mask: str | Path | None = None  # a mouth mask image (face.mask); None: the published mask.png
    face_threshold: float = MIN_FACE_SCORE  # the least detection score of a face (lower: stylised, drawn faces)
    min_face_fraction: float = 0.0  # fail (InputError) when fewer frames than this share have a face; 0: never

    def sampling(self) -> SamplingOptions:
        """How each chunk is denoised under these options."""
        return SamplingOptions(num_steps=self.steps, guidance_scale=self.guidance, scheduler=self.scheduler,
                               deepcache_interval=self.deepcache, split_guidance=self.low_memory,
                               feed_forward_rows=LOW_MEMORY_FEED_FORWARD_ROWS if self.low_memory else 0)


@dataclass
class InferenceResult:
    output: Path | None  # None for `LipSync.process`
    frames: int
    frames_without_face: int
    face_backend: str
    seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage
    missed: dict[str, int] = field(default_factory=dict)  # frames without a face by reason (face.tracking.MISS_*)

    def missing_summary(self) -> str:
        """'' when every frame had a face, else e.g. "125 without a face, kept as they were: 120 with faces too
        small (under 24 px), 5 with no face found"."""
        return _missing_summary(self.frames_without_face, self.missed)


def _missing_summary(count: int, missed: dict[str, int]) -> str:
    return f"{count} without a face, kept as they were{_reasons(missed)}" if count else ""


def _reasons(missed: dict[str, int], lead: str = ": ") -> str:
    """The frames without a face by reason, most first: "120 with faces too small (under 24 px), 5 with ..."."""
    if not missed:
        return ""
    return lead + ", ".join(f"{n} {MISS_PHRASES.get(reason, reason)}"
                            for reason, n in sorted(missed.items(), key=lambda kv: -kv[1]))


def _check_face_options(options: InferenceOptions) -> None:
    """ConfigError for a threshold or minimum face fraction out of range; a warning for a low threshold."""
    threshold = check_threshold(options.face_threshold)
    fraction = options.min_face_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"the minimum face fraction must be between 0 and 1, got {fraction!r}")
    if threshold < MIN_FACE_SCORE:
        log.warning("face detection threshold %.2f (the models' is %.2f): stylised, drawn or 3D faces are not "
                    "what the models were trained on, and less certain detections may not be faces",
                    threshold, MIN_FACE_SCORE)


def out_of_memory_message(device: torch.device, resolution: int, options: InferenceOptions) -> str:
    """One line for a job that ran out of memory on `device`: where, and what needs less."""
    where = "host memory" if device.type == "cpu" else f"memory on {device}"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where += f" ({total:.0f} GB)"
    hints = []
    if options.batch_chunks > 1:
        hints.append(f"--batch-chunks 1 (now {options.batch_chunks})")
    if not options.low_memory:
        hints.append("--low-memory")
    hints.append("fewer jobs on the device at once")
    if resolution > 256:
        hints.append("LatentSync 1.5 (--version 1.5, 256 px)")
    return f"the job ran out of {where}; try {', '.join(hints)}"


def check_inputs(video: str | Path, audio: str | Path, output: str | Path | None = None) -> None:
    """Fail fast, before any model is loaded, on inputs that cannot work: a video that cannot be opened or has
    no video stream, audio that cannot be decoded or is empty, an output that cannot be written or that is one
    of the inputs (the same path, a symlink or a hard link). Raises InputError with one line naming the file."""
    if output is not None:
        refuse_overwriting_inputs(output, [("video", video), ("audio", audio)])
    probe_video(video)
    probe_audio(audio)
    if output is not None:
        check_output_path(output)


# --------------------------------------------------------------------------------------------------------
# Threaded stages
# --------------------------------------------------------------------------------------------------------

_DONE = object()


class _Stage:
    """Runs `produce(emit)` in a daemon thread; items come out of a bounded queue in order.

    Exceptions raised in the thread are re-raised in the consumer; `close()` stops the producer early."""

    def __init__(self, name: str, produce: Callable[[Callable[[object], None]], None], depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self.thread.start()

    def _emit(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _run(self, produce) -> None:
        try:
            produce(self._emit)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            self.error = e
        finally:
            while True:  # the end marker must get through even if the consumer is slow
                try:
                    self.queue.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    if self.stop.is_set():
                        break

    def __iter__(self) -> Iterator:
        while True:
            item = self.queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=10)


class _Stopped(Exception):
    pass


# --------------------------------------------------------------------------------------------------------
# Frame order (ping-pong) and per-chunk data
# --------------------------------------------------------------------------------------------------------


def pingpong_index(j: int, n: int) -> int:
    """Source frame shown at output position j when a video of n frames is looped forward, backward, ...
    as the reference does (the turn repeats the end frame: ..., n-2, n-1, n-1, n-2, ...)."""
    period, pos = divmod(j, n)
    return pos if period % 2 == 0 else n - 1 - pos


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


# --------------------------------------------------------------------------------------------------------
# The reusable object
# --------------------------------------------------------------------------------------------------------


class LipSync:
    """The models, loaded once; `run()` lip-syncs one video per call.

    Args:
        checkpoints: the weights folder in `latentsync download`'s layout (default `$LATENTSYNC_CHECKPOINTS`
            or ./checkpoints).
        version: "1.6" (512 px) or "1.5" (256 px); picks the UNet config. Default: what `latentsync download`
            installed there, else 1.6.
        unet_config: a UNet YAML (or packaged name) instead of `version`; its `data.resolution` is used.
        device: "auto", "cpu", "cuda", "cuda:N", "mps" or a torch.device. dtype: "auto" (float16 on CUDA, else
            float32), "fp16", "bf16", "fp32" (the rules of `latentsync.devices`).
        face_backend: "auto" (InsightFace when its ONNX files are in the checkpoints folder, else mediapipe),
            "insightface" or "mediapipe".
        audio_cache: folder for cached audio features (None: the user cache; False: off).
        compile: `torch.compile` the UNet and the VAE decoder (slow first chunk, faster after).
        channels_last: keep the convolution weights of the UNet and the VAE in channels-last (NHWC) layout, which
            the GPU's tensor-core convolutions prefer; the same results within rounding. `bench/gpu_inference.py`
            measures whether it pays on a given GPU.
        offload: keep the VAE and the Whisper encoder in host memory while they are idle (the UNet's denoising,
            nearly all of a job); they visit the device to encode and decode. Part of the low-memory mode, with
            `InferenceOptions(low_memory=True)`; the same results.
    """

    def __init__(
        self,
        checkpoints: str | Path | None = None,
        *,
        version: str | None = None,
        unet_config: str | Path | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        face_backend: str = "auto",
        audio_cache: str | Path | bool | None = None,
        compile: bool = False,
        channels_last: bool = False,
        offload: bool = False,
    ):
        root = Path(checkpoints) if checkpoints is not None else default_checkpoints_dir()
        layout = CheckpointLayout(root)
        unet_path, whisper_path, vae_path = layout.require("unet", "whisper", "vae")
        if unet_config is None:
            version = version or installed_version(root) or DEFAULT_VERSION
            if version not in UNET_CONFIG_FOR_VERSION:
                raise ValueError(f"unknown version {version!r}; expected one of {', '.join(UNET_CONFIG_FOR_VERSION)}")
            unet_config = UNET_CONFIG_FOR_VERSION[version]
        config = load_unet_config(unet_config)
        self.unet_config = config  # for the memory estimate that sizes the VAE's calls
        self.resolution = config.data.resolution
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        t0 = time.perf_counter()
        unet = load_unet(config, unet_path, device=self.device, dtype=self.dtype)
        vae = load_vae(vae_path, device=self.device, dtype=self.dtype)
        if channels_last:  # convolutions then run (and hand on their outputs) in NHWC
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        if compile:
            # The first chunk (and each new chunk length) pays the compilation; worth it for long videos on a GPU.
            unet.forward = torch.compile(unet.forward)
            vae.decoder = torch.compile(vae.decoder)
        self.pipeline = LipSyncPipeline(unet, vae, self.resolution, offload_vae=offload)
        self.audio_encoder = WhisperAudioEncoder(whisper_path, device=self.device, cache_dir=audio_cache,
                                                 offload=offload)
        self.checkpoints = root
        self.face_backend_name = face_backend
        self._vae_slices: dict[tuple, int] = {}
        self._vae_slices_lock = threading.Lock()
        # Opened once now so that missing files or a broken install are reported before any job; each job
        # opens its own (trackers keep per-video state, and jobs may run concurrently).
        with load_face_backend(face_backend, root) as backend:
            self.face_backend: str = backend.name
        log.info("models loaded in %.1f s (%s, %s, %d px, faces: %s)", time.perf_counter() - t0, self.device,
                 self.dtype, self.resolution, self.face_backend)

    @classmethod
    def from_components(cls, pipeline: LipSyncPipeline, audio_encoder: WhisperAudioEncoder,
                        face_backend: str = "auto", checkpoints: str | Path | None = None) -> "LipSync":
        """A LipSync over models already in memory (training validation runs the UNet being trained)."""
        self = cls.__new__(cls)
        self.pipeline, self.audio_encoder = pipeline, audio_encoder
        self.resolution, self.device, self.dtype = pipeline.resolution, pipeline.device, pipeline.dtype
        self.unet_config = None  # the VAE takes whole chunks (a trainer's VAE slices inside diffusers)
        self._vae_slices, self._vae_slices_lock = {}, threading.Lock()
        self.checkpoints = Path(checkpoints) if checkpoints is not None else default_checkpoints_dir()
        self.face_backend_name = face_backend
        with load_face_backend(face_backend, self.checkpoints) as backend:
            self.face_backend = backend.name
        return self

    def sampling_for(self, options: InferenceOptions) -> SamplingOptions:
        """How this LipSync denoises a job with `options`: `options.sampling()` with the VAE's slice size.

        The slice comes from the memory estimate (`estimate.choose_vae_slice`, once per setting): whole chunks
        when they fit in half a CUDA device's memory (never under `low_memory`), else the most frames per VAE
        call that keep the VAE under the UNet's peak, so slicing never costs more memory than denoising."""
        sampling = options.sampling()
        if self.unet_config is None:
            return sampling
        key = (dataclasses.astuple(sampling), options.batch_chunks)
        with self._vae_slices_lock:
            if key not in self._vae_slices:
                from .estimate import choose_vae_slice

                budget = None
                if self.device.type == "cuda" and not options.low_memory:
                    budget = torch.cuda.get_device_properties(self.device).total_memory // 2
                self._vae_slices[key] = choose_vae_slice(
                    self.unet_config, dtype=self.dtype, sampling=sampling, batch_chunks=options.batch_chunks,
                    offload=self.pipeline.vae_offload is not None, vae_config=dict(self.pipeline.vae.config),
                    budget=budget)
                log.debug("VAE slice for %s: %d frames (0: whole chunks)", key, self._vae_slices[key])
            return dataclasses.replace(sampling, vae_slice=self._vae_slices[key])

    def run(
        self,
        video: str | Path,
        audio: str | Path,
        output: str | Path,
        options: InferenceOptions | None = None,
        progress: Progress = True,
    ) -> InferenceResult:
        """Lip-sync `video` to `audio` and write `output` (.mp4, .mov or .mkv) with `audio` as its sound track.

        Raises InputError, in one line naming the file, for unusable inputs; when a job fails nothing is left
        at `output` (an existing file there is only replaced by a finished result). `progress`: tqdm bars, none,
        or a callable `(stage, done, total)` (see `Progress`)."""
        options = options or InferenceOptions()
        video, audio, output = Path(video), Path(audio), Path(output)
        refuse_overwriting_inputs(output, [("video", video), ("audio", audio), ("mask", options.mask)])
        _check_face_options(options)
        info = probe_video(video)  # InputError: missing, unreadable, no video stream
        mouth_mask(self.resolution, options.mask)  # InputError: an unusable mask image, before any work
        hidden, seconds = self._audio_features(audio, options, progress)
        total = num_video_frames(hidden.shape[0], FPS)
        with self._memory_errors(options):  # outside the writer: it discards its file first
            with VideoWriter(output, info.width, info.height, fps=FPS, crf=options.crf, preset=options.preset,
                             audio=audio, audio_duration_s=total / FPS) as writer:
                result = self._process(video, info.frames_at(FPS), hidden, writer.write, options, progress)
        result.output = output
        result.seconds = {"audio": seconds, **result.seconds}
        return result

    def process(
        self,
        video: str | Path,
        audio: str | Path,
        sink: Callable[[np.ndarray], None],
        options: InferenceOptions | None = None,
        progress: Progress = False,
    ) -> InferenceResult:
        """Like `run`, but hands each output frame (RGB uint8 (h, w, 3), in order, at 25 fps) to `sink` instead
        of encoding: for streaming to a player, a network, or tests. `sink` is called from a worker thread."""
        options = options or InferenceOptions()
        _check_face_options(options)
        info = probe_video(Path(video))
        mouth_mask(self.resolution, options.mask)
        hidden, seconds = self._audio_features(Path(audio), options, progress)
        with self._memory_errors(options):
            result = self._process(Path(video), info.frames_at(FPS), hidden, sink, options, progress)
        result.seconds = {"audio": seconds, **result.seconds}
        return result

    @contextlib.contextmanager
    def _memory_errors(self, options: InferenceOptions) -> Iterator[None]:
        """An allocation failure becomes a ResourceError saying what to change; the GPU's cached blocks are
        released, so the next job (the web app's) starts from a clean device."""
        try:
            yield
        except RuntimeError as e:  # torch.OutOfMemoryError (CUDA), and MPS/CPU allocators' RuntimeErrors
            if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e).lower() \
                    and "can't allocate memory" not in str(e).lower():
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise ResourceError(out_of_memory_message(self.device, self.resolution, options)) from None

    def _audio_features(self, audio: Path, options: InferenceOptions, progress: Progress) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        if callable(progress):
            progress("audio features", 0, 1)
        samples = decode_audio(audio, SAMPLE_RATE_HZ)  # InputError: missing, unreadable, no audio stream
        if samples.size and not np.any(samples):
            log.warning("%s: the speech track is silent (all samples are zero); the mouth follows silence", audio)
        # A bar over the 30 s windows of long audio: this job's setting, passed with the call. Too short a
        # track goes in by name, so that its error names the file.
        hidden = self.audio_encoder.hidden_states(samples if samples.size >= MIN_SAMPLES else audio,
                                                  window=options.audio_window, progress=progress is True)
        if callable(progress):
            progress("audio features", 1, 1)
        return hidden, time.perf_counter() - t0

    def _process(self, video: Path, expected_frames: int, hidden: torch.Tensor, sink, options: InferenceOptions,
                 progress: Progress) -> InferenceResult:
        total = num_video_frames(hidden.shape[0], FPS)
        job = _Job(self, video, expected_frames, hidden, total, options, progress)
        job.run(sink)
        if job.frames_with_face == 0:  # raised before the writer is closed: it discards its file
            raise InputError(f"{video}: no face found in any frame" + _reasons(job.missed))
        missing = total - job.frames_with_face
        if missing > MISSED_WARNING_FRACTION * total:
            log.warning("%s: %d of %d frames (%.0f%%) have no face to sync: %s", video, missing, total,
                        100 * missing / total, _reasons(job.missed, lead=""))
        return InferenceResult(output=None, frames=total, frames_without_face=missing,
                               face_backend=self.face_backend, seconds=dict(job.timings), missed=dict(job.missed))


class _Job:
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
        # The audio is longer: replay the video backwards, forwards, ... (ping-pong). Backward passes decode a
        # segment at a time and reverse it, so memory holds one segment, not the video.
        segments = [(s, min(s + REVERSE_SEGMENT_FRAMES, n_source)) for s in range(0, n_source, REVERSE_SEGMENT_FRAMES)]
        while j < self.total:
            backward = (j // n_source) % 2 == 1
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
        frames = _Stage("latentsync-read", self._read, depth=READ_AHEAD_FRAMES)
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
                             f"{_reasons(self.missed)}; the job asks for a face in at least {share:.0%} of them")

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
            if chunk is _DONE:
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
        chunks = _Stage("latentsync-prepare", self._prepare, depth=QUEUE_CHUNKS)
        finished: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        errors: list[BaseException] = []

        def finish() -> None:
            try:
                self._finish(finished, sink, bar)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                while finished.get() is not _DONE:  # drain so the producer never blocks
                    pass

        consumer = threading.Thread(target=finish, name="latentsync-write", daemon=True)
        consumer.start()
        batch: list[_Chunk] = []  # full-length chunks waiting to share one UNet call

        def denoise(group: list[_Chunk]) -> None:
            if not group:
                return
            t = time.perf_counter()
            faces = torch.from_numpy(np.stack([np.stack([f.face for f in c.with_face]) for c in group]))
            tokens = torch.stack([self._tokens([f.index for f in c.with_face]) for c in group])
            synced = self.ls.pipeline(faces, tokens, self.sampling, generator=generator, latents=noise, mask=self.mask,
                                      output_type="float")  # n f R R 3, float in ~[0, 255], unclamped
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
            finished.put(_DONE)
            consumer.join()
            self.pool.shutdown()
            self.tracker.close()
            if bar is not None:
                bar.close()
        if errors:
            raise errors[0]

    def _tokens(self, indices: list[int]) -> torch.Tensor:
        """Audio tokens of the given output frames, (n, t, d), sliced from the 50 Hz hidden states."""
        if indices == list(range(indices[0], indices[0] + len(indices))):
            return frame_window(self.hidden, indices[0], len(indices), fps=FPS)
        return torch.cat([frame_window(self.hidden, i, 1, fps=FPS) for i in indices])


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
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="lip sync", unit="frame", dynamic_ncols=True)


