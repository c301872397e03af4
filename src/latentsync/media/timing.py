"""Frame rates as exact fractions, and FFmpeg's rounding of timestamps to frame slots."""

from __future__ import annotations

import math
from fractions import Fraction

from ..defaults import FPS

DEFAULT_FPS = FPS  # Whisper chunks and SyncNet windows are laid out at 25 fps
# Output rates given as floats (25.0, 29.97) are turned into exact fractions with at most this denominator;
# NTSC rates such as 30000/1001 come out exactly.
FPS_MAX_DENOMINATOR = 1_000_000


def as_fraction(fps) -> Fraction:
    """An exact frame rate from an int, float or Fraction."""
    rate = Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def round_near_inf(x: Fraction) -> int:
    """Round to the nearest integer, halves away from zero: FFmpeg's AV_ROUND_NEAR_INF (fps `round=near`)."""
    magnitude = math.floor(abs(x) + Fraction(1, 2))
    return magnitude if x >= 0 else -magnitude
