"""Audio features of LatentSync: decoding, Whisper frame embeddings (the UNet's audio conditioning), the SyncNet mel,
and the one on-disk cache both use.

Whisper frame embeddings (spec section 4). The Whisper-tiny encoder (`models.whisper`: the network, its two
window modes and its precision) turns the log-mel of the whole file into hidden states at 50 Hz (one row per
20 ms): `(N50, n_layer + 1, width)` = `(N50, 5, 384)` for tiny. Video frame i (at `fps`) takes the ten rows
`c-4 ... c+5` around `c = int(i * 50 / fps)`, clamped to the valid range, and flattens them time-major,
layer-minor into `(10 * 5, 384)` = `(50, 384)` tokens.

SyncNet mel (spec 5.1): the Wav2Lip log-mel at 80 frames per second that StableSyncNet's audio tower reads.

Cache (`FeatureCache`). Both features are cached on disk by content, one safetensors file per entry named by
the sha256 of a format version, the settings that change the result (for Whisper: the encoder weights, the
window mode and the compute dtype) and the decoded samples, never a file name. Entries are written under a
temporary name and renamed into place; an unreadable or misshapen entry is recomputed and rewritten; a disk that
cannot be written to costs the cache, not the run. The folders are `audio_embeds/` (Whisper) and `syncnet_mel/`
under `$LATENTSYNC_CACHE_DIR`, or else under the user cache folder (platformdirs).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import platformdirs
import torch
from einops import rearrange
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import defaults
from .devices import resolve_device, resolve_dtype
from .errors import InputError
from .fileio import atomic_write
from .media import decode_audio
from .models.offload import Offloaded, residency
from .models.whisper import (  # the Whisper geometry and windows: also importable from here, as before
    CHECKPOINT_ENCODER_PREFIX, HIDDEN_RATE_HZ, MEL_FRAMES_PER_ROW, MEL_HOP_SAMPLES, OVERLAP_MAX_HOP_ROWS,
    SAMPLE_RATE_HZ, WINDOW_MEL_FRAMES, WINDOW_MODES, WINDOW_ROWS, build_audio_encoder, crossfade_weights,
    encode_mel, overlap_window_starts, read_whisper_checkpoint, weights_fingerprint, whisper_package,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Audio to video frames.
MIN_SAMPLES = MEL_HOP_SAMPLES * MEL_FRAMES_PER_ROW  # 320 samples (20 ms) give the first row
# Per-frame context (spec 4): rows c-4 ... c+5 around the frame's row c, i.e. -80 ms ... +100 ms.
CONTEXT_ROWS_BEFORE = 4
CONTEXT_ROWS_AFTER = 5
STEPS_PER_FRAME = CONTEXT_ROWS_BEFORE + CONTEXT_ROWS_AFTER + 1  # 10
DEFAULT_FPS = defaults.FPS

# Cache. A version changes whenever an entry's meaning or its key does (syncnet-mel v2: now keyed by the rule
# the Whisper entries have always used, `FeatureCache.key`).
CACHE_DIR_ENV = "LATENTSYNC_CACHE_DIR"
CACHE_APP_NAME = "latentsync"
CACHE_FORMAT_VERSION = "latentsync.whisper-hidden-states.v1"
CACHE_SUBDIR = "audio_embeds"
CACHE_TENSOR_NAME = "hidden_states"
MEL_CACHE_FORMAT_VERSION = "latentsync.syncnet-mel.v2"
MEL_CACHE_SUBDIR = "syncnet_mel"
MEL_CACHE_TENSOR_NAME = "mel"

# ---------------------------------------------------------------------------------------------------------
# SyncNet mel: Wav2Lip's hparams, which LatentSync's configs/audio.yaml keeps.
SYNCNET_SAMPLE_RATE_HZ = defaults.SAMPLE_RATE_HZ
SYNCNET_N_FFT = 800
SYNCNET_HOP_SAMPLES = 200  # 12.5 ms: 80 mel frames per second
SYNCNET_WIN_SAMPLES = 800
SYNCNET_N_MELS = 80
SYNCNET_FMIN_HZ = 55.0
SYNCNET_FMAX_HZ = 7_600.0
SYNCNET_MEL_RATE_HZ = SYNCNET_SAMPLE_RATE_HZ // SYNCNET_HOP_SAMPLES  # 80
PREEMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1]
MIN_LEVEL_DB = -100.0  # amplitude floor, 1e-5
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4]
# Computed as Wav2Lip does (exp of dB * ln 10 / 20) so the floor is bit-identical to the reference.
MIN_LEVEL_AMPLITUDE = float(np.exp(MIN_LEVEL_DB / 20 * np.log(10)))
DEFAULT_SYNCNET_FRAMES = 16


# ---- Decoding and the cache --------------------------------------------------------------------------------


def _as_samples(audio) -> np.ndarray:
    """Contiguous float32 mono samples at 16 kHz from a path or a 1-D array; shape (n,)."""
    if isinstance(audio, (str, os.PathLike)):
        source = str(audio)
        samples = decode_audio(audio, SAMPLE_RATE_HZ)
    else:
        source = "audio samples"
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().float().numpy()
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio samples must be 1-D (16 kHz mono), got shape {samples.shape}")
    if samples.shape[0] < MIN_SAMPLES:
        raise InputError(f"{source}: audio too short ({samples.shape[0]} samples at {SAMPLE_RATE_HZ} Hz; "
                         f"at least {MIN_SAMPLES} needed)")
    return samples


def cache_root() -> Path:
    """`$LATENTSYNC_CACHE_DIR` if the variable is set, else the user cache folder of latentsync."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        root = platformdirs.user_cache_dir(CACHE_APP_NAME)
    return Path(root)


def default_cache_dir() -> Path:
    """`$LATENTSYNC_CACHE_DIR/audio_embeds` if the variable is set, else the user cache dir's `audio_embeds`."""
    return cache_root() / CACHE_SUBDIR


class FeatureCache:
    """Float32 tensors on disk by content (module docstring): `folder/<key>.safetensors`, one tensor each.

    `folder` None switches the cache off (reads miss, writes do nothing). `version` goes into every key: a new
    format, or a change in what is computed, is a new version and never meets the old entries."""

    def __init__(self, folder: str | os.PathLike | None, version: str, tensor_name: str):
        self.folder = None if folder is None else Path(folder)
        self.version, self.tensor_name = version, tensor_name

    def key(self, *settings: str, data: np.ndarray) -> str:
        """sha256 of the version, the `settings` that change the result, and the bytes of `data` (C-contiguous)."""
        h = hashlib.sha256()
        for part in (self.version, *settings):
            h.update(part.encode())
            h.update(b"\0")
        h.update(memoryview(data))
        return h.hexdigest()

    def get(self, key: str, compute: Callable[[], torch.Tensor], shape: tuple[int, ...] | None = None,
            **metadata: str) -> torch.Tensor:
        """The entry `key`, else `compute()` (a float32 tensor, of `shape` when given), stored with `metadata`."""
        path = None if self.folder is None else self.folder / f"{key}.safetensors"
        cached = self._read(path, shape) if path is not None and path.is_file() else None
        if cached is not None:
            return cached
        tensor = compute()
        assert tensor.dtype == torch.float32 and (shape is None or tuple(tensor.shape) == shape), (tensor.shape, shape)
        if path is not None:
            self._write(path, tensor, metadata)
        return tensor

    def _read(self, path: Path, shape: tuple[int, ...] | None) -> torch.Tensor | None:
        """The entry at `path`, or None when it is unreadable, not float32 or (given `shape`) another shape."""
        try:
            tensor = load_file(str(path))[self.tensor_name]
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
            log.warning("%s: unreadable cache entry, recomputing (%s)", path, str(e)[:200])
            return None
        if tensor.dtype != torch.float32 or (shape is not None and tuple(tensor.shape) != shape):
            log.warning("%s: cache entry is %s %s, expected float32 %s; recomputing",
                        path, tensor.dtype, tuple(tensor.shape), shape)
            return None
        return tensor

    def _write(self, path: Path, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
        try:
            # Written under a temporary name in the same folder, then renamed: readers never see half a file.
            with atomic_write(path, suffix=".safetensors") as tmp:
                save_file({self.tensor_name: tensor.contiguous()}, str(tmp),
                          metadata={"format": self.version, **metadata})
        except OSError as e:
            # The cache is an optimisation: a read-only or full disk must not fail the run.
            log.warning("%s: cannot write cache entry (%s)", path, e)


# ---- Whisper frame embeddings ------------------------------------------------------------------------------


class WhisperAudioEncoder:
    """Whisper's audio encoder as LatentSync uses it: 50 Hz per-layer hidden states and per-frame tokens, from a
    file or samples, cached (the network itself: `models.whisper`).

    Args:
        checkpoint: an OpenAI-format Whisper file (`{"dims": ..., "model_state_dict": ...}`, e.g. tiny.pt);
            only its `encoder.*` weights are loaded, strictly.
        device: where the encoder runs (None: the CPU; "auto": CUDA, then MPS, then the CPU).
        dtype: compute dtype, as `devices.resolve_dtype` reads it (None or "auto": float16 on CUDA, as the
            reference, else float32; "fp16", "bf16", "fp32" or torch's names). Weights stay float32.
        cache_dir: folder for cached hidden states; None: `default_cache_dir()`; False: no caching.
        progress: show a progress bar over the 30 s windows.
        offload: keep the weights in host memory and bring them to `device` only while encoding (low-memory
            inference: the encoder is idle once a job's audio is encoded).

    Attributes: `dims` (whisper ModelDimensions), `encoder` (whisper's AudioEncoder), `device`, `dtype`,
    `cache_dir` (Path or None), `weights_fingerprint` (sha256 of the encoder weights), `encoder_calls` (30 s
    windows encoded so far).
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None, cache_dir: str | os.PathLike | None | bool = None, *,
                 progress: bool = False, offload: bool = False):
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.dims, state = read_whisper_checkpoint(self.checkpoint)
        self.weights_fingerprint = weights_fingerprint(state)
        self.encoder = build_audio_encoder(self.dims, state, self.device, source=str(self.checkpoint))
        del state
        self._offload = Offloaded(self.encoder, self.device) if offload else None
        use_default = cache_dir is None or cache_dir is True
        self.cache_dir = None if cache_dir is False else default_cache_dir() if use_default else Path(cache_dir)
        self._cache = FeatureCache(self.cache_dir, CACHE_FORMAT_VERSION, CACHE_TENSOR_NAME)
        self.progress = progress
        self.encoder_calls = 0

    @property
    def num_states(self) -> int:
        """Hidden states per row: the block input plus one per block (5 for tiny)."""
        return self.dims.n_audio_layer + 1

    def hidden_states(self, audio, window: str = "overlap", progress: bool | None = None) -> torch.Tensor:
        """Per-layer hidden states at 50 Hz, float32 on the CPU: `(N50, n_layer + 1, width)`.

        `audio` is a path to any audio or video file, or a 1-D array (numpy or torch) of 16 kHz mono samples.
        `window` is "overlap" (default, no jumps every 30 s) or "reference" (LatentSync's segmentation);
        see `models.whisper`. `N50 = (len(samples) // 160) // 2` in both modes. `progress`: a bar over the
        30 s windows for this call (None: the encoder's `progress`); nothing of the call is kept on the encoder,
        which jobs in several threads may share.
        """
        if window not in WINDOW_MODES:
            raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
        samples = _as_samples(audio)
        n_rows = (samples.shape[0] // MEL_HOP_SAMPLES) // MEL_FRAMES_PER_ROW
        expected_shape = (n_rows, self.num_states, self.dims.n_audio_state)
        if n_rows <= WINDOW_ROWS:
            window = "reference"  # one 30 s window: both modes compute the same thing, so share the entry
        key = self._cache.key(self.weights_fingerprint, window, str(self.dtype), data=samples)
        show = self.progress if progress is None else progress
        return self._cache.get(key, lambda: self._compute(samples, window, show), expected_shape, window=window,
                               dtype=str(self.dtype), weights=self.weights_fingerprint, dims=repr(asdict(self.dims)))

    def frame_embeddings(self, audio, fps: float = DEFAULT_FPS, window: str = "overlap") -> torch.Tensor:
        """Audio tokens of every video frame, float32: `(F, 10 * (n_layer + 1), width)`, (F, 50, 384) for tiny.

        F is the reference's frame count (`floor(N50 / 2) + 2` at 25 fps). For long inputs this tensor is
        large (about 77 KB per frame for tiny); a pipeline can instead keep `hidden_states` and call
        `frame_window` per chunk.
        """
        return frame_embeddings_from_hidden(self.hidden_states(audio, window=window), fps=fps)

    def _compute(self, samples: np.ndarray, window: str, progress: bool) -> torch.Tensor:
        # The mel of the whole file, on the CPU as in the reference: its floor (global max - 8) depends on
        # the loudest part of the whole file, not of each window.
        mel = whisper_package().audio.log_mel_spectrogram(torch.from_numpy(samples), n_mels=self.dims.n_mels)

        def track(windows):  # this call's progress bar, and the count of windows encoded
            if progress and len(windows) > 1:
                from tqdm.auto import tqdm

                windows = tqdm(windows, desc="whisper", unit="window", leave=False)
            for item in windows:
                yield item
                self.encoder_calls += 1

        with residency(self._offload):
            return encode_mel(self.encoder, mel, window, self.dtype, track)  # (N50, L+1, D)


# ---- Frame slicing (pure functions, shared with training) --------------------------------------------------


def frame_row(frame: int, fps: float = DEFAULT_FPS) -> int:
    """The 50 Hz row at the centre of video frame `frame`: `int(frame * 50 / fps)`, as the reference."""
    return int(frame * HIDDEN_RATE_HZ / fps)


def num_video_frames(n_rows: int, fps: float = DEFAULT_FPS) -> int:
    """How many frames the reference produces from `n_rows` rows: floor(n_rows / 2) + 2 at 25 fps.

    The reference loop appends frame i and only then stops once `int(i * 50 / fps) > n_rows`, so every i with
    a centre row <= n_rows yields a frame, plus one more.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    count = 0
    while frame_row(count, fps) <= n_rows:
        count += 1
    return count + 1


def _frames_from_rows(hidden: torch.Tensor, frames: torch.Tensor, fps: float) -> torch.Tensor:
    """(F, 10 * L, D) tokens of the given frame indices; rows clamped to [0, N50 - 1]."""
    n_rows = hidden.shape[0]
    if n_rows == 0:
        raise ValueError("no hidden states (audio shorter than 20 ms)")
    centres = torch.tensor([frame_row(int(i), fps) for i in frames], dtype=torch.long)  # (F,)
    steps = centres.diff()
    if len(centres) > 1 and bool((steps == steps[0]).all()) and steps[0] > 0:
        return _strided_frames(hidden, int(centres[0]), len(centres), int(steps[0]))
    offsets = torch.arange(-CONTEXT_ROWS_BEFORE, CONTEXT_ROWS_AFTER + 1)  # (10,)
    rows = (centres[:, None] + offsets[None, :]).clamp(0, n_rows - 1)  # (F, 10)
    tokens = hidden[rows]  # (F, 10, L, D)
    return rearrange(tokens, "f t l d -> f (t l) d")  # time-major, layer-minor


def _strided_frames(hidden: torch.Tensor, first_centre: int, count: int, step: int) -> torch.Tensor:
    """The tokens of frames whose centre rows are evenly spaced (every frame rate that divides 50 Hz, 25 fps
    included), as a view: frame i's ten rows are consecutive, so (F, 10 * L, D) is a strided window over the
    hidden states, padded at the ends with copies of the first/last row (the reference's clamping).
    Overlapping frames share memory; clone before writing into the result."""
    n_rows = hidden.shape[0]
    first = first_centre - CONTEXT_ROWS_BEFORE
    last = first_centre + (count - 1) * step + CONTEXT_ROWS_AFTER
    before, after = max(0, -first), max(0, last - (n_rows - 1))
    lo, hi = max(first, 0), min(last, n_rows - 1)
    padded = torch.cat(
        [hidden[:1].expand(before, -1, -1), hidden[lo : hi + 1], hidden[-1:].expand(after, -1, -1)]
    )  # (rows of these frames, L, D), contiguous
    _, layers, width = padded.shape
    return padded.as_strided(
        (count, STEPS_PER_FRAME * layers, width), (step * layers * width, width, 1)
    )  # (F, 10 * L, D), time-major, layer-minor


def frame_embeddings_from_hidden(hidden: torch.Tensor, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """Tokens of every video frame from 50 Hz hidden states: (N50, L, D) -> (F, 10 * L, D).

    F = `num_video_frames(N50, fps)`; frame i takes rows `int(i * 50 / fps) - 4 ... + 5`, clamped.
    """
    frames = torch.arange(num_video_frames(hidden.shape[0], fps))
    return _frames_from_rows(hidden, frames, fps)


def frame_window(hidden: torch.Tensor, start_frame: int, num_frames: int, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """Tokens of frames `start_frame ... start_frame + num_frames - 1`: (num_frames, 10 * L, D).

    The same slicing as `frame_embeddings_from_hidden` (the training crop of the reference); rows past either
    end are clamped, as there.
    """
    if num_frames <= 0 or start_frame < 0:
        raise ValueError(f"need start_frame >= 0 and num_frames > 0, got {start_frame}, {num_frames}")
    frames = torch.arange(start_frame, start_frame + num_frames)
    return _frames_from_rows(hidden, frames, fps)


# ---- SyncNet mel (Wav2Lip) ---------------------------------------------------------------------------------


@functools.cache
def _syncnet_mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SYNCNET_SAMPLE_RATE_HZ, n_fft=SYNCNET_N_FFT, n_mels=SYNCNET_N_MELS,
                               fmin=SYNCNET_FMIN_HZ, fmax=SYNCNET_FMAX_HZ)  # (80, 401), slaney-normalised


def syncnet_mel(samples, sample_rate: int = SYNCNET_SAMPLE_RATE_HZ) -> np.ndarray:
    """Wav2Lip log-mel of 16 kHz mono samples, normalised to [-4, 4]: (n,) -> (80, 1 + n // 200) float32.

    Pre-emphasis 0.97, |STFT| (n_fft 800, hop 200, Hann, centred), 80 slaney mel bands 55-7600 Hz,
    20 log10(max(1e-5, x)) - 20 dB, then 8 * (S + 100) / 100 - 4 clipped to [-4, 4]. 80 frames per second.
    """
    import librosa
    import scipy.signal

    if sample_rate != SYNCNET_SAMPLE_RATE_HZ:
        raise ValueError(f"the SyncNet mel is defined at {SYNCNET_SAMPLE_RATE_HZ} Hz, got {sample_rate} Hz")
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().float().numpy()
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {x.shape}")
    emphasized = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], x)  # (n,)
    spec = np.abs(librosa.stft(y=emphasized, n_fft=SYNCNET_N_FFT, hop_length=SYNCNET_HOP_SAMPLES,
                               win_length=SYNCNET_WIN_SAMPLES))  # (401, T)
    mel = _syncnet_mel_basis() @ spec  # (80, T)
    db = 20 * np.log10(np.maximum(MIN_LEVEL_AMPLITUDE, mel)) - REF_LEVEL_DB
    scaled = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_window_length(num_frames: int = DEFAULT_SYNCNET_FRAMES, fps: float = DEFAULT_FPS) -> int:
    """Mel frames covering `num_frames` video frames: ceil(num_frames * 80 / fps) (52 for 16 at 25 fps)."""
    return math.ceil(num_frames * SYNCNET_MEL_RATE_HZ / fps)


def mel_window(mel, start_frame: int, num_frames: int = DEFAULT_SYNCNET_FRAMES, fps: float = DEFAULT_FPS):
    """The SyncNet mel under video frames `start_frame ...`: (80, T) -> (80, ceil(num_frames * 80 / fps)).

    Starts at mel frame `int(80 * start_frame / fps)`. Raises ValueError if the window runs past the end.
    """
    start = int(SYNCNET_MEL_RATE_HZ * start_frame / fps)
    length = mel_window_length(num_frames, fps)
    if start < 0 or start + length > mel.shape[-1]:
        raise ValueError(f"mel window of frames {start_frame}..{start_frame + num_frames - 1} needs mel frames "
                         f"{start}..{start + length - 1}, but the mel has {mel.shape[-1]}")
    return mel[..., start : start + length]


class SyncNetMelCache:
    """Whole-clip SyncNet mels on disk by content (a `FeatureCache` keyed by the decoded samples, never the file
    name): each clip's mel is computed once, whatever the process or the run. Implements the datasets'
    `get(path, compute)` hook (`compute` is not needed: the mel is computed from the samples decoded for the
    key). `cache_dir` None: `syncnet_mel/` beside the Whisper cache (module docstring)."""

    FORMAT = MEL_CACHE_FORMAT_VERSION

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / MEL_CACHE_SUBDIR
        self._cache = FeatureCache(self.cache_dir, self.FORMAT, MEL_CACHE_TENSOR_NAME)
        self._keys: dict[str, str] = {}  # path -> content key, so a clip is decoded once per process

    def get(self, path, compute=None) -> np.ndarray:
        """The SyncNet mel (80, T) float32 of the audio of `path`."""
        samples = None
        key = self._keys.get(str(path))
        if key is None:
            samples = decode_audio(path, SYNCNET_SAMPLE_RATE_HZ)
            key = self._keys[str(path)] = self._cache.key(data=samples)

        def mel() -> torch.Tensor:
            decoded = samples if samples is not None else decode_audio(path, SYNCNET_SAMPLE_RATE_HZ)
            return torch.from_numpy(np.ascontiguousarray(syncnet_mel(decoded), dtype=np.float32))

        return self._cache.get(key, mel).numpy()


__all__ = [  # the frame layout, Whisper's geometry and windows (from `models.whisper`), the cache, embeddings, mel
    "CHECKPOINT_ENCODER_PREFIX", "CONTEXT_ROWS_AFTER", "CONTEXT_ROWS_BEFORE", "DEFAULT_FPS", "HIDDEN_RATE_HZ",
    "MEL_FRAMES_PER_ROW", "MEL_HOP_SAMPLES", "MIN_SAMPLES", "OVERLAP_MAX_HOP_ROWS", "SAMPLE_RATE_HZ",
    "STEPS_PER_FRAME", "WINDOW_MEL_FRAMES", "WINDOW_MODES", "WINDOW_ROWS", "crossfade_weights",
    "overlap_window_starts",
    "CACHE_DIR_ENV", "FeatureCache", "SyncNetMelCache", "cache_root", "default_cache_dir",
    "WhisperAudioEncoder", "frame_embeddings_from_hidden", "frame_row", "frame_window", "num_video_frames",
    "DEFAULT_SYNCNET_FRAMES", "SYNCNET_FMAX_HZ", "SYNCNET_FMIN_HZ", "SYNCNET_HOP_SAMPLES", "SYNCNET_MEL_RATE_HZ",
    "SYNCNET_N_FFT", "SYNCNET_N_MELS", "SYNCNET_SAMPLE_RATE_HZ", "SYNCNET_WIN_SAMPLES", "mel_window",
    "mel_window_length", "syncnet_mel",
]
