"""VideoMAE v2 ViT: the video encoder behind LatentSync's TREPA loss.

Wang et al., "VideoMAE V2: Scaling Video Masked Autoencoders with Dual Masking" (CVPR 2023), as released in
OpenGVLab/VideoMAEv2 (`models/modeling_finetune.py`, `vit_giant_patch14_224`) and vendored by LatentSync in
`latentsync/trepa/third_party/VideoMAEv2/{videomaev2_finetune,utils}.py`. TREPA uses the ViT-g/14 fine-tuned on
Something-Something v2, `vit_g_hybrid_pt_1200e_ssv2_ft.pth` (`checkpoints/auxiliary/`).

Facts reproduced from the reference (`load_videomae_model` and `VisionTransformer`):

* Built as `vit_giant_patch14_224(img_size=224, num_classes=174, all_frames=16, tubelet_size=2,
  use_mean_pooling=True)`: embed_dim 1408, depth 40, 16 heads (head_dim 88), mlp_ratio 48/11 (hidden 6144),
  LayerNorm eps 1e-6, qkv_bias True, no layer scale (`init_values` 0, so no `gamma_1/2`), plain (not cosine)
  attention. 1,011,855,918 parameters.
* Patch embedding: one Conv3d with kernel = stride = (tubelet 2, 14, 14) -> 8 x 16 x 16 = 2048 tokens, flattened
  in (t, h, w) order. No class token.
* Position embedding: the fixed sinusoid table of "Attention is all you need" (dimension j uses
  pos / 10000^(2*(j//2)/d), sin on even j, cos on odd j), held as a plain tensor, so it is *not* in the state
  dict. Other clip lengths interpolate it in time (trilinear, scale (t + 0.1) / T).
* Attention: qkv Linear without bias; the bias is `cat(q_bias, zeros, v_bias)` (no key bias); softmax(q k^T /
  sqrt(head_dim)) v via `scaled_dot_product_attention`; then `proj`. Pre-norm blocks, exact-erf GELU MLP.
* Mean pooling: `forward_features` = `fc_norm(tokens.mean(1))` (the final `norm` is an Identity), a (b, 1408)
  vector; `head` (Linear 1408 -> 174) follows only in `forward`. TREPA uses `forward_features`.
* Weights: the file's state dict sits under "model" or "module" (the reference tries those keys in that order)
  and loads with `load_state_dict(strict=True)`, so its keys are exactly this module's.
* Input: (b, 3, f, 224, 224) RGB in [0, 1], no ImageNet normalisation (LatentSync's TREPA maps [-1, 1] -> [0, 1]).
* Gradient checkpointing (`with_cp`): each block is recomputed in the backward pass
  (`torch.utils.checkpoint`, non-reentrant), as LatentSync's stage-2 training does.

Dropout, drop path and the head dropout are identities at inference and are left out.

Axis letters in shape comments: b batch, c channels, f frames, t token time steps, h height, w width,
n tokens, d embedding, k heads, e head dimension, m mlp hidden units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError
from .checkpoint import materialize, read_checkpoint, resolve_device

# Keys under which VideoMAEv2 checkpoints keep their state dict, tried in this order (VideoMAEv2
# `extract_tad_feature.py` / LatentSync `load_videomae_model`); "state_dict" as the usual torch convention.
WRAPPER_KEYS = ("model", "module", "state_dict")
POSITION_BASE = 10000.0  # sinusoid table base (Vaswani et al. 2017)
POSITION_TIME_OFFSET = 0.1  # the reference adds 0.1 to the new length so the interpolated size never rounds down


@dataclass(frozen=True)
class VideoMAEConfig:
    img_size: int = 224  # px, square input
    patch_size: int = 14  # px
    num_frames: int = 16  # frames the position table is laid out for
    tubelet_size: int = 2  # frames per token
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11
    num_classes: int = 174  # Something-Something v2
    norm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def time_tokens(self) -> int:
        return self.num_frames // self.tubelet_size

    @property
    def num_patches(self) -> int:
        return self.time_tokens * self.grid * self.grid

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # as the reference: int(1408 * 48 / 11) = 6144


CONFIGS: dict[str, VideoMAEConfig] = {
    # The published ViT-g/14 fine-tuned on SSv2 (vit_g_hybrid_pt_1200e_ssv2_ft.pth).
    "vit_giant_patch14": VideoMAEConfig(),
    # Same structure at toy size, for CPU tests: 4 frames of 28 x 28 -> 2 x 2 x 2 = 8 tokens.
    "tiny": VideoMAEConfig(img_size=28, num_frames=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
                           num_classes=10),
}


def resolve_config(config: str | VideoMAEConfig) -> VideoMAEConfig:
    if isinstance(config, VideoMAEConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"unknown VideoMAE config {config!r}; expected one of {', '.join(CONFIGS)}")
    return CONFIGS[config]


def sinusoid_table(num_positions: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(num_positions, dim) fixed position table, computed in float64 like the reference's numpy version."""
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]  # n 1
    j = torch.arange(dim, device=device)  # d
    angle = pos / torch.pow(POSITION_BASE, (2 * (j // 2)).to(torch.float64) / dim)  # n d
    return torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).to(torch.float32)  # n d


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        # Query and value biases only: the key bias would cancel in the softmax.
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))  # 3d
        qkv = F.linear(x, self.qkv.weight, bias)  # b n 3d
        q, k, v = rearrange(qkv, "b n (three k e) -> three b k n e", three=3, k=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)  # b k n e
        return self.proj(rearrange(x, "b k n e -> b n (k e)"))  # b n d


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # b n d


class Block(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # b n d
        return x + self.mlp(self.norm2(x))  # b n d


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(video), "b d t h w -> b (t h w) d")  # b n d


class VideoMAEv2(nn.Module):
    """VideoMAE v2 ViT with mean pooling. `forward` gives the pooled, `fc_norm`-ed features (b, embed_dim) that
    TREPA compares; `logits` applies the classification head to them."""

    def __init__(self, config: str | VideoMAEConfig = "vit_giant_patch14", gradient_checkpointing: bool = False):
        super().__init__()
        self.config = cfg = resolve_config(config)
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        # Fixed, not learned, and not in the published file: a non-persistent buffer rebuilt by reset_buffers().
        self.register_buffer("pos_embed", torch.empty(1, cfg.num_patches, cfg.embed_dim), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        cfg = self.config
        table = sinusoid_table(cfg.num_patches, cfg.embed_dim, device=self.pos_embed.device)
        self.pos_embed.copy_(table[None].to(self.pos_embed.dtype))  # 1 n d

    def positions(self, time_tokens: int) -> torch.Tensor:
        """(1, time_tokens * grid^2, d) position table; interpolated in time when the clip length differs from
        the one the table was laid out for (as the reference's `interpolate_pos_encoding`)."""
        cfg = self.config
        if time_tokens == cfg.time_tokens:
            return self.pos_embed
        table = rearrange(self.pos_embed.float(), "1 (t h w) d -> 1 d t h w", t=cfg.time_tokens, h=cfg.grid)
        scale = (time_tokens + POSITION_TIME_OFFSET) / cfg.time_tokens
        table = F.interpolate(table, scale_factor=(scale, 1, 1), mode="trilinear")  # 1 d t' h w
        return rearrange(table, "1 d t h w -> 1 (t h w) d").to(self.pos_embed.dtype)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(b, 3, f, img_size, img_size) RGB in [0, 1], f a multiple of the tubelet size -> (b, embed_dim)."""
        cfg = self.config
        b, c, f, h, w = video.shape
        if c != 3 or h != cfg.img_size or w != cfg.img_size or f % cfg.tubelet_size:
            raise ValueError(f"expected (b, 3, f, {cfg.img_size}, {cfg.img_size}) with f a multiple of "
                             f"{cfg.tubelet_size}, got {tuple(video.shape)}")
        x = self.patch_embed(video)  # b n d
        x = x + self.positions(f // cfg.tubelet_size).to(x.dtype)  # b n d
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)  # b n d
            else:
                x = block(x)  # b n d
        return self.fc_norm(x.mean(dim=1))  # b d

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(b, embed_dim) features -> (b, num_classes) class scores (Something-Something v2 for the published
        weights)."""
        return self.head(features)


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a VideoMAEv2 checkpoint object: under "model", "module" or "state_dict", or bare."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{source}: holds no VideoMAE state dict (found {found}); expected tensors, "
                              f"or a {' / '.join(repr(k) for k in WRAPPER_KEYS)} entry holding them")
    return dict(obj)


def load_videomae(
    path: str | Path,
    config: str | VideoMAEConfig = "vit_giant_patch14",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
) -> VideoMAEv2:
    """VideoMAEv2 with the weights of `path` (`vit_g_hybrid_pt_1200e_ssv2_ft.pth` for the default config), loaded
    strictly tensor by tensor onto `device` (None: CPU) in `dtype` (None: float32), in eval mode.

    Raises CheckpointError in one line naming the file when it is missing, unreadable or not these weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: VideoMAE v2 weights not found; run `latentsync download --with training` or put "
            f"vit_g_hybrid_pt_1200e_ssv2_ft.pth at that path")
    cfg = resolve_config(config)
    state_dict = unwrap_state_dict(read_checkpoint(path), str(path))
    model = materialize(lambda: VideoMAEv2(cfg, gradient_checkpointing=gradient_checkpointing), state_dict,
                        device=resolve_device(device), dtype=dtype or torch.float32, source=str(path))
    return model.eval()


__all__ = ["CONFIGS", "VideoMAEConfig", "VideoMAEv2", "load_videomae", "sinusoid_table", "unwrap_state_dict"]
