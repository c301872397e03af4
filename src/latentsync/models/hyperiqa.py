"""hyperIQA: the blind image-quality network behind the data pipeline's visual-quality filter (spec 6, step 7).

Su et al., "Blindly Assess Image Quality in the Wild Guided by a Self-Adaptive Hyper Network" (CVPR 2020),
as released in github.com/SSL-Group-SP/hyperIQA (formerly SSL92/hyperIQA: `models.py`, `demo.py`) with the
KonIQ-10k weights `koniq_pretrained.pkl`, which LatentSync copies to `checkpoints/auxiliary/`. The score is on KonIQ's MOS scale
(roughly 0-100, higher is better); LatentSync keeps a training clip when the mean score of three frames is >= 40.

How it works: a ResNet-50 looks at a 224x224 crop once, and its features serve two purposes.

* Content -> rules. The last feature map (2048 x 7 x 7) is reduced by three 1x1 convolutions to 112 x 7 x 7;
  from it the "hyper network" generates, for this image alone, the weights and biases of a small fully
  connected "target network": each weight matrix comes from a 3x3 convolution whose output (c x 7 x 7) is
  reshaped into the matrix (hence `f_i * f_(i+1)` must be divisible by 7 * 7), each bias (and the last layer's
  weights) from a linear layer on the spatially averaged features.
* Distortions -> evidence. Four "local distortion aware" (LDA) modules pool features of the four ResNet stages
  (1x1 convolution to a few channels, 7x7 average pooling, a linear layer) into a 224-d vector (16 + 16 + 16 +
  176), the target network's input.

The target network is 224 -> 112 -> 56 -> 28 -> 14 -> 1 with a sigmoid after each of the first four layers;
its output is the score.

The published constructor call is `HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`: LDA output size 16, hyper
network channels 112, target input size 224, target layer sizes 112/56/28/14, feature map side 7 (that of a
224 input). Module names follow `models.py`, so the published state dict loads by name: the backbone under
`res.` (torchvision ResNet-50 names, plus `lda{1,2,3}_pool.0`, `lda{1..4}_fc`; no `fc`), `conv1.{0,2,4}`, and the
generators `fc{1..4}w_conv`, `fc{1..4}b_fc`, `fc5w_fc`, `fc5b_fc`.

Differences from the reference that do not change its scores: the target network runs as batched matrix
products instead of grouped 1x1 convolutions, it returns (b,) also for a single image (the reference's
`squeeze()` makes that a scalar), and inputs of another size raise an error instead of silently mixing the
images of a batch (the reference reshapes with -1).

Axis letters in shape comments: b batch, c channels, h height, w width, o/i output/input units of a target layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange, reduce
from torch import nn

from .checkpoint import load_module, materialize, read_state_dict, resolve_device

INPUT_SIZE = 224  # px: the side of the crop hyperIQA scores (its LDA layer sizes assume it)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the torchvision normalisation hyperIQA was trained with
IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET50_BLOCKS = (3, 4, 6, 3)  # bottlenecks per stage
RESNET50_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x that
BOTTLENECK_EXPANSION = 4
STEM_CHANNELS = 64
# LDA modules of stages 1-3: 1x1 convolution to these channels, then 7x7 average pooling (models.py).
LDA_CHANNELS = (16, 32, 64)
LDA_POOL = 7


class Bottleneck(nn.Module):
    """ResNet v1 bottleneck (torchvision's names): 1x1 -> 3x3 (stride here) -> 1x1 x4, plus the shortcut."""

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        # A projection shortcut where the shape changes (the first block of each stage), as in torchvision.
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))  # (b, width, h, w)
        y = self.relu(self.bn2(self.conv2(y)))  # (b, width, h/s, w/s)
        y = self.bn3(self.conv3(y))  # (b, 4 width, h/s, w/s)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(y + shortcut)


class ResNetBackbone(nn.Module):
    """ResNet-50 without its classifier, with hyperIQA's four LDA modules.

    Returns the last feature map (b, 2048, 7, 7) for the hyper network and the LDA vector (b, target_in_size)
    for the target network.
    """

    def __init__(self, lda_out_channels: int, target_in_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = STEM_CHANNELS
        for index, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, RESNET50_WIDTHS)):
            stride = 1 if index == 0 else 2
            stage = [Bottleneck(c_in, width, stride)]
            c_in = width * BOTTLENECK_EXPANSION
            stage += [Bottleneck(c_in, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))

        # Stage outputs at a 224 input: 256 x 56 x 56, 512 x 28 x 28, 1024 x 14 x 14, 2048 x 7 x 7. After 7x7
        # average pooling: 8 x 8, 4 x 4, 2 x 2, 1 x 1 cells, flattened (c h w) into the linear layers.
        side = INPUT_SIZE // 4  # after the stem's two stride-2 steps
        for index, channels in enumerate(LDA_CHANNELS):
            c_stage = RESNET50_WIDTHS[index] * BOTTLENECK_EXPANSION
            cells = (side // 2**index // LDA_POOL) ** 2
            setattr(self, f"lda{index + 1}_pool", nn.Sequential(
                nn.Conv2d(c_stage, channels, 1, bias=False), nn.AvgPool2d(LDA_POOL, stride=LDA_POOL)))
            setattr(self, f"lda{index + 1}_fc", nn.Linear(channels * cells, lda_out_channels))
        last = RESNET50_WIDTHS[-1] * BOTTLENECK_EXPANSION
        self.lda4_pool = nn.AvgPool2d(LDA_POOL, stride=LDA_POOL)
        self.lda4_fc = nn.Linear(last, target_in_size - lda_out_channels * len(LDA_CHANNELS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (b, 64, 56, 56)
        x = self.layer1(x)  # (b, 256, 56, 56)
        lda1 = self.lda1_fc(rearrange(self.lda1_pool(x), "b c h w -> b (c h w)"))  # (b, 16)
        x = self.layer2(x)  # (b, 512, 28, 28)
        lda2 = self.lda2_fc(rearrange(self.lda2_pool(x), "b c h w -> b (c h w)"))  # (b, 16)
        x = self.layer3(x)  # (b, 1024, 14, 14)
        lda3 = self.lda3_fc(rearrange(self.lda3_pool(x), "b c h w -> b (c h w)"))  # (b, 16)
        x = self.layer4(x)  # (b, 2048, 7, 7)
        lda4 = self.lda4_fc(rearrange(self.lda4_pool(x), "b c h w -> b (c h w)"))  # (b, 176)
        return x, torch.cat([lda1, lda2, lda3, lda4], dim=1)  # (b, 2048, 7, 7), (b, 224)


@dataclass
class TargetParams:
    """The target network of each image: its input vector, and the weights and biases of its five layers.

    `weights[k]` is (b, o, i) and `biases[k]` (b, o), one network per image of the batch; layer sizes are
    224 -> 112 -> 56 -> 28 -> 14 -> 1 with the published dimensions.
    """

    input: torch.Tensor  # (b, target_in_size)
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]


def target_net(params: TargetParams) -> torch.Tensor:
    """Run each image's own target network on its own LDA vector: (b,) scores.

    Fully connected layers with a sigmoid after all but the last (models.py `TargetNet`; the reference
    computes them as grouped 1x1 convolutions, one group per image).
    """
    q = params.input  # (b, i)
    last = len(params.weights) - 1
    for k, (weight, bias) in enumerate(zip(params.weights, params.biases)):
        q = torch.einsum("boi,bi->bo", weight, q) + bias  # (b, o)
        if k < last:
            q = torch.sigmoid(q)
    return rearrange(q, "b 1 -> b")


class HyperNet(nn.Module):
    """hyperIQA: `model(images)` scores (b, 3, 224, 224) ImageNet-normalised RGB images, returning (b,).

    The constructor arguments are those of `models.py` in the same order, with the published values as
    defaults (`HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`).
    """

    def __init__(
        self,
        lda_out_channels: int = 16,
        hyper_in_channels: int = 112,
        target_in_size: int = 224,
        target_fc1_size: int = 112,
        target_fc2_size: int = 56,
        target_fc3_size: int = 28,
        target_fc4_size: int = 14,
        feature_size: int = 7,
    ):
        super().__init__()
        self.hyper_in_channels = hyper_in_channels
        self.target_in_size = target_in_size
        self.feature_size = feature_size
        # Input and output sizes of the four generated matrices: 224 -> 112 -> 56 -> 28 -> 14.
        sizes = (target_in_size, target_fc1_size, target_fc2_size, target_fc3_size, target_fc4_size)
        self.target_sizes = sizes
        cells = feature_size**2
        for f_in, f_out in zip(sizes[:-1], sizes[1:]):
            if f_in * f_out % cells:
                raise ValueError(f"target layer {f_in}x{f_out} cannot be generated from {feature_size}x{feature_size} "
                                 "feature maps (the product must be divisible by feature_size**2)")

        self.res = ResNetBackbone(lda_out_channels, target_in_size)
        last = RESNET50_WIDTHS[-1] * BOTTLENECK_EXPANSION  # 2048
        self.conv1 = nn.Sequential(
            nn.Conv2d(last, 1024, 1), nn.ReLU(),
            nn.Conv2d(1024, 512, 1), nn.ReLU(),
            nn.Conv2d(512, hyper_in_channels, 1), nn.ReLU(),
        )
        # Generators: a 3x3 convolution for each weight matrix (f_in * f_out / 49 channels of 7 x 7 values),
        # a linear layer on the pooled features for each bias; the last layer (14 -> 1) is small enough for a
        # linear layer to generate its weights too.
        for k, (f_in, f_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            setattr(self, f"fc{k}w_conv", nn.Conv2d(hyper_in_channels, f_in * f_out // cells, 3, padding=1))
            setattr(self, f"fc{k}b_fc", nn.Linear(hyper_in_channels, f_out))
        self.fc5w_fc = nn.Linear(hyper_in_channels, target_fc4_size)
        self.fc5b_fc = nn.Linear(hyper_in_channels, 1)

    def target_params(self, images: torch.Tensor) -> TargetParams:
        """The target network that the hyper network generates for each image (b, 3, 224, 224)."""
        if images.ndim != 4 or images.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"hyperIQA scores (b, 3, {INPUT_SIZE}, {INPUT_SIZE}) images, got {tuple(images.shape)}")
        features, vector = self.res(images)  # (b, 2048, 7, 7), (b, 224)
        hyper = self.conv1(features)  # (b, 112, 7, 7)
        pooled = reduce(hyper, "b c h w -> b c", "mean")  # (b, 112): the reference's AdaptiveAvgPool2d(1)
        weights, biases = [], []
        sizes = self.target_sizes
        for k, (f_in, f_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            # (b, f_in f_out / 49, 7, 7) read in memory order as an (f_out, f_in) matrix, as models.py's view.
            generated = rearrange(getattr(self, f"fc{k}w_conv")(hyper), "b c h w -> b (c h w)")
            weights.append(rearrange(generated, "b (o i) -> b o i", o=f_out))  # (b, o, i)
            biases.append(getattr(self, f"fc{k}b_fc")(pooled))  # (b, o)
        weights.append(rearrange(self.fc5w_fc(pooled), "b i -> b 1 i"))  # (b, 1, 14)
        biases.append(self.fc5b_fc(pooled))  # (b, 1)
        return TargetParams(input=vector, weights=weights, biases=biases)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return target_net(self.target_params(images))  # (b,)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(b, 3, h, w) RGB in [0, 1] -> ImageNet-normalised, as hyperIQA expects."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _bn_counters(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]


def load_hyperiqa(
    path: str | Path | None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HyperNet:
    """HyperNet with the weights in `path` (`koniq_pretrained.pkl`: a bare state dict), strictly, in eval mode.

    Raises CheckpointError (one line naming the file) if the file is missing, unreadable or does not match.
    Files saved before PyTorch 0.4.1 have no BatchNorm `num_batches_tracked` counters; those are accepted
    (the counters do not affect inference). `path=None` gives randomly initialised weights. The scores are
    computed in float32 unless `dtype` says otherwise: the threshold of 40 was set on float32 scores.
    """
    device = resolve_device(device)
    if path is None:
        return load_module(HyperNet, None, device=device, dtype=dtype)
    state_dict = read_state_dict(path)
    with torch.device("meta"):
        counters = _bn_counters(HyperNet())
    if not any(k in state_dict for k in counters):
        state_dict.update({k: torch.zeros((), dtype=torch.long) for k in counters})
    return materialize(HyperNet, state_dict, device=device, dtype=dtype, source=str(path)).eval()
