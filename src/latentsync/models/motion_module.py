"""Temporal layers ("motion modules", AnimateDiff v1 layout) that LatentSync 1.5 and 1.6 insert after each
spatial layer of the UNet: self-attention across the frames of a chunk at every pixel position, with a
sinusoidal position encoding of the frame index (spec 3.2; AnimateDiff, arXiv 2307.04725).

Key names follow the published checkpoints: `motion_modules.j.temporal_transformer.{norm, proj_in,
transformer_blocks.0.{attention_blocks.k.{to_q, to_k, to_v, to_out.0, pos_encoder.pe}, norms.k, ff, ff_norm},
proj_out}`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ..config import MotionModuleConfig
from .attention import Attention, FeedForward

POSITION_ENCODING_BASE = 10_000.0  # Vaswani et al. 2017


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding of the frame index, added to the attention input. `pe` (1, max_len, dim) is a
    persistent buffer because the published checkpoints store it; it is deterministic, so a file without it
    loads too (`reset_buffers` recomputes it)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.register_buffer("pe", torch.empty(1, max_len, dim), persistent=True)
        if not self.pe.is_meta:
            self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        position = torch.arange(self.max_len, dtype=torch.float32, device=self.pe.device)[:, None]  # l 1
        div = torch.exp(
            torch.arange(0, self.dim, 2, dtype=torch.float32, device=self.pe.device)
            * (-math.log(POSITION_ENCODING_BASE) / self.dim)
        )  # dim/2
        pe = torch.zeros(1, self.max_len, self.dim, device=self.pe.device)
        pe[0, :, 0::2] = torch.sin(position * div)  # even channels: sin
        pe[0, :, 1::2] = torch.cos(position * div)  # odd channels: cos
        self.pe.copy_(pe.to(self.pe.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # n f c
        if x.shape[1] > self.max_len:
            raise ValueError(
                f"{x.shape[1]} frames per chunk exceed the temporal position encoding ({self.max_len} frames)"
            )
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention across frames at each pixel: tokens `(b f) s c` are regrouped to `(b s) f c`."""

    def __init__(self, dim: int, heads: int, dim_head: int, position_encoding_len: int | None):
        super().__init__(dim, heads, dim_head)
        self.pos_encoder = PositionalEncoding(dim, position_encoding_len) if position_encoding_len else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        # x: (b f) s c
        s = x.shape[1]
        x = rearrange(x, "(b f) s c -> (b s) f c", f=num_frames)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        x = self.attend(x, x)  # (b s) f c
        return rearrange(x, "(b s) f c -> (b f) s c", s=s)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, cfg: MotionModuleConfig):
        super().__init__()
        heads = cfg.num_attention_heads
        dim_head = dim // heads // cfg.temporal_attention_dim_div
        pe_len = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, dim_head, pe_len) for _ in cfg.attention_block_types]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in cfg.attention_block_types])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # (b f) s c
        for attention, norm in zip(self.attention_blocks, self.norms):
            # The position encoding goes into the attention input only; the residual stays unencoded.
            x = attention(norm(x), num_frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: MotionModuleConfig, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)  # per frame, as published
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, cfg) for _ in range(cfg.num_transformer_block)]
        )
        self.proj_out = nn.Linear(channels, channels)
        if cfg.zero_initialize:
            # A freshly added temporal layer starts as the identity (AnimateDiff), so a stage-1 UNet is unchanged.
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: (b f) c h w
        _, _, h, w = x.shape
        residual = x
        x = rearrange(self.norm(x), "n c h w -> n (h w) c")
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, num_frames)
        x = self.proj_out(x)
        return rearrange(x, "n (h w) c -> n c h w", h=h, w=w) + residual


class MotionModule(nn.Module):
    """One temporal layer (`motion_modules.j`); the AnimateDiff "Vanilla" module."""

    def __init__(self, channels: int, cfg: MotionModuleConfig, groups: int = 32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg, groups=groups)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # (b f) c h w
        return self.temporal_transformer(x, num_frames)
