"""Inference speed and memory of the full-size networks on a GPU, with random weights (same compute as the
published ones), and what each speed-up changes in the output.

For LatentSync 1.6 (512 px, `stage2_512`) and 1.5 (256 px, `stage2`): a talking-head clip (default 10 s, 1080p)
through `LipSync.run` end to end (audio features, decode, faces, alignment, diffusion, paste-back, encode), in
seconds of compute per second of video (s/s) and peak GPU memory, for the exact path (20 DDIM steps, guidance
1.5) and each speed-up: DeepCache, DPM-Solver++ at 10 steps, torch.compile, channels-last weights, no guidance, several chunks per UNet
call, and the low-memory mode. Each variant's frames are compared with the exact path's (PSNR/SSIM).

Baselines it names: the reference 1.6 at 4.4-7.7 s/s on an H100 (published third-party figures) and ~18 GB of
VRAM; targets 2.5 s/s (stretch 1.5) and <= 18 GB for 1.6, faster than real time (< 1 s/s) for 1.5.

    .venv/bin/python bench/gpu_inference.py [--versions 1.6 1.5] [--seconds 10] [--variants ...] [--json F]
    .venv/bin/python bench/gpu_inference.py --tiny --seconds 1 --steps 2     # CPU smoke run, tiny models

Random weights: the UNet is built from its config with its own initialisation, then its zero-initialised
`conv_out` gets small random weights so the output depends on the input (otherwise every variant would agree
trivially). The VAE has sd-vae-ft-mse's architecture, Whisper tiny's encoder its real size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference import make_clip  # noqa: E402  (bench/inference.py: the 1080p talking-head clip)

from latentsync.demo import TINY_WHISPER_DIMS, synth_speech, write_tiny_checkpoints  # noqa: E402
from latentsync.media import write_wav  # noqa: E402
from latentsync.models.vae import SD_VAE_CONFIG  # noqa: E402

FPS = 25
REFERENCE_S_PER_S = (4.4, 7.7)  # reference 1.6 on an H100, published third-party figures
TARGET_S_PER_S = {"1.6": 2.5, "1.5": 1.0}
TARGET_PEAK_GB = {"1.6": 18.0}
CONFIG_FOR_VERSION = {"1.6": "stage2_512", "1.5": "stage2"}
CONV_OUT_STD = 0.02

# name -> (InferenceOptions overrides, LipSync overrides)
VARIANTS = {
    "exact": ({}, {}),
    "deepcache": ({"deepcache": 3}, {}),
    "dpm++10": ({"scheduler": "dpm++", "steps": 10}, {}),
    "compile": ({}, {"compile": True}),
    "channels-last": ({}, {"channels_last": True}),
    "guidance1": ({"guidance": 1.0}, {}),
    "batch2": ({"batch_chunks": 2}, {}),
    "low-memory": ({"low_memory": True}, {"offload": True}),  # what `latentsync infer --low-memory` does
}


def write_random_checkpoints(root: Path, config_name: str, device: str) -> Path:
    """Full-size random UNet (fp16 file; initialised on `device`, much faster on a GPU), Whisper tiny and the SD
    VAE in the standard checkpoints layout."""
    from diffusers import AutoencoderKL
    from whisper.model import ModelDimensions, Whisper

    from latentsync.models.unet import load_unet, save_unet_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = load_unet(config_name, device=device)
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, CONV_OUT_STD)
    save_unet_checkpoint(unet.half().cpu(), root / "latentsync_unet.pt")
    del unet
    (root / "whisper").mkdir(exist_ok=True)
    dims = ModelDimensions(**TINY_WHISPER_DIMS)  # the real tiny encoder; the unused decoder shrunk
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).half().state_dict()},
               root / "whisper" / "tiny.pt")
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(root / "sd-vae-ft-mse")
    return root


def run_variant(checkpoints: Path, unet_config, video: Path, audio: Path, out: Path, device: str,
                options: dict, loader: dict, steps: int) -> dict:
    from latentsync.inference import InferenceOptions, LipSync

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    lipsync = LipSync(checkpoints, unet_config=unet_config, device=device, audio_cache=False, **loader)
    load = time.perf_counter() - t0
    opts = InferenceOptions(**{"steps": steps, **options})
    runs = 2 if loader.get("compile") else 1  # the first compiled run pays the compilation
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = lipsync.run(video, audio, out, opts, progress=False)
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    seconds_of_video = result.frames / FPS
    report = {"load_s": load, "wall_s": walls[-1], "s_per_s": walls[-1] / seconds_of_video,
              "frames": result.frames, "frames_without_face": result.frames_without_face, "stages_s": result.seconds}
    if runs > 1:
        report["first_run_s_per_s"] = walls[0] / seconds_of_video
    if cuda:
        report["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        report["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        # Beside it, what latentsync.estimate predicts for the same settings without a GPU (bench/vram_estimate.py).
        from diffusers import AutoencoderKL

        from latentsync.estimate import estimate_chunk_memory

        report["estimated_peak_gb"] = estimate_chunk_memory(
            unet_config, dtype=lipsync.dtype, sampling=opts.sampling(), batch_chunks=opts.batch_chunks,
            offload=loader.get("offload", False),
            vae_config=AutoencoderKL.load_config(checkpoints / "sd-vae-ft-mse")).peak / 2**30
    del lipsync
    return report


def write_synthetic_face_models(checkpoints: Path) -> None:
    """InsightFace-shaped ONNX models with constant outputs (tests/face_util.py) at buffalo_l's paths: one
    fixed face box and landmark set. For a machine without mediapipe (the GPU image), where the published ONNX
    files cannot be downloaded either. The detector then costs next to nothing, so the faces stage is
    understated; the networks, alignment, paste-back and encoding are measured as they are."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from face_util import anchor_index, scrfd_outputs, write_landmark_constant, write_scrfd_constant

    from latentsync.weights import CheckpointLayout

    layout = CheckpointLayout(checkpoints)
    outs = scrfd_outputs()
    i = anchor_index(32, 8, 2, 0)  # centre (256, 64) on the 512 px detector input: the head of the 1080p clip
    outs["score_32"][i] = 0.9
    outs["bbox_32"][i] = [2.5, 1.5, 2.5, 4.5]  # (176, 16, 336, 208), x3.75 in the frame: 600 x 720 px
    angles = np.linspace(0, 2 * np.pi, 106, endpoint=False)
    landmarks = np.stack([0.6 * np.cos(angles), 0.75 * np.sin(angles)], axis=1)  # an oval filling the crop
    write_scrfd_constant(layout.insightface_det, outs)
    write_landmark_constant(layout.insightface_landmarks, landmarks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["1.6", "1.5"], choices=list(CONFIG_FOR_VERSION))
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the exact path (default: 20)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny 128 px models (a CPU smoke run)")
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints, clips and outputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here, after each variant")
    parser.add_argument("--faces", choices=["auto", "synthetic"], default="auto",
                        help="synthetic: constant InsightFace-shaped ONNX models (for a machine without mediapipe)")
    parser.add_argument("--budget-s", type=float, default=0,
                        help="start no further variant once this many seconds have passed (0: no limit)")
    args = parser.parse_args()
    started = time.perf_counter()
    from latentsync import stderr_filter
    from latentsync.evaluation.frames import compare_videos

    stderr_filter.install()
    work = args.work or Path(tempfile.mkdtemp(prefix="latentsync-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, torch {torch.__version__}")

    video = work / f"talk_{args.seconds:g}s.mp4"
    if not video.exists():
        make_clip(video, args.seconds)
    audio = write_wav(work / f"speech_{args.seconds:g}s.wav", synth_speech(args.seconds), 16_000)

    figures: dict = {}
    for version in (["tiny"] if args.tiny else args.versions):
        if args.tiny:
            checkpoints = write_tiny_checkpoints(work / "ck-tiny")
            unet_config = checkpoints / "unet.yaml"
        else:
            checkpoints = work / f"ck-{version}"
            if not (checkpoints / "latentsync_unet.pt").exists():
                t0 = time.perf_counter()
                write_random_checkpoints(checkpoints, CONFIG_FOR_VERSION[version], args.device)
                print(f"{version}: wrote random full-size checkpoints in {time.perf_counter() - t0:.0f} s")
            unet_config = CONFIG_FOR_VERSION[version]
        variants = args.variants if version != "1.5" else [v for v in args.variants if v in ("exact", "deepcache")]
        results = figures[version] = {}
        if args.faces == "synthetic":
            write_synthetic_face_models(checkpoints)
        for name in (["exact"] + [v for v in variants if v != "exact"]):
            if args.budget_s and time.perf_counter() - started > args.budget_s:
                print(f"{version} {name}: skipped, past the {args.budget_s:g} s budget", flush=True)
                continue
            options, loader = VARIANTS[name]
            out = work / f"out-{version}-{name}.mp4"
            r = run_variant(checkpoints, unet_config, video, audio, out, args.device, options, loader, args.steps)
            if name != "exact":
                r.update({k: v for k, v in compare_videos(work / f"out-{version}-exact.mp4", out).items()
                          if k in ("psnr", "ssim")})
            results[name] = r
            if args.json:  # after each variant: a run cut short still leaves its figures
                args.json.write_text(json.dumps(figures, indent=2))
            peak = (f"{r['peak_gb']:.1f} GB (reserved {r['peak_reserved_gb']:.1f}, estimated "
                    f"{r['estimated_peak_gb']:.1f})" if "peak_gb" in r else "-")
            quality = f"PSNR {r['psnr']:.1f} dB SSIM {r['ssim']:.3f} vs exact" if "psnr" in r else "(reference)"
            first = f" (first run {r['first_run_s_per_s']:.2f})" if "first_run_s_per_s" in r else ""
            print(f"{version:>4} {name:>10}: {r['s_per_s']:.2f} s/s{first}, peak {peak}, {quality}; "
                  + " ".join(f"{k} {v:.1f}s" for k, v in r["stages_s"].items()), flush=True)
        if "exact" in results and version in TARGET_S_PER_S:
            s = results["exact"]["s_per_s"]
            print(f"{version}: exact path {s:.2f} s/s = {REFERENCE_S_PER_S[0] / s:.1f}-{REFERENCE_S_PER_S[1] / s:.1f}x "
                  f"faster than the reference's {REFERENCE_S_PER_S[0]}-{REFERENCE_S_PER_S[1]} s/s (1.6, H100); "
                  f"target {TARGET_S_PER_S[version]} s/s: {'met' if s <= TARGET_S_PER_S[version] else 'MISSED'}")
            if version in TARGET_PEAK_GB and "peak_gb" in results["exact"]:
                peak = results["exact"]["peak_gb"]
                print(f"{version}: peak {peak:.1f} GB, target <= {TARGET_PEAK_GB[version]} GB: "
                      f"{'met' if peak <= TARGET_PEAK_GB[version] else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
