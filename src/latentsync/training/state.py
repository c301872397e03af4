"""A training run's folder, for both trainers: the state a killed run resumes from exactly (model, optimiser,
gradient scaler, learning-rate schedule, step, every random generator, and the resolved config, with a `latest`
pointer: k-diffusion's and lucidrains' habit, the checkpoint holds everything needed to go on), the resume rule
(`find_state`), seeding (`seed_everything`), the resolved config file and the exports folder.

Run folder layout (one per run; running the same command again with `--resume auto` continues it):

    config.yaml                 the resolved config of the run
    checkpoints/state-00001000.pt  full training state at step 1000
    checkpoints/latest          the file name of the newest complete state (written after it)
    exports/                    the published-format weights of each save (what inference loads), or a LoRA
                                run's adapters
    best.json                   the save whose validation clip synced best (highest LSE-C), when validated
    metrics.jsonl, charts/      see log.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write
from ..models.checkpoint import atomic_torch_save, compare_keys
from .log import METRICS

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
EXPORT_DIR = "exports"
CONFIG_FILE = "config.yaml"
BEST_FILE = "best.json"
BEST_SCORE = "val_lse_c"  # the validation clip's sync confidence: higher is better
RESUME_MODES = ("auto", "never")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (CUDA's too) from `seed` (numpy's takes it modulo 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_state(run_dir: Path, resume: str | Path) -> Path | None:
    """The state a run starts from: "auto" the run's latest (None for a new run), "never" none (ConfigError when
    the folder already holds a run: a state or metrics, so a new run never overwrites one), or a state file
    (ConfigError when it is not there)."""
    run_dir = Path(run_dir)
    if isinstance(resume, str) and resume in RESUME_MODES:
        if resume == "auto":
            return latest(run_dir)
        if latest(run_dir) is not None or (run_dir / METRICS).exists():
            raise ConfigError(f"{run_dir}: already holds a training run; resume it (--resume auto) or choose "
                              "another run folder")
        return None
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"resume: {path} is not a training state file (or auto / never)")
    return path


def write_config(run_dir: Path, config: dict) -> Path:
    """The run's resolved config as `run_dir/config.yaml` (written atomically)."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def best(run_dir: Path) -> dict[str, Any] | None:
    """The run's best validated save, {"step": N, "val_lse_c": ..., ...}, or None (never validated)."""
    try:
        return json.loads((Path(run_dir) / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def keep_best(run_dir: Path, step: int, **scores: float) -> bool:
    """Record the save at `step` as the run's best when its `BEST_SCORE` beats the best so far (the first one
    counts); returns whether it did. Kept in `best.json`, so a resumed run goes on comparing."""
    current = best(run_dir)
    if current is not None and scores[BEST_SCORE] <= current[BEST_SCORE]:
        return False
    with atomic_write(Path(run_dir) / BEST_FILE) as tmp:
        tmp.write_text(json.dumps({"step": step, **scores}) + "\n")
    return True


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(d) -> list[dict[str, Any]]:
    """Every rank's generator states, in rank order (a collective under torchrun: call it on every rank)."""
    if not d.enabled:
        return [rng_state()]
    states: list[Any] = [None] * d.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save(run_dir: Path, step: int, *, model: torch.nn.Module, optimizer, scaler=None, scheduler=None,
         config: dict | None = None, extra: dict | None = None, keep: int = 3,
         rngs: list[dict[str, Any]] | None = None, trainable_only: bool = False) -> Path:
    """Write the state at `step` atomically, then point `latest` at it; keep the `keep` newest states.

    `model` should be the bare module (not the DDP wrapper), so the keys match `load_unet`/`load_syncnet`.
    `rngs`: every rank's generator states from `gather_rng` (default: this process's only), so each rank of a
    resumed data-parallel run draws exactly what it would have. `trainable_only`: keep only the parameters that
    train (a LoRA run: its adapter; the frozen base is read again from its own file on resume)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    path = folder / f"state-{step:08d}.pt"
    state = {
        "step": step,
        "model": _trainable_state(model) if trainable_only else model.state_dict(),
        "model_keys": "trainable" if trainable_only else "all",
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rngs[0] if rngs else rng_state(),
        "rng_per_rank": rngs,
        "config": config,
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    with atomic_write(folder / LATEST) as tmp:
        tmp.write_text(path.name + "\n")
    for old in sorted(folder.glob("state-*.pt"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir: Path) -> Path | None:
    """The newest complete state of a run, or None."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST
    try:
        path = pointer.parent / pointer.read_text().strip()
    except OSError:
        return None
    return path if path.is_file() else None


def load(path: Path) -> dict[str, Any]:
    """A saved training state (RNG states hold numpy arrays and tuples: loaded with full unpickling, so only
    open states this program wrote)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise CheckpointError(f"{path}: not a readable training state ({str(e).splitlines()[0][:200]})") from None


def restore(state: dict[str, Any], *, model: torch.nn.Module, optimizer, scaler=None, scheduler=None,
            rank: int = 0, world_size: int = 1) -> int:
    """Put a loaded state back (model, optimiser, scaler, schedule, this rank's random generators); returns
    its step. With another number of ranks than it was saved with, ranks other than 0 keep their seeding.
    A state of the trainable parameters alone (`save(trainable_only=True)`) must hold exactly the model's."""
    if state.get("model_keys") == "trainable":
        report = compare_keys({k: v.shape for k, v in _trainable_state(model).items()}, state["model"])
        if not report.ok:
            raise CheckpointError(f"the training state's trainable weights are not this run's ({report.summary()}): "
                                  "was the run started with other LoRA settings?")
        model.load_state_dict(state["model"], strict=False)
    else:
        model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    per_rank = state.get("rng_per_rank")
    if per_rank and len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
    elif rank == 0:
        set_rng_state(state["rng"])
    return int(state["step"])


__all__ = ["best", "find_state", "keep_best", "gather_rng", "latest", "load", "restore", "rng_state", "save", "seed_everything",
           "set_rng_state", "write_config"]
