"""Configuration: dataclasses for every config file, filled from YAML in the published LatentSync layout.

A YAML file overrides the dataclass defaults; an unknown key is an error (a typo must not silently train
or infer with a default). Values are converted to the annotated types, so `lr: 1e-5` (which PyYAML reads as
a string) becomes a float.

The published configs ship inside the package (`latentsync/configs/`, linked as `configs/` at the top of the
repository); `resolve_config("unet", "stage2_512")` finds one by name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"

T = typing.TypeVar("T")


# --------------------------------------------------------------------------------------------------------
# Generic YAML -> dataclass conversion
# --------------------------------------------------------------------------------------------------------


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # Try the more specific arms first: a list must not be swallowed by `str`.
        for arm in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {list(value)!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp!r} at {where}")


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without a default is missing
        raise ConfigError(f"{where}: {e}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-serialisable form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a config mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. run.seed=7")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    return data


def resolve_config(kind: str, name_or_path: str | Path) -> Path:
    """A config given as a path, or by name among the packaged ones: `kind` is "unet" or "syncnet", and a
    name is a file stem in that folder ("stage2_512") or a path below the config root ("tiny/unet")."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for candidate in (CONFIG_ROOT / kind / f"{name_or_path}.yaml", CONFIG_ROOT / f"{name_or_path}.yaml"):
        if candidate.exists():
            return candidate
    known = sorted(q.stem for q in (CONFIG_ROOT / kind).glob("*.yaml")) + [f"tiny/{kind}"]
    raise ConfigError(f"{name_or_path}: no such {kind} config (a .yaml path, or one of: {', '.join(known)})")


# --------------------------------------------------------------------------------------------------------
# UNet configs (configs/unet/*.yaml): sections model, data, ckpt, run, optimizer
# --------------------------------------------------------------------------------------------------------

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")


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


def _load_config(cls: type[T], kind: str, config, overrides: list[str] | None) -> T:
    """`cls` from an instance, a mapping, a YAML path or a packaged name, with `key=value` overrides."""
    if isinstance(config, cls):
        if not overrides:
            return config
        config = to_dict(config)  # overrides apply to a copy
    if isinstance(config, dict):
        data, where = dict(config), f"{kind} config"
    else:
        path = resolve_config(kind, config)
        data, where = load_yaml(path), str(path)
    if overrides:
        apply_overrides(data, overrides)
    return from_dict(cls, data, where)


def load_unet_config(config: str | Path | dict | UNetConfig, overrides: list[str] | None = None) -> UNetConfig:
    """A UNet config from a YAML path, a packaged name ("stage2_512"), a mapping or a UNetConfig."""
    return _load_config(UNetConfig, "unet", config, overrides)


# --------------------------------------------------------------------------------------------------------
# SyncNet configs (configs/syncnet/*.yaml)
# --------------------------------------------------------------------------------------------------------

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
    return _load_config(SyncNetConfig, "syncnet", config, overrides)


# --------------------------------------------------------------------------------------------------------
# Data processing (configs/preprocess.yaml): every threshold of the pipeline, spec section 6
# --------------------------------------------------------------------------------------------------------


@dataclass
class PreprocessConfig:
    """Thresholds and settings of `latentsync preprocess`. Defaults are the reference's (spec 6)."""

    resolution: int = 256  # aligned face size: 256 (LatentSync 1.5) or 512 (1.6)
    video_fps: int = 25
    audio_sample_rate: int = 16000
    video_extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
    # 1. broken videos
    min_duration_s: float = 2.0  # shorter clips cannot give a 48-frame training window
    # 3. shots: PySceneDetect's adaptive detector
    shot_adaptive_threshold: float = 2.0
    shot_min_scene_frames: int = 15
    # 4. segments: shots are cut into pieces of 5-10 s; a shorter shot is one segment if >= min_segment_s
    segment_min_s: float = 5.0
    segment_max_s: float = 10.0
    min_segment_s: float = 2.0
    # 5. alignment
    face: str = "largest"
    face_backend: str = "auto"
    aligned_crf: int = 13  # H.264 quality of the aligned clips (training data: near lossless)
    # 6. sync filter: joonson SyncNet confidence and offset (frames), audio then shifted to offset 0
    sync_conf_threshold: float = 3.0
    sync_max_offset: int = 6
    # 7. visual quality: hyperIQA score (KonIQ-10k scale) of the first, middle and last frame
    quality_threshold: float = 40.0

    def validate(self, where: str) -> None:
        if self.resolution % 8 or self.resolution <= 0:
            raise ConfigError(f"{where}.resolution: {self.resolution} is not a positive multiple of 8")
        if not 0 < self.segment_min_s <= self.segment_max_s / 2:
            raise ConfigError(f"{where}: segment_min_s must be positive and at most half of segment_max_s")


def load_preprocess_config(config: str | Path | dict | PreprocessConfig | None = None,
                           overrides: list[str] | None = None) -> PreprocessConfig:
    """The data-pipeline config from a YAML path, a mapping or an instance (None: configs/preprocess.yaml)."""
    if config is None:
        config = CONFIG_ROOT / "preprocess.yaml"
    if isinstance(config, PreprocessConfig):
        return config
    if isinstance(config, dict):
        data, where = dict(config), "preprocess config"
    else:
        path = Path(config)
        data, where = load_yaml(path), str(path)
    if overrides:
        apply_overrides(data, overrides)
    return from_dict(PreprocessConfig, data, where)
