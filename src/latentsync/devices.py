"""The one rule for device, dtype and mixed precision: picked once at the edge (CLI, app, the trainers' entry),
derived from tensors and parameters below that (STYLE habit 2).

Device (`resolve_device`): None is the CPU (the library default, as in diffusers); "auto" is CUDA, then MPS,
then the CPU; "cpu", "cuda", "cuda:N", "mps" or a `torch.device` are taken as they are, after a check that this
PyTorch has them: a device that is not there raises `DeviceError` in one line that lists `available_devices()`.

Inference dtype (`resolve_dtype`): "fp16", "bf16", "fp32", torch's spellings ("float16", "half", "bfloat16",
"float32", "float", with or without "torch.") or one of those three `torch.dtype`s; "auto" (or None) is float16
on CUDA, what the published models were trained and are run in, and float32 elsewhere (half precision on a CPU
is slow, and float16 on MPS produces black frames, spec 10 item 13). The Whisper encoder reads its compute
dtype with the same rule. Only the three floating types are compute dtypes: anything else is a ValueError.

Training precision (`resolve_precision`, `Precision`): `run.mixed_precision_training` switches autocast on,
`run.mixed_precision_dtype` picks its dtype:

- `auto` (default): float16 on CUDA, as the reference, with a `GradScaler`; bfloat16 on other devices (on an
  AVX-512 CPU about 1.5x faster than float32 for the tiny SyncNet).
- `fp16`: float16 with a `GradScaler` (CUDA only: float16 autocast elsewhere is slow or unsupported).
- `bf16`: bfloat16 without a scaler on any device (bfloat16 has float32's exponent range, so gradients do not
  underflow); the usual choice on Ampere and newer GPUs.

Trainable weights, optimiser state and the losses stay float32: only the forward passes under `autocast()` run in
the lower precision. The frozen networks of a run (the VAE, SyncNet and TREPA's VideoMAE of UNet training) are
stored in `Precision.frozen_dtype`: the autocast dtype on CUDA (half the memory, and no per-call cast from
another half type), float32 when autocast is off (a run without mixed precision is float32 throughout) and on
other devices (autocast lowers each op there as far as its op lists allow; half-precision weights on a CPU save
little and some of its kernels are missing or slow).

Where the earlier copies of these rules differed (`models.checkpoint.resolve_device`, `inference.resolve_dtype`,
`audio._parse_dtype`, `training.precision.resolve` and the trainer's frozen dtype), the rule above is the one kept:

- "auto" means two things on a CPU, on purpose: float32 for inference, bfloat16 autocast for training with
  mixed precision on (the published configs switch it on); the trainers' weights stay float32 either way.
- The Whisper encoder took only torch's spellings (not "auto" or "fp16"), inference only the short names and
  any `torch.dtype` (float64 and integer types included); both now take both spellings and the three types.
- UNet training froze its networks in float16 on CUDA whatever the precision (the reference's habit), so a bf16
  run cast float16 weights to bfloat16 in every op, and a run without mixed precision failed at the SyncNet
  loss (float32 frames into a float16 net, with no autocast to reconcile them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import ConfigError, DeviceError

# The compute dtypes, by the names --dtype and the configs use.
DTYPE_NAMES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# torch's own spellings of them (what the Whisper encoder took; `str(dtype)` without its "torch." prefix).
TORCH_DTYPE_NAMES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
                     "float32": torch.float32, "float": torch.float32}
# The autocast dtypes of `run.mixed_precision_dtype` (float32 is `run.mixed_precision_training=false`).
MIXED_PRECISION_NAMES = ("fp16", "bf16")


# ---- device -----------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means the CPU (library default, as in diffusers); "auto" picks CUDA, then MPS, then the CPU.
    DeviceError (one line, listing `available_devices()`) for a device this PyTorch cannot use."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; available here: {', '.join(available_devices())}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise DeviceError(f"device {device!r} is not available (this PyTorch sees {count} CUDA device(s)); "
                              f"available here: {', '.join(available_devices())}")
    elif resolved.type == "mps" and not _mps_available():
        raise DeviceError(f"device {device!r} is not available; available here: {', '.join(available_devices())}")
    return resolved


def available_devices() -> list[str]:
    """The devices this PyTorch can run on, as `--device` names them."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


# ---- inference dtype --------------------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype for `device` (module docstring): "auto" or None is float16 on CUDA, else float32.
    ValueError for anything that is not float16, bfloat16 or float32."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        resolved = DTYPE_NAMES.get(name, TORCH_DTYPE_NAMES.get(name))
        if resolved is None:
            raise ValueError(f"unknown dtype {dtype!r}; expected auto, fp16, bf16 or fp32")
        return resolved
    if dtype not in DTYPE_NAMES.values():
        raise ValueError(f"unsupported compute dtype {dtype}; expected auto, fp16, bf16 or fp32")
    return dtype


# ---- training precision -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """A training run's mixed precision on one device type: the autocast dtype (None: float32 throughout)."""

    device_type: str
    dtype: torch.dtype | None  # None: float32 throughout

    @property
    def scaled(self) -> bool:
        """float16 needs loss scaling; bfloat16 and float32 do not."""
        return self.dtype == torch.float16

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype of the run's frozen networks: the autocast dtype on CUDA, else float32 (module docstring)."""
        return self.dtype if self.dtype is not None and self.device_type == "cuda" else torch.float32

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.scaled else None

    def __str__(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def resolve_precision(device: torch.device, enabled: bool, name: str = "auto") -> Precision:
    """The precision a run uses on `device` (module docstring); ConfigError names a bad `mixed_precision_dtype`."""
    if name not in ("auto", *MIXED_PRECISION_NAMES):
        raise ConfigError(f"run.mixed_precision_dtype: {name!r} is not one of auto, fp16, bf16")
    if not enabled:
        return Precision(device.type, None)
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "bf16"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"run.mixed_precision_dtype: fp16 needs a CUDA device (this run is on {device.type}); "
                          "use bf16 or auto")
    return Precision(device.type, DTYPE_NAMES[name])


__all__ = ["DeviceError", "Precision", "available_devices", "resolve_device", "resolve_dtype", "resolve_precision"]
