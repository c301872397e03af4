"""The LatentSync denoising UNet: Stable Diffusion 1.5's layout with 13 input channels, audio cross-attention
(Whisper-tiny tokens, 384-d) and, for LatentSync 1.5/1.6, AnimateDiff-style temporal layers (spec 3).

Input `(b, 13, f, h, w)` = [noisy latents 4, mouth mask 1, masked-face latents 4, reference latents 4];
audio `(b*f, t, 384)` or `(b, f, t, 384)`, one token sequence per frame (t = 50 for Whisper tiny);
output: the predicted noise `(b, 4, f, h, w)`.

Numbers that match the published model, on purpose:
- GroupNorm in resnets and before `conv_out` pools statistics over all frames of the chunk (`FrameGroupNorm`).
- `attention_head_dim` in the config is the number of heads (SD's naming quirk): head width = channels / 8.
- Temporal position encodings are persistent buffers (`pos_encoder.pe`), stored in the checkpoints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import UNetConfig, UNetModelConfig, load_unet_config
from ..errors import CheckpointError
from .checkpoint import (
    KeyReport,
    atomic_torch_save,
    build,
    compare_keys,
    expected_shapes,
    load_module,
    read_state_dict,
    resolve_device,
)
from .resnet import FrameGroupNorm
from .unet_blocks import BlockSpec, DownBlock, MidBlock, UpBlock

log = logging.getLogger(__name__)

TIME_EMBEDDING_BASE = 10_000.0  # sinusoidal timestep embedding of DDPM / Stable Diffusion


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps (b,) -> (b, dim), float32."""
    half = dim // 2
    exponent = -math.log(TIME_EMBEDDING_BASE) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # half
    args = t.float()[:, None] * freqs[None]  # b half
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class DeepCache:
    """Reuse of the UNet's deep features across denoising steps (DeepCache, Ma et al. 2023, arXiv 2312.00858).

    Every `interval`-th call runs the whole UNet and keeps the input of the last up block's layer
    `L - 1 - branch` (L = layers per up block); the calls in between run only the shallow path: `conv_in`, the
    first `branch` layers of the first down block, the last `branch + 1` layers of the last up block (fed the
    kept features and fresh skips), and `conv_out`. With `interval=3, branch=0` this computes what the published
    pipeline's DeepCache (package DeepCache 0.1.1, `cache_interval=3, cache_branch_id=0`) computes, without
    re-running the temporal layers it still ran on cached inputs. Use one object per chunk: the step count
    restarts with each chunk, as in the reference.
    """

    def __init__(self, interval: int = 3, branch: int = 0):
        if interval < 1 or branch < 0:
            raise ValueError(f"DeepCache needs interval >= 1 and branch >= 0, got {interval} and {branch}")
        self.interval, self.branch = interval, branch
        self.calls = 0
        self.features: torch.Tensor | None = None

    @property
    def full_step(self) -> bool:
        return self.features is None or self.calls % self.interval == 0


class UNet3DConditionModel(nn.Module):
    """See the module docstring. Build from a `UNetModelConfig` (the `model:` section of a UNet YAML)."""

    def __init__(self, config: UNetModelConfig):
        super().__init__()
        self.config = config
        c = config
        channels = list(c.block_out_channels)
        n = len(channels)
        temb_dim = channels[0] * 4
        motion = c.motion_module_kwargs if c.use_motion_module else None

        def spec(num_layers, cin, cout, attention, with_motion):
            return BlockSpec(
                num_layers=num_layers, in_channels=cin, out_channels=cout, temb_channels=temb_dim,
                groups=c.norm_num_groups, eps=c.norm_eps, heads=c.attention_head_dim,
                cross_attention_dim=c.cross_attention_dim, add_audio_layer=c.add_audio_layer,
                with_attention=attention, motion=motion if with_motion else None,
            )  # fmt: skip

        self.conv_in = nn.Conv2d(c.in_channels, channels[0], 3, padding=1)
        # Zero-initialised as published: a UNet started from SD 1.5 (4 input channels) must first learn how to
        # read the 13-channel input; the published checkpoints override it.
        nn.init.zeros_(self.conv_in.weight)
        nn.init.zeros_(self.conv_in.bias)
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(c.down_block_types):
            res = 2**i  # latent downscale factor of this block's layers
            with_motion = res in c.motion_module_resolutions and not c.motion_module_decoder_only
            cin = channels[max(i - 1, 0)]
            block_spec = spec(c.layers_per_block, cin, channels[i], kind == "CrossAttnDownBlock3D", with_motion)
            self.down_blocks.append(DownBlock(block_spec, add_downsample=i < n - 1,
                                              downsample_padding=c.downsample_padding))

        self.mid_block = MidBlock(
            spec(1, channels[-1], channels[-1], True, c.motion_module_mid_block),
            output_scale_factor=c.mid_block_scale_factor,
        )

        # Skip widths in the order the up path consumes them (last produced first).
        skip_widths = [channels[0]]
        for i in range(n):
            skip_widths += [channels[i]] * c.layers_per_block + ([channels[i]] if i < n - 1 else [])
        self.up_blocks = nn.ModuleList()
        reversed_channels = channels[::-1]
        prev = reversed_channels[0]
        for i, kind in enumerate(c.up_block_types):
            res = 2 ** (n - 1 - i)
            layers = c.layers_per_block + 1
            skips = [skip_widths.pop() for _ in range(layers)]
            block_spec = spec(layers, 0, reversed_channels[i], kind == "CrossAttnUpBlock3D",
                              res in c.motion_module_resolutions)
            self.up_blocks.append(UpBlock(block_spec, prev, skips, add_upsample=i < n - 1))
            prev = reversed_channels[i]

        self.conv_norm_out = FrameGroupNorm(c.norm_num_groups, channels[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], c.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # zero-initialised as published (spec 3.2)
        nn.init.zeros_(self.conv_out.bias)

    # ----------------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each resnet, spatial transformer and motion module in the backward pass (training)."""
        for block in [*self.down_blocks, *self.up_blocks]:
            block.gradient_checkpointing = enabled

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        deep_cache: DeepCache | None = None,
    ) -> torch.Tensor:
        """sample (b, c_in, f, h, w), timestep scalar or (b,), audio (b*f, t, d) or (b, f, t, d) or None
        -> predicted noise (b, c_out, f, h, w). `deep_cache`: reuse deep features across the steps of a chunk."""
        b, _, f, h, w = sample.shape
        audio = encoder_hidden_states
        if audio is not None:
            if audio.dim() == 4:  # b f t d
                audio = rearrange(audio, "b f t d -> (b f) t d")
            if audio.dim() != 3 or audio.shape[0] != b * f:
                raise ValueError(
                    f"audio tokens of shape {tuple(encoder_hidden_states.shape)} do not fit {b} x {f} frames: "
                    "expected (b*f, tokens, dim) or (b, f, tokens, dim)"
                )
            audio = audio.to(self.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        temb = timestep_embedding(t, self.conv_in.out_channels, self.config.flip_sin_to_cos,
                                  self.config.freq_shift).to(self.dtype)  # b c0
        temb = self.time_embedding(temb)  # b 4c0

        x = rearrange(sample.to(self.dtype), "b c f h w -> (b f) c h w")
        x = self.conv_in(x)  # (b f) c0 h w
        if deep_cache is not None and not deep_cache.full_step:
            x = self._shallow(x, temb, audio, f, deep_cache)
        else:
            x = self._full(x, temb, audio, f, deep_cache)
        if deep_cache is not None:
            deep_cache.calls += 1
        x = self.conv_out(F.silu(self.conv_norm_out(x, f)))  # (b f) c_out h w
        return rearrange(x, "(b f) c h w -> b c f h w", f=f)

    def _full(self, x, temb, audio, f: int, deep_cache: DeepCache | None):
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, audio, f)
            skips += block_skips
        x = self.mid_block(x, temb, audio, f)
        capture = None
        if deep_cache is not None:
            capture = {"layer": self._deep_cache_layer(deep_cache)}
        for i, block in enumerate(self.up_blocks):
            n_layers = len(block.resnets)
            block_skips, skips = skips[-n_layers:], skips[:-n_layers]
            size = skips[-1].shape[-2:] if skips else None  # upsample to the next skip's exact size
            last = i == len(self.up_blocks) - 1
            x = block(x, block_skips, temb, audio, f, upsample_size=size, capture=capture if last else None)
        if capture is not None:
            deep_cache.features = capture["input"]
        return x

    def _shallow(self, x, temb, audio, f: int, deep_cache: DeepCache):
        start = self._deep_cache_layer(deep_cache)
        _, skips = self.down_blocks[0](x, temb, audio, f, layers=deep_cache.branch)
        return self.up_blocks[-1](deep_cache.features, [x, *skips], temb, audio, f, start=start)

    def _deep_cache_layer(self, deep_cache: DeepCache) -> int:
        """The layer of the last up block whose input is cached."""
        layers = len(self.up_blocks[-1].resnets)
        if deep_cache.branch > self.config.layers_per_block:
            raise ValueError(f"DeepCache branch {deep_cache.branch} exceeds the {self.config.layers_per_block} "
                             "layers of the first down block")
        return layers - 1 - deep_cache.branch


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def _is_position_encoding(key: str) -> bool:
    return key.endswith("pos_encoder.pe")


def _mismatch_hint(report: KeyReport) -> str:
    """A sentence that explains the most common mismatches."""
    keys = report.missing + report.unexpected + [k for k, _, _ in report.mismatched]
    if keys and all(k.startswith("module.") for k in report.unexpected) and report.unexpected:
        return "Its keys start with 'module.' (saved from a DDP wrapper); save `model.module.state_dict()` instead"
    if report.missing and all("motion_modules" in k for k in report.missing):
        return "The file has no temporal layers: it is a stage-1 (LatentSync 1.0-style) UNet; use a stage1 config"
    if report.unexpected and all("motion_modules" in k for k in report.unexpected):
        return "The file has temporal layers: use a stage2 config (stage2 for 1.5, stage2_512 for 1.6)"
    if any(k.startswith("model.diffusion_model.") for k in report.unexpected):
        return "This is an original-format Stable Diffusion checkpoint; use a diffusers-format UNet"
    return ""


@dataclass
class SD15InitReport:
    """What `load_unet(..., from_sd15=True)` took from a Stable Diffusion 1.5 UNet and what it left fresh."""

    loaded: int = 0
    dropped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, model shape)
    fresh: list[str] = field(default_factory=list)  # model keys the file did not provide

    def summary(self) -> str:
        groups: dict[str, int] = {}
        for k in self.fresh:
            group = "motion_modules" if "motion_modules" in k else k.rsplit(".", 1)[0]
            groups[group] = groups.get(group, 0) + 1
        fresh = ", ".join(f"{g} ({n})" for g, n in sorted(groups.items(), key=lambda kv: -kv[1])[:4])
        dropped = ", ".join(f"{k} {tuple(a)}->{tuple(b)}" for k, a, b in self.dropped[:4])
        more = ", ..." if len(self.dropped) > 4 else ""
        return (f"loaded {self.loaded} tensors from SD 1.5; dropped {len(self.dropped)} with other shapes "
                f"({dropped}{more}); initialised {len(self.fresh)} fresh ({fresh})")


def _sd15_state_dict_path(path: Path) -> Path:
    """A diffusers SD-1.5 UNet given as a file, its `unet/` folder, or the whole pipeline folder."""
    if path.is_file():
        return path
    for folder in (path, path / "unet"):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(f"{path}: no diffusers UNet weights (diffusion_pytorch_model.safetensors) found")


def _droppable_for_sd15(key: str) -> bool:
    # The 4-channel conv_in and the 768-d text cross-attention projections cannot serve a 13-channel,
    # audio-conditioned UNet; everything else of SD 1.5 carries over (spec 3.3).
    return key.startswith("conv_in.") or (".attn2.to_k." in key or ".attn2.to_v." in key)


def _init_from_sd15(factory, path: Path, device: torch.device, dtype: torch.dtype | None):
    state_dict = read_state_dict(_sd15_state_dict_path(path))
    model = build(factory, device=device, dtype=None)  # trainable weights start in fp32
    report = compare_keys(expected_shapes(model), state_dict, optional=lambda k: True)
    bad = [m for m in report.mismatched if not _droppable_for_sd15(m[0])]
    if report.unexpected or bad:
        detail = KeyReport(unexpected=report.unexpected, mismatched=bad).summary()
        hint = _mismatch_hint(report)
        raise CheckpointError(f"{path}: not a Stable Diffusion 1.5 UNet in diffusers format: {detail}"
                              + (f". {hint}" if hint else ""))
    dropped = list(report.mismatched)
    if any(k == "conv_in.weight" for k, _, _ in dropped) and "conv_in.bias" in state_dict:
        # conv_in is dropped as a whole so it stays zero-initialised, as the published recipe does.
        dropped.append(("conv_in.bias", tuple(state_dict["conv_in.bias"].shape),
                        tuple(model.conv_in.bias.shape)))
    dropped_keys = {k for k, _, _ in dropped}
    usable = {k: v for k, v in state_dict.items() if k not in dropped_keys}
    model.load_state_dict(usable, strict=False)
    info = SD15InitReport(
        loaded=len(usable),
        dropped=dropped,
        fresh=[k for k in expected_shapes(model) if k not in usable],
    )
    if dtype is not None:
        model.to(dtype=dtype)
    return model, info


def load_unet(
    config: str | Path | dict | UNetConfig,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    from_sd15: bool = False,
) -> UNet3DConditionModel:
    """Build the UNet of `config` (a YAML path, a packaged name such as "stage2_512", a mapping or a
    UNetConfig) and load `checkpoint` into it, directly on `device` in `dtype` (default: CPU, float32).

    `checkpoint`: a `.pt` holding `{"global_step", "state_dict"}` (the published format) or a bare state dict,
    or a `.safetensors` file. Loading is strict: any missing or unexpected key or shape conflict raises one
    CheckpointError that lists them (the deterministic position-encoding buffers may be absent).
    With `from_sd15=True`, `checkpoint` is a diffusers Stable Diffusion 1.5 UNet (file or folder): its
    `conv_in` and audio `attn2.to_k/to_v` weights of other shapes are dropped, the temporal layers start as
    the identity, and what was dropped or left fresh is logged and kept in `model.load_report`.
    Without a checkpoint the weights are freshly initialised (on `device`). The model is returned in eval mode.
    """
    cfg = load_unet_config(config)
    device = resolve_device(device)

    def factory() -> UNet3DConditionModel:
        return UNet3DConditionModel(cfg.model)

    if from_sd15 and checkpoint is not None:
        model, report = _init_from_sd15(factory, Path(checkpoint), device, dtype)
        model.load_report = report
        log.info("UNet from %s: %s", checkpoint, report.summary())
        return model.eval()
    return load_module(factory, checkpoint, device=device, dtype=dtype, optional=_is_position_encoding,
                       hint=_mismatch_hint)


def save_unet_checkpoint(model: UNet3DConditionModel, path: str | Path, global_step: int = 0) -> Path:
    """Write `{"global_step", "state_dict"}`, the published format that `load_unet` reads, atomically."""
    return atomic_torch_save({"global_step": int(global_step), "state_dict": model.state_dict()}, path)
