"""Loading the full-size LatentSync UNet: ours (meta-device build, memory-mapped file, one tensor at a time onto
the target dtype) against the reference's way (build the fp32 model on the CPU, read the whole checkpoint,
load it, then cast).

Writes a random-weight stage-2 checkpoint in the published format (fp32, ~5.1 GB; `--dtype-file fp16` for
~2.5 GB) to a temporary folder, then loads it to fp16 on the CPU in a fresh process per method and reports wall
time and peak RSS.

    .venv/bin/python bench/model_loading.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def write_checkpoint(path: Path) -> None:
    from latentsync.models import load_unet
    from latentsync.models.unet import save_unet_checkpoint

    unet = load_unet("stage2")  # fresh fp32 weights, the size of the published file
    save_unet_checkpoint(unet, path, global_step=1)


def rss_anon_gb() -> float:
    """Private (anonymous) resident memory: what a process really owns. Pages of a memory-mapped file are
    page cache the kernel can drop; they count in RSS but not here."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def child(method: str, path: str) -> None:
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_gb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if method == "ours":
        from latentsync.models import load_unet

        unet = load_unet("stage2", path, dtype=torch.float16)
    else:  # the reference: UNet3DConditionModel.from_pretrained(..., device="cpu"), then .to(dtype)
        from latentsync.config import load_unet_config
        from latentsync.models import UNet3DConditionModel

        unet = UNet3DConditionModel(load_unet_config("stage2").model)  # random init in fp32
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        unet.load_state_dict(state)
        del state
        unet = unet.to(torch.float16)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    total = sum(float(p.float().abs().sum()) for p in unet.parameters())
    print(json.dumps({"wall": wall, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "peak_anon_gb": peak[0], "checksum": total}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the 5 GB checkpoint")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="latentsync-bench-"))
    path = folder / "latentsync_unet.pt"
    if not path.exists():
        t0 = time.perf_counter()
        write_checkpoint(path)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB, fp32) in {time.perf_counter() - t0:.0f} s")
    results = {}
    for method in ("reference", "ours"):
        subprocess.run(["sync"], check=False)
        out = subprocess.run([sys.executable, __file__, "--child", method, str(path)], check=True,
                             capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    assert abs(results["ours"]["checksum"] - results["reference"]["checksum"]) < 1e-3 * results["ours"]["checksum"]
    print("full-size stage-2 UNet (1.27 B parameters), fp32 file -> fp16 model on the CPU, fresh process each:")
    for method, r in results.items():
        print(f"  {method:9s} load {r['wall']:6.1f} s   peak private memory {r['peak_anon_gb']:5.2f} GB   "
              f"peak RSS incl. mapped file pages {r['peak_rss_gb']:5.2f} GB")
    ref, ours = results["reference"], results["ours"]
    print(f"  ours: {ref['peak_anon_gb'] / ours['peak_anon_gb']:.1f}x less private memory (the fp16 weights only), "
          f"{ref['wall'] / ours['wall']:.1f}x faster to load (baseline: the reference's build-on-CPU, load, cast)")


if __name__ == "__main__":
    main()
