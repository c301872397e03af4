"""Throughput of video I/O: `VideoReader` decode to RGB and `VideoWriter` encode, at 1080p 25 fps.

Generates a 1920x1080 25 fps clip (default 10 s) of natural-ish content: a smooth, textured landscape panning
under the camera with a moving bright disc and sensor-like noise, so the encoder sees motion and detail, not
a flat colour. It is written once with `VideoWriter` (crf 18, preset medium), then:

* decode: `VideoReader.frames()` to upright RGB uint8 arrays, frames/s; also `count()` (decode without RGB
  conversion) and a 16-frame `frames(start, stop)` slice from the middle (the ping-pong access pattern).
  Baseline: OpenCV's `VideoCapture` + BGR->RGB on the same file, which is how the reference reads frames.
* encode: `VideoWriter.write` at crf 18 with preset medium and veryfast, frames/s, counting only the time
  spent inside the writer (frame generation excluded), including the final flush. Baseline: a bare PyAV
  loop with the same settings (RGB->yuv420p by PyAV's default conversion), i.e. the wrapper's overhead.

    .venv/bin/python bench/media.py [--seconds 10] [--skip-baselines]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from latentsync.media import VideoReader, VideoWriter

WIDTH, HEIGHT = 1920, 1080
FPS = 25
CRF = 18
PRESETS = ("medium", "veryfast")
SEED = 0
PAN_PX_PER_FRAME = 6  # camera pan speed over the texture
NOISE_SIGMA = 3.0  # sensor-like noise, in 8-bit levels
NOISE_FRAMES = 8  # pre-drawn noise fields, cycled (drawing fresh 1080p noise each frame would dominate)
DISC_RADIUS_PX = 120
SLICE_FRAMES = 16  # one UNet chunk
TEXTURE_BLUR_PX = 31  # smooths the random texture into blobs: large soft shapes like a real scene


class Scene:
    """Frames of a panning textured scene; frame(i) costs a crop, an add and a disc draw."""

    def __init__(self, frames: int):
        rng = np.random.default_rng(SEED)
        pan = PAN_PX_PER_FRAME * frames
        small = rng.integers(0, 256, size=((HEIGHT + 7) // 8, (WIDTH + pan + 7) // 8, 3), dtype=np.uint8)
        texture = cv2.resize(small, None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC)
        texture = cv2.GaussianBlur(texture, (TEXTURE_BLUR_PX, TEXTURE_BLUR_PX), 0)
        y = np.linspace(0, 1, texture.shape[0], dtype=np.float32)[:, None, None]
        self.texture = np.clip(texture * (0.6 + 0.4 * y) + 40 * (1 - y), 0, 255).astype(np.uint8)  # sky-ish top
        self.noise = [rng.normal(0, NOISE_SIGMA, size=(HEIGHT, WIDTH, 3)).astype(np.int16) for _ in range(NOISE_FRAMES)]

    def frame(self, i: int) -> np.ndarray:
        x = PAN_PX_PER_FRAME * i
        image = self.texture[:HEIGHT, x : x + WIDTH].astype(np.int16) + self.noise[i % NOISE_FRAMES]
        image = np.clip(image, 0, 255).astype(np.uint8)
        center = (int(WIDTH / 2 + 600 * np.sin(i / 20)), int(HEIGHT / 2 + 250 * np.cos(i / 15)))
        cv2.circle(image, center, DISC_RADIUS_PX, (250, 230, 200), thickness=-1, lineType=cv2.LINE_AA)
        return image


def encode_with_writer(path: Path, scene: Scene, frames: int, preset: str) -> float:
    """Frames/s of VideoWriter (time inside write() and close() only)."""
    spent = 0.0
    writer = VideoWriter(path, WIDTH, HEIGHT, fps=FPS, crf=CRF, preset=preset)
    with writer:
        for i in range(frames):
            image = scene.frame(i)
            t = time.perf_counter()
            writer.write(image)
            spent += time.perf_counter() - t
        t = time.perf_counter()
    spent += time.perf_counter() - t  # the flush of the encoder's look-ahead happens in close()
    return frames / spent


def encode_with_bare_pyav(path: Path, scene: Scene, frames: int, preset: str) -> float:
    spent = 0.0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": str(CRF), "preset": preset})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            image = scene.frame(i)
            t = time.perf_counter()
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
            spent += time.perf_counter() - t
        t = time.perf_counter()
        container.mux(stream.encode(None))
    spent += time.perf_counter() - t
    return frames / spent


def decode_with_reader(path: Path) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for image in VideoReader(path, fps=FPS).frames():
        n += image.shape[0] > 0
    return n / (time.perf_counter() - t), n


def decode_with_opencv(path: Path) -> float:
    t = time.perf_counter()
    capture = cv2.VideoCapture(str(path))
    n = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        n += 1
    capture.release()
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()
    frames = round(args.seconds * FPS)
    print(f"{WIDTH}x{HEIGHT} {FPS} fps, {frames} frames ({args.seconds:g} s); {os.cpu_count()} CPU cores; "
          f"PyAV {av.__version__}, libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}")
    scene = Scene(frames)
    with tempfile.TemporaryDirectory(prefix="latentsync-bench-") as folder:
        folder = Path(folder)
        clip = folder / "clip.mp4"
        results = []
        for preset in PRESETS:
            path = clip if preset == "medium" else folder / f"{preset}.mp4"
            rate = encode_with_writer(path, scene, frames, preset)
            size_mb = path.stat().st_size / 1e6
            results.append((f"encode VideoWriter crf {CRF} {preset}", rate, f"{size_mb:.1f} MB, "
                            f"{size_mb * 8 / args.seconds:.1f} Mb/s"))
            if not args.skip_baselines:
                rate = encode_with_bare_pyav(folder / f"bare-{preset}.mp4", scene, frames, preset)
                results.append((f"  baseline: bare PyAV loop, {preset}", rate, ""))

        rate, n = decode_with_reader(clip)
        results.append(("decode VideoReader.frames() -> RGB", rate, f"{n} frames"))
        reader = VideoReader(clip, fps=FPS)
        t = time.perf_counter()
        count = reader.count()
        results.append(("decode VideoReader.count() (no RGB)", count / (time.perf_counter() - t), f"{count} frames"))
        start = frames // 2 + 3  # not on a keyframe
        t = time.perf_counter()
        got = sum(1 for _ in reader.frames(start, start + SLICE_FRAMES))
        elapsed = time.perf_counter() - t
        # x264's default keyint is 250 frames, so a 10 s clip has one keyframe and this slice decodes from frame
        # 0: the worst case. Phone and camera videos put a keyframe every 1-2 s.
        results.append((f"decode frames({start}, {start + SLICE_FRAMES}) with seek", got / elapsed,
                        f"{elapsed * 1000:.0f} ms for {got} frames (one keyframe per 250 frames)"))
        if not args.skip_baselines:
            results.append(("  baseline: OpenCV VideoCapture + BGR->RGB", decode_with_opencv(clip), ""))

    width = max(len(name) for name, _, _ in results)
    for name, rate, note in results:
        print(f"{name:<{width}}  {rate:7.1f} frames/s  {note}")


if __name__ == "__main__":
    main()
