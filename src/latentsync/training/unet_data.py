"""Moved to `latentsync.data.unet`; this path re-exports it for one release."""

from ..data.unet import PIXEL_HALF_RANGE, WINDOWS_PER_CLIP, UNetDataset, WhisperFeatures

__all__ = ["PIXEL_HALF_RANGE", "WINDOWS_PER_CLIP", "UNetDataset", "WhisperFeatures"]
