"""Display rotation: the angle a stream's display matrix asks for, and turning decoded images upright.

Rotation is applied to the RGB image with numpy rather than by FFmpeg's `transpose` / `hflip,vflip` filters
on the decoded picture: those turn the YUV planes before the RGB conversion, which changes the chroma
subsampling grid, and measured against turning the RGB image they give different pixels for odd frame sizes
(up to 96 levels for a 66x47 yuv420p source), 4:2:2 sources (up to 64) and 10-bit 4:2:0 sources (up to 47).
Turning RGB is exact and is what `VideoReader` has always returned.
"""

from __future__ import annotations

import numpy as np

# Display-matrix angles within this many degrees of a multiple of 90 are applied; others are ignored, as
# ffmpeg's autorotate does (fftools: it only inserts transpose/flip filters near 90, 180, 270 degrees).
ROTATION_TOLERANCE_DEG = 1.0
QUARTER_TURN_DEG = 90
FULL_TURN_DEG = 360


def quarter_turns(degrees: float) -> int:
    """Counter-clockwise quarter turns (0-3) for a display-matrix angle, 0 if it is not a right angle."""
    turns = round(degrees / QUARTER_TURN_DEG)
    if abs(degrees - turns * QUARTER_TURN_DEG) > ROTATION_TOLERANCE_DEG:
        return 0
    return turns % (FULL_TURN_DEG // QUARTER_TURN_DEG)


def frame_rotation(frame) -> int:
    """The display rotation of a decoded frame in degrees counter-clockwise: 0, 90, 180 or 270."""
    return quarter_turns(frame.rotation) * QUARTER_TURN_DEG


def upright_size(frame, rotation: int) -> tuple[int, int]:
    """(width, height) of `frame` as displayed: swapped by a quarter or three-quarter turn."""
    if rotation % (2 * QUARTER_TURN_DEG):
        return frame.height, frame.width
    return frame.width, frame.height


def rotate_upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """Apply a display rotation to a decoded (h, w, c) image, as ffmpeg's autorotate does.

    `rotation` is the angle of the stream's display matrix in degrees counter-clockwise (what FFmpeg's
    `av_display_rotation_get` and PyAV's `VideoFrame.rotation` return; a phone held upright typically records
    -90). Only multiples of 90 are applied. Returns a C-contiguous array (a copy unless `rotation` is 0).
    Mirroring in the display matrix is not applied.
    """
    turns = quarter_turns(rotation)
    if turns == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=turns))  # rot90 turns counter-clockwise for k > 0
