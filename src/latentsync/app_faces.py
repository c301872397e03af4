"""The web app's face preview: the faces on a video's first frame, numbered from the left, drawn on the frame.

A job picks its face by `InferenceOptions.face`: "largest" (the default), "center", or N, the N-th face from the
left counted from 0 (`face.tracking.select_face`). The preview finds the faces the job would see on the first
frame, with the same backend (`LipSync.face_backend_name` over its checkpoints folder) and the same size and
score limits, and numbers them as that rule does, so the face the user clicks is the face the job syncs. The
numbers shown start at 1 (face 1 is `face=0`). A job tracks its face through the video; the preview shows where
it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .defaults import MIN_FACE_SCORE
from .face import Face
from .face.detect import load_face_backend
from .face.tracking import INFERENCE_FILTER, Rule, check_rule, select_face
from .media import VideoReader

PREVIEW_SIZE = 960  # px, the longest side of the preview image (a 4K frame would weigh megabytes in the page)
BOX_COLOUR = (255, 255, 255)  # RGB, every face found
CHOSEN_COLOUR = (40, 220, 90)  # RGB, the face the chosen rule syncs
LINE_FRACTION = 1 / 250  # box line width as a share of the preview's longest side
TEXT_FRACTION = 1 / 22  # number height as a share of the preview's longest side
MIN_TEXT_HEIGHT = 14  # px
OUTLINE_PX = 3  # dark outline around the numbers, readable on any background
ALREADY_FILTERED = INFERENCE_FILTER.with_score(0.0)  # for faces `find_faces` has kept (at the job's score)


@dataclass
class FacePreview:
    """The first frame of a video, scaled to at most `PREVIEW_SIZE`, and its faces from the left (by box
    centre, as `select_face` counts them): `faces[N]` is the face `InferenceOptions(face=N)` starts from."""

    frame: np.ndarray  # (h, w, 3) uint8 RGB, the preview's size
    scale: float  # preview px per source px
    source_shape: tuple[int, int]  # (h, w) of the source frame
    faces: list[Face]  # in source px, from the left

    def chosen(self, rule: Rule) -> int | None:
        """The index of the face `rule` syncs on this frame, or None (no face, or fewer faces than N)."""
        face = select_face(self.faces, check_rule(rule), self.source_shape, ALREADY_FILTERED)
        return next((i for i, f in enumerate(self.faces) if f is face), None)

    def face_at(self, x: float, y: float) -> int | None:
        """The face under the preview pixel (x, y) (the smallest box, where boxes overlap), or None."""
        sx, sy = x / self.scale, y / self.scale
        hits = [(f.area, i) for i, f in enumerate(self.faces)
                if f.box[0] <= sx <= f.box[2] and f.box[1] <= sy <= f.box[3]]
        return min(hits)[1] if hits else None

    def image(self, rule: Rule = "largest") -> np.ndarray:
        """The preview with every face boxed and numbered from 1, the one `rule` syncs in green."""
        import cv2

        image = self.frame.copy()
        chosen = self.chosen(rule)
        side = max(image.shape[:2])
        line = max(2, round(side * LINE_FRACTION))
        text_height = max(MIN_TEXT_HEIGHT, round(side * TEXT_FRACTION))
        font = cv2.FONT_HERSHEY_SIMPLEX
        font_scale = cv2.getFontScaleFromHeight(font, text_height, line)
        for i, face in enumerate(self.faces):
            colour = CHOSEN_COLOUR if i == chosen else BOX_COLOUR
            x1, y1, x2, y2 = (int(round(v * self.scale)) for v in face.box)
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, line)
            label = str(i + 1)
            (w, h), _ = cv2.getTextSize(label, font, font_scale, line)
            origin = (x1 + line, max(y1 - line, h + line))  # above the box, or inside it at the frame's top
            cv2.putText(image, label, origin, font, font_scale, (0, 0, 0), line + OUTLINE_PX, cv2.LINE_AA)
            cv2.putText(image, label, origin, font, font_scale, colour, line, cv2.LINE_AA)
        return image


def find_faces(video: str | Path, backend: str = "auto", checkpoints: str | Path | None = None,
               threshold: float = MIN_FACE_SCORE) -> FacePreview:
    """The faces on the first frame of `video` (a video or a still image) that a job with the default face
    settings accepts, found with face backend `backend` over `checkpoints`. InputError (one line, naming the
    file) for a file that cannot be read."""
    import cv2

    first = next(iter(VideoReader(video).frames(0, 1)))  # (h, w, 3) RGB
    with load_face_backend(backend, checkpoints, threshold=threshold) as detector:
        found = detector.detect(first)
    limits = INFERENCE_FILTER.with_score(threshold)
    faces = sorted((f for f in found if limits.accepts(f)), key=lambda f: float(f.box[0] + f.box[2]))
    h, w = first.shape[:2]
    scale = min(1.0, PREVIEW_SIZE / max(h, w))
    frame = first if scale == 1.0 else cv2.resize(first, (round(w * scale), round(h * scale)),
                                                  interpolation=cv2.INTER_AREA)
    return FacePreview(frame=np.ascontiguousarray(frame), scale=scale, source_shape=(h, w), faces=faces)
