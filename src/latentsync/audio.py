"""Audio features of LatentSync: Whisper frame embeddings (the UNet's audio conditioning) and the SyncNet mel.

Whisper frame embeddings (spec section 4). The Whisper-tiny encoder turns the log-mel of the whole file into
hidden states at 50 Hz (one row per 20 ms): the input of the first transformer block plus the output of
every block, before `ln_post`, i.e. `(N50, n_layer + 1, width)` = `(N50, 5, 384)` for tiny. Video frame i
(at `fps`) takes the ten rows `c-4 ... c+5` around `c = int(i * 50 / fps)`, clamped to the valid range, and
flattens them time-major, layer-minor into `(10 * 5, 384)` = `(50, 384)` tokens.

The encoder sees 30 s (3000 mel frames, 1500 rows) at a time. Two ways to cover longer audio:

* `window="reference"` reproduces LatentSync: consecutive non-overlapping 30 s windows, the last one zero
  padded *in mel space*, each encoded on its own and truncated to its real length. The model never saw
  anything else, so this is what the published UNet expects, but every 30 s the context jumps (row 1499 of one
  window is followed by row 0 of the next, with a new positional embedding and no shared attention
  context), which users see as a glitch in the mouth every 30 s (upstream issues #132, #151).
* `window="overlap"` (default) removes that jump. Up to 30 s it is the reference exactly (the same single
  padded window). Longer audio is covered by 30 s windows of real audio only (no padding: the last window
  ends at the end of the file), evenly spaced at most 20 s apart so that neighbours share at least 10 s.
  The rows of the windows are blended: each window's weight rises linearly from ~0 at its first row to 1
  across the overlap with its predecessor and falls back to ~0 at its last row across the overlap with its
  successor; each output row is the weight-normalised sum of the windows covering it. For all lengths except
  50-60 s and 70-75 s (where the windows must be less than 15 s apart) no row is covered by more than two
  windows and this is a plain linear cross-fade. Rows at a window edge, where the encoder's context
  is one-sided, therefore contribute almost nothing, and the output is continuous. The number of rows,
  `N50 = n_mel_frames // 2`, is the reference's for any length, so frame counts match. The price is more
  encoder work: `ceil((N50 - 1500) / 1000) + 1` windows instead of `ceil(N50 / 1500)` (3 instead of 2 for
  60 s; about 1.5x for long audio).

Precision follows the reference: the encoder weights stay float32 and the mel is fed in the compute dtype
(float16 on CUDA, as Whisper's `transcribe` did, float32 elsewhere); Whisper's Linear/Conv1d cast their weights
to the input dtype and its LayerNorm computes in float32. Attention uses Whisper's explicit
softmax(q k^T) path (what `whisper.model.disable_sdpa` selects) rather than PyTorch's fused SDPA, because
the Whisper copy LatentSync vendors predates SDPA; the two round differently in float16. `disable_sdpa` flips a
class-level switch that every Whisper model in the process reads, so our encoder's attention modules carry the
explicit path themselves (`_explicit_qkv_attention`) and nothing shared is switched.

Results are cached on disk by content: the key hashes the decoded samples, the encoder weights, the window
mode, the compute dtype and a format version, never a file name.

SyncNet mel (spec 5.1): the Wav2Lip log-mel at 80 frames per second that StableSyncNet's audio tower reads.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import types
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from . import defaults
from .devices import resolve_device, resolve_dtype
from .errors import CheckpointError, InputError
from .fileio import atomic_write
from .media import decode_audio
from .models.checkpoint import materialize, read_checkpoint
from .models.offload import Offloaded, residency

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Whisper geometry. These equal whisper.audio's constants (checked when Whisper is first imported); they are
# repeated here so that importing this module does not import Whisper (about 3 s).
SAMPLE_RATE_HZ = defaults.SAMPLE_RATE_HZ  # whisper.audio.SAMPLE_RATE
MEL_HOP_SAMPLES = 160  # whisper.audio.HOP_LENGTH: 100 mel frames per second
WINDOW_MEL_FRAMES = 3_000  # whisper.audio.N_FRAMES: the encoder reads 30 s at a time
MEL_FRAMES_PER_ROW = 2  # conv2 has stride 2: one hidden-state row per 2 mel frames
HIDDEN_RATE_HZ = 50  # rows per second (20 ms each)
WINDOW_ROWS = WINDOW_MEL_FRAMES // MEL_FRAMES_PER_ROW  # 1500 rows per 30 s window
MIN_SAMPLES = MEL_HOP_SAMPLES * MEL_FRAMES_PER_ROW  # 320 samples (20 ms) give the first row

# Overlapping windows: consecutive starts at most 20 s apart, so neighbours share at least 10 s.
OVERLAP_MAX_HOP_ROWS = 1_000

# Per-frame context (spec 4): rows c-4 ... c+5 around the frame's row c, i.e. -80 ms ... +100 ms.
CONTEXT_ROWS_BEFORE = 4
CONTEXT_ROWS_AFTER = 5
STEPS_PER_FRAME = CONTEXT_ROWS_BEFORE + CONTEXT_ROWS_AFTER + 1  # 10
DEFAULT_FPS = defaults.FPS

WINDOW_MODES = ("overlap", "reference")
CHECKPOINT_ENCODER_PREFIX = "encoder."

# Cache.
CACHE_FORMAT_VERSION = "latentsync.whisper-hidden-states.v1"
CACHE_DIR_ENV = "LATENTSYNC_CACHE_DIR"
CACHE_APP_NAME = "latentsync"
CACHE_SUBDIR = "audio_embeds"
CACHE_TENSOR_NAME = "hidden_states"

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


# =========================================================================================================
# Whisper encoder
# =========================================================================================================


@functools.cache
def _whisper():
    """The openai-whisper package, imported on first use (it takes seconds)."""
    import whisper.audio
    import whisper.model

    expected = {
        "SAMPLE_RATE": SAMPLE_RATE_HZ,
        "HOP_LENGTH": MEL_HOP_SAMPLES,
        "N_FRAMES": WINDOW_MEL_FRAMES,
        "TOKENS_PER_SECOND": HIDDEN_RATE_HZ,
    }
    for name, value in expected.items():
        if getattr(whisper.audio, name) != value:
            raise RuntimeError(f"whisper.audio.{name} is {getattr(whisper.audio, name)}, latentsync expects {value}")
    return whisper


def _read_whisper_checkpoint(path: Path):
    """(ModelDimensions, encoder state dict without the `encoder.` prefix) of an OpenAI-format Whisper file."""
    whisper = _whisper()
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("dims"), Mapping) or not isinstance(
        obj.get("model_state_dict"), Mapping
    ):
        found = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not an OpenAI Whisper checkpoint (expected 'dims' and 'model_state_dict', found {found})"
        )
    try:
        dims = whisper.model.ModelDimensions(**obj["dims"])
    except TypeError as e:
        raise CheckpointError(f"{path}: invalid Whisper dims ({e})") from None
    if dims.n_audio_ctx != WINDOW_ROWS:
        raise CheckpointError(
            f"{path}: n_audio_ctx is {dims.n_audio_ctx}; LatentSync's 30 s windows need {WINDOW_ROWS}"
        )
    state = {
        k[len(CHECKPOINT_ENCODER_PREFIX) :]: v
        for k, v in obj["model_state_dict"].items()
        if k.startswith(CHECKPOINT_ENCODER_PREFIX)
    }
    if not state:
        raise CheckpointError(f"{path}: the Whisper checkpoint has no 'encoder.*' weights")
    return dims, state


def _fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict (identifies the weights, not the file)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """`$LATENTSYNC_CACHE_DIR/audio_embeds` if the variable is set, else the user cache dir's `audio_embeds`."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir(CACHE_APP_NAME)
    return Path(root) / CACHE_SUBDIR


def _explicit_qkv_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    """Whisper's `MultiHeadAttention.qkv_attention` with SDPA off (its `disable_sdpa` branch, the same
    operations in the same order), bound to one module so that no other Whisper model is affected."""
    n_ctx = q.shape[1]
    scale = (q.shape[2] // self.n_head) ** -0.25
    q = q.view(*q.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)  # b h t d
    k = k.view(*k.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
    v = v.view(*v.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
    qk = (q * scale) @ (k * scale).transpose(-1, -2)  # b h t t
    if mask is not None:
        qk = qk + mask[:n_ctx, :n_ctx]
    qk = qk.float()
    w = F.softmax(qk, dim=-1).to(q.dtype)
    return (w @ v).permute(0, 2, 1, 3).flatten(start_dim=2), qk.detach()


def _progress(items, show: bool):
    """`items`, with a bar over them when `show` and there are several."""
    if not show or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="whisper", unit="window", leave=False)


class WhisperAudioEncoder:
    """Whisper's audio encoder as LatentSync uses it: 50 Hz per-layer hidden states and per-frame tokens.

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

    Attributes: `dims` (whisper ModelDimensions), `device`, `dtype`, `cache_dir` (Path or None),
    `weights_fingerprint` (sha256 of the encoder weights), `encoder_calls` (30 s windows encoded so far).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
        *,
        progress: bool = False,
        offload: bool = False,
    ):
        whisper = _whisper()
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.dims, state = _read_whisper_checkpoint(self.checkpoint)
        self.weights_fingerprint = _fingerprint(state)
        d = self.dims
        # Weights in float32 as whisper.load_model leaves them (the published files are float16; upcasting
        # is exact, and Whisper's layers cast back to the input dtype per call).
        self.encoder = materialize(
            lambda: whisper.model.AudioEncoder(
                d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer
            ),
            state,
            device=self.device,
            dtype=torch.float32,
            source=str(self.checkpoint),
        ).eval()
        del state
        self.encoder.requires_grad_(False)
        for module in self.encoder.modules():  # this encoder's own attention path, no class-level switch
            if isinstance(module, whisper.model.MultiHeadAttention):
                module.qkv_attention = types.MethodType(_explicit_qkv_attention, module)
        self._offload = Offloaded(self.encoder, self.device) if offload else None
        if cache_dir is False:
            self.cache_dir = None
        elif cache_dir is None or cache_dir is True:
            self.cache_dir = default_cache_dir()
        else:
            self.cache_dir = Path(cache_dir)
        self.progress = progress
        self.encoder_calls = 0

    @property
    def num_states(self) -> int:
        """Hidden states per row: the block input plus one per block (5 for tiny)."""
        return self.dims.n_audio_layer + 1

    # ---- public API -------------------------------------------------------------------------------------

    def hidden_states(self, audio, window: str = "overlap", progress: bool | None = None) -> torch.Tensor:
        """Per-layer hidden states at 50 Hz, float32 on the CPU: `(N50, n_layer + 1, width)`.

        `audio` is a path to any audio or video file, or a 1-D array (numpy or torch) of 16 kHz mono samples.
        `window` is "overlap" (default, no jumps every 30 s) or "reference" (LatentSync's segmentation);
        see the module docstring. `N50 = (len(samples) // 160) // 2` in both modes. `progress`: a bar over the
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
        key = self._cache_key(samples, window)
        cached = self._cache_read(key, expected_shape)
        if cached is not None:
            return cached
        hidden = self._compute(samples, window, self.progress if progress is None else progress)
        assert tuple(hidden.shape) == expected_shape, (hidden.shape, expected_shape)
        self._cache_write(key, hidden, window)
        return hidden

    def frame_embeddings(self, audio, fps: float = DEFAULT_FPS, window: str = "overlap") -> torch.Tensor:
        """Audio tokens of every video frame, float32: `(F, 10 * (n_layer + 1), width)`, (F, 50, 384) for tiny.

        F is the reference's frame count (`floor(N50 / 2) + 2` at 25 fps). For long inputs this tensor is
        large (about 77 KB per frame for tiny); a pipeline can instead keep `hidden_states` and call
        `frame_window` per chunk.
        """
        return frame_embeddings_from_hidden(self.hidden_states(audio, window=window), fps=fps)

    # ---- encoding ----------------------------------------------------------------------------------------

    def _compute(self, samples: np.ndarray, window: str, progress: bool) -> torch.Tensor:
        whisper = _whisper()
        # The mel of the whole file, on the CPU as in the reference: its floor (global max - 8) depends on
        # the loudest part of the whole file, not of each window.
        mel = whisper.audio.log_mel_spectrogram(torch.from_numpy(samples), n_mels=self.dims.n_mels)  # (m, T)
        n_rows = mel.shape[-1] // MEL_FRAMES_PER_ROW
        with residency(self._offload):
            if window == "reference" or n_rows <= WINDOW_ROWS:
                return self._encode_reference(mel, progress)
            return self._encode_overlap(mel, progress)

    def _encode_reference(self, mel: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """LatentSync's segmentation: windows at 0, 30 s, 60 s, ..., zero-padded in mel space, truncated."""
        whisper = _whisper()
        n_frames = mel.shape[-1]
        seeks = range(0, n_frames, WINDOW_MEL_FRAMES)
        parts = []
        for seek in _progress(seeks, progress):
            end_seek = min(seek + WINDOW_MEL_FRAMES, n_frames)
            keep = (end_seek - seek) // MEL_FRAMES_PER_ROW
            if keep == 0:
                # A last sliver of a single mel frame: the reference encodes it and keeps no row of it.
                continue
            segment = whisper.audio.pad_or_trim(mel[:, seek : seek + WINDOW_MEL_FRAMES], WINDOW_MEL_FRAMES)
            parts.append(self._encode_window(segment)[:keep])  # (keep, L+1, D)
        return torch.cat(parts)  # (N50, L+1, D)

    def _encode_overlap(self, mel: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Overlapping unpadded windows blended with linear cross-fades (see the module docstring)."""
        n_rows = mel.shape[-1] // MEL_FRAMES_PER_ROW
        starts = overlap_window_starts(n_rows)
        weights = crossfade_weights(starts)
        acc = torch.zeros(n_rows, self.num_states, self.dims.n_audio_state, dtype=torch.float64)
        total = torch.zeros(n_rows, dtype=torch.float64)
        for start, weight in _progress(list(zip(starts, weights)), progress):
            first = start * MEL_FRAMES_PER_ROW
            h = self._encode_window(mel[:, first : first + WINDOW_MEL_FRAMES])  # (1500, L+1, D)
            rows = slice(start, start + WINDOW_ROWS)
            acc[rows] += weight[:, None, None] * h.double()
            total[rows] += weight
        return (acc / total[:, None, None]).float()  # (N50, L+1, D)

    def _encode_window(self, segment: torch.Tensor) -> torch.Tensor:
        """Hidden states of one 30 s window: mel (m, 3000) -> (1500, L+1, D) float32 on the CPU.

        Runs the package's own submodules, as `AudioEncoder.forward` does, keeping every block's output.
        """
        whisper = _whisper()
        enc = self.encoder
        x = segment.to(device=self.device, dtype=self.dtype)[None]  # (1, m, 3000)
        with torch.inference_mode():  # the explicit attention (`_explicit_qkv_attention`), as the reference
            x = F.gelu(enc.conv1(x))  # (1, D, 3000)
            x = F.gelu(enc.conv2(x))  # (1, D, 1500)
            x = rearrange(x, "b d t -> b t d")  # (1, 1500, D)
            x = (x + enc.positional_embedding).to(x.dtype)  # fp32 sum, then back to the compute dtype
            states = [x]
            for block in enc.blocks:
                x = block(x)  # (1, 1500, D)
                states.append(x)
        self.encoder_calls += 1
        return torch.stack(states, dim=2)[0].float().cpu()  # (1500, L+1, D)

    # ---- cache -------------------------------------------------------------------------------------------

    def _cache_key(self, samples: np.ndarray, window: str) -> str:
        h = hashlib.sha256()
        for part in (CACHE_FORMAT_VERSION, self.weights_fingerprint, window, str(self.dtype)):
            h.update(part.encode())
            h.update(b"\0")
        h.update(memoryview(samples))
        return h.hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.safetensors"

    def _cache_read(self, key: str, expected_shape: tuple[int, ...]) -> torch.Tensor | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            hidden = load_file(str(path))[CACHE_TENSOR_NAME]
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
            log.warning("%s: unreadable audio cache entry, recomputing (%s)", path, str(e)[:200])
            return None
        if tuple(hidden.shape) != expected_shape or hidden.dtype != torch.float32:
            log.warning(
                "%s: audio cache entry is %s %s, expected float32 %s; recomputing",
                path, hidden.dtype, tuple(hidden.shape), expected_shape,
            )
            return None
        return hidden

    def _cache_write(self, key: str, hidden: torch.Tensor, window: str) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        metadata = {
            "format": CACHE_FORMAT_VERSION,
            "window": window,
            "dtype": str(self.dtype),
            "weights": self.weights_fingerprint,
            "dims": repr(asdict(self.dims)),
        }
        try:
            # Written under a temporary name in the same folder, then renamed: readers never see half a file.
            with atomic_write(path) as tmp:
                save_file({CACHE_TENSOR_NAME: hidden.contiguous()}, str(tmp), metadata=metadata)
        except OSError as e:
            # The cache is an optimisation: a read-only or full disk must not fail the run.
            log.warning("%s: cannot write audio cache entry (%s)", path, e)


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
        raise InputError(
            f"{source}: audio too short ({samples.shape[0]} samples at {SAMPLE_RATE_HZ} Hz; "
            f"at least {MIN_SAMPLES} needed)"
        )
    return samples


def overlap_window_starts(n_rows: int) -> list[int]:
    """First rows of the 1500-row windows that cover `n_rows` rows (> 1500) in "overlap" mode.

    The first starts at 0, the last at `n_rows - 1500` (so no window needs padding), and the
    `ceil((n_rows - 1500) / 1000) + 1` starts are evenly spaced, at most 1000 rows (20 s) apart. Rows are
    integers, so every window starts on an even mel frame and its rows fall on the reference's 50 Hz grid.
    """
    span = n_rows - WINDOW_ROWS
    if span <= 0:
        return [0]
    gaps = -(-span // OVERLAP_MAX_HOP_ROWS)  # ceil
    # Rounded to the nearest row, in integers: start_k = round(k * span / gaps).
    return [(2 * k * span + gaps) // (2 * gaps) for k in range(gaps + 1)]


def crossfade_weights(starts: list[int]) -> list[torch.Tensor]:
    """Blend weights (1500,) float64 of each window at `starts` (rows; sorted; each window 1500 rows).

    A window's weight rises linearly across its overlap with the previous window and falls across its overlap
    with the next one, evaluated at row centres, so its edge rows get ~0 and, where exactly two windows
    overlap, the two weights sum to 1 (a linear cross-fade). The first window has no rising ramp and the last
    no falling one.
    """
    pos = torch.arange(WINDOW_ROWS, dtype=torch.float64) + 0.5  # row centres inside a window
    weights = []
    for k, start in enumerate(starts):
        w = torch.ones(WINDOW_ROWS, dtype=torch.float64)
        if k > 0:
            ramp = starts[k - 1] + WINDOW_ROWS - start  # rows shared with the previous window
            w = torch.minimum(w, pos / ramp)
        if k < len(starts) - 1:
            ramp = start + WINDOW_ROWS - starts[k + 1]  # rows shared with the next window
            w = torch.minimum(w, (WINDOW_ROWS - pos) / ramp)
        weights.append(w)
    return weights


# =========================================================================================================
# Frame slicing (pure functions, shared with training)
# =========================================================================================================


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


# =========================================================================================================
# SyncNet mel (Wav2Lip)
# =========================================================================================================


@functools.cache
def _syncnet_mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(
        sr=SYNCNET_SAMPLE_RATE_HZ,
        n_fft=SYNCNET_N_FFT,
        n_mels=SYNCNET_N_MELS,
        fmin=SYNCNET_FMIN_HZ,
        fmax=SYNCNET_FMAX_HZ,
    )  # (80, 401), slaney-normalised


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
    spec = np.abs(
        librosa.stft(y=emphasized, n_fft=SYNCNET_N_FFT, hop_length=SYNCNET_HOP_SAMPLES, win_length=SYNCNET_WIN_SAMPLES)
    )  # (401, T)
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
        raise ValueError(
            f"mel window of frames {start_frame}..{start_frame + num_frames - 1} needs mel frames "
            f"{start}..{start + length - 1}, but the mel has {mel.shape[-1]}"
        )
    return mel[..., start : start + length]


class SyncNetMelCache:
    """Whole-clip SyncNet mels on disk, keyed by a hash of the decoded samples (never the file name), like the
    Whisper features: each clip's mel is computed once, whatever the process or the run. Entries are atomic
    safetensors files; an unreadable one is recomputed. Implements the datasets' `get(path, compute)` hook
    (`compute` is not needed: the mel is computed from the samples decoded for the key)."""

    FORMAT = "latentsync.syncnet-mel.v1"

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir().parent / "syncnet_mel"
        self._keys: dict[str, str] = {}  # path -> content key, so a clip is decoded once per process

    def get(self, path, compute=None) -> np.ndarray:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file, save_file

        samples = None
        key = self._keys.get(str(path))
        if key is None:
            samples = decode_audio(path, SYNCNET_SAMPLE_RATE_HZ)
            key = hashlib.sha256(self.FORMAT.encode() + memoryview(samples)).hexdigest()
            self._keys[str(path)] = key
        entry = self.cache_dir / f"{key}.safetensors"
        if entry.is_file():
            try:
                return load_file(str(entry))["mel"]
            except (SafetensorError, OSError, KeyError, ValueError) as e:
                log.warning("%s: unreadable mel cache entry, recomputing (%s)", entry, str(e)[:200])
        if samples is None:
            samples = decode_audio(path, SYNCNET_SAMPLE_RATE_HZ)
        mel = np.ascontiguousarray(syncnet_mel(samples), dtype=np.float32)
        try:
            with atomic_write(entry, suffix=".safetensors") as tmp:
                save_file({"mel": mel}, str(tmp), metadata={"format": self.FORMAT})
        except OSError as e:
            log.warning("%s: cannot write mel cache entry (%s)", entry, e)
        return mel
