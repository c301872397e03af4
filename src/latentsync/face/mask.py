"""The fixed mouth mask: which part of the aligned face the UNet regenerates (spec 2.2 step 8).

LatentSync ships the mask as a 256 x 256 binary PNG (`latentsync/utils/mask.png`, white = keep, black =
regenerate), loads it with `cv2.imread`, resizes it to the model resolution with `cv2.INTER_LANCZOS4` and
divides by 255. We do not ship that file: `mouth_mask` draws our own 256 x 256 binary mask from the geometry
the spec describes and then goes through the same uint8 LANCZOS4 resize, so edge values at other resolutions
are not exactly 0 or 1, as in the reference.

Geometry, in pixels of the 256 x 256 canvas (x = column, y = row, pixel centres at +0.5), regenerate (0) =

* the lower face: full width, columns 9-247, from row 128 down to row 170;
* the chin: below row 170 the lower face tapers as the lower half of an ellipse centred at (128, 170) with
  semi-axes 119 (x) and 73 (y), ending in a rounded chin point at row 242;
* two cheek lobes above it, rows 95-127: upper halves of ellipses resting on row 128, centred on columns
  45 and 211 with semi-axes 36 (x) and 33 (y); the strip between them (columns ~82-174 at row 127, wider
  above) keeps the nose.

Everything else, in particular every row above 95, is kept (1). The black area is 41.9 % of the
canvas, as the spec states for the published mask (~41 %).

Conventions match the reference's use: `mouth_mask` is `(R, R)` float32, `mouth_mask_tensor` the same as a
torch tensor `(1, R, R)` (the reference keeps 3 identical channels and uses channel 0 for the mask), and
`latent_mask` the mask on the latent grid `(1, R/8, R/8)` by `F.interpolate(..., mode="nearest")`.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..models.vae import VAE_DOWNSAMPLING

CANVAS_PX = 256  # the published mask is drawn at 256 x 256 and resized to the model resolution
KEEP, REGENERATE = 255, 0  # uint8 values of the binary canvas (the PNG's white and black)

# Lower face (spec 2.2 step 8: full width, columns 9-247, from row ~128).
FACE_LEFT_PX, FACE_RIGHT_PX = 9, 247  # first and last regenerated column
FACE_TOP_PX = 128  # first full-width row
CHIN_TAPER_START_PX = 170  # the full-width block ends here and the elliptical taper begins
CHIN_BOTTOM_PX = 243  # the taper's lowest point (pixel rows up to 242 are regenerated)

# Cheek lobes (spec: rows ~95-127 at the sides, nose strip kept).
LOBE_TOP_PX = 95
LOBE_CENTRE_X_PX = 45  # left lobe; the right lobe is its mirror image about the face centre
LOBE_HALF_WIDTH_PX = 36


def _canvas() -> np.ndarray:
    """The 256 x 256 binary mask, uint8 (h, w): 255 = keep, 0 = regenerate."""
    y, x = np.mgrid[0:CANVAS_PX, 0:CANVAS_PX].astype(np.float64) + 0.5  # h w, pixel centres
    centre_x = (FACE_LEFT_PX + FACE_RIGHT_PX + 1) / 2  # 128.0: the face's vertical symmetry axis
    half_width = (FACE_RIGHT_PX + 1 - FACE_LEFT_PX) / 2  # 119.0

    block = (x >= FACE_LEFT_PX) & (x < FACE_RIGHT_PX + 1) & (y >= FACE_TOP_PX) & (y < CHIN_TAPER_START_PX)
    taper_height = CHIN_BOTTOM_PX - CHIN_TAPER_START_PX
    chin = (y >= CHIN_TAPER_START_PX) & (
        ((x - centre_x) / half_width) ** 2 + ((y - CHIN_TAPER_START_PX) / taper_height) ** 2 <= 1.0
    )
    lobe_height = FACE_TOP_PX - LOBE_TOP_PX
    lobes = np.zeros_like(block)
    for lobe_x in (LOBE_CENTRE_X_PX, 2 * centre_x - LOBE_CENTRE_X_PX):
        lobes |= (y < FACE_TOP_PX) & (
            ((x - lobe_x) / LOBE_HALF_WIDTH_PX) ** 2 + ((y - FACE_TOP_PX) / lobe_height) ** 2 <= 1.0
        )

    canvas = np.full((CANVAS_PX, CANVAS_PX), KEEP, dtype=np.uint8)
    canvas[block | chin | lobes] = REGENERATE
    return canvas


@functools.lru_cache(maxsize=None)
def _mouth_mask_cached(resolution: int) -> np.ndarray:
    # The reference resizes the uint8 PNG, so LANCZOS4's overshoot saturates to 0 / 255 before the / 255.
    resized = cv2.resize(_canvas(), (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)  # R R
    mask = (resized.astype(np.float32) / KEEP).clip(0.0, 1.0)
    mask.setflags(write=False)  # shared by every caller through the cache
    return mask


def mouth_mask(resolution: int = 256) -> np.ndarray:
    """The mouth mask at `resolution`: `(R, R)` float32 in [0, 1], 1 = keep, 0 = regenerate.

    Drawn at 256 x 256 (geometry in the module docstring) and resized with LANCZOS4 as the reference resizes
    its PNG; at 256 the values are exactly 0 or 1. The array is cached per resolution and read-only.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return _mouth_mask_cached(int(resolution))


def mouth_mask_tensor(
    resolution: int = 256, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`mouth_mask(resolution)` as a fresh tensor `(1, R, R)` (float32 unless `dtype` is given)."""
    mask = torch.tensor(mouth_mask(resolution), device=device)  # R R, a copy
    return mask.to(dtype=dtype or torch.float32).unsqueeze(0)  # 1 R R


def latent_mask(resolution: int = 256) -> torch.Tensor:
    """The mouth mask on the VAE latent grid, `(1, R/8, R/8)` float32.

    As the reference: `F.interpolate(mask, size=(R/8, R/8))` with the default nearest mode, which picks
    pixel `8 i` (torch's legacy nearest: `floor(i * 8)`) of the resized soft mask; at 256 the result is
    binary, at other resolutions a cell on an edge may carry a LANCZOS4 edge value.
    """
    if resolution % VAE_DOWNSAMPLING:
        raise ValueError(f"resolution {resolution} is not a multiple of {VAE_DOWNSAMPLING}")
    size = resolution // VAE_DOWNSAMPLING
    mask = mouth_mask_tensor(resolution).unsqueeze(0)  # 1 1 R R
    return F.interpolate(mask, size=(size, size), mode="nearest")[0]  # 1 r r
