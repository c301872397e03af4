"""Inference at 1080p with tiny random-weight models: per-stage throughput, peak memory, and a naive baseline.

What it measures (this machine, CPU only; tiny 128 px models so that the networks take little of the time):
1. `latentsync infer` on generated 1080p talking-head clips of 10 s and 60 s, each in a fresh process:
   wall time, busy seconds and frames/s per stage, and peak RSS. Target: peak RSS 60 s / 10 s <= 1.25
   (memory must not grow with the video's length).
2. Pre- and post-processing alone (decode, detect, align, restore, encode) at 1080p: the streaming pipeline's
   stages against a naive loop that runs the same functions one frame at a time, with no threads or pools.
3. The denoise stage of one 16-frame chunk (the batch-1 path) with the demo's models, per phase (VAE encode,
   UNet, VAE decode): whole-chunk VAE calls (the reference's, and ours where memory allows), the slice
   `LipSync` picks on this machine, and the former double slicing (diffusers' one frame per call inside groups
   of 8) as the baseline.

    .venv/bin/python bench/inference.py [--seconds 10 60] [--steps 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from latentsync.demo import UNET_CONFIG_NAME, load_portrait, synth_speech, write_tiny_checkpoints
from latentsync.media import VideoWriter, write_wav

WIDTH, HEIGHT, FPS = 1920, 1080, 25
FACE_HEIGHT_PX = 700  # the portrait (600 px tall) is scaled so the head fills a typical talking-head shot


def make_clip(path: Path, seconds: float) -> Path:
    """A 1080p clip: the portrait on a textured background, swaying and zooming slightly, with no audio."""
    portrait = load_portrait()
    scale = FACE_HEIGHT_PX / portrait.shape[0]
    portrait = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8), (0, 0), 8)
    ph, pw = portrait.shape[:2]
    canvas = background.copy()
    y0, x0 = HEIGHT - ph, (WIDTH - pw) // 2
    canvas[y0:, x0 : x0 + pw] = portrait
    with VideoWriter(path, WIDTH, HEIGHT, fps=FPS, preset="veryfast") as writer:
        for i in range(int(seconds * FPS)):
            t = i / FPS
            m = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT * 0.6), 2 * np.sin(2 * np.pi * 0.3 * t),
                                        1 + 0.02 * np.sin(2 * np.pi * 0.2 * t))
            writer.write(cv2.warpAffine(canvas, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT))
    return path


def child_infer(argv: list[str]) -> None:
    """Runs in a fresh process: one job, then prints timings and this process's peak RSS as JSON."""
    from latentsync.inference import InferenceOptions, LipSync

    parser = argparse.ArgumentParser()
    for name in ("--checkpoints", "--video", "--audio", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)

    ck = Path(args.checkpoints)
    t0 = time.perf_counter()
    lipsync = LipSync(ck, unet_config=ck / UNET_CONFIG_NAME, device="cpu", audio_cache=False)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = lipsync.run(args.video, args.audio, args.out, InferenceOptions(steps=args.steps), progress=False)
    wall = time.perf_counter() - t0
    print(json.dumps({"frames": result.frames, "wall": wall, "load": load, "stages": result.seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def naive_prepost(video: Path, out: Path, frames: int) -> dict[str, float]:
    """The same pre/post-processing functions, one frame at a time: decode, detect, align, restore, encode."""
    from latentsync.face.align import FaceAligner, restore_face, warp_face
    from latentsync.face.detect import load_face_backend
    from latentsync.face.tracking import FaceTracker
    from latentsync.media import VideoReader

    busy = dict.fromkeys(["decode", "detect", "align", "restore", "encode"], 0.0)
    aligner = FaceAligner(256)
    with FaceTracker(load_face_backend("mediapipe")) as tracker, \
            VideoWriter(out, WIDTH, HEIGHT, fps=FPS) as writer:
        t = time.perf_counter()
        for i, frame in enumerate(VideoReader(video).frames(0, frames)):
            busy["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            face = tracker.track(frame)
            busy["detect"] += time.perf_counter() - t
            if face is not None:
                t = time.perf_counter()
                matrix = aligner.matrix(face.points)
                crop = warp_face(frame, matrix, 256)
                busy["align"] += time.perf_counter() - t
                t = time.perf_counter()
                frame = restore_face(frame, crop, matrix)  # the crop itself stands in for a generated face
                busy["restore"] += time.perf_counter() - t
            t = time.perf_counter()
            writer.write(frame)
            busy["encode"] += time.perf_counter() - t
            t = time.perf_counter()
    return busy


class IdentityPipeline:
    """Stands in for the networks: returns the aligned faces as they are, so that only the streaming machinery
    (decode, detect, align, paste back, encode, and the threads between them) is measured."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):  # vae, vae_offload, ...: the real pipeline's
        return getattr(self.real, name)

    def initial_noise(self, seed):
        return None

    def __call__(self, faces, tokens, options, **kwargs):
        return faces.float() if kwargs.get("output_type") == "float" else faces


def streaming_prepost(checkpoints: Path, video: Path, audio: Path, out: Path) -> tuple[int, float, dict]:
    """The streaming pipeline with the networks replaced by the identity: (frames, wall seconds, busy times)."""
    from latentsync.inference import LipSync

    lipsync = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False)
    lipsync.pipeline = IdentityPipeline(lipsync.pipeline)
    t0 = time.perf_counter()
    result = lipsync.run(video, audio, out, progress=False)
    return result.frames, time.perf_counter() - t0, result.seconds


def denoise_phases(checkpoints: Path, steps: int, repeats: int = 2) -> dict[str, dict[str, float]]:
    """Seconds per phase of one 16-frame chunk through `LipSyncPipeline`, best of `repeats`, per VAE setting."""
    import dataclasses

    import torch

    from latentsync.inference import InferenceOptions, LipSync

    lipsync = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False)
    pipeline, vae = lipsync.pipeline, lipsync.pipeline.vae
    sampling = lipsync.sampling_for(InferenceOptions(steps=steps))
    r = lipsync.resolution
    g = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (16, r, r, 3), generator=g, dtype=torch.uint8)
    tokens = torch.randn(16, 50, 384, generator=g)
    spent: dict[str, float] = {}
    started: list[float] = []

    def enter(*_):
        started.append(time.perf_counter())

    def leave(name):
        def hook(*_):
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started.pop()
        return hook

    hooks = []
    for module, name in ((pipeline.unet, "unet"), (vae.encoder, "vae encode"), (vae.decoder, "vae decode")):
        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave(name))]
    settings = {"whole-chunk VAE calls": (0, False), f"chosen here ({sampling.vae_slice or 'whole'})":
                (sampling.vae_slice, False), "before: diffusers slicing in groups of 8": (8, True)}
    results = {}
    for label, (size, diffusers_slicing) in settings.items():
        vae.use_slicing = diffusers_slicing
        best: dict[str, float] = {}
        for _ in range(repeats):
            spent.clear()
            pipeline(faces, tokens, dataclasses.replace(sampling, vae_slice=size), generator=torch.Generator())
            best = {k: min(v, best.get(k, v)) for k, v in spent.items()}
        results[label] = best
    vae.use_slicing = False
    for h in hooks:
        h.remove()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (the networks are not measured)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated files in this folder")
    args = parser.parse_args()
    from latentsync import stderr_filter

    stderr_filter.install()  # mediapipe's start-up notices

    work = args.keep or Path(tempfile.mkdtemp(prefix="latentsync-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU threads: {os.cpu_count()}; tiny 128 px models; {args.steps} steps; files in {work}")
    checkpoints = write_tiny_checkpoints(work / "checkpoints")

    runs = {}
    for seconds in args.seconds:
        video = work / f"talk_{seconds:g}s.mp4"
        if not video.exists():
            t0 = time.perf_counter()
            make_clip(video, seconds)
            print(f"made {video.name} in {time.perf_counter() - t0:.0f} s")
        audio = write_wav(work / f"speech_{seconds:g}s.wav", synth_speech(seconds), 16_000)
        cmd = [sys.executable, __file__, "--child", "--checkpoints", str(checkpoints), "--video", str(video),
               "--audio", str(audio), "--out", str(work / f"synced_{seconds:g}s.mp4"), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[seconds] = json.loads(out.strip().splitlines()[-1])

    print("\n1) latentsync infer at 1920x1080 (streaming, bounded queues)")
    print(f"{'clip':>6} {'frames':>6} {'wall s':>7} {'fps':>6} {'peak RSS MB':>12}   busy s (frames/s) per stage")
    for seconds, r in runs.items():
        stages = "  ".join(f"{k} {v:.1f} ({r['frames'] / v:.0f})" for k, v in r["stages"].items() if v > 0)
        print(f"{seconds:>5g}s {r['frames']:>6} {r['wall']:>7.1f} {r['frames'] / r['wall']:>6.1f} "
              f"{r['peak_rss_mb']:>12.0f}   {stages}")
    if len(runs) >= 2:
        short, long = runs[min(runs)], runs[max(runs)]
        ratio = long["peak_rss_mb"] / short["peak_rss_mb"]
        verdict = "meets" if ratio <= 1.25 else "MISSES"
        print(f"peak RSS {max(runs):g} s / {min(runs):g} s = {ratio:.2f} ({verdict} the target <= 1.25)")

    seconds = min(args.seconds)
    video, audio = work / f"talk_{seconds:g}s.mp4", work / f"speech_{seconds:g}s.wav"
    print(f"\n2) pre/post-processing only (decode, detect, align, restore, encode) at 1080p, {seconds:g} s clip")
    n, wall, busy = streaming_prepost(checkpoints, video, audio, work / "prepost.mp4")
    naive = naive_prepost(video, work / "naive.mp4", n)
    naive_total = sum(naive.values())
    print(f"   naive loop, one frame at a time, same functions: {n / naive_total:.1f} frames/s   ("
          + "  ".join(f"{k} {n / v:.0f} fps" for k, v in naive.items() if v > 0) + ")")
    print(f"   streaming pipeline (threads, pools, ROI paste-back): {n / wall:.1f} frames/s   "
          f"= {naive_total / wall:.2f}x the naive loop")

    print(f"\n3) denoise stage, one 16-frame chunk, demo models, {args.steps} steps: seconds per phase")
    phases = denoise_phases(checkpoints, args.steps)
    baseline = phases["before: diffusers slicing in groups of 8"]
    for label, spent in phases.items():
        vae_s = spent.get("vae encode", 0) + spent.get("vae decode", 0)
        base_vae = baseline.get("vae encode", 0) + baseline.get("vae decode", 0)
        print(f"   {label:44s} " + "  ".join(f"{k} {v:.2f}" for k, v in spent.items())
              + f"   VAE {vae_s:.2f} s = {base_vae / vae_s:.1f}x faster than before")

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_infer(sys.argv[2:])
    else:
        main()
