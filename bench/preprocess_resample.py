"""Throughput of the data pipeline's resample step (step 2) on sources that are already 25 fps.

Most talking-head sources (VoxCeleb2, HDTF, web videos) are 25 fps H.264 already. The reference still passes
them through ffmpeg (`-c:v copy` only when OpenCV reports 25 fps), and a naive pipeline re-encodes everything.
`ResampleStep` remuxes their video packets unchanged and re-encodes only the audio (16 kHz mono AAC).

Generates one 1280x720 25 fps clip (default 10 s: a textured scene panning under the camera with sensor-like
noise, H.264 crf 18, stereo 48 kHz AAC) and copies it to N files, then times, over all N:

* copy: `ResampleStep.run` (packet scan, video remux, audio decode/downmix/resample/encode, atomic write);
* re-encode: `resample_video(..., allow_copy=False)`: what a non-25 fps source costs, and what every clip
  costs when a pipeline always re-encodes: decode, 25 fps conversion, libx264 crf 18 (`--preset`, default
  veryfast, our default; the reference's ffmpeg call uses libx264's default, medium);
* check: `CheckStep.run` (step 1's full decode without RGB conversion), for scale.

Prints clips per minute for each and the copy / re-encode ratio.

    .venv/bin/python bench/preprocess_resample.py [--clips 8] [--seconds 10] [--preset veryfast]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from latentsync.config import PreprocessConfig
from latentsync.media import VideoWriter, write_wav
from latentsync.preprocess.base import Item, StepContext
from latentsync.preprocess.check import CheckStep
from latentsync.preprocess.resample import RESAMPLE_CRF, ResampleStep, resample_video

WIDTH, HEIGHT = 1280, 720
FPS = 25
AUDIO_RATE_HZ = 48_000
SEED = 0
PAN_PX_PER_FRAME = 4
NOISE_SIGMA = 3.0  # sensor-like noise, in 8-bit levels
NOISE_FRAMES = 8  # pre-drawn noise fields, cycled
TEXTURE_BLUR_PX = 31
SOURCE_PRESET = "veryfast"  # only for making the source clip


def make_source(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(SEED)
    frames = round(seconds * FPS)
    pan = PAN_PX_PER_FRAME * frames
    small = rng.integers(0, 256, size=((HEIGHT + 7) // 8, (WIDTH + pan + 7) // 8, 3), dtype=np.uint8)
    texture = cv2.GaussianBlur(cv2.resize(small, None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC),
                               (TEXTURE_BLUR_PX, TEXTURE_BLUR_PX), 0)
    noise = [rng.normal(0, NOISE_SIGMA, size=(HEIGHT, WIDTH, 3)).astype(np.int16) for _ in range(NOISE_FRAMES)]
    t = np.arange(round(seconds * AUDIO_RATE_HZ)) / AUDIO_RATE_HZ
    speech_like = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wav = write_wav(path.with_suffix(".wav"), np.stack([speech_like, 0.8 * speech_like], axis=1), AUDIO_RATE_HZ)
    with VideoWriter(path, WIDTH, HEIGHT, fps=FPS, crf=RESAMPLE_CRF, preset=SOURCE_PRESET, audio=wav) as writer:
        for i in range(frames):
            x = PAN_PX_PER_FRAME * i
            image = texture[:HEIGHT, x : x + WIDTH].astype(np.int16) + noise[i % NOISE_FRAMES]
            writer.write(np.clip(image, 0, 255).astype(np.uint8))
    wav.unlink()
    return path


def timed(label: str, fn, sources: list[Path]) -> float:
    start = time.perf_counter()
    for src in sources:
        fn(src)
    elapsed = time.perf_counter() - start
    rate = len(sources) / elapsed * 60
    print(f"{label:<34} {elapsed:7.2f} s  {elapsed / len(sources):6.3f} s/clip  {rate:8.1f} clips/min")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--preset", default="veryfast", help="libx264 preset of the re-encode baseline")
    args = parser.parse_args()

    config = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        source = make_source(root / "source.mp4", args.seconds)
        print(f"source: {WIDTH}x{HEIGHT} {FPS} fps, {args.seconds:g} s, {source.stat().st_size / 1e6:.1f} MB "
              f"(made in {time.perf_counter() - t0:.1f} s); {args.clips} copies")
        sources = []
        for k in range(args.clips):
            sources.append(root / "in" / f"clip{k:02d}.mp4")
            sources[-1].parent.mkdir(exist_ok=True)
            shutil.copyfile(source, sources[-1])

        step = ResampleStep(config)
        ctx = StepContext(root / "copy")

        def copy(src: Path) -> None:
            result = step.run(Item(src.name, str(src)), ctx)
            assert result.metrics["copied"], result.metrics

        def reencode(src: Path) -> None:
            resample_video(src, root / "encoded" / src.name, fps=config.video_fps,
                           audio_rate=config.audio_sample_rate, preset=args.preset, allow_copy=False)

        check_step = CheckStep(config)

        def check(src: Path) -> None:
            assert check_step.run(Item(src.name, str(src)), StepContext(root / "check")).rejected is None

        copy_rate = timed("resample, stream copy (ours)", copy, sources)
        encode_rate = timed(f"resample, re-encode ({args.preset})", reencode, sources)
        timed("check (full decode, no RGB)", check, sources)
        print(f"stream copy is {copy_rate / encode_rate:.1f}x the clips per minute of re-encoding")


if __name__ == "__main__":
    main()
