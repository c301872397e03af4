"""StableSyncNet: the audio-visual sync discriminator of LatentSync (spec 5.1).

Two convolutional towers (`DownEncoder2D`) embed a window of 16 mouth-region frames and the matching mel
window into one vector each; their cosine similarity is the probability that the two are in sync. The
released `stable_syncnet.pt` (config `syncnet_16_pixel_attn`) supervises the UNet of LatentSync 1.5/1.6
through this score.

Module and parameter names follow the published state dict (`syncnet-keys.tsv`), so the published file
loads strictly without renaming. Axis letters in shape comments: b batch, c channels, h height, w width,
n tokens (h*w), d head width, k heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from ..config import SyncNetConfig, SyncNetEncoderConfig, SyncNetModelConfig, load_syncnet_config
from .attention import Attention, FeedForward
from .checkpoint import KeyReport, atomic_torch_save, load_module, resolve_device

# Normalisation as in the published network (diffusers-style VAE blocks): 32 groups, eps 1e-6.
NORM_GROUPS = 32
NORM_EPS = 1e-6
ATTENTION_HEADS = 8
FF_MULT = 4  # GEGLU hidden width = FF_MULT * channels (the projection is twice that: value and gate)

# Audio input: Wav2Lip mel spectrogram, 80 bins at 80 frames per second (16 kHz, hop 200), spec 5.1.
MEL_BINS = 80
MEL_FRAMES_PER_SECOND = 80
VAE_DOWNSCALE = 8  # latent-space SyncNet sees SD-VAE latents: 256 px face -> 32x32

# Keys of the published checkpoint dict besides "state_dict" (train_syncnet.py writes them all).
HISTORY_KEYS = ("train_step_list", "train_loss_list", "val_step_list", "val_loss_list")

Factor = Union[int, tuple[int, int]]


def _as_pair(factor: Factor) -> tuple[int, int]:
    """A downsample factor as (height stride, width stride); an int means the same on both axes."""
    if isinstance(factor, int):
        return factor, factor
    fh, fw = factor
    return int(fh), int(fw)


def downsample_padding(factor: Factor) -> tuple[int, int, int, int]:
    """Zero padding (left, right, top, bottom) applied before the stride-`factor` 3x3 conv (padding 0).

    Matches the published network: a one-pixel pad on the far side of every strided axis, and a pad on both
    sides of an axis with stride 1 so that the 3x3 kernel keeps its size. The (2, 3) factor of the audio
    tower's last stage falls in the default case.
    """
    fh, fw = _as_pair(factor)
    if fh == 1 and fw != 1:
        return (0, 1, 1, 1)
    if fw == 1 and fh != 1:
        return (1, 1, 0, 1)
    return (0, 1, 0, 1)


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block (GN -> SiLU -> conv3x3, twice), then an optional strided 3x3 downsample."""

    def __init__(self, in_channels: int, out_channels: int, downsample_factor: Factor = 2, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_channels, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # The published file has a shortcut conv only where the channel count changes.
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.downsample_factor = _as_pair(downsample_factor)
        if self.downsample_factor != (1, 1):
            self.pad = downsample_padding(downsample_factor)
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, 3, stride=self.downsample_factor)
        else:
            self.downsample_conv = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # b c h w (c = out)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # b c h w
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)  # b c h w
        h = x + h  # b c h w
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))  # b c h/fh w/fw (rounded as in the published net)
        return h


class AttentionBlock2D(nn.Module):
    """Spatial transformer block: GN -> 1x1 conv -> tokens -> (LN, self-attn, +res) -> (LN, GEGLU FF, +res)
    -> 1x1 conv -> + input."""

    def __init__(self, channels: int, heads: int = ATTENTION_HEADS, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.LayerNorm(channels)
        # q/k/v carry biases here (unlike the UNet's attention): the published `attn.to_q.bias` keys.
        self.attn = Attention(channels, heads, channels // heads, qkv_bias=True, dropout=dropout)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, mult=FF_MULT, dropout=dropout)
        self.conv_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        h = self.conv_in(self.norm1(x))  # b c h w
        h = rearrange(h, "b c h w -> b (h w) c")  # b n c
        h = self.attn(self.norm2(h)) + h  # b n c
        h = self.ff(self.norm3(h)) + h  # b n c
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)  # b c h w
        return self.conv_out(h) + x  # b c h w


class DownEncoder2D(nn.Module):
    """One tower: conv stem, one `ResnetBlock2D` per stage (each followed by an `AttentionBlock2D` where
    `attn_blocks[i] == 1`, at its own index of `down_blocks`), then GroupNorm and ReLU.

    The final ReLU makes embeddings non-negative, so the cosine similarity of two towers lies in [0, 1] and can
    be trained with binary cross-entropy directly.
    """

    def __init__(self, config: SyncNetEncoderConfig):
        super().__init__()
        channels = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        # A config without attn_blocks (the published syncnet_25_pixel) means no attention at all.
        attn = config.attn_blocks if config.attn_blocks is not None else (0,) * len(channels)
        self.down_blocks = nn.ModuleList()
        previous = channels[0]
        for out, factor, with_attn in zip(channels, config.downsample_factors, attn):
            self.down_blocks.append(ResnetBlock2D(previous, out, factor, config.dropout))
            if with_attn == 1:
                self.down_blocks.append(AttentionBlock2D(out, dropout=config.dropout))
            previous = out
        self.norm_out = nn.GroupNorm(NORM_GROUPS, previous, eps=NORM_EPS)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # b c h w
        for block in self.down_blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = grad_checkpoint(block, x, use_reentrant=False)  # b c h w (smaller after a downsample)
            else:
                x = block(x)  # b c h w (smaller after a downsample)
        return F.relu(self.norm_out(x))  # b c h w (1x1 for the published input sizes)


class StableSyncNet(nn.Module):
    """Audio and visual towers whose L2-normalised outputs are compared by cosine similarity.

    `model_config` is the `model:` section of a SyncNet config (a `SyncNetModelConfig`; a whole
    `SyncNetConfig` is accepted too).
    """

    def __init__(self, model_config: SyncNetModelConfig | SyncNetConfig):
        super().__init__()
        if isinstance(model_config, SyncNetConfig):
            model_config = model_config.model
        self.audio_encoder = DownEncoder2D(model_config.audio_encoder)
        self.visual_encoder = DownEncoder2D(model_config.visual_encoder)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block of both towers in the backward pass (training only) to save activations."""
        self.audio_encoder.gradient_checkpointing = enabled
        self.visual_encoder.gradient_checkpointing = enabled

    def forward(
        self, image_sequences: torch.Tensor, audio_sequences: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed frames `(b, frames*3, h, w)` (or latents) and mel windows `(b, 1, 80, t)`.

        Returns `(vision_embeds, audio_embeds)`, each `(b, c)`, unit length and non-negative.
        """
        v = self.visual_encoder(image_sequences)  # b c 1 1
        a = self.audio_encoder(audio_sequences)  # b c 1 1
        v = rearrange(v, "b c 1 1 -> b c")  # b c
        a = rearrange(a, "b c 1 1 -> b c")  # b c
        return F.normalize(v, p=2, dim=1), F.normalize(a, p=2, dim=1)  # b c, b c


# --------------------------------------------------------------------------------------------------------
# Building, loading and saving
# --------------------------------------------------------------------------------------------------------


def syncnet_input_shapes(config) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The `(c, h, w)` input sizes of the visual and audio towers for a SyncNet config.

    Visual: `in_channels` x (lower half of a `resolution` px face, or the whole face; or the VAE latent grid
    when `data.latent_space`). Audio: `in_channels` x 80 mel bins x the mel frames spanning `num_frames` video
    frames, `ceil(num_frames * 80 / fps)` (52 for 16 frames at 25 fps).
    """
    cfg = load_syncnet_config(config)
    data, model = cfg.data, cfg.model
    if data.latent_space:
        hw = (data.resolution // VAE_DOWNSCALE, data.resolution // VAE_DOWNSCALE)
    elif data.lower_half:
        hw = (data.resolution // 2, data.resolution)
    else:
        hw = (data.resolution, data.resolution)
    mel_frames = -(-data.num_frames * MEL_FRAMES_PER_SECOND // data.video_fps)  # ceil without floats
    visual = (model.visual_encoder.in_channels, *hw)
    audio = (model.audio_encoder.in_channels, MEL_BINS, mel_frames)
    return visual, audio


def _mismatch_hint(report: KeyReport) -> str:
    if any(".attn." in k or ".ff." in k for k in report.missing + report.unexpected):
        return "attention blocks differ: was the file trained with another config (attn_blocks)?"
    return "was the file trained with another SyncNet config?"


def load_syncnet(
    config,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> StableSyncNet:
    """A StableSyncNet in eval mode.

    `config`: a YAML path, a packaged name ("syncnet_16_pixel_attn", "tiny/syncnet"), a mapping or a
    `SyncNetConfig`. `checkpoint`: a `.pt` file in the published format (`{"state_dict": ...}`), a bare state
    dict, or `.safetensors`; loaded strictly, tensor by tensor onto `device`/`dtype`. Without a checkpoint the
    weights are randomly initialised directly on the device. A file that does not fit the config raises
    `CheckpointError` naming the file and the keys.
    """
    cfg = load_syncnet_config(config)
    return load_module(lambda: StableSyncNet(cfg.model), checkpoint, device=resolve_device(device), dtype=dtype,
                       hint=_mismatch_hint)


def save_syncnet_checkpoint(net: nn.Module, path: str | Path, global_step: int = 0, **history: list) -> Path:
    """Write `net` in the published format, `{"state_dict", "global_step", "train_step_list",
    "train_loss_list", "val_step_list", "val_loss_list"}`; histories not given are saved empty.

    The file is written under a temporary name in the same folder and renamed into place, so an interrupted
    save never leaves a truncated checkpoint under `path`.
    """
    unknown = sorted(set(history) - set(HISTORY_KEYS))
    if unknown:
        raise TypeError(f"unknown history entries {unknown} (known: {', '.join(HISTORY_KEYS)})")
    # CPU tensors: the file then loads on machines without the training device, even without map_location.
    state_dict = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {"state_dict": state_dict, "global_step": int(global_step)}
    payload.update({k: list(history.get(k, [])) for k in HISTORY_KEYS})
    return atomic_torch_save(payload, path)
