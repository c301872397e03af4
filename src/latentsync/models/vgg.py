"""The convolutional trunk of VGG-16, as the LPIPS perceptual loss uses it.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015),
configuration D, with the ImageNet weights that torchvision publishes as `vgg16-397923af.pth` (LatentSync keeps a
copy at `checkpoints/auxiliary/vgg16-397923af.pth`; the original code lets torchvision fetch it into the torch hub
cache). torchvision itself is not used: this module rebuilds the `features` part of torchvision's `VGG` so that the
file's `features.N.weight` / `features.N.bias` keys load by name.

Facts reproduced from torchvision (`torchvision/models/vgg.py`, `cfgs["D"]`, `make_layers(batch_norm=False)`):

* `features` is one `nn.Sequential`: every number of `VGG16_CFG` adds a 3x3 convolution (padding 1, with bias) and
  a ReLU, every "M" a 2x2 max pool of stride 2. The convolutions therefore sit at indices 0, 2, 5, 7, 10, 12, 14,
  17, 19, 21, 24, 26, 28 (the state-dict keys); ReLUs and pools have no parameters.
* The file also holds `classifier.{0,3,6}.{weight,bias}` (the fully connected layers, 25088 -> 4096 -> 4096 ->
  1000); perceptual losses never use them, so `load_vgg16_features` drops exactly those keys and loads the rest
  strictly.

LPIPS (richzhang/PerceptualSimilarity, `lpips/pretrained_networks.py`, class `vgg16`) reads five activations:
relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, i.e. the outputs of `features[3]`, `[8]`, `[15]`, `[22]`, `[29]`.
The last max pool (`features[30]`) is never reached.

Axis letters in shape comments: b batch, c channels, h height, w width.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import materialize, read_state_dict, resolve_device

# torchvision cfgs["D"]: output channels of each 3x3 convolution, "M" for a 2x2 max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
# Indices in `features` of the ReLUs whose outputs LPIPS compares (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
LPIPS_TAPS = (3, 8, 15, 22, 29)
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
TAP_CHANNELS = (64, 128, 256, 512, 512)
# Keys of torchvision's file that are not part of the convolutional trunk.
CLASSIFIER_PREFIX = "classifier."


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` (same module indices, hence the same state-dict keys); `forward` returns
    the five LPIPS activations instead of the final pooled map. Expects ImageNet-normalised RGB (LPIPS feeds it
    its own `ScalingLayer` output)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(b, 3, h, w) -> the five taps: (b, 64, h, w), (b, 128, h/2, w/2), (b, 256, h/4, w/4),
        (b, 512, h/8, w/8), (b, 512, h/16, w/16) (sizes floored at each pool)."""
        taps = []
        for i, layer in enumerate(self.features[: LPIPS_TAPS[-1] + 1]):
            x = layer(x)  # b c h w
            if i in LPIPS_TAPS:
                taps.append(x)
        return tuple(taps)


def features_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `features.*` entries of a torchvision VGG state dict (the classifier is dropped, nothing else)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIX)}


def load_vgg16_features(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> VGG16Features:
    """VGG16Features with the weights of torchvision's `vgg16-397923af.pth` at `path`, in eval mode, without
    gradients, on `device` (None: CPU) in `dtype` (None: float32).

    Every `features.*` tensor of the file must fit (strict: none missing, none extra, same shapes); the
    `classifier.*` entries are ignored. Raises CheckpointError in one line naming the file when it is missing,
    unreadable or holds other weights (e.g. `vgg16_bn`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: VGG-16 weights not found; run `latentsync download --with training` or put torchvision's "
            f"vgg16-397923af.pth at that path")
    state_dict = features_state_dict(read_state_dict(path))
    model = materialize(VGG16Features, state_dict, device=resolve_device(device), dtype=dtype or torch.float32,
                        source=str(path))
    return model.eval().requires_grad_(False)


__all__ = ["LPIPS_TAPS", "TAP_CHANNELS", "TAP_NAMES", "VGG16Features", "VGG16_CFG", "features_state_dict",
           "load_vgg16_features"]
