"""Step 5: affine-aligned faces, with the same detection, tracking and alignment code as inference.

Each segment (a time range of the resampled video) is decoded once, the chosen face is found and followed in
every frame, aligned to the LatentSync crop (`face.align`: template points, smoothed nose bias, fill 127,
LANCZOS resize) and written as a `resolution` x `resolution` clip at 25 fps with the segment's own sound. A
segment with a frame without a face is rejected, as in the reference (the model is trained on faces only).

Unlike the reference, the alignment state (the smoothed bias) starts fresh for every clip (the reference's
worker kept it from the previous video), and the clip is encoded once (the reference encoded it twice).
"""

from __future__ import annotations

from typing import Any

from ..config import PreprocessConfig
from ..face.align import FaceAligner, warp_face
from ..face.detect import load_face_backend
from ..face.tracking import FaceTracker, check_rule
from ..media import VideoReader, VideoWriter
from .base import Item, Step, StepContext, StepResult

VERSION = 1


class AlignStep(Step):
    name = "align"
    loads_models = True

    def __init__(self, config: PreprocessConfig):
        super().__init__(config)
        self.rule = check_rule(config.face)

    def params(self) -> dict[str, Any]:
        c = self.config
        return {"version": VERSION, "resolution": c.resolution, "fps": c.video_fps, "face": str(c.face),
                "face_backend": c.face_backend, "crf": c.aligned_crf}

    def _backend(self, ctx: StepContext):
        backend = ctx.model(("face_backend", self.config.face_backend, str(ctx.checkpoints)),
                            lambda: load_face_backend(self.config.face_backend, ctx.checkpoints))
        if hasattr(backend, "reset"):
            backend.reset()  # a new clip: mediapipe's video mode must not track the previous clip's face
        return backend

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        fps = self.config.video_fps
        first = int(round(item.start_s * fps))
        stop = None if item.end_s is None else int(round(item.end_s * fps))
        tracker = FaceTracker(self._backend(ctx), rule=self.rule)  # the backend outlives the tracker
        aligner = FaceAligner(self.config.resolution)
        out = ctx.output_path(item)
        out.parent.mkdir(parents=True, exist_ok=True)
        frames = 0
        size = self.config.resolution
        with VideoWriter(out, size, size, fps=fps, crf=self.config.aligned_crf, audio=item.path,
                         audio_start_s=first / fps) as writer:
            for k, frame in enumerate(VideoReader(item.path, fps=fps).frames(first, stop)):
                face = tracker.track(frame)
                if face is None:
                    writer.discard()
                    return StepResult.reject(f"no face in frame {k} ({(first + k) / fps:.2f} s)", frames=k)
                writer.write(warp_face(frame, aligner.matrix(face.points), size))
                frames += 1
            if frames == 0:
                writer.discard()
                return StepResult.reject("no frames in the segment")
        meta = item.meta | {"frames": frames, "aligned_resolution": size}
        return StepResult([Item(id=item.id, path=str(out), meta=meta)], metrics={"frames": frames})
