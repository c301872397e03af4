"""Device memory of the lip-sync pipeline, estimated without the device.

The pipeline runs on PyTorch's "meta" device: every operation computes its output's shape and dtype but no
values, in milliseconds, so a full-size 1.6 chunk costs seconds on any machine. `DeviceMemoryTrace` watches
every tensor storage created on that device and when it is freed, so it sees the live bytes at every moment of
the chunk: the weights, the inputs, each activation while something still holds it. That is the figure
`torch.cuda.max_memory_allocated` reports for the same code on a GPU, except for

- attention: fused kernels (flash / memory-efficient, used on CUDA in fp16 and bf16) never hold the score
  matrix, so `F.scaled_dot_product_attention` is modelled by its output alone, as those kernels allocate;
- library workspaces (cuBLAS, cuDNN) and the CUDA context, which the allocator's figure leaves out too, and the
  caching allocator's rounding and fragmentation, which `max_memory_reserved` adds on top (typically 5-20%).

`estimate_chunk_memory` builds the published UNet and VAE architectures there and denoises one chunk (or
`batch_chunks` chunks) as `LipSyncPipeline` does; `bench/vram_estimate.py` prints the figures of every mode,
and `bench/gpu_inference.py` measures the same configurations when a GPU is at hand.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GiB = 2**30


class DeviceMemoryTrace(TorchDispatchMode):
    """Live and peak bytes of the tensor storages on `device` ("meta") created while the mode is active.

    Storages that existed before (weights built outside the trace) are not counted; pass them to `exclude` to
    make that explicit. `phase` names what is running (set it, or use `tag_module`); `phase_peaks` keeps the
    highest live figure seen in each phase. Copies from the device to the CPU give empty CPU tensors (the
    pipeline's results), so code that returns its output to the host runs to its end."""

    def __init__(self, device: str = "meta"):
        super().__init__()
        self.device_type = torch.device(device).type
        self.live = 0
        self.peak = 0
        self.phase = "other"
        self.phase_peaks: dict[str, int] = {}
        self._sizes: dict[int, int] = {}

    def exclude(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self._sizes[t.untyped_storage()._cdata] = 0

    def reset_peak(self) -> None:
        self.peak = self.live
        self.phase_peaks = {}

    def tag_module(self, module: torch.nn.Module, name: str):
        """Count what happens inside `module.forward` as phase `name`; returns the hook handles."""
        def enter(*_):
            self._outer = self.phase
            self.phase = name

        def leave(*_):
            self.phase = getattr(self, "_outer", "other")

        return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def _count(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and args[0].device.type == self.device_type
                and kwargs.get("device") == torch.device("cpu")):
            return torch.empty(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t)
        return out


def _fused_attention(query, key, value, *args, **kwargs):
    """What a fused attention kernel allocates: its output, (..., L, Ev); the scores are never materialised."""
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


@contextlib.contextmanager
def fused_attention_memory() -> Iterator[None]:
    """Within the block, `F.scaled_dot_product_attention` allocates as the fused CUDA kernels do (no values)."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class MemoryEstimate:
    """Bytes on the device: what stays there between chunks (weights, masks, noise), and the peak of everything
    together during one chunk."""

    resident: int
    peak: int
    phases: dict[str, int] = field(default_factory=dict)  # peak per phase (unet, vae encode, vae decode, other)

    def as_gib(self) -> dict:
        return {"resident_gb": self.resident / GiB, "peak_gb": self.peak / GiB,
                **{f"{k}_gb": v / GiB for k, v in self.phases.items()}}


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.untyped_storage().nbytes() for t in [*module.parameters(), *module.buffers()])


def estimate_chunk_memory(
    unet_config,
    *,
    dtype: torch.dtype = torch.float16,
    sampling=None,
    batch_chunks: int = 1,
    frames: int | None = None,
    offload: bool = False,
    vae_slicing: bool = True,
    vae_config: dict | None = None,
    whisper_dims: dict | None = None,
) -> MemoryEstimate:
    """Peak device memory of denoising `batch_chunks` chunks of `frames` faces in one call, as `LipSync` does.

    `unet_config`: a UNet config (name, path or object), whose `data.resolution` is the face size. `sampling`:
    `SamplingOptions` (the steps do not change the peak, so two are run). `offload`: the low-memory mode's
    placement, the VAE and Whisper in host memory while idle. `vae_slicing=False`: the whole chunk through
    the VAE at once, as the reference does. The Whisper encoder's weights count as resident unless offloaded
    (its activations, for one 30 s window before the first chunk, are far below the UNet's)."""
    from diffusers import AutoencoderKL
    from whisper.model import AudioEncoder

    from .config import load_unet_config
    from .demo import TINY_WHISPER_DIMS
    from .models.unet import UNet3DConditionModel
    from .models.vae import SD_VAE_CONFIG
    from .pipeline import CHUNK_FRAMES, LipSyncPipeline, SamplingOptions

    config = load_unet_config(unet_config)
    resolution = config.data.resolution
    frames = frames or CHUNK_FRAMES
    sampling = sampling or SamplingOptions()
    sampling = SamplingOptions(**{**sampling.__dict__, "num_steps": min(sampling.num_steps, 2)})
    dims = whisper_dims or TINY_WHISPER_DIMS
    with torch.device("meta"):
        unet = UNet3DConditionModel(config.model).to(dtype).eval()
        whisper = AudioEncoder(dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"],
                               dims["n_audio_layer"])  # float32 weights, as WhisperAudioEncoder keeps them
    whisper_bytes = 0 if offload else _module_bytes(whisper)
    # An offloaded VAE lives in host memory (real, randomly initialised: the copy to the device needs a source).
    with torch.device("cpu" if offload else "meta"):
        vae = AutoencoderKL(**(vae_config or SD_VAE_CONFIG))
    # nn.Module's own cast: diffusers' override warns about modules to keep in float32, of which the VAE has none.
    vae = torch.nn.Module.to(vae, dtype).eval().requires_grad_(False)
    if vae_slicing:
        vae.enable_slicing()

    unseen = _module_bytes(unet) + (0 if offload else _module_bytes(vae)) + whisper_bytes  # built outside
    trace = DeviceMemoryTrace()
    with torch.no_grad(), trace, fused_attention_memory():
        pipeline = LipSyncPipeline(unet, vae, resolution, offload_vae=offload)  # its masks count
        noise = pipeline.initial_noise(0)
        trace.exclude(*unet.parameters(), *unet.buffers())  # (views of weights are not new memory)
        if not offload:
            trace.exclude(*vae.parameters(), *vae.buffers())
        resident = unseen + trace.live
        trace.reset_peak()
        hooks = [*trace.tag_module(unet, "unet"), *trace.tag_module(vae.encoder, "vae encode"),
                 *trace.tag_module(vae.decoder, "vae decode")]
        shape = (batch_chunks, frames) if batch_chunks > 1 else (frames,)
        faces = torch.zeros(*shape, resolution, resolution, 3, dtype=torch.uint8)
        tokens = torch.zeros(*shape, 50, dims["n_audio_state"])
        pipeline(faces, tokens, noise, sampling, generator=torch.Generator().manual_seed(0))
        for h in hooks:
            h.remove()
    return MemoryEstimate(resident=resident, peak=trace.peak + unseen,
                          phases={k: v + unseen for k, v in trace.phase_peaks.items()})
