"""Small synthetic videos for the video-metric tests (FID, FVD)."""

from __future__ import annotations

import numpy as np

from latentsync.media import VideoWriter

SMALL = 64  # px


def write_video(path, frame_fn, n: int, size=(SMALL, SMALL)):
    """`n` frames `frame_fn(i)` (RGB uint8) at 25 fps, nearly lossless."""
    with VideoWriter(path, size[0], size[1], fps=25, crf=10, preset="ultrafast") as writer:
        for i in range(n):
            writer.write(frame_fn(i))
    return path


def stripes(phase: float, colour):
    """Smooth vertical stripes of `colour` drifting sideways: a natural-looking, slowly moving texture."""
    def frame(i):
        x = np.arange(SMALL)
        row = (np.sin(x / 4.0 + phase + 0.3 * i) * 0.5 + 0.5)[None, :, None]
        image = row * np.asarray(colour, np.float64)[None, None, :] * 255
        return np.broadcast_to(image, (SMALL, SMALL, 3)).astype(np.uint8)

    return frame


def blobs(seed: int, hold: int = 1):
    """Random 8 x 8 colour blocks, new every `hold` frames: an unnatural, flickering texture."""
    def frame(i):
        rng = np.random.default_rng(seed * 1000 + i // hold)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return np.kron(small, np.ones((SMALL // 8, SMALL // 8, 1), np.uint8))

    return frame


def real_and_different(root, write, blobs_fn=blobs):
    """`root/real`: two stripe clips and a file that is not a video; `root/different`: two blob clips (made by
    `blobs_fn`). `write(path, frame_fn)` writes a clip. Returns `root`."""
    for name, makers in {
        "real": [stripes(0.0, (1.0, 0.6, 0.3)), stripes(1.0, (0.9, 0.7, 0.4))],
        "different": [blobs_fn(1), blobs_fn(2)],
    }.items():
        (root / name).mkdir()
        for k, make in enumerate(makers):
            write(root / name / f"clip{k}.mp4", make)
    (root / "real" / "notes.txt").write_text("not a video")
    return root
