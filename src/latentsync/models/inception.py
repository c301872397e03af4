"""The Inception-v3 of the Fréchet Inception Distance: TensorFlow's 2015 ImageNet Inception, pool3 features.

FID (Heusel et al. 2017, arXiv 1706.08500) compares the 2048-d `pool_3` activations of the Inception network
that TensorFlow published as `inception-2015-12-05.tgz`. mseitzer/pytorch-fid ported those weights to torch as
`pt_inception-2015-12-05-6726825d.pth` (FID_WEIGHTS_URL below), in the layout of torchvision's `Inception3`
built with `num_classes=1008, aux_logits=False`, and patched four blocks so that the network computes what
the TF graph computes (`src/pytorch_fid/inception.py`: `fid_inception_v3`, `FIDInceptionA/C/E_1/E_2`). We
rebuild that network here; nothing of pytorch-fid or torchvision is imported.

Facts reproduced (from pytorch-fid's `inception.py` and torchvision's `models/inception.py`):

* Every convolution is a `BasicConv2d`: conv without bias -> BatchNorm (eps 0.001) -> ReLU. Module and
  parameter names are torchvision's (`Mixed_7c.branch_pool.conv.weight`, `...bn.running_var`), so the file
  loads by name without renaming.
* The average pools inside the Inception blocks A, C and E (`Mixed_5b`-`5d`, `6b`-`6e`, `7b`) exclude the
  padding from the average (`count_include_pad=False`), as TF's average pool does; torchvision counts it.
* The last block, `Mixed_7c`, pools its `branch_pool` input with a 3x3 MAX pool (stride 1, padding 1) where
  torchvision (and the paper) use an average pool: a quirk of the TF graph that FID inherited.
* The reduction blocks `Mixed_6a` and `Mixed_7a` and the stem max pools are 3x3 stride-2 max pools, no
  padding, as in torchvision: 299 -> 149 -> 147 -> 73 -> 71 -> 35 (Mixed_5*) -> 17 (Mixed_6*) -> 8 (Mixed_7*).
* Features: the global average of the `Mixed_7c` output, (b, 2048) (`pool_3` of the TF graph; pytorch-fid's
  block 3, `AdaptiveAvgPool2d(1)`).
* Input: RGB in [0, 1], resized to 299 x 299 with bilinear interpolation (`align_corners=False`, no
  antialiasing), then mapped to [-1, 1] by 2x - 1 (pytorch-fid's `resize_input` and `normalize_input`).

The file also holds the 1008-way classifier `fc` (TF's 1001 ImageNet classes padded to 1008), which FID does not
use. We keep it as a module so that the file loads strictly (every tensor in the file has a place, every
parameter comes from the file; a truncated or foreign file is an error, not a silently partial model); `forward`
stops at pool3. It costs 8 MB.

Axis letters in shape comments: b batch, c channels, h height, w width, k classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from ..errors import CheckpointError
from .checkpoint import KeyReport, materialize, read_state_dict, resolve_device

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILENAME)
# Where `load_fid_inception`'s error tells the user to put the file, relative to the working folder (the
# checkpoints folder's `auxiliary/`, beside the other evaluation networks).
FID_WEIGHTS_PLACE = f"checkpoints/auxiliary/{FID_WEIGHTS_FILENAME}"

INPUT_SIZE = 299  # px, the resolution the network was trained at (pytorch-fid resizes every image to it)
FEATURE_DIM = 2048  # channels of Mixed_7c, averaged over space: the pool3 features FID compares
NUM_CLASSES = 1008  # the classifier of TF's 2015 graph: 1001 ImageNet classes padded to 1008
BN_EPS = 1e-3  # torchvision BasicConv2d (TF's BatchNorm epsilon)
POOL_KERNEL = 3  # every pool of the network is 3x3
REDUCTION_STRIDE = 2  # the stem max pools and the reduction blocks Mixed_6a and Mixed_7a


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool, zero padding excluded from each average (TF's "SAME" average pool)."""
    return F.avg_pool2d(x, POOL_KERNEL, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 max pool (torch pads max pools with -inf, so the padding never wins)."""
    return F.max_pool2d(x, POOL_KERNEL, stride=1, padding=1)


def _max_pool_reduce(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-2 max pool without padding: n -> (n - 3) // 2 + 1."""
    return F.max_pool2d(x, POOL_KERNEL, stride=REDUCTION_STRIDE)


class BasicConv2d(nn.Module):
    """Conv2d without bias -> BatchNorm (eps 0.001) -> ReLU; `conv` and `bn` as torchvision names them."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))  # b c' h' w'


class InceptionA(nn.Module):
    """Mixed_5b-5d (35 x 35): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)  # b 64 h w
        b = self.branch5x5_2(self.branch5x5_1(x))  # b 64 h w
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # b 96 h w
        d = self.branch_pool(_avg_pool_same(x))  # b pool_features h w
        return torch.cat([a, b, c, d], dim=1)  # b 224+pool_features h w


class InceptionB(nn.Module):
    """Mixed_6a, the 35 -> 17 reduction: 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool stride 2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=REDUCTION_STRIDE)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=REDUCTION_STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)  # b 384 h' w'
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # b 96 h' w'
        c = _max_pool_reduce(x)  # b c h' w'
        return torch.cat([a, b, c], dim=1)  # b 480+c h' w'


class InceptionC(nn.Module):
    """Mixed_6b-6e (17 x 17), factorised 7x7: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> (7x1 -> 1x7) x 2 | avg pool -> 1x1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)  # b 192 h w
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))  # b 192 h w
        c = self.branch7x7dbl_1(x)  # b c7 h w
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = conv(c)  # b 192 h w after the last
        d = self.branch_pool(_avg_pool_same(x))  # b 192 h w
        return torch.cat([a, b, c, d], dim=1)  # b 768 h w


class InceptionD(nn.Module):
    """Mixed_7a, the 17 -> 8 reduction: 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2 | max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=REDUCTION_STRIDE)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=REDUCTION_STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))  # b 320 h' w'
        b = self.branch7x7x3_1(x)  # b 192 h w
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = conv(b)  # b 192 h' w' after the last
        c = _max_pool_reduce(x)  # b c h' w'
        return torch.cat([a, b, c], dim=1)  # b 512+c h' w'


class InceptionE(nn.Module):
    """Mixed_7b/7c (8 x 8): 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1.

    `pool` is "avg" (padding excluded) for Mixed_7b and "max" for Mixed_7c, as in TF's graph (pytorch-fid's
    `FIDInceptionE_1` / `FIDInceptionE_2`).
    """

    POOLS = {"avg": _avg_pool_same, "max": _max_pool_same}

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in self.POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {', '.join(self.POOLS)}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)  # b 320 h w
        b = self.branch3x3_1(x)  # b 384 h w
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], dim=1)  # b 768 h w
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))  # b 384 h w
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], dim=1)  # b 768 h w
        d = self.branch_pool(self.POOLS[self.pool](x))  # b 192 h w
        return torch.cat([a, b, c, d], dim=1)  # b 2048 h w


class FIDInceptionV3(nn.Module):
    """TF's 2015 Inception-v3 as FID uses it: `forward` maps images (b, 3, h, w) in [0, 1] to pool3 (b, 2048).

    Submodule names are torchvision's, so `pt_inception-2015-12-05-6726825d.pth` loads by name
    (`load_fid_inception`). `fc` (the 1008-way classifier) is there for strict loading only.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=REDUCTION_STRIDE)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # not used by forward: see the module docstring

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features (b, 2048) of RGB `images` (b, 3, h, w) with values in [0, 1] (any h, w: resized)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (b, 3, h, w), got shape {tuple(images.shape)}")
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False)  # b 3 299 299
        x = 2 * x - 1  # [0, 1] -> [-1, 1], the range TF's Inception was trained on
        x = self.Conv2d_1a_3x3(x)  # b 32 149 149
        x = self.Conv2d_2a_3x3(x)  # b 32 147 147
        x = self.Conv2d_2b_3x3(x)  # b 64 147 147
        x = _max_pool_reduce(x)  # b 64 73 73
        x = self.Conv2d_3b_1x1(x)  # b 80 73 73
        x = self.Conv2d_4a_3x3(x)  # b 192 71 71
        x = _max_pool_reduce(x)  # b 192 35 35
        x = self.Mixed_5b(x)  # b 256 35 35
        x = self.Mixed_5c(x)  # b 288 35 35
        x = self.Mixed_5d(x)  # b 288 35 35
        x = self.Mixed_6a(x)  # b 768 17 17
        x = self.Mixed_6b(x)  # b 768 17 17
        x = self.Mixed_6c(x)  # b 768 17 17
        x = self.Mixed_6d(x)  # b 768 17 17
        x = self.Mixed_6e(x)  # b 768 17 17
        x = self.Mixed_7a(x)  # b 1280 8 8
        x = self.Mixed_7b(x)  # b 2048 8 8
        x = self.Mixed_7c(x)  # b 2048 8 8
        return reduce(x, "b c h w -> b c", "mean")  # b 2048 (pool3)


# ---- loading the pytorch-fid weights ---------------------------------------------------------------------------

def _is_batch_count(key: str) -> bool:
    # BatchNorm's `num_batches_tracked` only drives momentum-free training; a copy of the file re-saved without
    # it (torch < 0.4.1, or a converter that drops integer buffers) computes exactly the same features.
    return key.endswith(".num_batches_tracked")


def _mismatch_hint(report: KeyReport) -> str:
    foreign = any(k.startswith("AuxLogits.") for k in report.unexpected) or any(
        k == "fc.weight" for k, _, _ in report.mismatched)
    if foreign:
        return (f"this looks like torchvision's ImageNet Inception-v3, which gives other FID values; FID needs "
                f"{FID_WEIGHTS_URL}")
    return ""


def load_fid_inception(path: str | Path, device: str | torch.device | None = None) -> FIDInceptionV3:
    """The FID Inception with the weights of `path` (`pt_inception-2015-12-05-6726825d.pth`), loaded strictly
    (every tensor of the file used, every parameter filled, shapes equal; `num_batches_tracked` may be absent),
    fp32, in eval mode, without gradients, on `device` (None: CPU; "auto": CUDA, MPS or CPU).

    Raises CheckpointError in one line naming the file when it is absent (with where to get it and where to put
    it), unreadable, or not these weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: FID Inception weights not found; download {FID_WEIGHTS_URL} (pytorch-fid's port of TF's "
            f"2015 Inception) and put it at that path (default place: {FID_WEIGHTS_PLACE})")
    model = materialize(FIDInceptionV3, read_state_dict(path), device=resolve_device(device),
                        dtype=torch.float32, source=str(path), optional=_is_batch_count, hint=_mismatch_hint)
    return model.eval().requires_grad_(False)
