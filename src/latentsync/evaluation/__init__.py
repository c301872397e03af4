"""Evaluation: the numbers lip-sync papers report, computed the standard way.

- `sync_confidence`: LSE-C / LSE-D with the joonson SyncNet (`syncnet_v2.model`) of many videos, and the report;
  the metric itself, on face crops (`crop_sync_confidence`) or on any video, is `latentsync.sync_score`.
- `syncnet_accuracy`: how often a StableSyncNet tells in-sync from shifted pairs on a processed dataset.
- `fvd`: Fréchet Video Distance with the Kinetics-400 I3D; plus frame PSNR/SSIM against the source.
"""

__all__ = ["crop_sync_confidence"]


def __getattr__(name: str):
    if name == "crop_sync_confidence":
        from ..sync_score import crop_sync_confidence

        return crop_sync_confidence
    raise AttributeError(f"module 'latentsync.evaluation' has no attribute {name!r}")
