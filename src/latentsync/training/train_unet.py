"""Training the LatentSync UNet: stage 1 (no temporal layers, reconstruction only), stage 2 (temporal layers and
attention trained with the pixel-space losses), the efficient variant, at 256 or 512 (spec 7.2); and, ours, a
LoRA adapter on a published UNet (`run.lora_rank`, `models.lora`: what `latentsync finetune` trains).

    latentsync train unet --config configs/unet/stage2.yaml [key=value ...] [--resume auto]
    torchrun --nproc_per_node 8 -m latentsync train unet --config ...

The loss is `objective.UNetObjective`; this file only builds the pieces and runs the loop, in sections:
config -> models -> data -> optimiser -> resume -> loop (step, log, save, validate). Precision: see
`devices` (fp16 with a scaler on CUDA by default, bf16 on request or off CUDA; frozen nets in that dtype on CUDA).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from ..audio import SyncNetMelCache, WhisperAudioEncoder
from ..config import load_unet_config, load_syncnet_config, to_dict
from ..data.unet import UNetDataset, WhisperFeatures
from ..devices import resolve_precision
from ..errors import CheckpointError, ConfigError, InputError
from ..fileio import sha256_file
from ..inference import InferenceOptions, LipSync
from ..models.lora import AdapterInfo, add_lora, save_adapter
from ..models.syncnet import load_syncnet
from ..models.unet import load_unet, save_unet_checkpoint
from ..models.vae import load_vae
from ..pipeline import LipSyncPipeline, make_scheduler
from ..sync_score import sync_confidence
from ..weights import CheckpointLayout, default_checkpoints_dir
from . import distributed, state
from .log import MetricsLog
from .losses import LPIPS, TREPALoss
from .objective import Frozen, UNetObjective

log = logging.getLogger("latentsync.train")

VALIDATION_DIR = "validation"


class _OffsetSampler(Sampler):
    """The indices of `sampler` from position `offset` on: a resumed run continues mid-epoch exactly where the
    killed one stopped (the dataset's samples depend only on index and epoch)."""

    def __init__(self, sampler: Sampler, offset: int):
        self.sampler, self.offset = sampler, offset

    def __iter__(self):
        return iter(list(self.sampler)[self.offset:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.offset)


def _trainable(unet: torch.nn.Module, modules: tuple[str, ...], use_motion_module: bool) -> list[torch.nn.Parameter]:
    """Stage 1 (no temporal layers) trains everything; otherwise parameters whose name contains one of
    `run.trainable_modules` (stage 2: motion_modules. and attentions.), as the reference selects them."""
    if not use_motion_module or not modules:
        unet.requires_grad_(True)
    else:
        for name, p in unet.named_parameters():
            p.requires_grad_(any(m in name for m in modules))
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"run.trainable_modules {list(modules)} matches no UNet parameter")
    return params


def train_unet(config, run_dir: str | Path, *, overrides: list[str] | None = None, resume: str = "auto",
               max_steps: int | None = None, device: str = "auto", progress: bool = True,
               checkpoints: str | Path | None = None, init_sd15: str | Path | None = None,
               data: str | Path | None = None, return_model: bool = False) -> dict:
    """Train per `config` into `run_dir` (see the module docstring); returns {"step", "loss", ...}.

    `resume`: "auto" continues the run's latest state if there is one, "never" starts over (refused if the
    run folder already has states: use another folder), or the path of a state file. `init_sd15`: start a
    fresh run from a diffusers Stable Diffusion 1.5 UNet (stage 1). `data`: clips (folder or files list)
    instead of `data.train_fileslist` / `data.train_data_dir`. `return_model`: also return the trained UNet
    (this rank's copy) under "model"."""
    # ---- config --------------------------------------------------------------------------------------
    cfg = load_unet_config(config, overrides)
    run_dir = Path(run_dir)
    d = distributed.init(device)
    state.seed_everything(cfg.run.seed + d.rank)
    layout = CheckpointLayout(checkpoints or default_checkpoints_dir())
    total_steps = max_steps if max_steps is not None else cfg.run.max_train_steps
    cuda = d.device.type == "cuda"
    precision = resolve_precision(d.device, cfg.run.mixed_precision_training, cfg.run.mixed_precision_dtype)
    resume_path = state.find_state(run_dir, resume)

    # ---- models --------------------------------------------------------------------------------------
    frozen_dtype = precision.frozen_dtype  # the VAE, TREPA's ViT and the SyncNet: see devices.Precision
    lora = None
    if cfg.run.lora_rank:  # the base is read from its file on every start: a LoRA run's states hold the adapter
        unet, lora = _lora_unet(cfg, d.device, frozen_dtype)
    elif cfg.ckpt.resume_ckpt_path and resume_path is None:
        unet = load_unet(cfg, cfg.ckpt.resume_ckpt_path, device=d.device)
    elif init_sd15 is not None and resume_path is None:
        unet = load_unet(cfg, init_sd15, device=d.device, from_sd15=True)
    else:
        unet = load_unet(cfg, device=d.device)
    unet.train()
    if lora is not None:
        params = [p for p in unet.parameters() if p.requires_grad]
    else:
        params = _trainable(unet, cfg.run.trainable_modules, cfg.model.use_motion_module)
    if cfg.run.enable_gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    (vae_path,) = layout.require("vae")
    vae = load_vae(vae_path, device=d.device, dtype=frozen_dtype, slicing=True)  # decodes keep gradients
    frozen = Frozen(vae=vae)
    run = cfg.run
    if run.pixel_space_supervise:
        # The decode of the one-step estimate carries gradients: its blocks are recomputed in backward instead of
        # holding their activations, as the reference trains (spec 7.2). Without it the decoder held 75 of the 88
        # GB of a LoRA step at 512 px; with it 8 (bench/finetune_memory.py).
        vae.enable_gradient_checkpointing()
    if run.pixel_space_supervise:
        frozen.lpips = (_lpips(layout, d.device, run.enable_gradient_checkpointing)
                        if run.perceptual_loss_weight > 0 else None)
        frozen.trepa = _trepa(layout, d.device, frozen_dtype, run.trepa_model) if run.trepa_loss_weight > 0 else None
        if run.use_syncnet and run.sync_loss_weight > 0:
            frozen.syncnet = _syncnet(cfg.data.syncnet_config_path, layout, d.device, frozen_dtype)
    model = distributed.wrap(unet, d, find_unused_parameters=False)
    objective = UNetObjective(model, frozen, run, make_scheduler("ddim"))

    # ---- data ----------------------------------------------------------------------------------------
    source = data or cfg.data.train_fileslist or cfg.data.train_data_dir
    if not source:
        raise ConfigError("no training clips: set data.train_fileslist or data.train_data_dir (or pass data=)")
    (whisper_path,) = layout.require("whisper")
    features = WhisperFeatures(whisper_path, cache_dir=cfg.data.audio_embeds_cache_dir or None,
                               device=str(d.device))
    dataset = UNetDataset(source, cfg, features, with_mel=frozen.syncnet is not None, seed=cfg.run.seed,
                          mel_cache=SyncNetMelCache(cfg.data.audio_mel_cache_dir or None))
    if d.is_main:  # each clip's audio is encoded once, here; every worker then reads the disk cache
        for clip in tqdm(dataset.clips, desc="audio features", unit="clip", disable=not progress):
            features(clip.path)
    distributed.barrier(d)
    sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                 seed=cfg.run.seed, drop_last=True)
    batches_per_epoch = len(sampler) // cfg.data.batch_size
    if batches_per_epoch == 0:
        raise InputError(f"{source}: {len(dataset)} samples, fewer than one batch of {cfg.data.batch_size} per rank")

    # ---- optimiser -----------------------------------------------------------------------------------
    lr = cfg.optimizer.lr * (cfg.data.batch_size * d.world_size if cfg.optimizer.scale_lr else 1)
    optimizer = torch.optim.AdamW(params, lr=lr)
    lr_schedule = get_scheduler(cfg.optimizer.lr_scheduler, optimizer=optimizer,
                                num_warmup_steps=cfg.optimizer.lr_warmup_steps, num_training_steps=total_steps)
    scaler = precision.scaler()

    # ---- resume --------------------------------------------------------------------------------------
    step = 0
    if resume_path is not None:
        step = state.restore(state.load(resume_path), model=unet, optimizer=optimizer, scaler=scaler,
                             scheduler=lr_schedule, rank=d.rank, world_size=d.world_size)
        log.info("resumed %s at step %d", resume_path, step)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        state.write_config(run_dir, to_dict(cfg))
    metrics = MetricsLog(run_dir, enabled=d.is_main, resume_step=step if resume_path else None)

    # ---- loop ----------------------------------------------------------------------------------------
    last: dict[str, float] = {}
    bar = None
    if progress and d.is_main:
        bar = tqdm(total=total_steps, initial=step, desc="train unet", unit="step", dynamic_ncols=True)
    try:
        while step < total_steps:
            epoch, offset = divmod(step, batches_per_epoch)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            # The loader's own generator: creating its iterator must not draw from the global generator, or
            # a resumed run (which creates one mid-epoch) would see different noise from an uninterrupted one.
            loader_rng = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch)
            loader = DataLoader(dataset, batch_size=cfg.data.batch_size, drop_last=True,
                                sampler=_OffsetSampler(sampler, offset * cfg.data.batch_size),
                                num_workers=cfg.data.num_workers if cuda else 0, pin_memory=cuda,
                                generator=loader_rng)
            for batch in loader:
                t0 = time.perf_counter()
                with precision.autocast():
                    loss, terms = objective(batch)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                lr_schedule.step()
                step += 1
                last = {"loss": distributed.mean(loss.detach(), d),
                        **{k: distributed.mean(v.detach(), d) for k, v in terms.items()},
                        "grad_norm": float(grad_norm), "lr": lr_schedule.get_last_lr()[0],
                        "step_seconds": time.perf_counter() - t0}
                metrics.log(step, **last)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                if step % cfg.ckpt.save_ckpt_steps == 0 or step == total_steps:
                    _save(run_dir, step, unet, optimizer, scaler, lr_schedule, cfg, d, lora)
                    if d.is_main:
                        scores = _validate(cfg, unet, vae, features, layout, run_dir, step, metrics)
                        if scores:
                            state.keep_best(run_dir, step, **scores)
                        metrics.charts()
                    distributed.barrier(d)
                if step >= total_steps:
                    break
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
        distributed.shutdown(d)
    result = {"step": step, **last}
    if return_model:
        result["model"] = unet
    return result


def _lora_unet(cfg, device: torch.device, frozen_dtype: torch.dtype) -> tuple[torch.nn.Module, AdapterInfo]:
    """The base UNet of `ckpt.resume_ckpt_path` with a fresh LoRA adapter (`models.lora`): the base frozen in
    `frozen_dtype` (half precision on CUDA), the adapter's matrices float32 and the only trainable weights. Also
    what each exported adapter says of itself (its step aside)."""
    run = cfg.run
    base = cfg.ckpt.resume_ckpt_path
    if not base:
        raise ConfigError("run.lora_rank needs the base UNet to adapt: set ckpt.resume_ckpt_path")
    if not Path(base).is_file():
        raise CheckpointError(f"{base}: base UNet (ckpt.resume_ckpt_path) not found")
    unet = add_lora(load_unet(cfg, base, device=device), run.lora_rank, run.lora_alpha or None, run.lora_targets)
    for tensor in [*unet.parameters(), *unet.buffers()]:
        if not tensor.requires_grad:
            tensor.data = tensor.data.to(frozen_dtype)
    info = AdapterInfo(rank=run.lora_rank, alpha=run.lora_alpha or run.lora_rank, targets=tuple(run.lora_targets),
                       base_sha256=sha256_file(base))
    return unet, info


def _save(run_dir: Path, step: int, unet, optimizer, scaler, lr_schedule, cfg, d,
          lora: AdapterInfo | None = None) -> None:
    """The state (to resume) and the step's weights in exports/: the published format for `load_unet` and
    inference, or with `lora` the adapter alone (and only the adapter in the state). Called on every rank: the
    generator states of all ranks are gathered first."""
    rngs = state.gather_rng(d)
    if not d.is_main:
        return
    state.save(run_dir, step, model=unet, optimizer=optimizer, scaler=scaler, scheduler=lr_schedule,
               config=to_dict(cfg), rngs=rngs, trainable_only=lora is not None)
    if lora is not None:
        save_adapter(unet, run_dir / state.EXPORT_DIR / adapter_export_name(step), replace(lora, step=step))
    else:
        save_unet_checkpoint(unet, run_dir / state.EXPORT_DIR / unet_export_name(step), global_step=step)


def unet_export_name(step: int) -> str:
    return f"unet-{step:08d}.pt"


def adapter_export_name(step: int) -> str:
    return f"adapter-{step:08d}.safetensors"


def _validate(cfg, unet, vae, features, layout: CheckpointLayout, run_dir: Path, step: int,
              metrics: MetricsLog) -> dict[str, float] | None:
    """Lip-sync the validation clip with the UNet being trained; log its sync confidence when the evaluation
    SyncNet is there (spec 7.2: the reference does this at every save) and return it (None without one)."""
    video, audio = cfg.data.val_video_path, cfg.data.val_audio_path
    if not (video and audio):
        return None
    out = run_dir / VALIDATION_DIR / f"step-{step:08d}.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = unet.training
    unet.eval()
    try:
        encoder = WhisperAudioEncoder(features.checkpoint, device=unet.device, cache_dir=features.cache_dir)
        lipsync = LipSync.from_components(LipSyncPipeline(unet, vae, cfg.data.resolution), encoder,
                                          checkpoints=layout.root)
        lipsync.run(video, audio, out, InferenceOptions(steps=cfg.run.inference_steps,
                                                        guidance=cfg.run.guidance_scale), progress=False)
        if layout.is_present("syncnet_v2"):
            result = sync_confidence(out, layout.syncnet_v2, progress=False)
            if result.found:
                scores = {"val_lse_c": result.lse_c, "val_lse_d": result.lse_d}
                metrics.log(step, **scores)
                return scores
        return None
    finally:
        unet.train(was_training)


def _lpips(layout: CheckpointLayout, device, checkpointing: bool):
    (vgg,) = layout.require("vgg16")
    return LPIPS(vgg, device=device, gradient_checkpointing=checkpointing)


def _trepa(layout: CheckpointLayout, device, dtype, model_config: str):
    (videomae,) = layout.require("videomae")
    return TREPALoss(videomae, device=device, dtype=dtype, config=model_config)


def _syncnet(config_path: str, layout: CheckpointLayout, device, dtype):
    syncnet_cfg = load_syncnet_config(config_path)
    path = syncnet_cfg.ckpt.inference_ckpt_path
    if not path or not Path(path).is_file():
        (path,) = layout.require("syncnet")
    net = load_syncnet(syncnet_cfg, path, device=device, dtype=dtype)
    return net.requires_grad_(False).eval()
