"""Idle models off the accelerator: a frozen module keeps its weights in host memory and visits the device only
while it is used (the low-memory mode's VAE and Whisper encoder, which sit idle while the UNet denoises).

Inference weights never change, so the host copy is the only one kept: bringing the module in is one host to
device copy (from pinned memory on CUDA, asynchronous), sending it out only drops the device copy. Uses are
counted, so jobs sharing the module from several threads (the web app) never see it leave under them.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from torch import nn


class Offloaded:
    """`module`'s parameters and buffers live on the host; inside `with offloaded.use():` they are on `device`.

    The module must be frozen (inference only): changes made to its weights while on the device are lost."""

    def __init__(self, module: nn.Module, device: str | torch.device):
        self.module = module
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._users = 0
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        # (owner, slot, name, host tensor): the module's parameters and buffers, moved to pinned host memory.
        self._slots: list[tuple[nn.Module, str, str, torch.Tensor]] = []
        self._device: dict[int, torch.Tensor] = {}  # id(host tensor) -> its device tensor, kept between visits
        hosts: dict[int, torch.Tensor] = {}  # a tensor shared by two modules (tied weights) stays shared
        for owner in module.modules():
            for slot in ("_parameters", "_buffers"):
                for name, t in getattr(owner, slot).items():
                    if t is None:
                        continue
                    if id(t) not in hosts:
                        host = t.detach().to("cpu")
                        host = host.pin_memory() if pin else host
                        hosts[id(t)] = nn.Parameter(host, requires_grad=False) if slot == "_parameters" else host
                    self._slots.append((owner, slot, name, hosts[id(t)]))
        self._send_out()

    @property
    def resident(self) -> bool:
        """Whether the weights are on the device now."""
        return self._users > 0

    @contextlib.contextmanager
    def use(self) -> Iterator[nn.Module]:
        with self._lock:
            if self._users == 0:
                self._bring_in()
            self._users += 1
        try:
            yield self.module
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._send_out()

    def _bring_in(self) -> None:
        # The device tensors are the same objects on every visit (only their storage comes and goes), so code
        # compiled for the module (torch.compile guards on its parameters) stays valid from one visit to the next.
        for owner, slot, name, host in self._slots:
            device = self._device.get(id(host))
            if device is None:  # first visit: a tensor shared by two modules is copied once
                device = host.detach().to(self.device, non_blocking=True)
                device = nn.Parameter(device, requires_grad=False) if slot == "_parameters" else device
                self._device[id(host)] = device
            elif device.numel() == 0 and host.numel() > 0:
                device.data = host.detach().to(self.device, non_blocking=True)
            getattr(owner, slot)[name] = device

    def _send_out(self) -> None:
        # The device storage is freed once no kernel uses it (the caching allocator orders that on its stream).
        for owner, slot, name, host in self._slots:
            getattr(owner, slot)[name] = host
        for device in self._device.values():
            device.data = torch.empty(0, device=device.device, dtype=device.dtype)


def residency(offloaded: Offloaded | None):
    """`offloaded.use()`, or a no-op for a module that stays on its device."""
    return offloaded.use() if offloaded is not None else contextlib.nullcontext()
