"""Attention pieces of the LatentSync UNet: multi-head attention on SDPA, the GEGLU feed-forward, and the
per-frame spatial transformer with the audio cross-attention (spec 3.2). Key names follow diffusers' SD-1.5
UNet (`attn1`, `attn2`, `ff.net.0.proj`, `to_out.0`, ...), so Stable Diffusion and LatentSync weights load
as they are."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# Fused attention kernels on CUDA launch one block per (sequence, head); very large batches (temporal attention
# over a 64x64 latent runs b*4096 sequences) exceed the launch grid, so they are processed in slices.
MAX_ATTENTION_BATCH = 65_535


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention computed with `F.scaled_dot_product_attention`."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(dropout)])

    def attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: n s c, context: n t d
        q = rearrange(self.to_q(x), "n s (h e) -> n h s e", h=self.heads)
        k = rearrange(self.to_k(context), "n t (h e) -> n h t e", h=self.heads)
        v = rearrange(self.to_v(context), "n t (h e) -> n h t e", h=self.heads)
        step = max(1, MAX_ATTENTION_BATCH // self.heads)
        if q.shape[0] <= step:
            out = F.scaled_dot_product_attention(q, k, v)  # n h s e
        else:
            out = torch.cat(
                [F.scaled_dot_product_attention(q[i : i + step], k[i : i + step], v[i : i + step])
                 for i in range(0, q.shape[0], step)]
            )
        out = rearrange(out, "n h s e -> n s (h e)")
        return self.to_out[1](self.to_out[0](out))  # n s c

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(x, x if context is None else context)


class GEGLU(nn.Module):
    """Linear projection to twice the width, gated by GELU (Shazeer 2020, "GLU variants")."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x inner width (keys `net.0.proj`, `net.2`).

    Within `feed_forward_rows(n)` (n > 0) it runs on at most n tokens at a time. Its inner activations are 8x the
    block's width (2 x 4x), the largest tensors of the UNet: at 512 px a 16-frame chunk's first blocks hold 65536
    tokens, so the projection alone is 65536 x 2560 values (0.3 GB in fp16) per guidance branch. The
    feed-forward is per token, so slices give the same result with a fraction of that memory. The limit is a
    setting of the calling thread (`feed_forward_rows`), never of the module: jobs sharing one UNet from
    several threads each run with their own; torch.compile guards on the thread-local value.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = getattr(_thread_settings, "feed_forward_rows", 0)
        flat = x.reshape(-1, x.shape[-1])  # tokens c
        if not rows or flat.shape[0] <= rows:
            return self._layers(x)
        out = torch.empty_like(flat)
        for start in range(0, flat.shape[0], rows):
            out[start : start + rows] = self._layers(flat[start : start + rows])
        return out.view(x.shape)


_thread_settings = threading.local()


@contextlib.contextmanager
def feed_forward_rows(rows: int) -> Iterator[None]:
    """Within the block, in the calling thread only, every `FeedForward` runs on at most `rows` tokens at a
    time (0: all at once). Other threads, and the models themselves, are unaffected."""
    if rows < 0:
        raise ValueError(f"rows must be 0 or positive, got {rows}")
    previous = getattr(_thread_settings, "feed_forward_rows", 0)
    _thread_settings.feed_forward_rows = rows
    try:
        yield
    finally:
        _thread_settings.feed_forward_rows = previous


class BasicTransformerBlock(nn.Module):
    """Self-attention over the pixels of one frame, cross-attention to that frame's audio tokens, feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, dim_head, context_dim=cross_attention_dim)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        # x: (b f) (h w) c, audio: (b f) t d
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and audio is not None:
            x = self.attn2(self.norm2(x), audio) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """The per-frame transformer of SD-1.5 (`attentions.i`): GN -> 1x1 conv -> transformer block -> 1x1 conv,
    plus the input. Frames are independent here; its GroupNorm is per frame (the published one sees
    `(b f) c h w`)."""

    def __init__(
        self,
        channels: int,
        heads: int,
        cross_attention_dim: int,
        add_audio_layer: bool,
        groups: int = 32,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, add_audio_layer)]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        # x: (b f) c h w, audio: (b f) t d
        _, _, h, w = x.shape
        residual = x
        x = self.proj_in(self.norm(x))  # (b f) c h w
        x = rearrange(x, "n c h w -> n (h w) c")
        for block in self.transformer_blocks:
            x = block(x, audio)
        x = rearrange(x, "n (h w) c -> n c h w", h=h, w=w)
        return self.proj_out(x) + residual
