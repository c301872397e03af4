"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentsync.demo import UNET_CONFIG_NAME, write_tiny_checkpoints
from latentsync.inference import LipSync


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """The demo's tiny random-weight UNet, Whisper and VAE in the standard layout, with their UNet config."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"))


@pytest.fixture(scope="session")
def lipsync(checkpoints) -> LipSync:
    """A `LipSync` over `checkpoints` on the CPU, without the audio cache; shared: jobs keep no state in it."""
    return LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False)
