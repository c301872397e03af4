"""Configuration: dataclasses for every config file, filled from YAML in the published LatentSync layout.

A YAML file overrides the dataclass defaults; an unknown key is an error (a typo must not silently train
or infer with a default). Values are converted to the annotated types, so `lr: 1e-5` (which PyYAML reads as
a string) becomes a float.

The published configs ship inside the package (`latentsync/configs/`, linked as `configs/` at the top of the
repository); `resolve_config("unet", "stage2_512")` finds one by name.

Layout: `loading.py` holds the YAML -> dataclass machinery (and why it is not OmegaConf), `unet.py`,
`syncnet.py` and `preprocess.py` one config family each. Import from `latentsync.config`.
"""

from .loading import (
    CONFIG_ROOT,
    apply_overrides,
    field_value,
    from_dict,
    load_config,
    load_yaml,
    resolve_config,
    to_dict,
)
from .preprocess import PreprocessConfig, load_preprocess_config
from .syncnet import (
    DownsampleFactor,
    SyncNetCkptConfig,
    SyncNetConfig,
    SyncNetDataConfig,
    SyncNetEncoderConfig,
    SyncNetModelConfig,
    SyncNetOptimizerConfig,
    SyncNetRunConfig,
    load_syncnet_config,
)
from .unet import (
    DOWN_BLOCK_TYPES,
    LORA_TARGETS,
    UP_BLOCK_TYPES,
    MotionModuleConfig,
    OptimizerConfig,
    UNetCkptConfig,
    UNetConfig,
    UNetDataConfig,
    UNetModelConfig,
    UNetRunConfig,
    load_unet_config,
)

__all__ = [
    "CONFIG_ROOT",
    "DOWN_BLOCK_TYPES",
    "LORA_TARGETS",
    "UP_BLOCK_TYPES",
    "DownsampleFactor",
    "MotionModuleConfig",
    "OptimizerConfig",
    "PreprocessConfig",
    "SyncNetCkptConfig",
    "SyncNetConfig",
    "SyncNetDataConfig",
    "SyncNetEncoderConfig",
    "SyncNetModelConfig",
    "SyncNetOptimizerConfig",
    "SyncNetRunConfig",
    "UNetCkptConfig",
    "UNetConfig",
    "UNetDataConfig",
    "UNetModelConfig",
    "UNetRunConfig",
    "apply_overrides",
    "field_value",
    "from_dict",
    "load_config",
    "load_preprocess_config",
    "load_syncnet_config",
    "load_unet_config",
    "load_yaml",
    "resolve_config",
    "to_dict",
]
