"""Peak GPU memory of one denoising call, every memory setting, for 1.6 (512 px) and 1.5 (256 px), estimated on
the CPU: the full-size UNet and VAE run on PyTorch's meta device while `latentsync.estimate.DeviceMemoryTrace`
follows every tensor (see that module for what the figure includes). fp16, 20-step settings (the peak does not
depend on the step count), 16-frame chunks. Each setting's VAE slice (frames per VAE call) is the one `LipSync`
picks where memory is short (`estimate.choose_vae_slice`: the VAE kept under the UNet's peak); on a GPU with
twice the whole-chunk peak free it takes whole chunks (the first row).

Baseline: the reference's published needs, 18 GB for 1.6 and 8 GB for 1.5 (its README), and 15.8 GB measured
for 1.6 on an RTX 5070 Ti (its PR #366); its memory also grows with the video's length (every generated face
stays on the GPU), ours does not. `bench/gpu_inference.py` measures the real peak when a GPU is at hand.

    .venv/bin/python bench/vram_estimate.py [--version 1.6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

from latentsync.estimate import GiB, estimate_chunk_memory

CONFIG_FOR_VERSION = {"1.6": "stage2_512", "1.5": "stage2"}
REFERENCE_GB = {"1.6": 18.0, "1.5": 8.0}  # the reference README's minimum VRAM
TARGET_GB = {"1.6": 18.0}  # the inference-speed issue's bound for 1.6


def settings(config: str):
    import dataclasses

    from latentsync.estimate import choose_vae_slice
    from latentsync.inference import InferenceOptions

    def job(**options):  # the estimate of what `latentsync infer` runs with these options where memory is short
        opts = InferenceOptions(**options)
        kwargs = {"sampling": opts.sampling(), "batch_chunks": opts.batch_chunks, "offload": opts.low_memory}
        size = choose_vae_slice(config, **kwargs)  # as LipSync.sampling_for, with no memory to spare
        return {**kwargs, "sampling": dataclasses.replace(kwargs["sampling"], vae_slice=size)}

    def whole(**options):  # the same with whole-chunk VAE calls: the reference's, and ours on a large GPU
        kwargs = job(**options)
        return {**kwargs, "sampling": dataclasses.replace(kwargs["sampling"], vae_slice=0)}

    return {  # name -> estimate_chunk_memory keyword arguments
        "whole-chunk VAE (the reference's calls)": whole(),
        "default": job(),
        "--deepcache": job(deepcache=3),
        "--batch-chunks 2": job(batch_chunks=2),
        "--guidance 1": job(guidance=1.0),
        "--low-memory": job(low_memory=True),  # the CLI's flag also offloads the VAE and Whisper
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=list(CONFIG_FOR_VERSION), action="append",
                        help="model version(s) to estimate (default: both)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results: dict = {}
    for version in args.version or list(CONFIG_FOR_VERSION):
        print(f"LatentSync {version} ({CONFIG_FOR_VERSION[version]}), fp16, one 16-frame chunk per call:")
        print(f"  {'setting':48s} {'resident':>9s} {'peak':>8s} {'UNet':>8s} {'VAE enc':>8s} {'VAE dec':>8s}"
              f"  peak / reference's {REFERENCE_GB[version]:g} GB")
        results[version] = {}
        for name, kwargs in settings(CONFIG_FOR_VERSION[version]).items():
            t0 = time.perf_counter()
            e = estimate_chunk_memory(CONFIG_FOR_VERSION[version], **kwargs)
            ph = e.phases
            label = f"{name} (VAE: {kwargs['sampling'].vae_slice or 'whole'})"
            print(f"  {label:48s} {e.resident / GiB:7.2f}GB {e.peak / GiB:6.2f}GB {ph['unet'] / GiB:6.2f}GB "
                  f"{ph['vae encode'] / GiB:6.2f}GB {ph['vae decode'] / GiB:6.2f}GB  "
                  f"{e.peak / GiB / REFERENCE_GB[version]:.2f}   ({time.perf_counter() - t0:.0f} s)")
            results[version][name] = e.as_gib()
        if version in TARGET_GB:
            peak = results[version]["default"]["peak_gb"]
            print(f"  target: at most {TARGET_GB[version]:g} GB; default {peak:.2f} GB of tensors "
                  f"({'met' if peak <= TARGET_GB[version] else 'NOT met'} before allocator overhead)")
        print()
    print("Tensor bytes as torch.cuda.max_memory_allocated counts them; the CUDA context (~0.5 GB), cuDNN/cuBLAS "
          "workspaces and allocator fragmentation come on top.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
