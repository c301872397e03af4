"""What a chunk of lip sync costs on a GPU (memory, arithmetic), measured without one.

The pipeline runs on PyTorch's "meta" device: every operation computes its output's shape and dtype but no
values, in milliseconds, so a full-size 1.6 chunk costs seconds on any machine.

Memory. `DeviceMemoryTrace` watches every tensor storage created on that device and when it is freed, so it
sees the live bytes at every moment of the chunk: the weights, the inputs, each activation while something still
holds it. That is the figure `torch.cuda.max_memory_allocated` reports for the same code on a GPU, except for

- attention: fused kernels (flash / memory-efficient, used on CUDA in fp16 and bf16) never hold the score
  matrix, so `F.scaled_dot_product_attention` is modelled by its output alone, as those kernels allocate;
- library workspaces (cuBLAS, cuDNN) and the CUDA context, which the allocator's figure leaves out too, and the
  caching allocator's rounding and fragmentation, which `max_memory_reserved` adds on top (typically 5-20%).

`estimate_chunk_memory` builds the published UNet and VAE architectures there and denoises one chunk (or
`batch_chunks` chunks) as `LipSyncPipeline` does; `bench/vram_estimate.py` prints the figures of every mode,
and `bench/gpu_inference.py` measures the same configurations when a GPU is at hand.

Arithmetic. `count_chunk_flops` runs the same chunk under `torch.utils.flop_counter.FlopCounterMode`, which
counts the floating-point operations of matrix products, convolutions and attention (the elementwise work,
a few percent, is not counted). It measures what each speed-up removes (DeepCache's shallow passes, fewer steps,
no guidance) independently of any device, and the compute floor on a given GPU (`bench/flops.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode

from .config import load_unet_config
from .defaults import FPS
from .models.unet import UNet3DConditionModel
from .models.vae import SD_VAE_CONFIG
from .models.whisper import TINY_WHISPER_DIMS, whisper_package
from .pipeline import CHUNK_FRAMES, LipSyncPipeline, SamplingOptions


GiB = 2**30


class HostCopies(TorchDispatchMode):
    """Copies from the meta device to the CPU give empty CPU tensors (the pipeline hands its results back to the
    host), so code that ends that way runs to its end on the meta device."""

    device_type = "meta"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and args[0].device.type == self.device_type
                and kwargs.get("device") == torch.device("cpu")):
            return torch.empty(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        return self._run(func, args, kwargs)

    def _run(self, func, args, kwargs):
        return func(*args, **kwargs)


class DeviceMemoryTrace(HostCopies):
    """Live and peak bytes of the tensor storages on `device` ("meta") created while the mode is active.

    Storages that existed before (weights built outside the trace) are not counted; pass them to `exclude` to
    make that explicit. `phase` names what is running (set it, or use `tag_module`); `phase_peaks` keeps the
    highest live figure seen in each phase. Copies to the host are empty (`HostCopies`)."""

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

    def _run(self, func, args, kwargs):
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


@dataclass(frozen=True)
class ChunkJob:
    """What the estimates run: one `LipSyncPipeline` call on `batch_chunks` chunks of `frames` faces (default 16),
    denoised with `sampling` (`SamplingOptions`; the defaults if None) by the UNet of `unet_config` (a config
    name, path or object, whose `data.resolution` is the face size), weights in `dtype`. `offload`: the
    low-memory mode's placement, the VAE and Whisper in host memory while idle. `vae_config`: the VAE's
    architecture (a config.json's dict; SD's VAE if None); `whisper_dims`: the Whisper encoder's (the tiny one's
    if None). The public functions below take these fields as keywords."""

    unet_config: object
    dtype: torch.dtype = torch.float16
    sampling: SamplingOptions | None = None
    batch_chunks: int = 1
    frames: int | None = None
    offload: bool = False
    vae_config: dict | None = None
    whisper_dims: dict | None = None

    @property
    def options(self) -> SamplingOptions:
        return self.sampling or SamplingOptions()

    @property
    def chunk_frames(self) -> int:
        return self.frames or CHUNK_FRAMES

    def models(self):
        """The UNet, VAE and Whisper encoder of the job's architectures on the meta device (the VAE, with
        `offload`, real in host memory: an offloaded VAE is copied to the device and needs a source), the face
        size and the audio tokens' width."""

        config = load_unet_config(self.unet_config)
        dims = self.whisper_dims or TINY_WHISPER_DIMS
        with torch.device("meta"):
            unet = UNet3DConditionModel(config.model).to(self.dtype).eval()
            whisper = whisper_package().model.AudioEncoder(  # float32 weights, as WhisperAudioEncoder keeps them
                dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"], dims["n_audio_layer"])
        with torch.device("cpu" if self.offload else "meta"):
            vae = AutoencoderKL.from_config(self.vae_config or SD_VAE_CONFIG)  # a config.json's dict will do too
        # nn.Module's own cast: diffusers' override warns about modules to keep in float32, of which the VAE has none.
        vae = torch.nn.Module.to(vae, self.dtype).eval().requires_grad_(False)
        return unet, vae, whisper, config.data.resolution, dims["n_audio_state"]

    def inputs(self, resolution: int, tokens_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero faces and audio tokens, shaped as `LipSyncPipeline` takes them (no batch axis for one chunk); the
        values do not matter on the meta device."""
        shape = (self.batch_chunks, self.chunk_frames) if self.batch_chunks > 1 else (self.chunk_frames,)
        return (torch.zeros(*shape, resolution, resolution, 3, dtype=torch.uint8),
                torch.zeros(*shape, 50, tokens_dim))


def _phase_modules(unet: torch.nn.Module, vae) -> tuple[tuple[torch.nn.Module, str], ...]:
    """The modules whose calls the estimates count apart, with the names of their phases."""
    return ((unet, "unet"), (vae.encoder, "vae encode"), (vae.decoder, "vae decode"))


def estimate_chunk_memory(unet_config, **job) -> MemoryEstimate:
    """Peak device memory of denoising `batch_chunks` chunks of `frames` faces in one call, as `LipSync` does.

    `unet_config` and the keywords (dtype, sampling, batch_chunks, frames, offload, vae_config, whisper_dims)
    describe the job (`ChunkJob`). The steps do not change the peak, so two are run. `sampling.vae_slice`:
    frames per VAE call (0, the default: the whole chunk at once, as the reference does; `choose_vae_slice`
    picks it as `LipSync` does). The Whisper encoder's weights count as resident unless offloaded (its
    activations, for one 30 s window before the first chunk, are far below the UNet's)."""
    return _chunk_memory(ChunkJob(unet_config, **job))


def _chunk_memory(job: ChunkJob) -> MemoryEstimate:
    sampling, offload = job.options, job.offload
    unet, vae, whisper, resolution, tokens_dim = job.models()
    whisper_bytes = 0 if offload else _module_bytes(whisper)
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
        hooks = [h for module, name in _phase_modules(unet, vae) for h in trace.tag_module(module, name)]
        faces, tokens = job.inputs(resolution, tokens_dim)
        # The peak does not depend on the number of steps: two show every buffer the loop keeps.
        few = dataclasses.replace(sampling, num_steps=min(sampling.num_steps, 2))
        pipeline(faces, tokens, few, latents=noise, generator=torch.Generator().manual_seed(0))
        for h in hooks:
            h.remove()
    return MemoryEstimate(resident=resident, peak=trace.peak + unseen,
                          phases={k: v + unseen for k, v in trace.phase_peaks.items()})


def choose_vae_slice(unet_config, *, budget: int | None = None, **job) -> int:
    """Frames per VAE call for a job (`unet_config` and the keywords of `estimate_chunk_memory`; see
    `ChunkJob`) as `SamplingOptions.vae_slice`: 0, the whole chunk in one call, when its encode and decode fit
    in `budget` bytes, else the most frames that do.

    The budget is at least the UNet's peak for the same job, so the VAE never raises the job's peak above
    what denoising needs anyway; a larger `budget` (a device with memory to spare) allows larger slices.
    The VAE's peaks grow linearly with the frames per call: they are estimated for whole chunks and for one
    frame per call, and the slice is read off the line between."""
    job = ChunkJob(unet_config, **job)

    def vae_peaks(size: int) -> tuple[dict, int]:
        e = _chunk_memory(dataclasses.replace(job, sampling=dataclasses.replace(job.options, vae_slice=size)))
        return {phase: e.phases[phase] for phase in ("vae encode", "vae decode")}, e.phases["unet"]

    whole, unet = vae_peaks(0)
    budget = max(budget or 0, unet)
    if max(whole.values()) <= budget:
        return 0
    one, _ = vae_peaks(1)
    f = job.chunk_frames
    # Frames in each call when whole: the encode takes one chunk's masked (then reference) faces, the decode
    # every chunk of the batch.
    frames_in = {"vae encode": f, "vae decode": job.batch_chunks * f}
    fitting = []
    for phase, n in frames_in.items():
        per_frame = (whole[phase] - one[phase]) / max(n - 1, 1)
        fitting.append(n if per_frame <= 0 else int(1 + (budget - one[phase]) // per_frame))
    return max(1, min(fitting))


@dataclass
class FlopCount:
    """Floating-point operations of one call of `frames` faces, per phase (unet, vae encode, vae decode)."""

    frames: int
    phases: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.phases.values())

    def per_video_second(self, fps: float = FPS) -> float:
        return self.total * fps / self.frames


def count_chunk_flops(unet_config, **job) -> FlopCount:
    """The arithmetic of denoising `batch_chunks` chunks of `frames` faces with `sampling` (all its steps), as
    `LipSyncPipeline` does, counted on the meta device (`unet_config` and the keywords: see `ChunkJob`)."""

    job = ChunkJob(unet_config, **job)
    unet, vae, _, resolution, tokens_dim = job.models()
    counter = FlopCounterMode(display=False)
    phases: dict[str, int] = {}
    started: list[int] = []

    def enter(*_):
        started.append(counter.get_total_flops())

    def leave(name):
        def hook(*_):
            phases[name] = phases.get(name, 0) + counter.get_total_flops() - started.pop()
        return hook

    hooks = []
    for module, name in _phase_modules(unet, vae):
        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave(name))]
    pipeline = LipSyncPipeline(unet, vae, resolution, offload_vae=job.offload)
    faces, tokens = job.inputs(resolution, tokens_dim)
    with torch.no_grad(), counter, HostCopies():
        pipeline(faces, tokens, job.options, latents=pipeline.initial_noise(0),
                 generator=torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    phases["other"] = counter.get_total_flops() - sum(phases.values())
    return FlopCount(frames=faces.shape[:-3].numel(), phases=phases)
