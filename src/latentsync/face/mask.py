"""The mouth mask: which part of the aligned face the UNet regenerates (spec 2.2 step 8, spec 12).

The published models were trained and are run with LatentSync's `latentsync/utils/mask.png`: 256 x 256,
white (255) = keep, black (0) = regenerate; rows 95-242, two straight cheek bands on rows 95-127 beside the
nose, the full lower face (columns 9-247) from row 128, tapering to the chin. We ship that exact mask as data,
`mouth_mask.tsv` beside this module (the zero runs of each row, Apache-2.0, with the sha256 of the array), and
use it by default everywhere: inference (`pipeline.LipSyncPipeline`) and the training datasets
(`data.unet`).

Another mask (users ask for larger ones, e.g. with the chin) can be named by path: any square, binary
(0 / 255, one channel or equal channels) image that OpenCV reads. `data.mask_image_path` in a UNet config and
`--mask` at inference take such a path; empty (or the published configs' value `latentsync/utils/mask.png`)
means the built-in mask.

Resizing is the reference's: the uint8 image goes through `cv2.resize(..., INTER_LANCZOS4)` to the model
resolution (LANCZOS4's overshoot saturates in uint8) and is divided by 255, so at other resolutions than the
image's the edge values are not exactly 0 or 1. Conventions: `mouth_mask` is `(R, R)` float32,
`mouth_mask_tensor` the same as a torch tensor `(1, R, R)` (the reference keeps 3 identical channels and uses
channel 0), and `latent_mask` the mask on the latent grid `(1, R/8, R/8)` by `F.interpolate(..., "nearest")`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.vae import VAE_DOWNSAMPLING

KEEP, REGENERATE = 255, 0  # uint8 values of the mask image (white and black)
PUBLISHED_MASK_PX = 256
PUBLISHED_MASK_FILE = Path(__file__).with_name("mouth_mask.tsv")
PUBLISHED_MASK_SHA256 = "f8b78274914708ee3b64f800d9c4571b00906863af5df049240c708ee33ef869"
# What the published configs write for `data.mask_image_path` (a path inside the reference's repository).
PUBLISHED_MASK_CONFIG_VALUE = "latentsync/utils/mask.png"

# A mask: None (the built-in one) or the path of a mask image.
MaskSource = Union[str, os.PathLike, None]


@functools.lru_cache(maxsize=1)
def published_mask_image() -> np.ndarray:
    """The published 256 x 256 mask, uint8 (h, w), 255 = keep, 0 = regenerate; read-only.

    Rebuilt from the zero runs in `mouth_mask.tsv` and checked against the sha256 recorded there."""
    image = np.full((PUBLISHED_MASK_PX, PUBLISHED_MASK_PX), KEEP, dtype=np.uint8)
    for line in PUBLISHED_MASK_FILE.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("row"):
            continue
        row, runs = line.split("\t")
        for run in runs.split():
            x0, x1 = run.split("-")  # half-open [x0, x1)
            image[int(row), int(x0):int(x1)] = REGENERATE
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
    if digest != PUBLISHED_MASK_SHA256:  # a damaged install, never expected
        raise RuntimeError(f"{PUBLISHED_MASK_FILE}: the mask's sha256 is {digest}, expected {PUBLISHED_MASK_SHA256}")
    image.setflags(write=False)
    return image


def resolve_mask_path(source: MaskSource) -> Path | None:
    """None for the built-in mask (None, "" or the published configs' value), else the path as given."""
    if source is None or str(source) in ("", PUBLISHED_MASK_CONFIG_VALUE):
        return None
    return Path(source)


def load_mask_image(path: str | os.PathLike) -> np.ndarray:
    """A mask image from `path`: uint8 (h, w), 255 = keep, 0 = regenerate.

    Raises InputError, in one line naming the file, when it is missing, unreadable as an image, not square,
    in colour, or not binary (values other than 0 and 255)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask image not found")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise InputError(f"{path}: not a readable 8-bit image (expected a PNG like the published mask.png)")
    if image.ndim == 3:
        if image.shape[2] == 4:  # alpha is ignored, as the reference's cv2.imread ignores it
            image = image[..., :3]
        if (image != image[..., :1]).any():
            raise InputError(f"{path}: the mask is in colour; it must be black (regenerate) and white (keep)")
        image = image[..., 0]
    h, w = image.shape
    if h != w:
        raise InputError(f"{path}: the mask is {w}x{h}; it must be square like the aligned face")
    values = np.unique(image)
    if not set(values.tolist()) <= {REGENERATE, KEEP}:
        raise InputError(f"{path}: the mask is not binary ({values.size} grey levels); it must be only black "
                         "(0, regenerate) and white (255, keep)")
    if (values == REGENERATE).sum() == 0:
        raise InputError(f"{path}: the mask is all white, so nothing would be regenerated")
    return image


def mask_image(source: MaskSource = None) -> np.ndarray:
    """The mask image of `source` (see `MaskSource`): the published one, or the validated file."""
    path = resolve_mask_path(source)
    return published_mask_image() if path is None else load_mask_image(path)


@functools.lru_cache(maxsize=16)
def _resized(resolution: int, path: Path | None, stamp: tuple[int, int]) -> np.ndarray:
    # `stamp` (mtime, size) makes an edited mask file a new cache entry.
    image = mask_image(path)
    if image.shape[0] != resolution:  # the reference resizes even at its own size; LANCZOS4 is then exact
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)  # R R uint8
    mask = image.astype(np.float32) / KEEP
    mask.setflags(write=False)  # shared by every caller through the cache
    return mask


def mouth_mask(resolution: int = 256, source: MaskSource = None) -> np.ndarray:
    """The mouth mask at `resolution`: `(R, R)` float32 in [0, 1], 1 = keep, 0 = regenerate; read-only.

    `source`: None for the published mask, or a mask image's path (validated by `load_mask_image`)."""
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    path = resolve_mask_path(source)
    stamp = (0, 0)
    if path is not None:
        path = path.absolute()
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass  # load_mask_image reports it
    return _resized(int(resolution), path, stamp)


def mouth_mask_tensor(
    resolution: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    source: MaskSource = None,
) -> torch.Tensor:
    """`mouth_mask(resolution, source)` as a fresh tensor `(1, R, R)` (float32 unless `dtype` is given)."""
    mask = torch.tensor(mouth_mask(resolution, source), device=device)  # R R, a copy
    return mask.to(dtype=dtype or torch.float32).unsqueeze(0)  # 1 R R


def latent_mask_of(pixel_mask: torch.Tensor) -> torch.Tensor:
    """A pixel mask `(1, R, R)` on the VAE latent grid `(1, R/8, R/8)`, as the reference: `F.interpolate`
    with the default nearest mode, which picks pixel `8 i` (torch's legacy nearest: `floor(i * 8)`)."""
    resolution = pixel_mask.shape[-1]
    if resolution % VAE_DOWNSAMPLING:
        raise ValueError(f"resolution {resolution} is not a multiple of {VAE_DOWNSAMPLING}")
    size = resolution // VAE_DOWNSAMPLING
    return F.interpolate(pixel_mask[None].float(), size=(size, size), mode="nearest")[0]  # 1 r r


def latent_mask(resolution: int = 256, source: MaskSource = None) -> torch.Tensor:
    """The mouth mask on the VAE latent grid, `(1, R/8, R/8)` float32 (see `latent_mask_of`); at 256 the
    published mask gives a binary grid, at other resolutions a cell on an edge may carry a LANCZOS4 value."""
    return latent_mask_of(mouth_mask_tensor(resolution, source=source))
