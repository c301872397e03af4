"""SyncNet configs (`configs/syncnet/*.yaml`): the two StableSyncNet towers and the training sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ..errors import ConfigError
from .loading import load_config

DownsampleFactor = Union[int, tuple[int, int]]


@dataclass
class SyncNetEncoderConfig:
    """One tower of StableSyncNet (spec 5.1): a conv stem, one resnet stage per entry, optional attention."""

    in_channels: int
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[DownsampleFactor, ...]
    # 1 after stage i inserts a self-attention block there. The 25-frame config omits the key: no attention.
    attn_blocks: tuple[int, ...] | None = None
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        n = len(self.block_out_channels)
        if len(self.downsample_factors) != n:
            raise ConfigError(f"{where}: downsample_factors must have one entry per block ({n})")
        if self.attn_blocks is not None and len(self.attn_blocks) != n:
            raise ConfigError(f"{where}: attn_blocks must have one entry per block ({n})")


@dataclass
class SyncNetModelConfig:
    audio_encoder: SyncNetEncoderConfig
    visual_encoder: SyncNetEncoderConfig


@dataclass
class SyncNetCkptConfig:
    resume_ckpt_path: str = ""
    inference_ckpt_path: str = ""
    save_ckpt_steps: int = 2500


@dataclass
class SyncNetDataConfig:
    train_output_dir: str = "output/syncnet"
    num_val_samples: int = 2048
    batch_size: int = 256
    gradient_accumulation_steps: int = 1
    num_workers: int = 4
    latent_space: bool = False
    num_frames: int = 16
    resolution: int = 256
    train_fileslist: str = ""
    train_data_dir: str = ""
    val_fileslist: str = ""
    val_data_dir: str = ""
    audio_mel_cache_dir: str = ""
    lower_half: bool = True
    audio_sample_rate: int = 16000
    video_fps: int = 25


@dataclass
class SyncNetOptimizerConfig:
    lr: float = 1e-5
    max_grad_norm: float = 1.0


@dataclass
class SyncNetRunConfig:
    max_train_steps: int = 10_000_000
    validation_steps: int = 2500
    mixed_precision_training: bool = True
    mixed_precision_dtype: str = "auto"  # ours: auto (fp16 on CUDA, bf16 elsewhere), fp16 or bf16
    seed: int = 42


@dataclass
class SyncNetConfig:
    model: SyncNetModelConfig
    ckpt: SyncNetCkptConfig = field(default_factory=SyncNetCkptConfig)
    data: SyncNetDataConfig = field(default_factory=SyncNetDataConfig)
    optimizer: SyncNetOptimizerConfig = field(default_factory=SyncNetOptimizerConfig)
    run: SyncNetRunConfig = field(default_factory=SyncNetRunConfig)


def load_syncnet_config(
    config: str | Path | dict | SyncNetConfig, overrides: list[str] | None = None
) -> SyncNetConfig:
    """A SyncNet config from a YAML path, a packaged name ("syncnet_16_pixel_attn"), a mapping or a SyncNetConfig."""
    return load_config(SyncNetConfig, "syncnet", config, overrides)
