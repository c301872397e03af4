"""Fine-tuning the published models on one's own videos, from raw clips to a tuned model in one resumable call.

    latentsync finetune RAW_DIR --out RUN_DIR [--version 1.6|1.5] [--lora-rank R | --full] [--steps N]
        [--val-clip V --val-audio A] [--merge] [key=value ...]

Three stages, each resumable, so running the same command again after any stop (Ctrl-C, SIGTERM, a kill, a
power cut) goes on where it stopped:

1. data: the data pipeline (`preprocess.runner.Runner`, the 7 steps of `latentsync preprocess`) turns RAW_DIR
   into aligned training clips in RUN_DIR/data at the UNet's face size (its done markers skip finished work);
   the clips that passed are listed in RUN_DIR/clips.txt.
2. train: stage-2 training (`training.train_unet`) in RUN_DIR/train, starting from the published UNet of the
   version: by default a LoRA adapter of rank 16 on the attention and feed-forward projections (`models.lora`;
   the base frozen in half precision on a GPU), or with `full` the stage-2 modules (temporal layers and
   attention) as `latentsync train unet` trains them. The losses are stage 2's: reconstruction, the
   StableSyncNet's sync loss (the published stable_syncnet.pt), LPIPS and TREPA; `run.trepa_loss_weight=0`,
   `run.perceptual_loss_weight=0` or `run.sync_loss_weight=0` switches one off (and its memory). Each save
   lip-syncs the validation clip and, with the evaluation SyncNet in the checkpoints folder, records its LSE-C
   and LSE-D; the best save is remembered (train/best.json).
3. export: the best save (or the last, without validation scores) into RUN_DIR: `adapter.safetensors` for LoRA
   (and with `merge` the merged `latentsync_unet.pt`), `latentsync_unet.pt` for a full fine-tune; both in the
   formats `latentsync infer --lora` / `--unet` read.

`key=value` items override the UNet config (`optimizer.lr=5e-5`, `data.batch_size=2`, `run.lora_alpha=32`);
`preprocess.key=value` ones the data pipeline's (`preprocess.sync_conf_threshold=2.5`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import load_preprocess_config, load_unet_config
from .defaults import FINETUNE_STEPS, LORA_RANK
from .devices import resolve_device
from .errors import ConfigError, InputError
from .fileio import atomic_write, refuse_nested_folders, refuse_overwriting_inputs, remove_stale_temporaries
from .inference import check_inputs
from .models.lora import load_adapter, merge_lora
from .models.unet import load_unet, save_unet_checkpoint
from .preprocess.runner import Runner, passed_clips
from .training import state
from .training.train_unet import adapter_export_name, train_unet, unet_export_name
from .weights import CheckpointLayout, default_checkpoints_dir, unet_config_for

log = logging.getLogger(__name__)

DATA_DIR = "data"  # the data pipeline's output
CLIPS_FILE = "clips.txt"  # the training clips, one path per line
TRAIN_DIR = "train"  # the training run
SETTINGS_FILE = "finetune.json"  # what the run was started with; a rerun must agree
ADAPTER_FILE = "adapter.safetensors"
UNET_FILE = "latentsync_unet.pt"
PREPROCESS_PREFIX = "preprocess."

DEFAULT_SAVE_EVERY = 250  # steps between saves (and validations)
# LoRA's updates start at zero and have few parameters: they take a larger step than full fine-tuning's 1e-5
# (stage 2's published rate, kept for --full).
LORA_LR = 1e-4


@dataclass
class FinetuneResult:
    run_dir: Path
    clips: int  # training clips that passed the data pipeline
    step: int  # the training step reached
    exported_step: int  # the save exported (the best validated one, else the last)
    adapter: Path | None  # RUN_DIR/adapter.safetensors (LoRA)
    unet: Path | None  # RUN_DIR/latentsync_unet.pt (full, or LoRA merged)
    best: dict | None  # the exported save's validation scores, when validated


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    unet, preprocess = [], []
    for item in overrides:
        if item.startswith(PREPROCESS_PREFIX):
            preprocess.append(item[len(PREPROCESS_PREFIX):])
        else:
            unet.append(item)
    return unet, preprocess


def _required_weights(cfg) -> list[str]:
    """The checkpoints the training stage will read, besides its base UNet: named before any work starts."""
    names = ["whisper", "vae"]
    run = cfg.run
    if run.pixel_space_supervise:
        if run.use_syncnet and run.sync_loss_weight > 0:
            names.append("syncnet")
        if run.perceptual_loss_weight > 0:
            names.append("vgg16")
        if run.trepa_loss_weight > 0:
            names.append("videomae")
    return names


def _check_settings(run_dir: Path, settings: dict) -> None:
    """A run folder is one fine-tune: a rerun with other model settings is refused (its state would not fit)."""
    path = run_dir / SETTINGS_FILE
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(settings, indent=1) + "\n")
        return
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e.__class__.__name__}); remove it, or choose another --out") from None
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]
    if changed:
        raise ConfigError(f"{run_dir}: holds a fine-tune started with other settings ({'; '.join(changed)}); "
                          "run it with those to continue it, or choose another --out")


def _publish(source: Path, target: Path) -> Path:
    """`target` becomes a copy of `source`, atomically (a hard link where the file system allows it)."""
    with atomic_write(target, suffix=target.suffix) as tmp:
        try:
            tmp.unlink()
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    return target


def finetune(raw_dir: str | Path, run_dir: str | Path, *, version: str | None = None,
             unet_config: str | Path | None = None, unet: str | Path | None = None,
             checkpoints: str | Path | None = None, lora_rank: int = LORA_RANK, full: bool = False,
             steps: int = FINETUNE_STEPS, val_clip: str | Path | None = None, val_audio: str | Path | None = None,
             merge: bool = False, overrides: list[str] | tuple[str, ...] = (), device: str = "auto",
             workers: int = 1, progress: bool = True) -> FinetuneResult:
    """Fine-tune on the videos of `raw_dir` into `run_dir` (see the module docstring); resumable.

    `version` ("1.6" or "1.5", default: what `latentsync download` installed, else 1.6) or `unet_config` picks
    the UNet; `unet` a base UNet file other than the checkpoints folder's. `lora_rank`: the adapter's rank;
    `full`: train the stage-2 modules instead. `steps`: the training step to stop at (a rerun with more goes
    on). `val_clip` + `val_audio`: the held-out clip lip-synced at every save. `merge`: also write the LoRA
    adapter merged into the published UNet format. `workers`: the data pipeline's worker processes."""
    raw_dir, run_dir = Path(raw_dir), Path(run_dir)
    root = Path(checkpoints) if checkpoints is not None else default_checkpoints_dir()
    # ---- checks, before any work ---------------------------------------------------------------------
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: not a folder of videos")
    refuse_nested_folders(run_dir, raw_dir)
    if (val_clip is None) != (val_audio is None):
        raise ConfigError("the validation clip needs both a video and its speech (--val-clip and --val-audio)")
    if val_clip is not None:
        check_inputs(val_clip, val_audio)
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps must be a whole number, at least 1, got {steps!r}")
    if not full and not (isinstance(lora_rank, int) and lora_rank >= 1):
        raise ConfigError(f"the LoRA rank must be a whole number, at least 1, got {lora_rank!r}")
    if unet_config is None:
        unet_config = unet_config_for(root, version)
    unet_overrides, preprocess_overrides = _split_overrides(list(overrides))
    layout = CheckpointLayout(root)
    base = Path(unet) if unet is not None else layout.unet
    if not base.is_file():
        layout.require("unet")  # the download hint for the folder's UNet
        raise InputError(f"{base}: base UNet not found")
    for output in (run_dir / ADAPTER_FILE, run_dir / UNET_FILE):  # the exports replace whatever those paths hold
        refuse_overwriting_inputs(output, [("base UNet", base), ("validation clip", val_clip),
                                           ("validation speech", val_audio)])

    cfg = load_unet_config(unet_config)
    cfg.ckpt.resume_ckpt_path = str(base.absolute())
    cfg.run.lora_rank = 0 if full else lora_rank
    if not full:
        cfg.optimizer.lr = LORA_LR
    cfg.ckpt.save_ckpt_steps = DEFAULT_SAVE_EVERY
    cfg.run.max_train_steps = steps
    if val_clip is not None:
        cfg.data.val_video_path, cfg.data.val_audio_path = str(Path(val_clip).absolute()), str(Path(val_audio).absolute())
    cfg = load_unet_config(cfg, unet_overrides)  # the user's key=value last: theirs win
    layout.require(*_required_weights(cfg))
    preprocess_cfg = load_preprocess_config(None, [f"resolution={cfg.data.resolution}", *preprocess_overrides])
    device = str(resolve_device(device))

    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    _check_settings(run_dir, {"unet_config": str(unet_config), "base_unet": str(base.absolute()),
                              "lora_rank": cfg.run.lora_rank, "lora_alpha": cfg.run.lora_alpha,
                              "lora_targets": list(cfg.run.lora_targets), "resolution": cfg.data.resolution})

    # ---- 1. data ---------------------------------------------------------------------------------------
    _stage(progress, f"1/3 data: {raw_dir} -> {run_dir / DATA_DIR}")
    data_dir = run_dir / DATA_DIR
    summary = Runner(raw_dir, data_dir, preprocess_cfg, workers=workers, device=device, checkpoints=root,
                     progress=progress).run()
    if progress:
        print(summary.format(), file=sys.stderr)
    for step, item, error in summary.failures[:5]:  # internal errors: training goes on without those clips
        log.warning("data pipeline failed at %s on %s: %s (retried on the next run)", step, item,
                    error.splitlines()[0])
    clips = passed_clips(data_dir)
    if not clips:
        raise InputError(f"{raw_dir}: no clip passed the data pipeline; the reasons are in "
                         f"{data_dir / 'manifest.jsonl'}")
    with atomic_write(run_dir / CLIPS_FILE) as tmp:
        tmp.write_text("\n".join(clips) + "\n")

    # ---- 2. train --------------------------------------------------------------------------------------
    train_dir = run_dir / TRAIN_DIR
    what = "full stage 2" if full else f"LoRA rank {cfg.run.lora_rank}"
    _stage(progress, f"2/3 train ({what}, {len(clips)} clips, to step {steps}): {train_dir}")
    result = train_unet(cfg, train_dir, resume="auto", max_steps=steps, device=device, progress=progress,
                        checkpoints=root, data=run_dir / CLIPS_FILE)

    # ---- 3. export -------------------------------------------------------------------------------------
    best = state.best(train_dir)
    step = best["step"] if best else result["step"]
    _stage(progress, f"3/3 export: step {step}" + (f" (validation LSE-C {best['val_lse_c']:.2f}, the best)"
                                                    if best else " (the last)"))
    adapter = merged = None
    exports = train_dir / state.EXPORT_DIR
    if full:
        merged = _publish(exports / unet_export_name(step), run_dir / UNET_FILE)
    else:
        adapter = _publish(exports / adapter_export_name(step), run_dir / ADAPTER_FILE)
        if merge:
            model = load_unet(cfg, base)
            load_adapter(model, adapter)
            merged = save_unet_checkpoint(merge_lora(model), run_dir / UNET_FILE, global_step=step)
    return FinetuneResult(run_dir=run_dir, clips=len(clips), step=result["step"], exported_step=step,
                          adapter=adapter, unet=merged, best=best)


def _stage(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr)
    log.info(line)


__all__ = ["FinetuneResult", "finetune"]
