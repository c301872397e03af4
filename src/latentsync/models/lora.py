"""LoRA adapters for the LatentSync UNet (Hu et al. 2021, arXiv 2106.09685), through the `peft` library.

A rank-r update `W + (alpha / r) B A` beside each targeted linear layer: the UNet's attention projections (the
spatial self-attention `attn1`, the audio cross-attention `attn2`, the temporal layers' `attention_blocks.*`)
and its feed-forward projections (`ff.net.0.proj`, `ff.net.2`). `add_lora` inserts them with peft (its
`LoraConfig` and `inject_adapter_in_model`: B starts at zero, so the adapted UNet starts as the base) and
freezes every base weight; the A and B matrices are then the only trainable parameters.

An adapter file is a safetensors file holding the A and B matrices under peft's names
(`...attn2.to_q.lora_A.weight`), with metadata: the format, rank, alpha, target names, the training step and
`base_sha256`, the sha256 of the base UNet file it was trained on (`Adapter.check_base` refuses another base).
`load_adapter` applies one without merging; `merge_lora` folds the updates into the base weights and puts the
plain layers back, so the UNet has the published key names again (`save_unet_checkpoint` then writes a
`latentsync_unet.pt` that every tool reading the published format loads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import LORA_TARGETS as TARGETS
from ..defaults import LORA_RANK as DEFAULT_RANK
from ..errors import CheckpointError, ConfigError, LatentSyncError
from ..fileio import atomic_write
from .checkpoint import compare_keys

ADAPTER_FORMAT = "latentsync-lora"
ADAPTER_FORMAT_VERSION = "1"
ADAPTER_NAME = "default"  # peft's name of the one adapter a UNet carries here


def _peft():
    try:
        import peft
    except ImportError:
        raise LatentSyncError("LoRA needs the peft package: pip install 'latentsync[finetune]' (or: pip install "
                              "peft)") from None
    return peft


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file says of itself (its metadata)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    base_sha256: str  # the sha256 of the base UNet file it was trained on
    step: int = 0  # the training step it was saved at

    def metadata(self) -> dict[str, str]:
        return {"format": ADAPTER_FORMAT, "format_version": ADAPTER_FORMAT_VERSION, "rank": str(self.rank),
                "alpha": repr(float(self.alpha)), "targets": json.dumps(list(self.targets)),
                "base_sha256": self.base_sha256, "step": str(self.step)}

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str] | None) -> AdapterInfo:
        meta = meta or {}
        if meta.get("format") != ADAPTER_FORMAT:
            raise CheckpointError(f"{path}: not a LatentSync LoRA adapter (no '{ADAPTER_FORMAT}' metadata)")
        if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
            raise CheckpointError(f"{path}: LoRA adapter format {meta.get('format_version')!r}; this version of "
                                  f"latentsync reads format {ADAPTER_FORMAT_VERSION}")
        try:
            return cls(rank=int(meta["rank"]), alpha=float(meta["alpha"]), targets=tuple(json.loads(meta["targets"])),
                       base_sha256=meta["base_sha256"], step=int(meta.get("step", 0)))
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: damaged LoRA adapter metadata ({e.__class__.__name__}: {e})") from None


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The model's peft LoRA layers (empty when it carries no adapter)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def add_lora(unet: nn.Module, rank: int = DEFAULT_RANK, alpha: float | None = None,
             targets: tuple[str, ...] | list[str] = TARGETS) -> nn.Module:
    """Insert LoRA layers of `rank` (scale `alpha / rank`; alpha defaults to the rank) into `targets` of `unet`,
    in place; every base weight is frozen, the new A and B matrices (float32, B zero) are the trainable ones.
    Returns `unet`."""
    peft = _peft()
    if not (isinstance(rank, int) and rank >= 1):
        raise ConfigError(f"LoRA rank must be a whole number, at least 1, got {rank!r}")
    config = peft.LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank),
                             target_modules=list(targets), lora_dropout=0.0, init_lora_weights=True)
    unet.requires_grad_(False)
    try:
        peft.inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)
    except ValueError as e:  # peft: no module matched the targets
        raise ConfigError(f"LoRA targets {list(targets)} match no layer of the UNet ({str(e).splitlines()[0]})") \
            from None
    return unet


def adapter_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's A and B matrices under their file names (`...to_q.lora_A.weight`)."""
    return _peft().get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)


def save_adapter(unet: nn.Module, path: str | Path, info: AdapterInfo) -> Path:
    """Write the adapter of `unet` (float32) with `info` as its metadata, atomically."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in adapter_state_dict(unet).items()}
    path = Path(path)
    with atomic_write(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=info.metadata())
    return path


@dataclass
class Adapter:
    """An adapter file, read: its tensors and what its metadata says."""

    path: Path
    tensors: dict[str, torch.Tensor]
    info: AdapterInfo

    def check_base(self, base_sha256: str) -> None:
        """CheckpointError unless the adapter was trained on the UNet file whose sha256 is `base_sha256`."""
        if self.info.base_sha256 != base_sha256:
            raise CheckpointError(f"{self.path}: this LoRA adapter was trained on another base UNet (sha256 "
                                  f"{self.info.base_sha256[:12]}...), not the one loaded (sha256 {base_sha256[:12]}"
                                  "...); use the UNet it was trained on")


def read_adapter(path: str | Path) -> Adapter:
    """An adapter file; CheckpointError in one line for a missing or unusable one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: LoRA adapter not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            info = AdapterInfo.from_metadata(path, f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    return Adapter(path, tensors, info)


def load_adapter(unet: nn.Module, adapter: Adapter | str | Path, *, scale: float = 1.0) -> AdapterInfo:
    """Apply `adapter` (an adapter file, or one `read_adapter` read) to `unet` in place, unmerged, its updates
    multiplied by `scale`, frozen; the new layers take the UNet's device and dtype. Check the base first
    (`Adapter.check_base`): this only checks that the adapter's layers fit."""
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter)
    info = adapter.info
    add_lora(unet, info.rank, info.alpha, info.targets)
    report = compare_keys({k: v.shape for k, v in adapter_state_dict(unet).items()}, adapter.tensors)
    if not report.ok:  # names and shapes, before peft copies anything in
        raise CheckpointError(f"{adapter.path}: the adapter does not fit this UNet: {report.summary()}")
    ref = next(unet.parameters())
    _peft().set_peft_model_state_dict(unet, {k: v.to(ref.device, ref.dtype) for k, v in adapter.tensors.items()},
                                      adapter_name=ADAPTER_NAME)
    unet.to(ref.dtype)  # the new layers in the UNet's precision (peft creates them in float32)
    unet.requires_grad_(False)
    set_lora_scale(unet, scale)
    return info


def set_lora_scale(unet: nn.Module, scale: float) -> None:
    """Multiply every LoRA update of `unet` by `scale` (1: as trained; 0: the base UNet)."""
    for layer in lora_layers(unet):
        layer.set_scale(ADAPTER_NAME, scale)


def merge_lora(unet: nn.Module) -> nn.Module:
    """Fold every LoRA update (at its current scale) into its base weight and put the plain layers back in place,
    so the UNet's keys are the published ones again. Returns `unet`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, module.get_base_layer())
    return unet


__all__ = ["ADAPTER_FORMAT", "DEFAULT_RANK", "TARGETS", "Adapter", "AdapterInfo", "adapter_state_dict", "add_lora",
           "load_adapter", "lora_layers", "merge_lora", "read_adapter", "save_adapter", "set_lora_scale"]
