"""Small Whisper checkpoints in OpenAI's format, with seeded random weights, for tests."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

# 80 mels and 1500 audio positions are what 30 s windows need; the rest is kept small for speed.
SMALL_DIMS = dict(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=64,
    n_text_ctx=8,
    n_text_state=32,
    n_text_head=2,
    n_text_layer=1,
)


def write_whisper_checkpoint(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Save `{"dims", "model_state_dict"}` of a seeded random `whisper.model.Whisper` at `path`."""
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(**{**SMALL_DIMS, **overrides})
    torch.manual_seed(seed)
    model = Whisper(dims)
    path = Path(path)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path
