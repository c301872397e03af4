"""The face backend that needs no downloaded file: mediapipe's full-range face detector (on the frame and on
tiles of it, for small faces in wide shots) and its 468-point face mesh on an enlarged crop around each face;
the models ship inside the mediapipe wheel. Its landmarks are mapped onto the reference's three alignment
points (see `MediapipeBackend` for the correspondence with the 106-point layout).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..defaults import MIN_FACE_SCORE
from ..errors import LatentSyncError
from . import Face, check_frame
from .boxes import iou, nms
from .tracking import check_threshold

# ---------------------------------------------------------------------------------------------------------------
# Mediapipe face mesh -> the 2d106 alignment points.

# The three alignment points on the mesh: mesh index groups, one per 2d106 index in `BROW_A_106`,
# `BROW_B_106` order and `NOSE_106` order (see `MediapipeBackend` for the correspondence and its sources).
MESH_BROW_A = ((46, 70), (63,), (105,), (66,), (107,))  # 43, 48, 49, 51, 50
MESH_BROW_B = ((276, 300), (336,), (296,), (334,), (293,))  # 101, 102, 103, 104, 105
MESH_NOSE = ((195,), (129,), (358,), (4,))  # 74, 77, 83, 86
MESH_NUM_LANDMARKS = 468  # without the iris points (refine_landmarks=False)
# The mesh spans hairline to chin and tragus to tragus: already about a detector box. Annotated detector
# boxes (WIDER FACE, SCRFD's training set) leave some slack around the visible face, so the landmark extent is
# grown by this fraction of its width (height) on the left and right (top and bottom).
MESH_BOX_MARGIN = 0.05
MESH_MIN_DETECTION_CONFIDENCE = MIN_FACE_SCORE  # as the reference's filter
MESH_MIN_TRACKING_CONFIDENCE = 0.5  # mediapipe's default
# mediapipe 0.10.21 (the last release whose wheel ships the face models) declares numpy<2, jax and the GUI build of
# OpenCV, none of which its face solutions use, so it is not among latentsync's declared dependencies (pip would
# downgrade numpy and overwrite the headless OpenCV); its real ones are. What a user runs instead:
MEDIAPIPE_INSTALL = "pip install --no-deps mediapipe==0.10.21"
INSTALL_HINT = (f"run `{MEDIAPIPE_INSTALL}` (its declared dependencies would downgrade numpy; the ones it uses "
                "come with latentsync), or `latentsync download` for the published InsightFace face models")
# Small faces. The face mesh's own detector is mediapipe's short-range model (a 128 px input, for faces that
# fill much of a selfie): on a whole 720p frame it misses faces under about 150 px. The full-range detector
# (`FaceDetection(model_selection=1)`, a 192 px input) finds a face reliably from about 16 px of its input, so
# on the whole frame from about 16/192 of the frame's longer side (160 px at 1080p). It also runs on square
# tiles of `DETECT_TILE` px, which find faces from about 12-16 px of the input (32-43 px of the tile: in
# `bench/face_detect.py` every 32 px face of its scenes) and overlap by the largest face the
# whole-frame pass may miss (times 1.3, a face's height over its width), so such a face lies wholly inside one.
# A tile's detection that touches one of its inner edges is a cut face (the neighbouring tile has all of it).
# Tiles of 448 px cost 1.8x the time at 1080p (32 tiles, not 15) and find no more 32-40 px faces.
FULL_RANGE_INPUT = 192
FULL_RANGE_MIN_FACE = 16  # px of the detector's input
DETECT_TILE = 512
TILE_EDGE = 2.0  # px: a box this close to a tile's inner edge is cut by it
DETECT_NMS_IOU = 0.3  # detections of one face from the frame and from tiles
# The face mesh runs on a square crop of MESH_CROP_MARGIN x the box's longer side around its centre, resampled
# to MESH_CROP_SIZE px: the face fills half of it whatever its size in the frame, as the mesh's own detector
# and landmark model (192 px) expect; small faces are enlarged (bilinear), large ones reduced (area).
MESH_CROP_SIZE = 256
MESH_CROP_MARGIN = 2.0
MESH_MAX_FACES_PER_CROP = 3  # neighbours in a group shot may enter a crop: the mesh nearest its centre is kept
SAME_FACE_IOU = 0.5  # two meshes whose boxes overlap this much are one face found twice
DEFAULT_MAX_FACES = 8


def mesh_alignment_points(mesh: np.ndarray) -> np.ndarray:
    """The three alignment points from 468 mesh landmarks (see the table above), rounded: (3, 2) float32."""
    mesh = np.asarray(mesh, dtype=np.float32)
    points = [np.mean([mesh[list(g)].mean(axis=0) for g in groups], axis=0)
              for groups in (MESH_BROW_A, MESH_BROW_B, MESH_NOSE)]
    return np.round(np.stack(points)).astype(np.float32)


def mesh_box(mesh: np.ndarray) -> np.ndarray:
    """A detector-like box (4,) float32 around mesh landmarks: their extent grown by `MESH_BOX_MARGIN`."""
    lo, hi = mesh.min(axis=0), mesh.max(axis=0)
    pad = (hi - lo) * MESH_BOX_MARGIN
    return np.concatenate([lo - pad, hi + pad]).astype(np.float32)


class MediapipeBackend:
    """mediapipe's face detection and face mesh (468 points), the backend that needs no downloaded file.

    By default (`full_range=True`) faces are found by mediapipe's full-range detector, on the whole frame and on
    overlapping tiles of it (`DETECT_TILE`), so faces from about 40 px wide are found in 720p and 1080p frames;
    the face mesh then runs on an enlarged crop around each face (`MESH_CROP_SIZE`) and its landmarks are
    mapped back to the frame. `score` is the detector's confidence; `threshold` (the reference's 0.5) is the
    least the detectors accept. `refine(frame, face)` runs the mesh alone in a box predicted from earlier frames,
    so `FaceTracker(detect_every=N)` follows a face between detections, as with InsightFace.

    `full_range=False` is the former backend: the face mesh on the whole frame, with its own short-range
    detector (faces that fill much of the frame; it misses those under about a fifth of a 720p frame's width),
    in tracking mode when `video` (consecutive calls are frames of one video: call `reset()` between videos), and
    a score of 1.0 (the mesh reports none).

    `box`: the mesh extent grown by `MESH_BOX_MARGIN` on every side. The three alignment points are the mesh
    points listed below, at the same anatomical places as the 2d106 points the reference uses. Use as a context
    manager or call `close()` to stop mediapipe's graphs.

    Which 2d106 points the reference uses, and the mesh points standing in for them:

    The 2d106 markup is "ordered by point names" (insightface `alignment/coordinate_reg/README.md`). Sorting the
    names of a Face++-style 106-point markup alphabetically reproduces the geometric order that DeepFaceLive
    (iperov, `InsightFace2D106`, `_lmrk_fix`) restores from the model's output, which identifies every index:
      43..51  one brow: 43 outer corner, 44-47 lower edge and lower inner corner, 48-51 upper edge with the
              upper inner corner (50); [43, 48, 49, 51, 50] is its upper contour from outer to inner corner,
              i.e. iBUG-68 points 17-21.
      97..105 the other brow: 101 outer corner, 102-105 upper edge from the inner corner outwards, 97-100 lower
              edge; [101..105] is its upper contour, iBUG-68 points 22-26.
      72..86  nose: 72-74 bridge top to bottom, 75-79 / 81-85 the two side contours top to bottom, 80 the
              bottom centre, 86 the tip; 77 and 83 are the middle of each side contour (the widest point of
              each nostril wing).
    Mesh indices for the same anatomical points (mediapipe `FACEMESH_RIGHT_EYEBROW` / `FACEMESH_LEFT_EYEBROW`,
    whose "right" brow appears on the image's left, and the canonical mesh's nose midline 168-6-197-195-5-4-1):

      2d106 point                      mesh               why
      43  brow A outer corner          mean(46, 70)       the mesh brow has a separate upper and lower outer end
      48  brow A upper, outer quarter  63
      49  brow A upper, middle         105
      51  brow A upper, inner quarter  66
      50  brow A upper inner corner    107
      102 brow B upper inner corner    336
      103 brow B upper, inner quarter  296
      104 brow B upper, middle         334
      105 brow B upper, outer quarter  293
      101 brow B outer corner          mean(276, 300)
      74  nose bridge, lowest point    195                between iBUG 28 (mesh 197) and 29 (mesh 5)
      77  nostril wing, widest (A)     129                the alar crest
      83  nostril wing, widest (B)     358
      86  nose tip                     4                  the centre of the nose ball in a frontal view

    The mean of each group of mesh points stands for its 2d106 point; the mean of those is the alignment point,
    rounded as the reference rounds.
    """

    name = "mediapipe"

    def __init__(self, max_faces: int = DEFAULT_MAX_FACES, video: bool = True, full_range: bool = True,
                 threshold: float = MESH_MIN_DETECTION_CONFIDENCE, tile: int = DETECT_TILE):
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as e:
            raise LatentSyncError(f"the mediapipe face backend needs mediapipe 0.10.21 ({e}): {INSTALL_HINT}") from e
        self.max_faces = max_faces
        self.video = video
        self.full_range = full_range
        self.threshold = check_threshold(threshold)
        self.tile = int(tile)
        self._detector = None
        if full_range:
            self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=self.threshold)
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=full_range or not video,  # crops move from frame to frame: nothing to track
            max_num_faces=MESH_MAX_FACES_PER_CROP if full_range else max_faces,
            refine_landmarks=False,
            min_detection_confidence=self.threshold,
            min_tracking_confidence=MESH_MIN_TRACKING_CONFIDENCE,
        )
        if not full_range:
            self.refine = None  # the mesh tracks on its own in video mode

    def _check_open(self, frame: np.ndarray) -> np.ndarray:
        frame = check_frame(frame)
        if self._mesh is None:
            raise RuntimeError("MediapipeBackend is closed")
        return frame

    def _meshes(self, image: np.ndarray) -> list[np.ndarray]:
        """Every face mesh (468, 2) float32 the face mesh finds in `image`, in its pixels."""
        h, w = image.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(image))
        # mediapipe reports x, y normalised by the image width and height.
        scale = np.array([w, h], dtype=np.float32)
        return [np.array([(p.x, p.y) for p in found.landmark[:MESH_NUM_LANDMARKS]], dtype=np.float32) * scale
                for found in result.multi_face_landmarks or []]

    def _face(self, mesh: np.ndarray, score: float) -> Face:
        return Face(box=mesh_box(mesh), score=score, landmarks=mesh, points=mesh_alignment_points(mesh))

    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 frame (h, w, 3), highest detection score first."""
        frame = self._check_open(frame)
        if not self.full_range:
            return [self._face(mesh, 1.0) for mesh in self._meshes(frame)]
        faces: list[Face] = []
        for box, score in zip(*self.find_boxes(frame)):
            mesh = self._mesh_in(frame, box)
            if mesh is None:
                continue
            face = self._face(mesh, float(score))
            if all(iou(face.box, other.box) < SAME_FACE_IOU for other in faces):
                faces.append(face)
            if len(faces) == self.max_faces:
                break
        return faces

    def find_boxes(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The full-range detector's boxes (n, 4) float32 and scores (n,), on the frame and its tiles, one box
        per face (NMS), highest score first."""
        h, w = frame.shape[:2]
        found = [self._detections(frame, 0, 0, inner=())]
        if max(h, w) > 1.5 * self.tile:  # tiles find smaller faces than the whole frame does
            smallest_whole = FULL_RANGE_MIN_FACE / FULL_RANGE_INPUT * max(h, w)
            overlap = min(self.tile // 2, int(np.ceil(smallest_whole * 1.3)))  # a face's height over its width
            for y0 in _tile_starts(h, self.tile, overlap):
                for x0 in _tile_starts(w, self.tile, overlap):
                    tile = frame[y0:y0 + self.tile, x0:x0 + self.tile]
                    inner = [side for side, cut in (("left", x0 > 0), ("top", y0 > 0),
                                                    ("right", x0 + self.tile < w), ("bottom", y0 + self.tile < h))
                             if cut]
                    found.append(self._detections(tile, x0, y0, inner))
        dets = np.concatenate(found)
        if not len(dets):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        dets = dets[nms(dets, DETECT_NMS_IOU)]
        return dets[:, :4], dets[:, 4]

    def _detections(self, image: np.ndarray, x0: int, y0: int, inner: Sequence[str]) -> np.ndarray:
        """The detector's (n, 5) x1 y1 x2 y2 score in frame pixels for `image` at (x0, y0) of the frame, without
        boxes cut by one of its `inner` edges."""
        h, w = image.shape[:2]
        result = self._detector.process(np.ascontiguousarray(image))
        rows = []
        for detection in result.detections or []:
            b = detection.location_data.relative_bounding_box
            x1, y1, x2, y2 = b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h
            cut = (("left" in inner and x1 <= TILE_EDGE) or ("top" in inner and y1 <= TILE_EDGE)
                   or ("right" in inner and x2 >= w - TILE_EDGE) or ("bottom" in inner and y2 >= h - TILE_EDGE))
            if not cut and b.width > 0 and b.height > 0:
                rows.append((x1 + x0, y1 + y0, x2 + x0, y2 + y0, detection.score[0]))
        return np.array(rows, dtype=np.float32).reshape(-1, 5)

    def _mesh_in(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The face mesh (468, 2) float32, frame pixels, of the face in `box`: the mesh nearest the centre of a
        crop around it (see `MESH_CROP_MARGIN`), or None when the mesh finds no face there."""
        x1, y1, x2, y2 = (float(v) for v in box)
        side = MESH_CROP_MARGIN * max(x2 - x1, y2 - y1)
        if not side > 0:
            return None
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        size = MESH_CROP_SIZE
        scale = size / side
        if scale >= 1:  # enlarge, bilinear
            m = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
            crop = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        else:  # the crop at the frame's resolution, then reduced with area averaging (no aliasing)
            n = int(np.ceil(side))
            m = np.array([[1.0, 0, n / 2 - cx], [0, 1.0, n / 2 - cy]])
            crop = cv2.resize(cv2.warpAffine(frame, m, (n, n), flags=cv2.INTER_LINEAR, borderValue=0), (size, size),
                              interpolation=cv2.INTER_AREA)
            scale = size / n
            m = m * scale
        meshes = self._meshes(crop)
        if not meshes:
            return None
        mesh = min(meshes, key=lambda p: float(np.hypot(*(p.mean(axis=0) - size / 2))))
        inv = cv2.invertAffineTransform(m)  # crop -> frame
        return (mesh.astype(np.float64) @ inv[:, :2].T + inv[:, 2]).astype(np.float32)

    def refine(self, frame: np.ndarray, face: Face) -> Face | None:
        """`face` followed into `frame` by the face mesh alone, in `face.box` (predicted from earlier frames);
        the result keeps `face.score`. None when the mesh finds no face there."""
        frame = self._check_open(frame)
        mesh = self._mesh_in(frame, face.box)
        return None if mesh is None else self._face(mesh, float(face.score))

    def reset(self) -> None:
        """Forget the tracked faces (start of another video)."""
        if self._mesh is not None:
            self._mesh.reset()

    def close(self) -> None:
        """Stop mediapipe's graphs; the backend cannot be used afterwards."""
        for graph in (self._mesh, self._detector):
            if graph is not None:
                graph.close()
        self._mesh = self._detector = None

    def __enter__(self) -> MediapipeBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px over `length` px, overlapping by at least `overlap`, the last flush
    with the end."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - tile) / (tile - overlap))) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]
