"""Arithmetic per second of video for each speed-up, for 1.6 (512 px) and 1.5 (256 px), counted on the CPU:
the full-size UNet and VAE run one 16-frame chunk on PyTorch's meta device under torch's FlopCounterMode
(matrix products, convolutions, attention; `latentsync.estimate.count_chunk_flops`), every step of the sampler.

It shows, independently of any GPU, what DeepCache, DPM-Solver++ at 10 steps and dropping guidance remove, and
the compute floor on a GPU: the seconds per second of video at the GPU's peak dense fp16 rate. Baseline: the
exact path (20 DDIM steps, guidance 1.5), the reference's arithmetic; the reference runs 1.6 at 4.4-7.7 s/s on an
H100 (published third-party figures), against this floor.

    .venv/bin/python bench/flops.py [--version 1.6] [--peak-tflops 989] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

from latentsync.estimate import count_chunk_flops

CONFIG_FOR_VERSION = {"1.6": "stage2_512", "1.5": "stage2"}
H100_DENSE_FP16_TFLOPS = 989.0  # H100 SXM, dense fp16/bf16 tensor cores (NVIDIA's data sheet); H200: the same
REFERENCE_S_PER_S = (4.4, 7.7)  # reference 1.6 on an H100
TARGET_S_PER_S = 2.5  # the inference-speed issue's target for 1.6 on an H100


def settings():
    from latentsync.inference import InferenceOptions

    return {name: InferenceOptions(**options) for name, options in {
        "exact (20 DDIM steps, guidance 1.5)": {},
        "--deepcache": {"deepcache": 3},
        "--scheduler dpm++ --steps 10": {"scheduler": "dpm++", "steps": 10},
        "--guidance 1": {"guidance": 1.0},
        "--deepcache --scheduler dpm++ --steps 10": {"deepcache": 3, "scheduler": "dpm++", "steps": 10},
    }.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=list(CONFIG_FOR_VERSION), action="append",
                        help="model version(s) (default: both)")
    parser.add_argument("--peak-tflops", type=float, default=H100_DENSE_FP16_TFLOPS,
                        help="the GPU's peak dense fp16 rate for the compute floor (default: H100, %(default)g)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results: dict = {}
    for version in args.version or list(CONFIG_FOR_VERSION):
        print(f"LatentSync {version} ({CONFIG_FOR_VERSION[version]}), TFLOP per second of video (25 fps):")
        print(f"  {'setting':42s} {'UNet':>7s} {'VAE':>6s} {'total':>7s} {'vs exact':>9s} "
              f"{'floor at ' + format(args.peak_tflops, 'g') + ' TFLOP/s':>22s}")
        results[version] = {}
        exact = None
        for name, options in settings().items():
            t0 = time.perf_counter()
            count = count_chunk_flops(CONFIG_FOR_VERSION[version], sampling=options.sampling())
            per_s = {k: v * 25.0 / count.frames / 1e12 for k, v in count.phases.items()}
            total = count.per_video_second() / 1e12
            exact = exact or total
            floor = total / args.peak_tflops
            print(f"  {name:42s} {per_s['unet']:7.0f} {per_s['vae encode'] + per_s['vae decode']:6.0f} "
                  f"{total:7.0f} {exact / total:8.2f}x {floor:17.2f} s/s   ({time.perf_counter() - t0:.0f} s)")
            results[version][name] = {"tflop_per_video_s": per_s, "total": total, "floor_s_per_s": floor}
        if version == "1.6":
            floor = exact / args.peak_tflops
            print(f"  the reference's {REFERENCE_S_PER_S[0]}-{REFERENCE_S_PER_S[1]} s/s on an H100 is "
                  f"{floor / REFERENCE_S_PER_S[1]:.0%}-{floor / REFERENCE_S_PER_S[0]:.0%} of its peak rate; the "
                  f"{TARGET_S_PER_S} s/s target needs {floor / TARGET_S_PER_S:.0%} on the exact path")
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
