"""Moved to `latentsync.data.syncnet`; this path re-exports it for one release."""

from ..data.syncnet import (
    DEFAULT_MEL_CACHE_CLIPS,
    FILESLIST_COMMENT,
    FILESLIST_SUFFIX,
    MIN_WINDOWS_PER_CLIP,
    NEGATIVE_PROBABILITY,
    ON_ERROR_MODES,
    PIXEL_HALF_RANGE,
    VIDEO_SUFFIX,
    Clip,
    ClipSource,
    LRUMelCache,
    MelCache,
    SamplePlan,
    SyncNetDataset,
    find_clips,
    load_or_skip,
)

__all__ = [
    "DEFAULT_MEL_CACHE_CLIPS",
    "FILESLIST_COMMENT",
    "FILESLIST_SUFFIX",
    "MIN_WINDOWS_PER_CLIP",
    "NEGATIVE_PROBABILITY",
    "ON_ERROR_MODES",
    "PIXEL_HALF_RANGE",
    "VIDEO_SUFFIX",
    "Clip",
    "ClipSource",
    "LRUMelCache",
    "MelCache",
    "SamplePlan",
    "SyncNetDataset",
    "find_clips",
    "load_or_skip",
]
