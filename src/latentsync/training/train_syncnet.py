"""Training StableSyncNet (spec 5.1, 7.3): the loop, in labelled sections, that a killed run resumes exactly.

What it does, as the reference's `scripts/train_syncnet.py`: `SyncNetDataset` pairs (half in sync, half with
the frames of another window), the cosine similarity of the two towers' embeddings trained with binary
cross-entropy, AdamW (torch defaults: betas 0.9/0.999, weight decay 0.01) at a constant learning rate,
grad-norm clipping, gradient accumulation, mixed precision, torchrun/DDP with seed `run.seed + rank`,
validation (loss and accuracy) and checkpoints in the published format with the loss histories.

What it adds:

* Exact resume. Every `ckpt.save_ckpt_steps` steps (and when the run ends) the full training state is saved
  (`training.state`: model, optimiser, gradient scaler, every random generator, the loss histories and the
  data position) with a `latest` pointer; `resume="auto"` continues from it, and steps after the restart
  compute what an uninterrupted run computes. The data position needs no iterator state: the dataset honours
  its index (`data.syncnet`) and the sampler's order is a function of (seed, epoch), so the position is just
  (epoch, micro-batches consumed in it); a resumed run rebuilds that epoch's order and skips the consumed
  batches without loading them. DataLoaders get their own generator, so starting one never draws from the
  global RNG (which would shift dropout after a resume that falls mid-epoch).
* Epochs of whole global batches. An epoch is the usable clips rounded up to a multiple of the global
  micro-batch (`world_size * data.batch_size`): every clip is seen once per epoch and `drop_last` drops
  nothing; the extra indices revisit clips at other windows (index i takes clip i mod N).
* Validation is sharded over the ranks (the reference ran it on rank 0 only while the others waited) over a
  fixed set of `data.num_val_samples` pairs (the same pairs each time, so the curve compares like with like).

Mixed precision (`run.mixed_precision_training`, `run.mixed_precision_dtype`; `devices`): by default
float16 autocast with a `GradScaler` on CUDA, as the reference, and bfloat16 without a scaler elsewhere (on an
AVX-512 CPU about 1.5x faster than float32 for the tiny config). Weights, optimiser state and the loss stay
float32 (the BCE is computed outside autocast: it is not autocast-safe).

Run folder (`run_dir`; the layout of `training.state`):

    config.yaml                      the resolved config
    checkpoints/state-XXXXXXXX.pt    full training states, `checkpoints/latest` names the newest
    exports/syncnet-XXXXXXXX.pt      published-format checkpoints (`load_syncnet(config, path)` loads them)
    metrics.jsonl, charts/*.png      train loss and grad norm every step, validation loss and accuracy

`resume="never"` refuses a folder that already holds a run (a state or metrics): a new run never overwrites
an old one's checkpoints; choose another folder or delete it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..audio import SyncNetMelCache
from ..config import SyncNetConfig, load_syncnet_config, to_dict
from ..data.syncnet import SyncNetDataset
from ..devices import Precision, resolve_precision
from ..errors import ConfigError
from ..models.syncnet import load_syncnet, save_syncnet_checkpoint
from . import distributed, state
from .losses import cosine_bce
from .log import MetricsLog

log = logging.getLogger("latentsync.train")

SYNC_THRESHOLD = 0.5  # predicted in sync when cos > 0.5 (the reference's accuracy evaluation)


# --------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


def _clip_source(fileslist: str, folder: str) -> str | None:
    """The files list if given, else the folder, else None (the reference's precedence)."""
    return fileslist or folder or None


class _Batches:
    """This rank's micro-batches in an order fixed by (seed, epoch); `from_position(epoch, done)` starts after
    `done` micro-batches of `epoch`, without loading them."""

    def __init__(self, dataset: SyncNetDataset, d: distributed.Dist, batch_size: int, seed: int,
                 num_workers: int):
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self.pin_memory = d.device.type == "cuda"
        self.sampler = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size

    def from_position(self, epoch: int, done: int) -> Iterator[tuple[int, int, dict]]:
        """Yields (epoch, micro-batches done in it, batch) forever, epoch after epoch."""
        while True:
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)  # before the loader starts: workers copy the dataset then
            indices = list(self.sampler)[done * self.batch_size : self.per_epoch * self.batch_size]
            # Its own generator: a loader's base seed would otherwise come from the global torch RNG.
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, drop_last=True,
                                num_workers=self.num_workers, pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(self.seed + epoch))
            for batch in loader:
                done += 1
                yield epoch, done, batch
            epoch, done = epoch + 1, 0


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (batch["frames"].to(device, non_blocking=True),  # b (f c) h w
            batch["audio"].to(device, non_blocking=True),  # b 1 80 L
            batch["y"].to(device, non_blocking=True))  # b 1


# --------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _validate(net: torch.nn.Module, dataset: SyncNetDataset, d: distributed.Dist, batch_size: int,
              num_workers: int, precision: Precision) -> tuple[float, float]:
    """Mean loss and accuracy over the validation pairs, each rank scoring the indices rank, rank + world, ..."""
    indices = list(range(d.rank, len(dataset), d.world_size))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=num_workers,
                        pin_memory=d.device.type == "cuda", generator=torch.Generator().manual_seed(0))
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    was_training = net.training
    net.eval()
    try:
        for batch in loader:
            frames, mel, y = _to_device(batch, d.device)
            with precision.autocast():
                vision, audio = net(frames, mel)  # b d, b d
            vision, audio = vision.float(), audio.float()
            n = len(y)
            loss = cosine_bce(vision, audio, y)
            cos = (vision * audio).sum(dim=1)  # b
            correct = ((cos > SYNC_THRESHOLD) == (y.reshape(-1) > 0.5)).sum()
            totals += torch.tensor([float(loss) * n, float(correct), float(n)], dtype=torch.float64)
    finally:
        net.train(was_training)
    loss_sum, correct, count = (distributed.mean(t, d) * d.world_size for t in totals)
    return loss_sum / count, correct / count


# --------------------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------------------


def _load_config(config, overrides: list[str] | None) -> SyncNetConfig:
    cfg = load_syncnet_config(config, overrides)
    checks = {
        "data.batch_size": cfg.data.batch_size >= 1,
        "data.gradient_accumulation_steps": cfg.data.gradient_accumulation_steps >= 1,
        "data.num_workers": cfg.data.num_workers >= 0,
        "data.num_val_samples": cfg.data.num_val_samples >= 1,
        "optimizer.lr": cfg.optimizer.lr > 0,
        "optimizer.max_grad_norm": cfg.optimizer.max_grad_norm >= 0,
        "run.max_train_steps": cfg.run.max_train_steps >= 0,
        "run.validation_steps": cfg.run.validation_steps >= 1,
        "run.seed": cfg.run.seed >= 0,
        "ckpt.save_ckpt_steps": cfg.ckpt.save_ckpt_steps >= 1,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"SyncNet config: invalid {', '.join(f'{k} = {_get(cfg, k)}' for k in bad)}")
    return cfg


def _get(cfg: SyncNetConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def train_syncnet(
    config: str | os.PathLike | dict | SyncNetConfig,
    run_dir: str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    resume: str | os.PathLike = "auto",
    max_steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    checkpoints: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    save_checkpoints: bool = True,
    gradient_checkpointing: bool = False,
    return_model: bool = False,
) -> dict:
    """Train a StableSyncNet; launch under torchrun for several processes. See the module docstring.

    Args:
        config: SyncNet config (packaged name, YAML path, mapping or `SyncNetConfig`); data paths, batch size,
            optimiser, schedule and checkpoint settings come from it.
        run_dir: the run folder (created); everything the run writes goes there.
        overrides: `section.key=value` strings applied to the config (e.g. `["optimizer.lr=1e-4"]`).
        resume: "auto" (continue from the folder's latest state if there is one), "never" (start fresh;
            refused if the folder already holds a run) or the path of a state file to continue from.
        max_steps: stop after this many optimiser steps in total (default `run.max_train_steps`).
        device: "auto" (this rank's GPU if any, else the CPU), "cpu", "cuda" or "cuda:N".
        progress: a tqdm bar on rank 0.
        checkpoints: the weights folder (`latentsync download`'s layout), accepted for a CLI symmetric with
            `train_unet`; a pixel-space SyncNet needs no file from it (initial weights: `ckpt.resume_ckpt_path`).
        data: training clips (a folder or files list) instead of `data.train_fileslist` / `data.train_data_dir`.
        save_checkpoints: save states and exports (default); False writes none (throwaway runs, benchmarks).
        gradient_checkpointing: recompute the towers' blocks in the backward pass (less memory, slower).
        return_model: also return the trained `StableSyncNet` (this rank's copy, not the DDP wrapper).

    Returns `{"step", "train_loss", "val_loss", "val_accuracy", "state", "export"}` (and "model" with
    `return_model`): the final step, the last step's training loss (mean over micro-batches and ranks), the
    last validation results (None if none ran in this call) and the paths of the last state and export this
    call saved (None if none; set on rank 0 only).

    Raises `ConfigError` (invalid values, no training data configured, a refused `resume`) and `InputError`
    (no usable training clips) in one line; `CheckpointError` for an unreadable state or initial checkpoint.
    """
    # ---- config and run folder -------------------------------------------------------------------------
    cfg = _load_config(config, overrides)
    run_dir = Path(run_dir)
    max_steps = cfg.run.max_train_steps if max_steps is None else int(max_steps)
    if max_steps < 0:
        raise ConfigError(f"max_steps must be >= 0, got {max_steps}")
    train_source = str(data) if data is not None else _clip_source(cfg.data.train_fileslist,
                                                                    cfg.data.train_data_dir)
    if train_source is None:
        raise ConfigError("SyncNet config: data.train_fileslist and data.train_data_dir are both empty; "
                          "set one to the processed training clips")
    state_path = state.find_state(run_dir, resume)  # before any work: a refused folder fails fast

    owns_group = not torch.distributed.is_initialized()
    d = distributed.init(device)
    try:
        result = _train(cfg, run_dir, d, state_path, max_steps, progress, save_checkpoints,
                        gradient_checkpointing, train_source)
    finally:
        if owns_group:
            distributed.shutdown(d)
    if not return_model:
        del result["model"]
    return result


def _train(cfg: SyncNetConfig, run_dir: Path, d: distributed.Dist, state_path: Path | None, max_steps: int,
           progress: bool, save_checkpoints: bool, gradient_checkpointing: bool, train_source: str) -> dict:
    data, run = cfg.data, cfg.run
    accum = data.gradient_accumulation_steps
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        state.write_config(run_dir, to_dict(cfg))

    # ---- model -----------------------------------------------------------------------------------------
    # The same seed on every rank for the initial weights (DDP also broadcasts rank 0's); then seed + rank so
    # that ranks draw different dropout masks, as the reference.
    state.seed_everything(run.seed)
    initial = None if state_path is not None else (cfg.ckpt.resume_ckpt_path or None)
    net = load_syncnet(cfg, initial, device=d.device, dtype=torch.float32).train()
    net.enable_gradient_checkpointing(gradient_checkpointing)
    state.seed_everything(run.seed + d.rank)
    # AdamW with torch's default betas and weight decay (0.9/0.999, 0.01), constant lr: the reference's.
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.optimizer.lr)
    precision = resolve_precision(d.device, run.mixed_precision_training, run.mixed_precision_dtype)
    use_scaler = precision.scaled
    scaler = torch.amp.GradScaler(d.device.type, enabled=use_scaler)

    # ---- data ------------------------------------------------------------------------------------------
    mels = SyncNetMelCache(data.audio_mel_cache_dir or None)  # on disk, by content: computed once per clip
    train_set = SyncNetDataset(train_source, cfg, seed=run.seed, progress=progress and d.is_main, cache=mels)
    global_batch = d.world_size * data.batch_size
    # Whole global batches per epoch, every clip at least once (module docstring).
    train_set.length = math.ceil(len(train_set.clips) / global_batch) * global_batch
    batches = _Batches(train_set, d, data.batch_size, run.seed, data.num_workers)
    val_source = _clip_source(data.val_fileslist, data.val_data_dir)
    val_set = None
    if val_source is not None:
        val_set = SyncNetDataset(val_source, cfg, seed=run.seed, length=data.num_val_samples,
                                 progress=progress and d.is_main, cache=mels)
    elif d.is_main:
        log.warning("no validation clips (data.val_fileslist and data.val_data_dir are empty): validation skipped")

    # ---- resume ----------------------------------------------------------------------------------------
    step, epoch, done = 0, 0, 0
    history: dict[str, list] = {"train_step_list": [], "train_loss_list": [], "val_step_list": [],
                                "val_loss_list": []}
    if state_path is not None:
        saved = state.load(state_path)
        saved_model = (saved.get("config") or {}).get("model")
        if saved_model is not None and saved_model != to_dict(cfg.model):
            raise ConfigError(f"{state_path}: was trained with another model config than this run's")
        step = state.restore(saved, model=net, optimizer=optimizer, scaler=scaler if use_scaler else None,
                             rank=d.rank, world_size=d.world_size)
        for group in optimizer.param_groups:
            group["lr"] = cfg.optimizer.lr  # the config's (constant) rate, not the saved one: it may be changed
        extra = saved.get("extra") or {}
        history = {k: list(extra.get("history", {}).get(k, [])) for k in history}
        position = extra.get("data", {})
        layout = (d.world_size, data.batch_size)
        if (position.get("world_size"), position.get("batch_size")) == layout:
            epoch, done = position["epoch"], position["done"]
        else:
            # Another world size or batch size orders the samples differently: go on with a fresh epoch.
            epoch, done = position.get("epoch", 0) + 1, 0
            if d.is_main:
                log.warning("%s: saved with world size x batch size %s x %s, now %s x %s: the data order of "
                            "this run differs from an uninterrupted one from here on", state_path,
                            position.get("world_size"), position.get("batch_size"), *layout)
        if done >= batches.per_epoch:
            epoch, done = epoch + 1, 0
        if d.is_main:
            log.info("resuming %s at step %d (epoch %d, micro-batch %d)", state_path, step, epoch, done)
    model = distributed.wrap(net, d)
    metrics = MetricsLog(run_dir, enabled=d.is_main, resume_step=step)

    # ---- saving ----------------------------------------------------------------------------------------
    result: dict[str, Any] = {"step": step, "train_loss": None, "val_loss": None, "val_accuracy": None,
                              "state": None, "export": None, "model": net}

    def save() -> None:
        if not save_checkpoints:
            return
        rngs = state.gather_rng(d)  # a collective: on every rank
        if not d.is_main:
            return
        extra = {"history": history,
                 "data": {"epoch": epoch, "done": done, "world_size": d.world_size, "batch_size": data.batch_size}}
        result["state"] = state.save(run_dir, step, model=net, optimizer=optimizer,
                                     scaler=scaler if use_scaler else None, config=to_dict(cfg), extra=extra,
                                     rngs=rngs)
        export = run_dir / state.EXPORT_DIR / f"syncnet-{step:08d}.pt"
        result["export"] = save_syncnet_checkpoint(net, export, step, **history)

    # ---- loop ------------------------------------------------------------------------------------------
    stream = batches.from_position(epoch, done)
    bar = tqdm(total=max_steps, initial=step, desc="train syncnet", unit="step",
               disable=not (progress and d.is_main))
    saved_at = step
    try:
        while step < max_steps:
            micro_losses = []
            for micro in range(accum):
                epoch, done, batch = next(stream)
                frames, mel, y = _to_device(batch, d.device)
                # Gradients are all-reduced once per optimiser step: skip DDP's sync on the other micro-steps.
                last = micro == accum - 1
                sync = contextlib.nullcontext() if last or not d.enabled else model.no_sync()
                with sync:
                    with precision.autocast():
                        vision, audio = model(frames, mel)  # b d, b d
                    loss = cosine_bce(vision.float(), audio.float(), y)  # float32, outside autocast
                    scaler.scale(loss / accum).backward()
                micro_losses.append(loss.detach())
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            max_norm = cfg.optimizer.max_grad_norm if cfg.optimizer.max_grad_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            scaler.step(optimizer)  # skipped by the scaler when the gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # ---- logging ---------------------------------------------------------------------------------
            train_loss = distributed.mean(torch.stack(micro_losses).mean(), d)
            history["train_step_list"].append(step)
            history["train_loss_list"].append(train_loss)
            metrics.log(step, train_loss=train_loss, grad_norm=float(grad_norm))
            result.update(step=step, train_loss=train_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}")

            # ---- validation ------------------------------------------------------------------------------
            if val_set is not None and step % run.validation_steps == 0:
                val_loss, val_accuracy = _validate(net, val_set, d, data.batch_size, data.num_workers,
                                                   precision)
                history["val_step_list"].append(step)
                history["val_loss_list"].append(val_loss)
                metrics.log(step, val_loss=val_loss, val_accuracy=val_accuracy)
                metrics.charts()
                result.update(val_loss=val_loss, val_accuracy=val_accuracy)

            # ---- checkpoint ------------------------------------------------------------------------------
            if step % cfg.ckpt.save_ckpt_steps == 0:
                save()
                saved_at = step
        # The end of the run (max_steps) is a checkpoint too: a later call with a larger max_steps goes on.
        if saved_at != step:
            save()
        metrics.charts()
    finally:
        bar.close()
        metrics.close()
    distributed.barrier(d)
    return result


__all__ = ["train_syncnet"]
