"""Training speed: steps per second of the tiny SyncNet and UNet configs on this machine, and on a GPU the real
stage-2 UNet's step time and peak memory (the reference needs 30 GB at 256 px and 55 GB at 512 px).

    .venv/bin/python bench/train.py                      # tiny configs on the CPU (or the GPU if there is one)
    .venv/bin/python bench/train.py --full --resolution 256   # full-size stage 2 (random weights): GPU only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def tiny(device: str, steps: int) -> None:
    from test_train_unet import RECON_ONLY, write_clip

    from latentsync.demo import UNET_CONFIG_NAME, write_tiny_checkpoints
    from latentsync.training.train_syncnet import train_syncnet
    from latentsync.training.train_unet import train_unet

    root = Path(tempfile.mkdtemp(prefix="latentsync-bench-"))
    checkpoints = write_tiny_checkpoints(root / "checkpoints")
    clips = root / "clips"
    clips.mkdir()
    for k in range(2):
        write_clip(clips / f"clip{k}.mp4", 2.2, seed=k)

    def timed(name: str, fn) -> None:
        fn(2, root / f"{name}-warm")  # first steps pay for start-up (model building, caches)
        t0 = time.perf_counter()
        fn(steps, root / name)
        seconds = time.perf_counter() - t0
        print(f"{name:38s} {steps / seconds:6.2f} steps/s  ({seconds / steps:.2f} s/step incl. start-up)")

    common = dict(checkpoints=checkpoints, data=clips, progress=False, device=device)
    timed("unet tiny, reconstruction (8 x 64 px)", lambda n, d: train_unet(
        checkpoints / UNET_CONFIG_NAME, d, overrides=RECON_ONLY + ["ckpt.save_ckpt_steps=100000"], max_steps=n,
        **common))
    timed("syncnet tiny (batch 4, 16 frames)", lambda n, d: train_syncnet(
        "tiny/syncnet", d, overrides=["data.batch_size=4", "data.num_workers=0", "ckpt.save_ckpt_steps=100000",
                                      "run.validation_steps=100000"], max_steps=n, **common))


def full(resolution: int, steps: int) -> None:
    """One stage-2 training step of the full-size UNet on random data (the compute is the real one)."""
    from latentsync.config import load_unet_config
    from latentsync.models import load_unet
    from latentsync.pipeline import make_scheduler
    from latentsync.training.objective import Frozen, UNetObjective

    if not torch.cuda.is_available():
        raise SystemExit("--full needs a GPU")
    device = torch.device("cuda")
    cfg = load_unet_config("stage2" if resolution == 256 else "stage2_512")
    unet = load_unet(cfg, device=device).train()
    unet.enable_gradient_checkpointing()
    for name, p in unet.named_parameters():
        p.requires_grad_(any(m in name for m in cfg.run.trainable_modules))
    from diffusers import AutoencoderKL

    from latentsync.models.vae import SD_VAE_CONFIG

    vae = AutoencoderKL(**SD_VAE_CONFIG).to(device, torch.float16).requires_grad_(False)
    vae.enable_slicing()
    objective = UNetObjective(unet, Frozen(vae=vae), cfg.run, make_scheduler("ddim"))
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler("cuda")
    f, r = cfg.data.num_frames, resolution
    batch = {k: torch.rand(1, f, c, r, r, device=device) * 2 - 1 for k, c in
             (("gt_pixel_values", 3), ("masked_pixel_values", 3), ("ref_pixel_values", 3))}
    batch["masks"] = torch.ones(1, f, 1, r, r, device=device)
    batch["audio_embeds"] = torch.randn(1, f, 50, 384, device=device)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            loss, _ = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"full stage 2 at {r} px, batch 1 x {f} frames, pixel losses off: {np.median(times[1:]):.2f} s/step, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (reference: 30 GB at 256, 55 GB at 512 "
          "with the pixel losses)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--resolution", type=int, choices=[256, 512], default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.full:
        full(args.resolution, args.steps)
    else:
        tiny(args.device, args.steps)


if __name__ == "__main__":
    main()
