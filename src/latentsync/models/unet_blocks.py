"""Down, mid and up blocks of the LatentSync UNet (SD-1.5 layout plus temporal layers, spec 3.2).

Each layer of a block runs: resnet -> spatial transformer (if the block has attention) -> motion module (if it
has temporal layers). Activations are `(b f) c h w`; `num_frames` tells the frame-pooled GroupNorm and the
temporal attention how frames group into samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import MotionModuleConfig
from .attention import SpatialTransformer
from .motion_module import MotionModule
from .resnet import Downsample, ResnetBlock, Upsample


@dataclass
class BlockSpec:
    """What one block is made of; derived from the UNet config by `UNet3DConditionModel`."""

    num_layers: int
    in_channels: int
    out_channels: int
    temb_channels: int
    groups: int
    eps: float
    heads: int
    cross_attention_dim: int
    add_audio_layer: bool
    with_attention: bool
    motion: MotionModuleConfig | None  # None: no temporal layers in this block


class _Block(nn.Module):
    """Shared plumbing: the per-layer (resnet, attention, motion module) sequence and checkpointing."""

    gradient_checkpointing = False

    def _build_layers(self, spec: BlockSpec, resnet_in: list[int]) -> None:
        self.resnets = nn.ModuleList(
            [ResnetBlock(c, spec.out_channels, spec.temb_channels, spec.groups, spec.eps) for c in resnet_in]
        )
        if spec.with_attention:
            self.attentions = nn.ModuleList(
                [
                    SpatialTransformer(spec.out_channels, spec.heads, spec.cross_attention_dim, spec.add_audio_layer,
                                       groups=spec.groups)
                    for _ in resnet_in
                ]
            )
        else:
            self.attentions = None
        if spec.motion is not None:
            self.motion_modules = nn.ModuleList(
                [MotionModule(spec.out_channels, spec.motion, groups=spec.groups) for _ in resnet_in]
            )
        else:
            self.motion_modules = None

    def _call(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _layer(self, i: int, x, temb, audio, num_frames: int):
        x = self._call(self.resnets[i], x, temb, num_frames)
        if self.attentions is not None:
            x = self._call(self.attentions[i], x, audio)
        if self.motion_modules is not None:
            x = self._call(self.motion_modules[i], x, num_frames)
        return x


class DownBlock(_Block):
    """`CrossAttnDownBlock3D` (with_attention) or `DownBlock3D`; returns its output and its skip tensors."""

    def __init__(self, spec: BlockSpec, add_downsample: bool, downsample_padding: int):
        super().__init__()
        self._build_layers(spec, [spec.in_channels] + [spec.out_channels] * (spec.num_layers - 1))
        self.downsamplers = (
            nn.ModuleList([Downsample(spec.out_channels, downsample_padding)]) if add_downsample else None
        )

    def forward(self, x, temb, audio, num_frames: int, layers: int | None = None):
        """All layers and the downsampler; or, with `layers=k`, only the first k layers (DeepCache's shallow
        path), without downsampling."""
        skips = []
        for i in range(len(self.resnets) if layers is None else layers):
            x = self._layer(i, x, temb, audio, num_frames)
            skips.append(x)
        if self.downsamplers is not None and layers is None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(_Block):
    """`UNetMidBlock3DCrossAttn`: resnet, then (attention [-> motion module] -> resnet) per extra layer.
    The published model does not checkpoint the mid block; neither do we."""

    def __init__(self, spec: BlockSpec, output_scale_factor: float = 1.0):
        super().__init__()
        c = spec.in_channels
        self.resnets = nn.ModuleList(
            [ResnetBlock(c, c, spec.temb_channels, spec.groups, spec.eps, output_scale_factor=output_scale_factor)
             for _ in range(spec.num_layers + 1)]
        )
        self.attentions = nn.ModuleList(
            [SpatialTransformer(c, spec.heads, spec.cross_attention_dim, spec.add_audio_layer, groups=spec.groups)
             for _ in range(spec.num_layers)]
        )
        self.motion_modules = (
            nn.ModuleList([MotionModule(c, spec.motion, groups=spec.groups) for _ in range(spec.num_layers)])
            if spec.motion is not None
            else None
        )

    def forward(self, x, temb, audio, num_frames: int):
        x = self.resnets[0](x, temb, num_frames)
        for i, attention in enumerate(self.attentions):
            x = attention(x, audio)
            if self.motion_modules is not None:
                x = self.motion_modules[i](x, num_frames)
            x = self.resnets[i + 1](x, temb, num_frames)
        return x


class UpBlock(_Block):
    """`CrossAttnUpBlock3D` (with_attention) or `UpBlock3D`: each layer first concatenates a skip tensor.

    `prev_channels` is the width arriving from below; `skip_channels[i]` the width of the skip that layer i
    consumes (SD-1.5's bookkeeping, e.g. 1920 = 1280 + 640 into `up_blocks.1.resnets.2`)."""

    def __init__(self, spec: BlockSpec, prev_channels: int, skip_channels: list[int], add_upsample: bool):
        super().__init__()
        ins = [(prev_channels if i == 0 else spec.out_channels) + s for i, s in enumerate(skip_channels)]
        self._build_layers(spec, ins)
        self.upsamplers = nn.ModuleList([Upsample(spec.out_channels)]) if add_upsample else None

    def forward(self, x, skips: list[torch.Tensor], temb, audio, num_frames: int, upsample_size=None,
                start: int = 0, capture: dict | None = None):
        """Layers `start`... (DeepCache's shallow path starts late, on a cached input); with `capture`, the input
        of layer `capture["layer"]` is stored in `capture["input"]`."""
        for i in range(start, len(self.resnets)):
            if capture is not None and i == capture["layer"]:
                capture["input"] = x
            x = torch.cat([x, skips.pop()], dim=1)  # (b f) (c + skip) h w
            x = self._layer(i, x, temb, audio, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
