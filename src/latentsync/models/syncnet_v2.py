"""SyncNetV2: the joonson SyncNet used to measure lip sync (LSE-C / LSE-D), spec 5.2.

The network of Chung & Zisserman, "Out of time: automated lip sync in the wild" (ACCV workshops 2016), as
released in github.com/joonson/syncnet_python (`SyncNetModel.S`) with the weights `syncnet_v2.model`, which
LatentSync copies to `checkpoints/auxiliary/`. Two towers map 0.2 s of sound and of mouth motion to 1024-d
vectors whose Euclidean distance is small when the two are in sync:

* audio: 13 MFCCs x 20 frames (100 Hz) -> 2-D convolutions -> 512 -> FC 512 -> FC 1024;
* lips: 5 frames of a 224x224 face crop (BGR, raw 0-255 values) -> 3-D convolutions -> 512 -> FC 512 -> FC 1024.

Layer hyper-parameters are those of `SyncNetModel.py`. The towers are `nn.Sequential`s whose indices match the
published state dict (`syncnet-v2-keys.tsv`): ReLU and max-pool layers take an index of their own, so the file
loads by name without renaming. Axis letters in shape comments: b batch, c channels, t time (frames),
h height, w width (for the audio tower h = MFCC coefficient, w = MFCC frame).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from .checkpoint import KeyReport, load_module, resolve_device

EMBED_DIM = 1024  # `num_layers_in_fc_layers` in the reference
MFCC_COEFFS = 13
MFCC_WINDOW = 20  # MFCC frames per audio window: 0.2 s at 100 Hz
LIP_WINDOW = 5  # video frames per lip window: 0.2 s at 25 fps
CROP_SIZE = 224  # px, side of the face crop


def _conv2d_block(c_in: int, c_out: int, kernel, padding) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=padding), nn.BatchNorm2d(c_out), nn.ReLU()]


def _conv3d_block(c_in: int, c_out: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding), nn.BatchNorm3d(c_out), nn.ReLU()]


def _fc_head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))


class SyncNetV2(nn.Module):
    """joonson's SyncNet "S": `forward_aud` on (b, 1, 13, 20) MFCC windows, `forward_lip` on (b, 3, 5, 224, 224)
    BGR windows; both return (b, 1024) embeddings, compared by Euclidean distance."""

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        # Audio: (b, 1, 13, 20) -> (b, 512, 1, 1). The first max-pool is 1x1 (an identity that still occupies
        # an index in the published names).
        self.netcnnaud = nn.Sequential(
            *_conv2d_block(1, 64, (3, 3), (1, 1)),  # 0-2
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),  # 3
            *_conv2d_block(64, 192, (3, 3), (1, 1)),  # 4-6
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # 7: 13x20 -> 11x9
            *_conv2d_block(192, 384, (3, 3), (1, 1)),  # 8-10
            *_conv2d_block(384, 256, (3, 3), (1, 1)),  # 11-13
            *_conv2d_block(256, 256, (3, 3), (1, 1)),  # 14-16
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 17: 11x9 -> 5x4
            *_conv2d_block(256, 512, (5, 4), (0, 0)),  # 18-20: 5x4 -> 1x1
        )
        self.netfcaud = _fc_head(embed_dim)
        self.netfclip = _fc_head(embed_dim)
        # Lips: (b, 3, 5, 224, 224) -> (b, 512, 1, 1, 1). The first convolution spans all 5 frames.
        self.netcnnlip = nn.Sequential(
            *_conv3d_block(3, 96, (5, 7, 7), stride=(1, 2, 2)),  # 0-2: t 5 -> 1, 224 -> 109
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 3: 109 -> 54
            *_conv3d_block(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 4-6: 54 -> 26
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7: 26 -> 13
            *_conv3d_block(256, 256, (1, 3, 3), padding=(0, 1, 1)),  # 8-10
            *_conv3d_block(256, 256, (1, 3, 3), padding=(0, 1, 1)),  # 11-13
            *_conv3d_block(256, 256, (1, 3, 3), padding=(0, 1, 1)),  # 14-16
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 17: 13 -> 6
            *_conv3d_block(256, 512, (1, 6, 6)),  # 18-20: 6 -> 1
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 1, 13, 20) MFCC windows -> (b, 1024)."""
        h = self.netcnnaud(x)  # b 512 1 1
        h = rearrange(h, "b c h w -> b (c h w)")  # b 512
        return self.netfcaud(h)  # b 1024

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, 5, 224, 224) BGR 0-255 windows -> (b, 1024)."""
        h = self.netcnnlip(x)  # b 512 1 1 1
        h = rearrange(h, "b c t h w -> b (c t h w)")  # b 512
        return self.netfclip(h)  # b 1024

    def forward(self, lips: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lip embeddings, audio embeddings) of paired windows."""
        return self.forward_lip(lips), self.forward_aud(mfcc)


def _mismatch_hint(report: KeyReport) -> str:
    if any(k.startswith(("audio_encoder.", "visual_encoder.")) for k in report.unexpected):
        return "this is a StableSyncNet checkpoint; the sync-confidence metric needs auxiliary/syncnet_v2.model"
    return ""


def load_syncnet_v2(
    checkpoint: str | Path | None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> SyncNetV2:
    """A SyncNetV2 in eval mode (BatchNorm uses its running statistics).

    `checkpoint`: the published `syncnet_v2.model`, a raw state dict (float16 or float32 tensors) loaded
    strictly by name; `None` gives random weights (benchmarks, tests). `dtype` defaults to float32, as the
    reference copies the file's tensors into a float32 model. A file that does not match raises
    `CheckpointError` naming it.
    """
    return load_module(SyncNetV2, checkpoint, device=resolve_device(device), dtype=dtype or torch.float32,
                       hint=_mismatch_hint)
