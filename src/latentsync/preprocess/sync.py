"""Step 6: keep clips whose sound matches the mouth, and move their sound to offset 0.

The joonson SyncNet (`syncnet_v2.model`, the network behind LSE-C) scores each aligned clip over offsets of
±15 frames; a clip is kept when its confidence reaches `sync_conf_threshold` and its best offset is within
`sync_max_offset` frames (spec 6 step 6: 3 and 6). A kept clip with a non-zero offset is rewritten with its
sound delayed by offset / 25 s (the picture is copied, not re-encoded), as the reference's
`ffmpeg -itsoffset` does, so training sees it in sync.

The clip is scored as a face crop (`crop_sync_confidence`: the aligned 256/512 px face resized to 224). The
reference ran its face detector and 0.4-scale cropping on the aligned clip first; on a clip that is already
an aligned face that step only re-crops it, so we skip it (one fewer model, no detection failures).
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..media import shift_audio
from ..models.syncnet_v2 import load_syncnet_v2
from ..sync_score import crop_sync_confidence
from .base import Item, Step, StepContext, StepResult

VERSION = 1
VSHIFT_FRAMES = 15  # offsets searched, as the standard metric


class SyncStep(Step):
    name = "sync"
    weights = ("syncnet_v2",)
    loads_models = True

    def params(self) -> dict[str, Any]:
        c = self.config
        return {"version": VERSION, "conf": c.sync_conf_threshold, "max_offset": c.sync_max_offset,
                "fps": c.video_fps, "vshift": VSHIFT_FRAMES}

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        offset, lse_d, lse_c = crop_sync_confidence(item.path, ctx.load_weights("syncnet_v2", load_syncnet_v2), vshift=VSHIFT_FRAMES)
        offset = int(offset)
        metrics = {"offset": offset, "lse_d": lse_d, "lse_c": lse_c}
        if lse_c < self.config.sync_conf_threshold:
            return StepResult.reject(f"out of sync: confidence {lse_c:.2f} < {self.config.sync_conf_threshold}",
                                     **metrics)
        if abs(offset) > self.config.sync_max_offset:
            return StepResult.reject(f"out of sync: offset {offset} frames > {self.config.sync_max_offset}", **metrics)
        out = ctx.output_path(item)
        out.parent.mkdir(parents=True, exist_ok=True)
        if offset == 0:
            link_or_copy(Path(item.path), out)
        else:
            shift_audio(Path(item.path), out, Fraction(offset, self.config.video_fps))
        return StepResult([Item(id=item.id, path=str(out), meta=item.meta | metrics)], metrics=metrics)


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` becomes the same content as `src`: a hard link where the file system allows, else a copy."""
    with atomic_write(dst, suffix=dst.suffix) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
