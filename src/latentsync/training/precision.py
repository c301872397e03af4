"""Mixed precision for the trainers: which autocast dtype, and whether a gradient scaler is needed.

`run.mixed_precision_training` switches it on (the published configs do); `run.mixed_precision_dtype` picks
the dtype:

- `auto` (default): float16 on CUDA, as the reference, with a `GradScaler`; bfloat16 on other devices.
- `fp16`: float16 with a `GradScaler` (CUDA only: float16 autocast elsewhere is slow or unsupported).
- `bf16`: bfloat16 without a scaler on any device (bfloat16 has float32's exponent range, so gradients do not
  underflow); the usual choice on Ampere and newer GPUs.

Weights, optimiser state and the losses stay float32: only the forward passes under `autocast()` run in the
lower precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    device_type: str
    dtype: torch.dtype | None  # None: float32 throughout

    @property
    def scaled(self) -> bool:
        """float16 needs loss scaling; bfloat16 and float32 do not."""
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.scaled else None

    def __str__(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def resolve(device: torch.device, enabled: bool, name: str = "auto") -> Precision:
    """The precision a run uses on `device` (module docstring); ConfigError names a bad `mixed_precision_dtype`."""
    if name not in ("auto", *DTYPES):
        raise ConfigError(f"run.mixed_precision_dtype: {name!r} is not one of auto, fp16, bf16")
    if not enabled:
        return Precision(device.type, None)
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "bf16"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"run.mixed_precision_dtype: fp16 needs a CUDA device (this run is on {device.type}); "
                          "use bf16 or auto")
    return Precision(device.type, DTYPES[name])
