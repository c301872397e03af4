"""Speed of the sync-confidence metric (`sync_confidence`, LSE-C / LSE-D) on a 1080p talking-head clip.

The clip: the demo portrait scaled to 1080 px high on a 1920 x 1080 canvas, moving gently
(`latentsync.demo.make_talking_clip`), with synthetic speech (`synth_speech`), H.264 + AAC. SyncNetV2 has
random weights: the compute is the same as with the published `syncnet_v2.model`. The random network finds
no real sync, so the numbers it prints are meaningless; only the time is.

Measured: wall-clock seconds for the whole call, reported as seconds per minute of video, and a breakdown
(face detection pass, crop pass, SyncNet features + distances) from the same steps run one by one. There is no
reference baseline on this machine (the reference needs S3FD weights, ffmpeg and writes JPEG frames).

    .venv/bin/python bench/eval.py [--seconds 10] [--backend mediapipe] [--threads 2] [--batch-size 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from latentsync import sync_score as sc
from latentsync.defaults import SAMPLE_RATE_HZ
from latentsync.demo import load_portrait, make_talking_clip, synth_speech
from latentsync.face.detect import load_face_backend
from latentsync.face.sync_tracks import track_faces
from latentsync.media import VideoReader, VideoWriter, decode_audio, write_wav
from latentsync.models.syncnet_v2 import load_syncnet_v2

FRAME_W, FRAME_H = 1920, 1080
CANVAS_GREY = 90
SEED = 0
SECONDS_PER_MINUTE = 60.0


def portrait_1080p() -> np.ndarray:
    """The portrait scaled to the frame height, centred on a grey 1920 x 1080 canvas (RGB uint8)."""
    face = load_portrait()
    scale = FRAME_H / face.shape[0]
    face = cv2.resize(face, (round(face.shape[1] * scale), FRAME_H), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((FRAME_H, FRAME_W, 3), CANVAS_GREY, np.uint8)
    x0 = (FRAME_W - face.shape[1]) // 2
    canvas[:, x0: x0 + face.shape[1]] = face
    return canvas


def build_clip(folder: Path, seconds: float) -> Path:
    silent = make_talking_clip(folder / "silent.mp4", seconds=seconds, image=portrait_1080p())
    speech = write_wav(folder / "speech.wav", synth_speech(seconds, seed=SEED))
    reader = VideoReader(silent)
    out = folder / "talking_1080p.mp4"
    with VideoWriter(out, reader.width, reader.height, audio=speech) as writer:
        for frame in reader.frames():
            writer.write(frame)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--backend", default="mediapipe", help="face backend: mediapipe, insightface, auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=sc.DEFAULT_BATCH_SIZE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = load_syncnet_v2(None)  # random weights, float32, CPU

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        clip = build_clip(Path(tmp), args.seconds)
        print(f"clip: {FRAME_W}x{FRAME_H}, {args.seconds:g} s at {sc.VIDEO_FPS} fps, with speech "
              f"(built in {time.perf_counter() - t0:.1f} s, not counted)")

        backend = load_face_backend(args.backend)
        try:
            # Warm-up: first calls build mediapipe's graph and oneDNN's kernels.
            sc.sync_confidence(clip, model, backend=backend, min_track=1, min_face_size=1, batch_size=args.batch_size)

            t0 = time.perf_counter()
            result = sc.sync_confidence(clip, model, backend=backend, batch_size=args.batch_size)
            total = time.perf_counter() - t0

            # The same steps one by one, for the breakdown.
            t0 = time.perf_counter()
            detections = sc.detect_faces(clip, backend)
            t_detect = time.perf_counter() - t0
            tracks = track_faces(detections)
            t0 = time.perf_counter()
            crops = [list(sc.track_crops(clip, track)) for track in tracks]  # sync_confidence streams these
            t_crop = time.perf_counter() - t0
            pcm = sc.pcm16(decode_audio(clip, SAMPLE_RATE_HZ))
            t0 = time.perf_counter()
            windows = 0
            for track, frames in zip(tracks, crops):
                segment = pcm[track.start * sc.SAMPLES_PER_FRAME: track.stop * sc.SAMPLES_PER_FRAME]
                windows += sc.score_windows(frames, segment, *sc.model_features(model),
                                            batch_size=args.batch_size).windows
            t_score = time.perf_counter() - t0
        finally:
            backend.close()

    per_minute = SECONDS_PER_MINUTE / args.seconds
    print(f"device: CPU, {torch.get_num_threads()} torch threads; face backend: {backend.name}")
    print(f"tracks: {[(t.start, t.stop) for t in result.tracks]}; frames: {result.frames}; windows: {windows}")
    print(f"sync_confidence: {total:.2f} s for {args.seconds:g} s of video = "
          f"{total * per_minute:.1f} s per minute of video ({result.frames / total:.1f} frames/s)")
    print(f"  face detection pass: {t_detect * per_minute:6.1f} s/min  ({len(detections) / t_detect:.1f} frames/s)")
    print(f"  decode + crop:       {t_crop * per_minute:6.1f} s/min")
    print(f"  SyncNet + distances: {t_score * per_minute:6.1f} s/min  ({windows / t_score:.1f} windows/s)")


if __name__ == "__main__":
    main()
