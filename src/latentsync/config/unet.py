"""UNet configs (`configs/unet/*.yaml`): the sections model, data, ckpt, run and optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .loading import load_config

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
# LoRA's default targets (`models.lora`): the attention projections of every transformer block, spatial self
# (attn1), audio cross (attn2) and temporal (attention_blocks.*), and their feed-forward projections; a module
# is targeted when its name is one of these or ends with "." and one of these.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


@dataclass
class MotionModuleConfig:
    """AnimateDiff-style temporal transformer inserted after each spatial layer (spec 3.2)."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True

    def validate(self, where: str) -> None:
        bad = [t for t in self.attention_block_types if t != "Temporal_Self"]
        if bad:
            raise ConfigError(f"{where}.attention_block_types: only Temporal_Self is supported, got {bad}")


@dataclass
class UNetModelConfig:
    """The `model:` section. Defaults are the SD-1.5 layout LatentSync uses; see spec 3.1."""

    act_fn: str = "silu"
    add_audio_layer: bool = True
    # Stable Diffusion quirk kept by LatentSync: this is the number of attention heads, not their width.
    attention_head_dim: int = 8
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    center_input_sample: bool = False
    cross_attention_dim: int = 384
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    )
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
    )
    downsample_padding: int = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    in_channels: int = 13
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    norm_eps: float = 1e-5
    norm_num_groups: int = 32
    out_channels: int = 4
    sample_size: int = 64  # unused by the network; kept because the published files carry it
    resnet_time_scale_shift: str = "default"
    use_motion_module: bool = False
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str = "Vanilla"
    motion_module_kwargs: MotionModuleConfig = field(default_factory=MotionModuleConfig)

    def validate(self, where: str) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(f"{where}: down_block_types, up_block_types and block_out_channels differ in length")
        for name, allowed in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
            bad = [t for t in getattr(self, name) if t not in allowed]
            if bad:
                raise ConfigError(f"{where}.{name}: unsupported block type(s) {bad} (supported: {allowed})")
        if self.mid_block_type != "UNetMidBlock3DCrossAttn":
            raise ConfigError(f"{where}.mid_block_type: only UNetMidBlock3DCrossAttn is supported")
        if self.act_fn != "silu":
            raise ConfigError(f"{where}.act_fn: only silu is supported")
        if self.resnet_time_scale_shift != "default":
            raise ConfigError(f"{where}.resnet_time_scale_shift: only 'default' is supported")
        if self.motion_module_type != "Vanilla":
            raise ConfigError(f"{where}.motion_module_type: only Vanilla is supported")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"{where}: channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
            if c % self.attention_head_dim:
                raise ConfigError(f"{where}: channels {c} not divisible by attention_head_dim {self.attention_head_dim}")


@dataclass
class UNetDataConfig:
    syncnet_config_path: str = "configs/syncnet/syncnet_16_pixel_attn.yaml"
    train_output_dir: str = "output/unet"
    train_fileslist: str = ""
    train_data_dir: str = ""
    audio_embeds_cache_dir: str = ""
    audio_mel_cache_dir: str = ""
    val_video_path: str = ""
    val_audio_path: str = ""
    batch_size: int = 1
    num_workers: int = 4
    num_frames: int = 16
    resolution: int = 256
    mask_image_path: str = ""  # empty: latentsync's built-in mouth mask
    audio_sample_rate: int = 16000
    video_fps: int = 25
    audio_feat_length: tuple[int, int] = (2, 2)


@dataclass
class UNetCkptConfig:
    resume_ckpt_path: str = ""
    save_ckpt_steps: int = 10000


@dataclass
class UNetRunConfig:
    pixel_space_supervise: bool = False
    use_syncnet: bool = False
    sync_loss_weight: float = 0.05
    perceptual_loss_weight: float = 0.1
    recon_loss_weight: float = 1.0
    guidance_scale: float = 1.5
    trepa_loss_weight: float = 10.0
    trepa_model: str = "vit_giant_patch14"  # VideoMAE-v2 configuration of the TREPA features (ours; tests: tiny)
    inference_steps: int = 20
    trainable_modules: tuple[str, ...] = ()
    seed: int = 1247
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    mixed_precision_training: bool = True
    mixed_precision_dtype: str = "auto"  # ours: auto (fp16 on CUDA, bf16 elsewhere), fp16 or bf16
    enable_gradient_checkpointing: bool = True
    max_train_steps: int = 10_000_000
    max_train_epochs: int = -1
    # Ours (fine-tuning, `latentsync finetune`): a rank above 0 trains a LoRA adapter of that rank on the UNet of
    # ckpt.resume_ckpt_path (frozen, in the frozen networks' precision) instead of run.trainable_modules; the
    # updates are scaled by lora_alpha / lora_rank (lora_alpha 0: the rank, a scale of 1).
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS


@dataclass
class OptimizerConfig:
    lr: float = 1e-5
    scale_lr: bool = False
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0


@dataclass
class UNetConfig:
    model: UNetModelConfig = field(default_factory=UNetModelConfig)
    data: UNetDataConfig = field(default_factory=UNetDataConfig)
    ckpt: UNetCkptConfig = field(default_factory=UNetCkptConfig)
    run: UNetRunConfig = field(default_factory=UNetRunConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


def load_unet_config(config: str | Path | dict | UNetConfig, overrides: list[str] | None = None) -> UNetConfig:
    """A UNet config from a YAML path, a packaged name ("stage2_512"), a mapping or a UNetConfig."""
    return load_config(UNetConfig, "unet", config, overrides)
