"""Data processing (`configs/preprocess.yaml`): every threshold of the pipeline, spec section 6."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .loading import CONFIG_ROOT, apply_overrides, from_dict, load_yaml, to_dict

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
        if not overrides:
            return config
        config = to_dict(config)  # overrides apply to a copy
    if isinstance(config, dict):
        data, where = copy.deepcopy(config), "preprocess config"  # the caller's mapping stays as it was
    else:
        path = Path(config)
        data, where = load_yaml(path), str(path)
    if overrides:
        apply_overrides(data, overrides)
    return from_dict(PreprocessConfig, data, where)
