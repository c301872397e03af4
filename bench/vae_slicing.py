"""VAE slicing: time and peak memory of decoding a 16-frame chunk with the Stable Diffusion VAE architecture
(random weights, `sd-vae-ft-mse`'s configuration) on the CPU, in a fresh process each: the whole chunk at once
(the reference), our former double slicing (diffusers' one frame per call inside groups of 8), and one slicing
of a few frames per call (`decode_frames(slice_size=...)`, what `LipSync` picks when memory is short).

The reference decodes a whole chunk at once; at 512 px the decoder's first full-resolution activations alone
are 16 x 128 x 512 x 512 floats (2 GB).

    .venv/bin/python bench/vae_slicing.py [--resolution 256] [--frames 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from latentsync.models.vae import SD_VAE_CONFIG


def child(mode: str, resolution: int, frames: int) -> None:
    from diffusers import AutoencoderKL

    from latentsync.models.vae import decode_frames

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE_CONFIG).eval().requires_grad_(False)
    latents = torch.randn(frames, 4, resolution // 8, resolution // 8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "whole chunk":
            out = vae.decode(latents / vae.config.scaling_factor).sample
        elif mode == "double slicing":  # before: diffusers' slicing inside groups of 8
            vae.enable_slicing()
            out = decode_frames(vae, latents, slice_size=8)
        else:  # "slices of N"
            out = decode_frames(vae, latents, slice_size=int(mode.split()[-1]))
    wall = time.perf_counter() - t0
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
    print(json.dumps({"wall": wall, "extra_peak_gb": extra, "mean": float(out.float().mean())}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    results = {}
    for mode in ("whole chunk", "double slicing", "slices of 4"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(args.resolution), str(args.frames)],
                             check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    assert all(abs(r["mean"] - results["whole chunk"]["mean"]) < 1e-3 for r in results.values())
    print(f"SD VAE decode of {args.frames} frames at {args.resolution} px on the CPU (fp32):")
    for mode, r in results.items():
        print(f"  {mode:15s} {r['wall']:6.1f} s   peak memory above the model {r['extra_peak_gb']:5.2f} GB")
    whole = results["whole chunk"]
    for mode in ("double slicing", "slices of 4"):
        r = results[mode]
        print(f"  {mode}: {r['wall'] / whole['wall']:.2f}x the time and "
              f"{r['extra_peak_gb'] / max(whole['extra_peak_gb'], 1e-3):.2f}x the peak memory of the reference's "
              f"whole-chunk decode (the baseline), same output")


if __name__ == "__main__":
    main()
