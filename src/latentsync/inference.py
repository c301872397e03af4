"""The one inference entry that touches files: stream a video in, lip-sync it to an audio track, stream it out.

`LipSync` loads the models once; each `run` / `process` is a `job.Job`:

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
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
import torch

from .audio import (MEL_FRAMES_PER_ROW, MEL_HOP_SAMPLES, MIN_SAMPLES, SAMPLE_RATE_HZ, WhisperAudioEncoder,
                    num_video_frames)
from .config import load_unet_config
from .defaults import (DEFAULT_CRF, DEFAULT_DETECT_EVERY, FPS, LOOP_MODES, MAX_CRF, MIN_FACE_SCORE, TRIM_MODES,
                       X264_PRESETS)
from .devices import resolve_device, resolve_dtype
from .errors import CheckpointError, ConfigError, InputError, OptionError, ResourceError
from .fileio import refuse_overwriting_inputs, sha256_file
from .hub import download
from .face.detect import load_face_backend
from .face.mask import mouth_mask
from .face.tracking import check_rule, check_threshold
from .job import MISSED_WARNING_FRACTION, Job, describe_misses
from .media import (DEFAULT_PRESET, VideoReader, VideoWriter, check_output_path, decode_audio, probe_audio,
                    probe_video)
from .models.lora import load_adapter, read_adapter
from .models.unet import load_unet
from .models.vae import load_vae
from .models.whisper import WINDOW_MODES
from .pipeline import (DEFAULT_GUIDANCE, DEFAULT_SEED, DEFAULT_STEPS, SCHEDULERS, LipSyncPipeline,
                       SamplingOptions)
from .weights import DEFAULT_VERSION, LATENTSYNC_REPOS, CheckpointLayout, default_checkpoints_dir, unet_config_for

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME_25 = round(SAMPLE_RATE_HZ / FPS)  # 640 samples of 16 kHz audio per 25 fps frame
# Low-memory jobs run the UNet's feed-forward on at most this many tokens at a time: 4 frames of the 64x64 latent
# at 512 px (`estimate.estimate_chunk_memory`: with guidance split, 1.6's activation peak falls from 1.1 to 0.7
# GB; it is no longer the largest term below that, so smaller slices only add kernel launches).
LOW_MEMORY_FEED_FORWARD_ROWS = 16_384


# --------------------------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------------------------


# `progress` of `LipSync.run` / `process`: True for tqdm bars on stderr, False for none, or a callable
# `(stage, done, total)` called as each stage advances ("audio features", then "lip sync" in frames), from the
# job's threads (a web page's progress bar, a job queue's status). A `job.StepProgress(callback)` also hears
# ("denoise", done, total) after every UNet step of every chunk, in frame-steps (total = frames x steps), so a
# bar moves each step rather than each 16-frame chunk. An exception the callable raises ends the job (a Stop
# button): it comes out of `run` / `process`, and nothing is left at the output.
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
    loop: str = "pingpong"  # a video shorter than the audio: pingpong (the reference), repeat or freeze
    trim: str = "audio"  # a video longer than the audio: cut to the audio (the reference), or keep it ("video")

    def check(self) -> InferenceOptions:
        """`OptionError` naming the first unusable setting, before any file or model is touched; a warning for a
        face threshold below the models'. Returns the options."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise OptionError(name, f"{what}, got {getattr(self, name)!r}")

        need(_whole(self.steps) and self.steps >= 1, "steps", "must be a whole number, at least 1")
        need(_number(self.guidance) and self.guidance >= 1, "guidance", "must be at least 1 (1: no guidance)")
        need(_whole(self.seed), "seed", "must be a whole number")
        need(self.scheduler in SCHEDULERS, "scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        need(_whole(self.deepcache) and self.deepcache >= 0, "deepcache", "must be 0 (off) or a whole number of steps")
        need(_whole(self.batch_chunks) and self.batch_chunks >= 1, "batch_chunks", "must be a whole number, at least 1")
        need(_whole(self.crf) and 0 <= self.crf <= MAX_CRF, "crf", f"must be a whole number from 0 to {MAX_CRF}")
        need(self.preset in X264_PRESETS, "preset", f"must be one of {', '.join(X264_PRESETS)}")
        need(self.audio_window in WINDOW_MODES, "audio_window", f"must be one of {', '.join(WINDOW_MODES)}")
        need(_whole(self.detect_every) and self.detect_every >= 1, "detect_every", "must be a whole number, at least 1")
        need(self.loop in LOOP_MODES, "loop", f"must be one of {', '.join(LOOP_MODES)}")
        need(self.trim in TRIM_MODES, "trim", f"must be one of {', '.join(TRIM_MODES)}")
        for name, check in (("face", check_rule), ("face_threshold", check_threshold)):
            try:
                check(getattr(self, name))
            except ConfigError as e:
                raise OptionError(name, str(e)) from None
        fraction = self.min_face_fraction
        need(_number(fraction) and 0 <= fraction <= 1, "min_face_fraction", "must be between 0 and 1")
        if self.face_threshold < MIN_FACE_SCORE:
            log.warning("face detection threshold %.2f (the models' is %.2f): stylised, drawn or 3D faces are not "
                        "what the models were trained on, and less certain detections may not be faces",
                        self.face_threshold, MIN_FACE_SCORE)
        return self

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
    return f"{count} without a face, kept as they were{describe_misses(missed)}" if count else ""


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        unet: a UNet checkpoint (the published `latentsync_unet.pt` format) to load instead of the checkpoints
            folder's, e.g. a fine-tuned one; `version` or `unet_config` must describe its architecture.
        offload: keep the VAE and the Whisper encoder in host memory while they are idle (the UNet's denoising,
            nearly all of a job); they visit the device to encode and decode. Part of the low-memory mode, with
            `InferenceOptions(low_memory=True)`; the same results.
        lora: a LoRA adapter (`latentsync finetune`'s adapter.safetensors) applied to the UNet without merging;
            one trained on another base UNet file is refused (CheckpointError). Needs the peft package.
        lora_scale: how much of the adapter's update to apply (1: as trained, 0: none; between or beyond
            interpolates or extrapolates).
    """

    @classmethod
    def from_pretrained(cls, repo_id: str = LATENTSYNC_REPOS[DEFAULT_VERSION], *, revision: str | None = None,
                        checkpoints: str | Path | None = None, cache_dir: str | Path | None = None,
                        progress: bool = True, **kwargs) -> LipSync:
        """The published models of `repo_id` ("ByteDance/LatentSync-1.6" or "ByteDance/LatentSync-1.5") at
        `revision`, loaded. Missing files are fetched through the Hugging Face cache (`cache_dir`, default
        huggingface_hub's) and linked into `checkpoints` (default `$LATENTSYNC_CHECKPOINTS` or ./checkpoints),
        as `latentsync download --version V --revision R` does; nothing is fetched when they are there.
        `kwargs` are `LipSync`'s (device, dtype, face_backend, ...)."""
        versions = {repo: version for version, repo in LATENTSYNC_REPOS.items()}
        if repo_id not in versions:
            raise ConfigError(f"{repo_id}: not a LatentSync repository; expected one of {', '.join(versions)}")
        root = Path(checkpoints) if checkpoints is not None else default_checkpoints_dir()
        download(versions[repo_id], root, revision=revision, cache_dir=cache_dir, progress=progress)
        return cls(root, version=versions[repo_id], **kwargs)

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
        unet: str | Path | None = None,
        lora: str | Path | None = None,
        lora_scale: float = 1.0,
    ):
        if not (_number(lora_scale) and math.isfinite(lora_scale)):
            raise OptionError("lora_scale", f"must be a number, got {lora_scale!r}")
        root = Path(checkpoints) if checkpoints is not None else default_checkpoints_dir()
        layout = CheckpointLayout(root)
        if unet is None:
            unet_path, whisper_path, vae_path = layout.require("unet", "whisper", "vae")
        else:  # a UNet of the user's own, beside the folder's Whisper and VAE
            whisper_path, vae_path = layout.require("whisper", "vae")
            unet_path = Path(unet)
            if not unet_path.is_file():
                raise CheckpointError(f"{unet_path}: UNet checkpoint not found")
        config = load_unet_config(unet_config if unet_config is not None else unet_config_for(root, version))
        self.unet_config = config  # for the memory estimate that sizes the VAE's calls
        self.resolution = config.data.resolution
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        t0 = time.perf_counter()
        adapter = None
        if lora is not None:  # an unusable adapter, or one for another UNet, is reported before the UNet loads
            adapter = read_adapter(lora)
            adapter.check_base(sha256_file(unet_path))
        unet = load_unet(config, unet_path, device=self.device, dtype=self.dtype)
        if adapter is not None:
            load_adapter(unet, adapter, scale=lora_scale)
        vae = load_vae(vae_path, device=self.device, dtype=self.dtype)
        if channels_last:  # convolutions then run (and hand on their outputs) in NHWC
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        if compile:
            # The first chunk (and each new chunk length) pays the compilation; worth it for long videos on a GPU.
            unet.forward = torch.compile(unet.forward)
            vae.decoder = torch.compile(vae.decoder)
        self.pipeline = LipSyncPipeline(unet, vae, self.resolution, offload_vae=offload)
        self.audio_encoder = WhisperAudioEncoder(whisper_path, device=self.device, dtype=self.dtype,
                                                 cache_dir=audio_cache, offload=offload)
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
        options.check()
        info = probe_video(video)  # InputError: missing, unreadable, no video stream
        mouth_mask(self.resolution, options.mask)  # InputError: an unusable mask image, before any work
        hidden, total, seconds = self._audio_features(audio, video, options, progress)
        with self._memory_errors(options):  # outside the writer: it discards its file first
            with VideoWriter(output, info.width, info.height, fps=FPS, crf=options.crf, preset=options.preset,
                             audio=audio, audio_duration_s=total / FPS) as writer:
                result = self._process(video, info.frames_at(FPS), hidden, total, writer.write, options, progress)
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
        options.check()
        info = probe_video(Path(video))
        mouth_mask(self.resolution, options.mask)
        hidden, total, seconds = self._audio_features(Path(audio), Path(video), options, progress)
        with self._memory_errors(options):
            result = self._process(Path(video), info.frames_at(FPS), hidden, total, sink, options, progress)
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

    def _audio_features(self, audio: Path, video: Path, options: InferenceOptions,
                        progress: Progress) -> tuple[torch.Tensor, int, float]:
        """The Whisper hidden states, the number of output frames and the seconds it took. The output has one
        frame per audio frame (`num_video_frames`), or with `trim="video"` at least as many as the video, the
        speech padded with silence (what the mouth then follows) to that length."""
        t0 = time.perf_counter()
        if callable(progress):
            progress("audio features", 0, 1)
        samples = decode_audio(audio, SAMPLE_RATE_HZ)  # InputError: missing, unreadable, no audio stream
        if samples.size and not np.any(samples):
            log.warning("%s: the speech track is silent (all samples are zero); the mouth follows silence", audio)
        total = num_video_frames(samples.size // MEL_HOP_SAMPLES // MEL_FRAMES_PER_ROW, FPS)
        if options.trim == "video":
            video_frames = VideoReader(video, fps=FPS).count()  # exact: a decode without colour conversion
            if video_frames > total:
                padded = np.zeros(video_frames * SAMPLES_PER_FRAME_25, dtype=np.float32)
                padded[: samples.size] = samples
                samples, total = padded, video_frames
        # A bar over the 30 s windows of long audio: this job's setting, passed with the call. Too short a
        # track goes in by name, so that its error names the file.
        hidden = self.audio_encoder.hidden_states(samples if samples.size >= MIN_SAMPLES else audio,
                                                  window=options.audio_window, progress=progress is True)
        if callable(progress):
            progress("audio features", 1, 1)
        assert num_video_frames(hidden.shape[0], FPS) >= total, (hidden.shape, total)
        return hidden, total, time.perf_counter() - t0

    def _process(self, video: Path, expected_frames: int, hidden: torch.Tensor, total: int, sink,
                 options: InferenceOptions, progress: Progress) -> InferenceResult:
        job = Job(self, video, expected_frames, hidden, total, options, progress)
        job.run(sink)
        if job.frames_with_face == 0:  # raised before the writer is closed: it discards its file
            raise InputError(f"{video}: no face found in any frame" + describe_misses(job.missed))
        missing = total - job.frames_with_face
        if missing > MISSED_WARNING_FRACTION * total:
            log.warning("%s: %d of %d frames (%.0f%%) have no face to sync: %s", video, missing, total,
                        100 * missing / total, describe_misses(job.missed, lead=""))
        return InferenceResult(output=None, frames=total, frames_without_face=missing,
                               face_backend=self.face_backend, seconds=dict(job.timings), missed=dict(job.missed))
