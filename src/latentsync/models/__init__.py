"""The networks of LatentSync, written to load the published checkpoints without renaming a key."""

from .syncnet import StableSyncNet, load_syncnet, save_syncnet_checkpoint
from .unet import UNet3DConditionModel, load_unet, save_unet_checkpoint

__all__ = [
    "StableSyncNet",
    "UNet3DConditionModel",
    "load_syncnet",
    "load_unet",
    "save_syncnet_checkpoint",
    "save_unet_checkpoint",
]
