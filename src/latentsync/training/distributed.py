"""Data-parallel training with torchrun: the same command runs on one process or many.

`torchrun --nproc_per_node N -m latentsync train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` then joins
the process group (NCCL on GPUs, gloo on CPUs) and picks this rank's device. Without those variables it is a
single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..devices import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def rank_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """This rank's device, by `devices.resolve_device`'s rule (DeviceError for one that is not there), with two
    readings of its own: "auto" is this rank's GPU when there is one, else the CPU (training does not move to
    MPS unasked), and a bare "cuda" is this rank's GPU, `cuda:LOCAL_RANK`."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = resolve_device(device)
    if target.type == "cuda" and target.index is None:
        target = resolve_device(f"cuda:{local_rank}")
    return target


def init(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun; choose this rank's device (`rank_device`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = rank_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def wrap(model: nn.Module, d: Dist, find_unused_parameters: bool = False) -> nn.Module:
    """The model inside DistributedDataParallel when there are several ranks, else as it is."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def mean(value: torch.Tensor | float, d: Dist) -> float:
    """The mean of a scalar over all ranks (for logging)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    if d.enabled:
        dist.all_reduce(t)
        t /= d.world_size
    return float(t)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
