"""Whisper's audio encoder as LatentSync reads it (spec section 4), on tensors only: log-mel in, 50 Hz per-layer
hidden states out. Decoding files, the frame slicing and the feature cache are `latentsync.audio`'s.

The network is openai-whisper's own `AudioEncoder`, imported on first use (about 3 s) and loaded from an
OpenAI-format checkpoint (`{"dims": ..., "model_state_dict": ...}`, the published `whisper/tiny.pt`): only its
`encoder.*` weights, strictly, under their published names. The hidden states are the input of the first
transformer block plus the output of every block, before `ln_post`: `(N50, n_layer + 1, width)` = `(N50, 5, 384)`
for tiny, one row per 20 ms.

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
(float16 on CUDA, as Whisper's `transcribe` did, float32 elsewhere, unless the job asks for another);
Whisper's Linear/Conv1d cast their weights to the input dtype and its LayerNorm computes in float32. Attention
uses Whisper's explicit softmax(q k^T) path (what `whisper.model.disable_sdpa` selects) rather than PyTorch's
fused SDPA, because the Whisper copy LatentSync vendors predates SDPA; the two round differently in float16.
`disable_sdpa` flips a class-level switch that every Whisper model in the process reads, so our encoder's
attention modules carry the explicit path themselves (`_explicit_qkv_attention`) and nothing shared is switched.

Axis letters in shape comments: b batch, m mel bins, t time (mel frames or rows), l states (n_layer + 1),
d width, h heads.
"""

from __future__ import annotations

import functools
import hashlib
import types
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .. import defaults
from ..errors import CheckpointError
from .checkpoint import materialize, read_checkpoint

# Whisper geometry. These equal whisper.audio's constants (checked when Whisper is first imported); they are
# repeated here so that importing this module does not import Whisper (about 3 s).
SAMPLE_RATE_HZ = defaults.SAMPLE_RATE_HZ  # whisper.audio.SAMPLE_RATE
MEL_HOP_SAMPLES = 160  # whisper.audio.HOP_LENGTH: 100 mel frames per second
WINDOW_MEL_FRAMES = 3_000  # whisper.audio.N_FRAMES: the encoder reads 30 s at a time
MEL_FRAMES_PER_ROW = 2  # conv2 has stride 2: one hidden-state row per 2 mel frames
HIDDEN_RATE_HZ = 50  # whisper.audio.TOKENS_PER_SECOND: rows per second (20 ms each)
WINDOW_ROWS = WINDOW_MEL_FRAMES // MEL_FRAMES_PER_ROW  # 1500 rows per 30 s window

# Overlapping windows: consecutive starts at most 20 s apart, so neighbours share at least 10 s.
OVERLAP_MAX_HOP_ROWS = 1_000

WINDOW_MODES = ("overlap", "reference")
CHECKPOINT_ENCODER_PREFIX = "encoder."
# Whisper tiny's encoder dimensions (the UNet's cross-attention expects 384-d tokens), with the text decoder,
# which latentsync never runs, shrunk: the Whisper files the demo and the tests write, and the encoder the
# memory estimates assume.
TINY_WHISPER_DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=64, n_text_ctx=8, n_text_state=64, n_text_head=2, n_text_layer=1,
)


@functools.cache
def whisper_package():
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


# ---- loading ------------------------------------------------------------------------------------------------


def read_whisper_checkpoint(path: str | Path):
    """(ModelDimensions, encoder state dict without the `encoder.` prefix) of an OpenAI-format Whisper file."""
    whisper = whisper_package()
    path = Path(path)
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


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict (identifies the weights, not the file)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_audio_encoder(dims, state: Mapping[str, torch.Tensor], device: torch.device, source: str) -> nn.Module:
    """Whisper's `AudioEncoder` of `dims` with `state` loaded strictly on `device`: frozen, in eval mode, with the
    explicit attention path on its own modules (module docstring).

    Weights in float32 as whisper.load_model leaves them (the published files are float16; upcasting is exact,
    and Whisper's layers cast back to the input dtype per call)."""
    whisper = whisper_package()
    encoder = materialize(
        lambda: whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                                           dims.n_audio_layer),
        state,
        device=device,
        dtype=torch.float32,
        source=source,
    ).eval()
    encoder.requires_grad_(False)
    for module in encoder.modules():  # this encoder's own attention path, no class-level switch
        if isinstance(module, whisper.model.MultiHeadAttention):
            module.qkv_attention = types.MethodType(_explicit_qkv_attention, module)
    return encoder


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


# ---- windows ------------------------------------------------------------------------------------------------


def reference_windows(n_mel_frames: int) -> list[tuple[int, int]]:
    """(first mel frame, rows kept) of LatentSync's windows at 0, 30 s, 60 s, ... over `n_mel_frames` frames.

    A last sliver of a single mel frame keeps no row: the reference encodes it and drops it, we skip it."""
    windows = []
    for seek in range(0, n_mel_frames, WINDOW_MEL_FRAMES):
        keep = (min(seek + WINDOW_MEL_FRAMES, n_mel_frames) - seek) // MEL_FRAMES_PER_ROW
        if keep > 0:
            windows.append((seek, keep))
    return windows


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


# ---- encoding -----------------------------------------------------------------------------------------------

Track = Callable[[list], Iterable]  # wraps the iteration over a call's windows (a progress bar, a counter)


def encode_window(encoder: nn.Module, segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Hidden states of one 30 s window: mel (m, 3000) -> (1500, L+1, D) float32 on the CPU.

    Runs the package's own submodules, as `AudioEncoder.forward` does, keeping every block's output. The mel is
    fed in `dtype` on the encoder's device; the rows come back to the host because the overlap blend adds them
    in float64, which MPS lacks.
    """
    x = segment.to(device=encoder.conv1.weight.device, dtype=dtype)[None]  # (1, m, 3000)
    with torch.inference_mode():  # the explicit attention (`_explicit_qkv_attention`), as the reference
        x = F.gelu(encoder.conv1(x))  # (1, D, 3000)
        x = F.gelu(encoder.conv2(x))  # (1, D, 1500)
        x = rearrange(x, "b d t -> b t d")  # (1, 1500, D)
        x = (x + encoder.positional_embedding).to(x.dtype)  # fp32 sum, then back to the compute dtype
        states = [x]
        for block in encoder.blocks:
            x = block(x)  # (1, 1500, D)
            states.append(x)
    return torch.stack(states, dim=2)[0].float().cpu()  # (1500, L+1, D)


def encode_mel(encoder: nn.Module, mel: torch.Tensor, window: str, dtype: torch.dtype,
               track: Track | None = None) -> torch.Tensor:
    """Per-layer hidden states of a whole log-mel: (m, T) -> (T // 2, L+1, D) float32 on the CPU.

    `window` is "overlap" or "reference" (module docstring); up to 30 s both are the same single window.
    `track(windows)` is iterated instead of the list of windows, each item it yields is encoded right after.
    """
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    track = track or (lambda items: items)
    n_rows = mel.shape[-1] // MEL_FRAMES_PER_ROW
    if window == "reference" or n_rows <= WINDOW_ROWS:
        return _encode_reference(encoder, mel, dtype, track)
    return _encode_overlap(encoder, mel, dtype, track)


def _encode_reference(encoder: nn.Module, mel: torch.Tensor, dtype: torch.dtype, track: Track) -> torch.Tensor:
    """LatentSync's segmentation: windows at 0, 30 s, 60 s, ..., zero-padded in mel space, truncated."""
    pad_or_trim = whisper_package().audio.pad_or_trim
    parts = []
    for seek, keep in track(reference_windows(mel.shape[-1])):
        segment = pad_or_trim(mel[:, seek : seek + WINDOW_MEL_FRAMES], WINDOW_MEL_FRAMES)  # (m, 3000)
        parts.append(encode_window(encoder, segment, dtype)[:keep])  # (keep, L+1, D)
    return torch.cat(parts)  # (N50, L+1, D)


def _encode_overlap(encoder: nn.Module, mel: torch.Tensor, dtype: torch.dtype, track: Track) -> torch.Tensor:
    """Overlapping unpadded windows blended with linear cross-fades (see the module docstring)."""
    n_rows = mel.shape[-1] // MEL_FRAMES_PER_ROW
    starts = overlap_window_starts(n_rows)
    weights = crossfade_weights(starts)
    n_states, width = len(encoder.blocks) + 1, encoder.conv2.out_channels  # L+1, D
    acc = torch.zeros(n_rows, n_states, width, dtype=torch.float64)  # (N50, L+1, D)
    total = torch.zeros(n_rows, dtype=torch.float64)  # (N50,)
    for start, weight in track(list(zip(starts, weights))):
        first = start * MEL_FRAMES_PER_ROW
        h = encode_window(encoder, mel[:, first : first + WINDOW_MEL_FRAMES], dtype)  # (1500, L+1, D)
        rows = slice(start, start + WINDOW_ROWS)
        acc[rows] += weight[:, None, None] * h.double()
        total[rows] += weight
    return (acc / total[:, None, None]).float()  # (N50, L+1, D)


__all__ = [
    "HIDDEN_RATE_HZ",
    "MEL_FRAMES_PER_ROW",
    "MEL_HOP_SAMPLES",
    "OVERLAP_MAX_HOP_ROWS",
    "SAMPLE_RATE_HZ",
    "WINDOW_MEL_FRAMES",
    "WINDOW_MODES",
    "WINDOW_ROWS",
    "build_audio_encoder",
    "crossfade_weights",
    "encode_mel",
    "encode_window",
    "overlap_window_starts",
    "read_whisper_checkpoint",
    "reference_windows",
    "weights_fingerprint",
    "whisper_package",
]
