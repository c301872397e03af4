"""SyncNet accuracy: how often a StableSyncNet tells in-sync from off-sync pairs (spec 5.1).

The reference's `eval/eval_syncnet_acc.py`: `SyncNetDataset` samples (half in sync, half with the frames of
another window of the same clip), the net in float16, prediction = cosine similarity of the two embeddings
> 0.5, accuracy = fraction of predictions equal to the label over 2048 samples. The README reports 94% for
the released `stable_syncnet.pt` on VoxCeleb2 and HDTF after the data pipeline (spec 6).

Differences from the reference: the samples are fixed by `seed` (the dataset honours its index, see
`latentsync.data.syncnet`), so two runs on the same data give the same number; exactly
`num_samples` samples are scored even when the data has fewer clips than that (clips are revisited at other
windows), where the reference's loop stopped after one pass over the clips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..config import SyncNetConfig, load_syncnet_config
from ..data.syncnet import ClipSource, SyncNetDataset
from ..errors import CheckpointError
from ..models.checkpoint import resolve_device
from ..models.syncnet import load_syncnet

SYNC_THRESHOLD = 0.5  # the reference predicts "in sync" when cos(vision, audio) > 0.5
DEFAULT_NUM_SAMPLES = 2048  # the reference's num_val_samples


@dataclass(frozen=True)
class AccuracyResult:
    """Accuracy over `num_samples` pairs (`positives` in sync, `negatives` not) and the mean cosine
    similarity of each kind; `clips` usable clips, `skipped` (identity, reason) of the clips left out."""

    accuracy: float
    num_samples: int
    positives: int
    negatives: int
    mean_cos_positive: float
    mean_cos_negative: float
    clips: int = 0
    skipped: tuple[tuple[str, str], ...] = ()


def syncnet_accuracy(
    config: str | os.PathLike | dict | SyncNetConfig,
    checkpoint: str | os.PathLike | None,
    data: ClipSource,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    *,
    net: nn.Module | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> AccuracyResult:
    """Accuracy of a StableSyncNet on processed clips (spec 5.1's evaluation).

    Args:
        config: the SyncNet config (packaged name, YAML, mapping or `SyncNetConfig`): the model and the data
            settings (num_frames, resolution, lower_half).
        checkpoint: the weights (published `.pt` format or safetensors); None: `ckpt.inference_ckpt_path`.
        data: a folder of clips (searched recursively), a files list .txt, or a list of clip paths.
        num_samples: pairs to score (half positive on average).
        batch_size: default `data.batch_size` of the config (at most `num_samples`).
        device: where a loaded net runs (None: CUDA when available, else the CPU), in float16 on CUDA (as
            the reference), else float32; no gradients. Ignored with `net`.
        seed: fixes the pairs (the same seed gives the same samples).
        net: an already-built net with StableSyncNet's call signature, `net(frames, mel) -> (vision, audio)`,
            used instead of loading one (then `checkpoint` must be None); it runs on the device and in the
            dtype of its parameters (CPU float32 if it has none), in eval mode.
        num_workers: DataLoader workers; default `data.num_workers` of the config.
        progress: tqdm bars while probing the clips and over the samples.

    Raises InputError (one line naming `data`) when it holds no usable clip.
    """
    cfg = load_syncnet_config(config)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch_size = min(batch_size or cfg.data.batch_size, num_samples)
    num_workers = cfg.data.num_workers if num_workers is None else num_workers
    # The data first: a wrong folder should fail before minutes of weight loading.
    dataset = SyncNetDataset(data, cfg, seed=seed, length=num_samples, progress=progress)

    if net is None:
        checkpoint = checkpoint or cfg.ckpt.inference_ckpt_path or None
        if checkpoint is None:
            raise CheckpointError("no SyncNet checkpoint given, and the config's ckpt.inference_ckpt_path is empty")
        target = resolve_device("auto" if device is None else device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        net = load_syncnet(cfg, checkpoint, device=target, dtype=dtype)
    elif checkpoint is not None:
        raise ValueError("pass either a checkpoint or an already-built net, not both")
    param = next(iter(net.parameters()), None)
    target = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=target.type == "cuda")
    correct = positives = negatives = 0
    cos_positive = cos_negative = 0.0
    was_training = net.training
    net.eval()
    from tqdm.auto import tqdm

    try:
        with torch.inference_mode(), tqdm(total=num_samples, desc="syncnet accuracy", unit="sample",
                                          disable=not progress) as bar:
            for batch in loader:
                frames = batch["frames"].to(target, dtype=dtype, non_blocking=True)  # b (f c) h w
                mel = batch["audio"].to(target, dtype=dtype, non_blocking=True)  # b 1 80 L
                label = batch["y"].reshape(-1).to(target) > 0.5  # b, True = in sync
                vision, audio = net(frames, mel)  # b d, b d
                cos = F.cosine_similarity(vision.float(), audio.float(), dim=1)  # b
                correct += int(((cos > SYNC_THRESHOLD) == label).sum())
                positives += int(label.sum())
                negatives += int((~label).sum())
                cos_positive += float(cos[label].sum())
                cos_negative += float(cos[~label].sum())
                bar.update(len(cos))
    finally:
        net.train(was_training)

    total = positives + negatives
    return AccuracyResult(
        accuracy=correct / total,
        num_samples=total,
        positives=positives,
        negatives=negatives,
        mean_cos_positive=cos_positive / positives if positives else float("nan"),
        mean_cos_negative=cos_negative / negatives if negatives else float("nan"),
        clips=len(dataset.clips),
        skipped=tuple(dataset.skipped),
    )
