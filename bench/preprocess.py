"""The data pipeline on this machine: clips per minute of each of the seven steps.

Generates N talking-head clips (the portrait matplotlib ships, with synthetic speech; one in two cuts to a
faceless shot halfway, so shot detection and rejections have work to do), writes random-weight SyncNet and
hyperIQA files (the compute is the same as with the published weights), runs `latentsync preprocess` with
permissive thresholds, and prints each step's busy time and clips per minute. The resample step against
re-encoding every clip is measured by bench/preprocess_resample.py.

    .venv/bin/python bench/preprocess.py [--clips 6] [--seconds 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from latentsync.config import load_preprocess_config
from latentsync.demo import make_talking_clip, synth_speech
from latentsync.media import VideoReader, VideoWriter, write_wav
from latentsync.models.hyperiqa import HyperNet
from latentsync.models.syncnet_v2 import SyncNetV2
from latentsync.preprocess.runner import Runner

PERMISSIVE = ["sync_conf_threshold=-1000", "sync_max_offset=15", "quality_threshold=-1000"]


def make_dataset(root: Path, clips: int, seconds: float) -> tuple[Path, Path]:
    inp = root / "in"
    speech = write_wav(root / "speech.wav", synth_speech(seconds), 16_000)
    frames = list(VideoReader(make_talking_clip(root / "portrait.mp4", seconds=seconds)).frames())
    field = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, frames[0].shape, dtype=np.uint8), (0, 0), 6)
    for k in range(clips):
        path = inp / f"speaker{k % 3}" / f"clip{k:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        cut = len(frames) // 2 if k % 2 else None
        with VideoWriter(path, frames[0].shape[1], frames[0].shape[0], audio=speech) as writer:
            for i, frame in enumerate(frames):
                writer.write(field if cut is not None and i >= cut else frame)
    checkpoints = root / "checkpoints"
    (checkpoints / "auxiliary").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), checkpoints / "auxiliary" / "syncnet_v2.model")
    torch.save(HyperNet().state_dict(), checkpoints / "auxiliary" / "koniq_pretrained.pkl")
    return inp, checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from latentsync import stderr_filter

    stderr_filter.install()
    root = Path(tempfile.mkdtemp(prefix="latentsync-bench-"))
    inp, checkpoints = make_dataset(root, args.clips, args.seconds)
    t0 = time.perf_counter()
    summary = Runner(inp, root / "out", load_preprocess_config(None, PERMISSIVE), workers=args.workers,
                     checkpoints=checkpoints, progress=False).run()
    wall = time.perf_counter() - t0
    print(f"{args.clips} clips of {args.seconds:g} s (512x600, 25 fps), {args.workers} worker(s), CPU; "
          f"random-weight networks; wall {wall:.1f} s")
    print(f"{'step':9s} {'items':>5s} {'busy s':>7s} {'items/min':>9s}")
    for s in summary.steps:
        rate = 60 * s.inputs / s.seconds if s.seconds else float("inf")
        print(f"{s.name:9s} {s.inputs:5d} {s.seconds:7.1f} {rate:9.1f}")
    print(f"whole pipeline: {60 * args.clips / wall:.1f} source clips per minute "
          f"({summary.clips_out} training clips out)")
    (root / "bench.json").write_text(json.dumps(summary.to_json(), indent=2))


if __name__ == "__main__":
    main()
