"""Reading published weight files and putting them into our modules.

Formats: a `.pt`/`.pth`/`.bin`/`.ckpt` file holding `{"state_dict": ..., ...}` (how LatentSync saves the UNet
and SyncNet) or a bare state dict, and `.safetensors`. Key names are used as they are: our modules are
written so that the published names fit them without renaming.

Loading builds the module on the meta device (no memory, no init cost) and then assigns each tensor of the
file, converted one at a time to the target device and dtype. A 5 GB fp32 checkpoint loaded as fp16 on a GPU
therefore never exists as a full fp32 copy in RAM: `.pt` files are memory-mapped, safetensors are read
tensor by tensor.

`resolve_device`, `available_devices` and `DeviceError` are importable from here as before; their home is
`latentsync.devices`.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..devices import DeviceError, available_devices, resolve_device
from ..errors import CheckpointError
from ..fileio import atomic_write

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".model", ".pkl")


def read_checkpoint(path: str | Path) -> dict:
    """The object stored in a torch checkpoint file (weights only, memory-mapped where the format allows)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    errors: tuple[type[BaseException], ...] = (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        AttributeError,
        ModuleNotFoundError,
    )
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            # Files in torch's legacy (pre-zip) format cannot be memory-mapped.
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except errors as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first[:200]})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weight file ({e.strerror or e})") from None
    return obj


def read_state_dict(path: str | Path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in `path`: `.safetensors`, or a torch file with a bare dict or `{"state_dict": ...}`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: weight file not found")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: holds no state dict (found {keys}); expected tensors or a 'state_dict' entry")
    return dict(obj)


@dataclass
class KeyReport:
    """How a state dict compares with a module's own names and shapes."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file shape, model shape)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        parts = []
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
                parts.append(f"{len(items)} {name} ({shown})")
        if self.mismatched:
            shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:limit])
            more = ", ..." if len(self.mismatched) > limit else ""
            parts.append(f"{len(self.mismatched)} with other shapes (file vs model: {shown}{more})")
        return "; ".join(parts) if parts else "all keys match"


def compare_keys(
    expected: Mapping[str, torch.Size | tuple],
    state_dict: Mapping[str, torch.Tensor],
    optional: Callable[[str], bool] = lambda k: False,
) -> KeyReport:
    """Compare a state dict with expected names/shapes; keys for which `optional` is true may be absent."""
    report = KeyReport()
    for k, shape in expected.items():
        if k not in state_dict:
            if not optional(k):
                report.missing.append(k)
        elif tuple(state_dict[k].shape) != tuple(shape):
            report.mismatched.append((k, tuple(state_dict[k].shape), tuple(shape)))
    report.unexpected = [k for k in state_dict if k not in expected]
    return report


class CheckpointMismatchError(CheckpointError):
    """Raised by strict loading; `.report` holds the full lists."""

    def __init__(self, message: str, report: KeyReport):
        super().__init__(message)
        self.report = report


def expected_shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _cast(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def materialize(
    factory: Callable[[], nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    source: str,
    optional: Callable[[str], bool] = lambda k: False,
    hint: Callable[[KeyReport], str] | None = None,
) -> nn.Module:
    """Build `factory()` on the meta device and assign `state_dict` to it on `device`/`dtype`, strictly.

    Keys for which `optional(key)` holds may be missing from the file; the modules owning them must provide
    `reset_buffers()` to compute them (deterministic buffers such as positional encodings).
    """
    with torch.device("meta"):
        model = factory()
    report = compare_keys(expected_shapes(model), state_dict, optional)
    if not report.ok:
        extra = hint(report) if hint else ""
        raise CheckpointMismatchError(
            f"{source}: weights do not match the model: {report.summary()}{'. ' + extra if extra else ''}", report
        )
    converted = {k: _cast(v, device, dtype) for k, v in state_dict.items()}
    model.load_state_dict(converted, strict=False, assign=True)
    del converted
    _fill_meta(model, device, dtype)
    return model


def _fill_meta(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """Give tensors that the file did not provide real storage, computed by their module's reset_buffers()."""
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if not any(t.is_meta for _, t in own):
            continue
        if not hasattr(module, "reset_buffers") or any(isinstance(t, nn.Parameter) and t.is_meta for _, t in own):
            raise RuntimeError(f"{name or 'model'}: tensors left uninitialised after loading")
        module.to_empty(device=device, recurse=False)
        module.reset_buffers()
        if dtype is not None:
            module.to(dtype=dtype)


def build(factory: Callable[[], nn.Module], *, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """A freshly initialised module created directly on `device` (no CPU copy when device is a GPU)."""
    with torch.device(device):
        model = factory()
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def load_module(
    factory: Callable[[], nn.Module],
    checkpoint: str | Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    optional: Callable[[str], bool] = lambda k: False,
    hint: Callable[[KeyReport], str] | None = None,
) -> nn.Module:
    """`factory()` with the weights of `checkpoint` loaded strictly (see `materialize`), or freshly initialised
    on `device` when there is no checkpoint; in eval mode."""
    if checkpoint is None:
        model = build(factory, device=device, dtype=dtype)
    else:
        model = materialize(factory, read_state_dict(checkpoint), device=device, dtype=dtype,
                            source=str(checkpoint), optional=optional, hint=hint)
    return model.eval()


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, then rename: readers never see a half-written file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


__all__ = [  # this module's names, and the device rule's former names (its home: `latentsync.devices`)
    "CheckpointMismatchError",
    "DeviceError",
    "KeyReport",
    "TORCH_SUFFIXES",
    "atomic_torch_save",
    "available_devices",
    "build",
    "compare_keys",
    "expected_shapes",
    "load_module",
    "materialize",
    "read_checkpoint",
    "read_state_dict",
    "resolve_device",
]
