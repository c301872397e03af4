"""Step 7: keep clips of good visual quality, by hyperIQA's score of their first, middle and last frame.

As the reference (`preprocess/filter_visual_quality.py`): the three frames (indices 0, n // 2 and n - 1 of the
clip's n frames) are scaled to [0, 1], center-cropped to 224 x 224 without resizing (torchvision's
`CenterCrop`: for the 256 px aligned clips the central 224 px, a 16 px border dropped; zero padding where a frame
is smaller) and ImageNet-normalised, scored in one batch by hyperIQA with its KonIQ-10k weights, and averaged.
A clip is kept if the mean is >= `quality_threshold` (40 on KonIQ's 0-100 scale).

The frames are read at the pipeline's frame rate from the item's time range (the whole file for aligned clips).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import InputError
from ..media import DEFAULT_FPS, VideoReader
from ..models.hyperiqa import INPUT_SIZE, HyperNet, load_hyperiqa, normalize
from .base import Item, Step, StepContext, StepResult

VERSION = 1
UINT8_MAX = 255.0


def frame_range(item: Item, fps: float) -> tuple[int, int | None]:
    """Output frame indices [first, stop) of the item's time range at `fps` (stop None: to the end)."""
    first = int(round(item.start_s * fps))
    stop = None if item.end_s is None else int(round(item.end_s * fps))
    return first, stop


def sample_frames(path: str | Path, start: int = 0, stop: int | None = None,
                  fps: float = DEFAULT_FPS) -> tuple[list[np.ndarray], list[int]]:
    """The first, middle and last frame of frames [start, stop) of the video, and their indices in the file
    (empty lists if the range holds no frame).

    The middle is frame n // 2 of the n frames, as the reference's `vr[len(vr) // 2]`. One pass counts the
    frames (keeping the first and the last), a second one, starting from a seek, fetches the middle: memory does
    not grow with the clip's length, and decoding a 256 px clip costs milliseconds.
    """
    reader = VideoReader(path, fps=fps)
    first_image = last_image = None
    n = 0
    for n, image in enumerate(reader.frames(start, stop), start=1):
        if first_image is None:
            first_image = image
        last_image = image
    if first_image is None:
        return [], []
    middle = start + n // 2
    middle_image = next(iter(reader.frames(middle, middle + 1)))
    return [first_image, middle_image, last_image], [start, middle, start + n - 1]


def center_crop(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """The central size x size window of (b, c, h, w) images, as torchvision's `CenterCrop` on tensors.

    Offsets are round((h - size) / 2) (Python rounding); an image smaller than the window is first padded with
    zeros, (size - h) // 2 before and the rest after.
    """
    h, w = images.shape[-2:]
    if h < size or w < size:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = images.shape[-2:]
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return images[..., top:top + size, left:left + size]


def preprocess(frames: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB uint8 frames (h, w, 3) -> (b, 3, 224, 224) network input: /255, center crop, ImageNet normalisation."""
    batch = torch.from_numpy(np.stack(frames))  # (b, h, w, 3) uint8
    batch = rearrange(batch, "b h w c -> b c h w").to(device=device, dtype=torch.float32) / UINT8_MAX
    return normalize(center_crop(batch)).to(dtype)  # (b, 3, 224, 224)


@torch.inference_mode()
def score_frames(model: HyperNet, frames: list[np.ndarray]) -> torch.Tensor:
    """hyperIQA scores (b,) of RGB uint8 frames, in one batch."""
    param = next(model.parameters())
    return model(preprocess(frames, param.device, param.dtype)).float()


def clip_quality(path: str | Path, model: HyperNet, start: int = 0, stop: int | None = None,
                 fps: float = DEFAULT_FPS) -> float:
    """The mean hyperIQA score of the first, middle and last frame of frames [start, stop) of a video.

    Raises InputError if the range holds no frame.
    """
    frames, _ = sample_frames(path, start, stop, fps)
    if not frames:
        raise InputError(f"{path}: no frames in frames {start}..{'end' if stop is None else stop - 1}")
    return float(score_frames(model, frames).mean())


class QualityStep(Step):
    """Keeps an item if its visual quality (`clip_quality`) is >= `config.quality_threshold`.

    Kept items go on unchanged, with `meta["quality"]`; rejected ones record the score as a metric.
    """

    name = "quality"
    weights = ("koniq",)
    loads_models = True

    def params(self) -> dict[str, Any]:
        c = self.config
        return {"version": VERSION, "quality_threshold": c.quality_threshold, "fps": c.video_fps}

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        model: HyperNet = ctx.load_weights("koniq", load_hyperiqa)
        start, stop = frame_range(item, self.config.video_fps)
        frames, _ = sample_frames(item.path, start, stop, self.config.video_fps)
        if not frames:
            return StepResult.reject("no frames in the clip's time range")
        score = float(score_frames(model, frames).mean())
        threshold = self.config.quality_threshold
        if not score >= threshold:  # a NaN score fails too
            return StepResult.reject(f"low visual quality: {score:.1f} < {threshold}", quality=score)
        return StepResult([replace(item, meta=item.meta | {"quality": score})], metrics={"quality": score})
