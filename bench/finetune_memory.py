"""Peak GPU memory of one stage-2 UNet training step, full stage 2 and LoRA, at 256 px (LatentSync 1.5,
`stage2`) and 512 px (1.6, `stage2_512`), estimated on the CPU.

What runs. The real training code on PyTorch's meta device (every operation computes shapes and dtypes, no
values), followed by `latentsync.estimate.DeviceMemoryTrace`, which counts the bytes of every tensor storage
from its creation to its release: the full-size UNet (full stage 2: the `motion_modules.` and `attentions.`
parameters trainable, as `train_unet._trainable` picks them; LoRA: `models.lora.add_lora` with the base frozen
in float16, as `train_unet._lora_unet`), the frozen VAE, StableSyncNet, LPIPS-VGG and TREPA's VideoMAE-v2 ViT-g
(random weights: only shapes and dtypes matter), `UNetObjective` on a batch of the published configs' size
(`data.batch_size` 1, as in the reference's stage2 configs; `--batch-size 4` for the 4 per GPU their comment
mentions) with gradient checkpointing, then `optimizer.zero_grad`, backward, gradient clipping and a foreach
`AdamW` step (torch's default on CUDA), as `train_unet`'s loop does. Two steps run and the second is the one
measured: in steady state AdamW's two float32 states exist throughout, and the previous step's gradients are
still held during the forward pass (the loop frees them only before its backward). The weights are built
before the trace and added to its figures; views of them are not counted as new memory.

Each case is measured twice: as our trainer runs it (the figures of `--json`), with the VAE decoder's blocks
checkpointed under pixel-space supervision as the reference trains (`vae.enable_gradient_checkpointing()`), and
without that ("-VAE ckpt"): the decoder, run with gradients for the pixel-space losses, then holds most of the
peak. LPIPS is checkpointed too (`LPIPS(gradient_checkpointing=...)`, as the trainer sets it).

Precision as `devices.resolve_precision` sets it on CUDA: float16 autocast; the VAE, SyncNet, TREPA's ViT and a
LoRA run's base UNet stored in float16; LPIPS's VGG and the full run's UNet in float32; float32 gradients.

Autocast. `torch.autocast` does not act on meta tensors: it refuses the device type "meta", and CUDA autocast
casts only tensors on a CUDA device (a FakeTensor posing as one is cast, but its backward needs a CUDA build).
`Fp16Autocast` emulates CUDA's: a `TorchFunctionMode`, so like the real one it works above autograd, and every
cast is an autograd node whose result is saved for backward wherever the real one is. Its op lists are CUDA
autocast's (ATen `autocast_mode.h`): matrix products, convolutions, `linear` and attention take float16 inputs;
norms, losses, `exp`/`log`/`pow`, interpolation and the other float32 ops upcast theirs (so GroupNorm and
LayerNorm outputs are float32, as on a GPU); `sum`/`softmax`/`norm` of half inputs give float32. Like autocast
it caches the float16 copy of every trainable float32 weight until the forward pass ends. Torch function modes
are off inside the backward pass, so the checkpointed blocks (UNet, ViT, SyncNet, LPIPS, the VAE decoder's) get their recomputation wrapped in the mode (`checkpoint`'s `context_fn`), as
`torch.utils.checkpoint` re-enters autocast there.

Attention. Fused kernels never hold the score matrix: FlashAttention-2, which PyTorch picks for float16 on CUDA
up to 256-wide heads, and the memory-efficient kernel beyond (the VAE's one 512-wide head). `FusedAttention`
allocates what they do: the output and a float32 log-sum-exp per query row (kept for backward), and in
backward the three input gradients and a float32 accumulator for the query's. `estimate.fused_attention_memory`
models the forward the same way but without autograd history, so it cannot serve training.

What the figure includes: every tensor on the device, as `torch.cuda.max_memory_allocated` counts them. Left
out: the CUDA context (about 0.5 GB), cuBLAS/cuDNN workspaces, the caching allocator's rounding and
fragmentation (what `max_memory_reserved` and nvidia-smi add on top, typically 5-20%), the GradScaler's
float16 loss scaling (in place on the gradients), DDP's gradient buckets (multi-GPU runs only: one more copy of
the gradients), the validation pipeline, and CPU-side data loading.

Baseline: the reference README's training needs, 30 GB for stage2.yaml and 55 GB for stage2_512.yaml
(its trainer under DDP, batch 1 per GPU; whole-GPU figures). Target: LoRA at 512 px within 24 GB (one RTX 3090/4090).

    .venv/bin/python bench/finetune_memory.py [--json] [--batch-size N] [--rank R]

(from the repository root: the configs name the SyncNet config by a relative path). About 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.utils.checkpoint
from diffusers import AutoencoderKL
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from latentsync.audio import STEPS_PER_FRAME
from latentsync.config import load_syncnet_config, load_unet_config
from latentsync.estimate import GiB, DeviceMemoryTrace
from latentsync.models import syncnet as syncnet_module
from latentsync.models import unet_blocks
from latentsync.models import videomae as videomae_module
from latentsync.models.lora import DEFAULT_RANK, add_lora
from latentsync.models.syncnet import load_syncnet, syncnet_input_shapes
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.vae import SD_VAE_CONFIG
from latentsync.models.vgg import TAP_CHANNELS, VGG16Features
from latentsync.models.videomae import VideoMAEv2
from latentsync.models.whisper import TINY_WHISPER_DIMS
from latentsync.pipeline import make_scheduler
from latentsync.training import losses as losses_module
from latentsync.training.losses import LPIPS, LPIPS_HEAD_KEY, TREPALoss
from latentsync.training.objective import Frozen, UNetObjective
from latentsync.training.train_unet import _trainable

CONFIG_FOR_RESOLUTION = {256: "stage2", 512: "stage2_512"}
MODES = ("full", "lora")
ORIGINAL_GB = {256: 30.0, 512: 55.0}  # the reference README: stage2.yaml, stage2_512.yaml
TARGET_LORA_512_GB = 24.0  # one RTX 3090/4090
WARMUP_STEPS = 1  # steps before the measured one: they create AdamW's states and the gradients it still holds
META = torch.device("meta")
HALF = torch.float16  # CUDA's training autocast dtype ("auto" on CUDA)
# Whisper tiny's hidden states per token (the embedding and each of its layers) x tokens per video frame.
AUDIO_TOKENS_PER_FRAME = STEPS_PER_FRAME * (TINY_WHISPER_DIMS["n_audio_layer"] + 1)  # 50

# ---- autocast, emulated ------------------------------------------------------------------------------------

# CUDA autocast's op lists (ATen autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
# AT_FORALL_FP32_SET_OPT_DTYPE and the norm overloads), by the names of the Python functions and tensor methods
# that reach those ops. "interpolate" stands for the upsample ops (all modes but "area").
LOWER_PRECISION_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "_convolution", "prelu", "addmm", "addmv", "addr", "matmul", "__matmul__", "__rmatmul__",
    "einsum", "mm", "mv", "vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "multi_dot",
    "scaled_dot_product_attention",
})
FLOAT32_OPS = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "rms_norm", "group_norm",
    "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss",
    "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp", "interpolate",
})
FLOAT32_OUTPUT_OPS = frozenset({"prod", "softmax", "log_softmax", "cumprod", "cumsum", "sum", "norm",
                                "vector_norm", "matrix_norm"})
AREA_MODE = "area"  # F.interpolate's adaptive pooling, which autocast leaves alone


def _eligible(x) -> bool:
    """What CUDA autocast casts: floating tensors (not float64) on its device, here the meta device."""
    return isinstance(x, torch.Tensor) and x.device.type == META.type and x.is_floating_point() \
        and x.dtype != torch.float64


class FusedAttention(torch.autograd.Function):
    """`F.scaled_dot_product_attention` as a fused kernel allocates: (..., L, Ev) output and an (..., L) float32
    log-sum-exp saved for backward; backward: the input gradients and a float32 accumulator for the query's."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))  # ... L Ev
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # ... L
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, _, _ = ctx.saved_tensors
        accumulator = q.new_empty(q.shape, dtype=torch.float32)
        grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del accumulator  # held only while the kernel runs
        return grads


class Fp16Autocast(TorchFunctionMode):
    """CUDA's float16 autocast for meta tensors (see the module docstring). Like autocast it keeps the float16
    copy of each trainable float32 weight (a leaf that requires grad) until the mode exits; `cached_bytes` is
    what that cache held at the end."""

    def __init__(self):
        super().__init__()
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cached_bytes = 0

    def __exit__(self, *exc):
        self.cached_bytes = sum(half.untyped_storage().nbytes() for _, half in self.cache.values())
        self.cache.clear()
        return super().__exit__(*exc)

    def _cast(self, x, dtype: torch.dtype):
        if not _eligible(x) or x.dtype == dtype:
            return x
        if dtype == HALF and x.dtype == torch.float32 and x.requires_grad and x.is_leaf and not x._is_view():
            if id(x) not in self.cache:  # the source is kept too, so its id stays its own
                self.cache[id(x)] = (x, x.to(dtype))
            return self.cache[id(x)][1]
        return x.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION_OPS:
            args, kwargs = tree_map(lambda x: self._cast(x, HALF), (args, kwargs))
            if name == "scaled_dot_product_attention":
                q, k, v = (*args, *(kwargs[n] for n in ("query", "key", "value") if n in kwargs))[:3]
                return FusedAttention.apply(q, k, v)
        elif name in FLOAT32_OPS and not (name == "interpolate" and kwargs.get("mode") == AREA_MODE):
            args, kwargs = tree_map(lambda x: self._cast(x, torch.float32), (args, kwargs))
        elif (name in FLOAT32_OUTPUT_OPS and args and _eligible(args[0]) and args[0].dtype != torch.float32
              and kwargs.get("dtype") is None):
            kwargs = {**kwargs, "dtype": torch.float32}
        return func(*args, **kwargs)


def _recompute_under_autocast():
    """`checkpoint`'s context_fn: nothing around the forward pass (the caller's mode is active), the emulated
    autocast around the recomputation in backward."""
    return contextlib.nullcontext(), Fp16Autocast()


# torch.utils.checkpoint as the models call it (non-reentrant), recomputing under the emulated autocast.
recomputing_checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False,
                                           context_fn=_recompute_under_autocast)


@contextlib.contextmanager
def checkpoints_under_autocast() -> Iterator[None]:
    """Within the block, the models' gradient checkpointing (UNet, ViT and SyncNet blocks, LPIPS) recomputes
    under `Fp16Autocast`: the models' `checkpoint` names are patched, for this script only."""
    modules = [(unet_blocks, "checkpoint"), (videomae_module, "checkpoint"), (syncnet_module, "grad_checkpoint"),
               (losses_module, "checkpoint")]
    originals = [getattr(m, name) for m, name in modules]
    for m, name in modules:
        setattr(m, name, recomputing_checkpoint)
    try:
        yield
    finally:
        for (m, name), original in zip(modules, originals):
            setattr(m, name, original)


# ---- the trace --------------------------------------------------------------------------------------------


class StepTrace(DeviceMemoryTrace):
    """`DeviceMemoryTrace` that numbers the allocations and remembers when each was freed, so the bytes that any
    set of tensors (gradients, optimizer states) held at the peak can be read afterwards."""

    def __init__(self):
        super().__init__()
        self.clock = 0  # allocations so far
        self.peak_clock = 0  # the allocation after which the peak was reached
        self._born: dict[int, int] = {}  # live storage key -> its allocation number
        self._bytes: dict[int, int] = {}  # allocation number -> bytes
        self._freed: dict[int, int] = {}  # allocation number -> the clock when it was freed

    def _count(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type or t.untyped_storage()._cdata in self._sizes:
            return
        super()._count(t)
        key = t.untyped_storage()._cdata
        self.clock += 1
        self._born[key] = self.clock
        self._bytes[self.clock] = self._sizes[key]
        if self.live == self.peak:
            self.peak_clock = self.clock

    def _free(self, key: int) -> None:
        born = self._born.pop(key, None)
        if born is not None:
            self._freed[born] = self.clock
        super()._free(key)

    def reset_peak(self) -> None:
        super().reset_peak()
        self.peak_clock = self.clock

    def allocations(self, tensors: Iterable[torch.Tensor]) -> set[int]:
        """The allocation numbers of the live storages of `tensors` (those created inside the trace)."""
        keys = (t.untyped_storage()._cdata for t in tensors if t.device.type == self.device_type)
        return {self._born[k] for k in keys if k in self._born}

    def alive_bytes(self, allocations: Iterable[int]) -> int:
        """Bytes of those of `allocations` that are still live."""
        return sum(self._bytes[a] for a in allocations if a not in self._freed)

    def bytes_at_peak(self, allocations: Iterable[int]) -> int:
        return sum(self._bytes[a] for a in allocations
                   if a <= self.peak_clock and self._freed.get(a, self.clock) >= self.peak_clock)


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _module_bytes(*modules: nn.Module) -> int:
    return _bytes(t for m in modules for t in [*m.parameters(), *m.buffers()])


# ---- the models, as train_unet builds them ----------------------------------------------------------------


def build_unet(cfg, mode: str, rank: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """The UNet and its trainable parameters: full stage 2 (`train_unet._trainable`) or a LoRA adapter on a
    float16 base (as `train_unet._lora_unet`)."""
    with torch.device(META):
        unet = UNet3DConditionModel(cfg.model)
    if mode == "lora":
        run = cfg.run
        add_lora(unet, rank, run.lora_alpha or None, run.lora_targets)
        for tensor in [*unet.parameters(), *unet.buffers()]:
            if not tensor.requires_grad:
                tensor.data = tensor.data.to(HALF)
        params = [p for p in unet.parameters() if p.requires_grad]
    else:
        params = _trainable(unet, cfg.run.trainable_modules, cfg.model.use_motion_module)
    if cfg.run.enable_gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet.train(), params


def build_frozen(cfg, lpips_heads: Path) -> Frozen:
    """The frozen networks of a run with `cfg` (the conditions of `train_unet`), random weights on the meta
    device: the VAE, TREPA's ViT and the SyncNet in float16, LPIPS in float32 (`_lpips` gives it no dtype)."""
    run = cfg.run
    with torch.device(META):
        vae = AutoencoderKL.from_config(SD_VAE_CONFIG)
    # nn.Module's own cast: diffusers' override warns about modules to keep in float32, of which the VAE has none.
    vae = nn.Module.to(vae, HALF).eval().requires_grad_(False)
    vae.enable_slicing()  # as load_vae(..., slicing=True) in the trainer
    frozen = Frozen(vae=vae)
    if not run.pixel_space_supervise:
        return frozen
    if run.perceptual_loss_weight > 0:
        with torch.device(META):
            vgg = VGG16Features()
        frozen.lpips = LPIPS(vgg, heads_path=lpips_heads, gradient_checkpointing=run.enable_gradient_checkpointing)
    if run.trepa_loss_weight > 0:
        with torch.device(META):
            videomae = VideoMAEv2(run.trepa_model)
        frozen.trepa = TREPALoss(videomae, dtype=HALF)
    if run.use_syncnet and run.sync_loss_weight > 0:
        syncnet = load_syncnet(load_syncnet_config(cfg.data.syncnet_config_path), device=META, dtype=HALF)
        frozen.syncnet = syncnet.requires_grad_(False).eval()
    return frozen


def write_lpips_heads(folder: Path) -> Path:
    """Zero LPIPS heads in the lpips package's layout (LPIPS reads its heads from a file; values do not matter)."""
    path = folder / "vgg.pth"
    torch.save({LPIPS_HEAD_KEY.format(k): torch.zeros(1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}, path)
    return path


def make_batch(cfg, batch_size: int) -> dict[str, torch.Tensor]:
    """A training batch on the device, shaped as `data.unet.UNetDataset` collates it."""
    f, r = cfg.data.num_frames, cfg.data.resolution
    _, mel = syncnet_input_shapes(load_syncnet_config(cfg.data.syncnet_config_path))
    frames = (batch_size, f, 3, r, r)
    return {"gt_pixel_values": torch.empty(frames, device=META),  # b f 3 R R
            "masked_pixel_values": torch.empty(frames, device=META),
            "ref_pixel_values": torch.empty(frames, device=META),
            "masks": torch.empty(batch_size, f, 1, r, r, device=META),  # b f 1 R R
            "audio_embeds": torch.empty(batch_size, f, AUDIO_TOKENS_PER_FRAME, cfg.model.cross_attention_dim,
                                        device=META),  # b f 50 384
            "mel": torch.empty(batch_size, *mel, device=META)}  # b 1 80 52


def _parts(unet: nn.Module, frozen: Frozen) -> dict[str, list[nn.Module]]:
    """The networks whose saved activations are counted apart, by name."""
    vae = frozen.vae
    parts = {"unet": [unet], "vae decode": [vae.post_quant_conv, vae.decoder]}  # (the encoder runs without grad)
    for name in ("lpips", "trepa", "syncnet"):
        if getattr(frozen, name) is not None:
            parts[name] = [getattr(frozen, name)]
    return parts


def _span_hooks(trace: StepTrace, parts: dict[str, list[nn.Module]], spans: dict[str, list[range]]) -> list:
    """Hooks recording, in `spans[name]`, the allocation numbers made during each call of a part."""
    handles = []
    for name, modules in parts.items():
        spans[name] = []
        for module in modules:
            entered: list[int] = []

            def enter(*_, entered=entered):
                entered.append(trace.clock + 1)

            def leave(*_, name=name, entered=entered):
                spans[name].append(range(entered.pop(), trace.clock + 1))

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


# ---- one case ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What one measurement trains: `mode` "full" (stage 2's trainable modules) or "lora", at `resolution` px;
    `vae_checkpointing`: the VAE decoder's blocks checkpointed under pixel-space supervision, as `train_unet`
    does (False: the what-if without it, "-VAE ckpt")."""

    mode: str
    resolution: int
    vae_checkpointing: bool = True

    @property
    def key(self) -> str:
        return f"{self.mode}_{self.resolution}" + ("" if self.vae_checkpointing else "_no_vae_ckpt")

    @property
    def label(self) -> str:
        return f"{self.mode} {self.resolution}" + ("" if self.vae_checkpointing else " -VAE ckpt")


@dataclass
class StepMemory:
    """Bytes on the device during the measured training step. `phases`: the peak of each phase (forward,
    backward, optimizer); `at_peak`: what was live at the overall peak, by kind; `saved`: what the forward pass
    left for backward, by the network that allocated it."""

    case: Case
    batch_size: int
    frames: int
    trainable_params: int
    frozen_weights: int
    trainable_weights: int
    gradients: int
    optimizer_states: int
    weight_cast_cache: int  # float16 copies of the trainable weights, held through the forward pass
    saved: dict[str, int]
    phases: dict[str, int]
    peak: int
    at_peak: dict[str, int]
    seconds: float

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    def as_gib(self) -> dict:
        sizes = ("frozen_weights", "trainable_weights", "gradients", "optimizer_states", "weight_cast_cache", "peak")
        by_name = ("saved", "phases", "at_peak")
        return {**asdict(self.case), "batch_size": self.batch_size, "frames": self.frames,
                "trainable_params": self.trainable_params, "peak_phase": self.peak_phase,
                **{f"{k}_gb": getattr(self, k) / GiB for k in sizes},
                **{f"{k}_gb": {n: v / GiB for n, v in getattr(self, k).items()} for k in by_name},
                "seconds": self.seconds}


@dataclass
class _Step:
    inputs: set[int]  # allocations of the batch
    grads: set[int]  # allocations of the previous step's gradients, alive through this forward pass
    saved: dict[str, int]  # bytes the forward pass left for backward, by the network that allocated them
    cached: int  # bytes of the autocast weight cache at the end of the forward pass


def _train_step(objective, optimizer, params, cfg, batch_size: int, trace: StepTrace,
                parts: dict[str, list[nn.Module]] | None = None) -> _Step:
    """One step as `train_unet`'s loop runs it; what its forward pass saves is counted by network of `parts`."""
    trace.phase = "forward"
    batch = make_batch(cfg, batch_size)
    inputs = trace.allocations(batch.values())
    spans: dict[str, list[range]] = {}
    hooks = _span_hooks(trace, parts or {}, spans)
    start = trace.clock + 1
    autocast = Fp16Autocast()
    with autocast:
        loss, _ = objective(batch)
    for h in hooks:
        h.remove()
    saved = {name: trace.alive_bytes(a for r in ranges for a in r) for name, ranges in spans.items()}
    saved["other"] = trace.alive_bytes(range(start, trace.clock + 1)) - sum(saved.values())
    step = _Step(inputs=inputs, grads=trace.allocations(p.grad for p in params if p.grad is not None),
                 saved=saved, cached=autocast.cached_bytes)
    optimizer.zero_grad(set_to_none=True)
    trace.phase = "backward"
    loss.backward()  # the checkpointed blocks recompute under the emulated autocast (checkpoints_under_autocast)
    del loss, batch
    trace.phase = "optimizer"
    torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.max_grad_norm)
    optimizer.step()
    return step


def measure(case: Case, batch_size: int | None, rank: int, lpips_heads: Path) -> StepMemory:
    """Device memory of the last of `WARMUP_STEPS + 1` training steps of `case`."""
    t0 = time.perf_counter()
    cfg = load_unet_config(CONFIG_FOR_RESOLUTION[case.resolution])
    batch_size = batch_size or cfg.data.batch_size
    unet, params = build_unet(cfg, case.mode, rank)
    frozen = build_frozen(cfg, lpips_heads)
    if case.vae_checkpointing and cfg.run.pixel_space_supervise:  # as train_unet (recomputed under the autocast)
        frozen.vae.enable_gradient_checkpointing(recomputing_checkpoint)
    networks = [unet, *(m for m in (frozen.vae, frozen.lpips, frozen.trepa, frozen.syncnet) if m is not None)]
    trainable = _bytes(params)
    weights = _module_bytes(*networks)  # built outside the trace: added to its figures
    objective = UNetObjective(unet, frozen, cfg.run, make_scheduler("ddim"))
    # torch picks the foreach implementation on CUDA by default; on meta tensors it would loop tensor by tensor.
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, foreach=True)

    trace = StepTrace()
    trace.exclude(*(t for m in networks for t in [*m.parameters(), *m.buffers()]))  # views of them are no new memory
    with trace, checkpoints_under_autocast():
        for _ in range(WARMUP_STEPS):
            _train_step(objective, optimizer, params, cfg, batch_size, trace)
        trace.reset_peak()
        step = _train_step(objective, optimizer, params, cfg, batch_size, trace, _parts(unet, frozen))
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    grads = step.grads | trace.allocations(p.grad for p in params)  # the previous step's, and this one's
    peak = trace.peak + weights
    at_peak = {"weights": weights, "gradients": trace.bytes_at_peak(grads),
               "optimizer states": trace.bytes_at_peak(trace.allocations(states)),
               "batch": trace.bytes_at_peak(step.inputs)}
    at_peak["activations and temporaries"] = peak - sum(at_peak.values())
    return StepMemory(
        case=case, batch_size=batch_size, frames=cfg.data.num_frames,
        trainable_params=sum(p.numel() for p in params), frozen_weights=weights - trainable,
        trainable_weights=trainable, gradients=_bytes(p.grad for p in params),
        optimizer_states=_bytes(t for t in states if t.device.type == META.type),
        weight_cast_cache=step.cached, saved=step.saved, peak=peak, at_peak=at_peak,
        phases={k: v + weights for k, v in trace.phase_peaks.items()}, seconds=time.perf_counter() - t0)


# ---- report -----------------------------------------------------------------------------------------------


def _gb(n: int) -> str:
    return f"{n / GiB:6.2f}"


def report(results: dict[str, StepMemory], rank: int, out) -> None:
    first = next(iter(results.values()))
    print(f"One stage-2 training step (the last of {WARMUP_STEPS + 1}), {first.frames} frames, batch "
          f"{first.batch_size}, fp16 autocast, gradient checkpointing, LoRA rank {rank}; GB of tensors on the device "
          f"(-VAE ckpt: the what-if without the VAE decoder's checkpointing):", file=out)
    print(f"  {'case':19s} {'trainable':>10s} {'frozen w':>8s} {'train w':>8s} {'grads':>7s} {'AdamW':>7s} "
          f"{'saved':>7s} {'fwd pk':>7s} {'bwd pk':>7s} {'opt pk':>7s} {'PEAK':>7s}", file=out)
    for r in results.values():
        print(f"  {r.case.label:19s} {r.trainable_params / 1e6:9.1f}M {_gb(r.frozen_weights):>8s} "
              f"{_gb(r.trainable_weights):>8s} {_gb(r.gradients):>7s} {_gb(r.optimizer_states):>7s} "
              f"{_gb(sum(r.saved.values())):>7s} {_gb(r.phases['forward']):>7s} {_gb(r.phases['backward']):>7s} "
              f"{_gb(r.phases['optimizer']):>7s} {_gb(r.peak):>7s}   ({r.seconds:.0f} s)", file=out)
    print("  saved: the activations the forward pass leaves for backward; pk: the peak of that phase.", file=out)
    print("\nWhat was live at the peak, and the saved activations by network (GB):", file=out)
    for r in results.values():
        live = ", ".join(f"{k} {v / GiB:.2f}" for k, v in r.at_peak.items())
        nets = ", ".join(f"{k} {v / GiB:.2f}" for k, v in sorted(r.saved.items(), key=lambda kv: -kv[1]))
        print(f"  {r.case.label:19s} peak in {r.peak_phase}: {live}", file=out)
        print(f"  {'':19s} saved: {nets}; autocast's fp16 weight copies {r.weight_cast_cache / GiB:.2f}", file=out)
    print(file=out)
    _verdicts(results, out)


def _both(values: Iterable[float], unit: str = " GB", spec: str = ".1f") -> str:
    """Figures of the two resolutions, "a / b GB"."""
    return " / ".join(f"{v:{spec}}" for v in values) + unit


def _verdicts(results: dict[str, StepMemory], out) -> None:
    """The target and the reference's figures against ours, and why they differ (from the breakdown)."""
    lora, before = results["lora_512"].peak / GiB, results["lora_512_no_vae_ckpt"].peak / GiB
    verdict = "met" if lora <= TARGET_LORA_512_GB else "NOT met"
    print(f"Target, LoRA at 512 px within {TARGET_LORA_512_GB:g} GB of tensors (the CUDA context and allocator "
          f"overhead come on top): {lora:.2f} GB ({verdict}, {TARGET_LORA_512_GB - lora:+.2f} GB); {before:.2f} GB "
          "without the VAE decoder's checkpointing.", file=out)
    full = [results[f"full_{res}"] for res in ORIGINAL_GB]
    unchecked = [results[f"full_{res}_no_vae_ckpt"] for res in ORIGINAL_GB]
    ratios = _both((r.peak / GiB / original for r, original in zip(full, ORIGINAL_GB.values())), "x", ".2f")
    print(f"Full stage 2 at {_both(ORIGINAL_GB, ' px', 'd')}: {_both(r.peak / GiB for r in full)} against the "
          f"reference's {_both(ORIGINAL_GB.values(), spec='g')} ({ratios}); without the VAE decoder's "
          f"checkpointing {_both(r.peak / GiB for r in unchecked)}.", file=out)
    decoder, decoder_before = (_both(r.saved["vae decode"] / GiB for r in rows) for rows in (full, unchecked))
    lpips = _both(r.saved["lpips"] / GiB for r in full)
    first = full[0]
    print(f"Why: the VAE decoder, run with gradients for the pixel-space losses, leaves {decoder} for backward "
          f"when its blocks are checkpointed, {decoder_before} when not (under autocast each GroupNorm keeps a "
          "float32 copy of its input, each SiLU its float32 output, each convolution a float16 copy of its input). "
          "The weights, gradients and AdamW states are alike in both implementations (fp32 UNet, "
          f"{first.trainable_params / 1e6:.0f}M trainable: "
          f"{(first.frozen_weights + first.trainable_weights) / GiB:.1f} GB of weights, "
          f"{first.gradients / GiB:.1f} GB of gradients, {first.optimizer_states / GiB:.1f} GB of "
          "states), but the reference's figures are whole-GPU and hold what this count leaves out: DDP's gradient "
          f"buckets (one more copy of the gradients, {first.gradients / GiB:.1f} GB), an LPIPS run in float32 outside "
          f"autocast and not checkpointed (ours keeps {lpips}), the validation models it keeps on the GPU, the CUDA "
          "context, cuDNN workspaces and the caching allocator's reserve.", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (full_256_gb, lora_256_gb, full_512_gb, lora_512_gb, details) "
                             "on stdout; the table goes to stderr")
    parser.add_argument("--batch-size", type=int, help="clips per step (default: the config's, 1)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help=f"LoRA rank (default {DEFAULT_RANK})")
    args = parser.parse_args()
    out = sys.stderr if args.json else sys.stdout
    cases = [Case(mode, resolution, ckpt) for ckpt in (True, False) for resolution in CONFIG_FOR_RESOLUTION
             for mode in MODES]
    results: dict[str, StepMemory] = {}
    with tempfile.TemporaryDirectory() as tmp:
        heads = write_lpips_heads(Path(tmp))
        for case in tqdm(cases, desc="training steps on meta", unit="case", file=sys.stderr):
            results[case.key] = measure(case, args.batch_size, args.rank, heads)
    report(results, args.rank, out)
    if args.json:
        figures = {f"{c.key}_gb": results[c.key].peak / GiB for c in cases if c.vae_checkpointing}
        print(json.dumps({**figures, "details": {k: r.as_gib() for k, r in results.items()}}, indent=2))


if __name__ == "__main__":
    main()
