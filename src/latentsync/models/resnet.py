"""Convolutional pieces of the LatentSync UNet: frame-pooled GroupNorm, resnet block, down/up-sampling.

Activations inside the UNet are frame-major `(b f) c h w`: every convolution is a plain 2-D convolution over
frames (the published weights are 4-D, Stable Diffusion's), so no tensor is rearranged around a conv.
The one place where frames meet is GroupNorm: the published model applies `nn.GroupNorm` to `(b, c, f, h, w)`
tensors, so its statistics are pooled over all frames of a chunk (spec 3.2). `FrameGroupNorm` reproduces
that; the result of a frame therefore depends on the other frames of its chunk, exactly as published.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over `(b f) c h w` whose statistics span all `f` frames of each sample (and its channels
    group and pixels), matching `nn.GroupNorm` on the `(b, c, f, h, w)` layout. Same parameters and state
    dict as `nn.GroupNorm`."""

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        if num_frames == 1:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        x5 = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)  # a view
        y = F.group_norm(x5, self.num_groups, self.weight, self.bias, self.eps)  # b c f h w
        return rearrange(y, "b c f h w -> (b f) c h w")


class ResnetBlock(nn.Module):
    """SD-1.5 resnet block with a timestep projection: GN -> SiLU -> conv -> +t -> GN -> SiLU -> conv, + skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: (b f) c h w, temb: b t
        h = self.conv1(F.silu(self.norm1(x, num_frames)))  # (b f) o h w
        t = self.time_emb_proj(F.silu(temb))  # b o
        bf, c, hh, ww = h.shape
        h = (h.view(bf // num_frames, num_frames, c, hh, ww) + t[:, None, :, None, None]).view(bf, c, hh, ww)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, num_frames))))  # (b f) o h w
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample(nn.Module):
    """Stride-2 3x3 convolution per frame (key `downsamplers.0.conv`)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b f) c h w -> (b f) c h/2 w/2
        if self.padding == 0:  # SD convention: pad right/bottom only when the conv itself does not pad
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 in height and width (never in time), then a 3x3 conv (key `upsamplers.0.conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # (b f) c h w -> (b f) c H W, with (H, W) = size of the skip connection it meets (2h, 2w when even)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
