"""UNet training on tiny models on the CPU: the loss falls, a stopped run resumes to exactly what an
uninterrupted run computes, two gloo ranks agree, and exported weights run inference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync.demo import UNET_CONFIG_NAME, synth_speech, write_tiny_checkpoints
from latentsync.media import VideoWriter, write_wav
from latentsync.models import load_unet
from latentsync.training.train_unet import train_unet

RESOLUTION = 128  # the tiny demo models' face size
# Small windows keep a CPU step short: 8 frames of 64 px faces (the dataset resizes the 128 px clips).
# float32 (on a CPU, mixed precision means bfloat16 autocast: one test below covers it).
RECON_ONLY = ["run.pixel_space_supervise=false", "data.batch_size=1", "data.num_workers=0",
              "run.enable_gradient_checkpointing=false", "data.num_frames=8", "data.resolution=64",
              "run.mixed_precision_training=false"]


def write_clip(path: Path, seconds: float, seed: int) -> Path:
    """A processed-style clip: 128 px 'aligned faces' (smooth moving blobs) at 25 fps with speech."""
    audio = write_wav(path.with_suffix(".wav"), synth_speech(seconds, seed=seed), 16_000)
    yy, xx = np.mgrid[0:RESOLUTION, 0:RESOLUTION] / RESOLUTION
    with VideoWriter(path, RESOLUTION, RESOLUTION, audio=audio) as writer:
        for i in range(int(seconds * 25)):
            t = i / 25
            face = np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.08)
            mouth = np.exp(-((xx - 0.5) ** 2 + (yy - 0.75 - 0.03 * np.sin(6 * t + seed)) ** 2) / 0.004)
            image = np.stack([180 * face + 40, 140 * face + 30 - 80 * mouth, 120 * face + 20], -1)
            writer.write(np.clip(image, 0, 255).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_unet")
    checkpoints = write_tiny_checkpoints(root / "checkpoints", resolution=RESOLUTION)
    clips = root / "clips"
    clips.mkdir()
    for k in range(2):
        write_clip(clips / f"clip{k}.mp4", 2.2, seed=k)
    return checkpoints, clips, root


def run(setup, run_dir: Path, *overrides: str, **kwargs) -> dict:
    checkpoints, clips, root = setup
    return train_unet(checkpoints / UNET_CONFIG_NAME, run_dir, overrides=RECON_ONLY + list(overrides),
                      checkpoints=checkpoints, data=clips, progress=False, device="cpu", **kwargs)


def losses(run_dir: Path) -> dict[int, float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}  # validation lines carry scores only


def test_the_loss_falls_when_fitting_two_clips(setup, tmp_path):
    # Every parameter trains (the zero-initialised conv_out included), at a high learning rate.
    run(setup, tmp_path / "run", "run.trainable_modules=[]", "optimizer.lr=2e-3", "ckpt.save_ckpt_steps=1000",
        max_steps=30)
    values = list(losses(tmp_path / "run").values())
    assert len(values) == 30
    first, last = np.mean(values[:6]), np.mean(values[-6:])
    assert last < 0.7 * first, (first, last)


def test_stopped_and_resumed_equals_uninterrupted(setup, tmp_path):
    common = ("run.trainable_modules=[]", "optimizer.lr=1e-3", "ckpt.save_ckpt_steps=3")
    run(setup, tmp_path / "whole", *common, max_steps=6)
    run(setup, tmp_path / "split", *common, max_steps=3)  # stops after saving at step 3
    # What a kill leaves: a torn last line in the log, half-written states and exports of a dead process.
    split_dir = tmp_path / "split"
    with open(split_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.12')
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphans = [split_dir / "checkpoints" / f".state-00000004.pt.{dead.pid}-0123456789ab.tmp",
               split_dir / "exports" / f".unet-00000004.pt.{dead.pid}-0123456789ab.tmp"]
    for orphan in orphans:
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"half a state")
    run(setup, tmp_path / "split", *common, max_steps=6)  # resume="auto" continues from the saved state
    assert not any(o.exists() for o in orphans)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 7))  # no duplicated or missing steps in the log
    for step in range(1, 7):
        assert split[step] == pytest.approx(whole[step], rel=1e-6, abs=1e-7), step
    a = torch.load(tmp_path / "whole" / "exports" / "unet-00000006.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "exports" / "unet-00000006.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bfloat16_autocast_is_close_to_float32_but_not_equal(setup, tmp_path):
    """run.mixed_precision_dtype=bf16 runs the forward pass in bfloat16 (the first loss moves by bfloat16's
    rounding, no more); weights stay float32; fp16 on a CPU is refused with a config error. (Two steps, all
    parameters: the fresh UNet's zero-initialised conv_out predicts exactly zero until it has trained.)"""
    from latentsync.errors import ConfigError

    common = ("run.trainable_modules=[]", "optimizer.lr=1e-3", "ckpt.save_ckpt_steps=1000")
    fp32 = run(setup, tmp_path / "fp32", *common, max_steps=2)
    bf16 = run(setup, tmp_path / "bf16", *common, "run.mixed_precision_training=true",
               "run.mixed_precision_dtype=bf16", max_steps=2, return_model=True)
    assert bf16["loss"] != fp32["loss"] and bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16["model"].parameters())
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run(setup, tmp_path / "fp16", "run.mixed_precision_training=true", "run.mixed_precision_dtype=fp16",
            max_steps=1)


@pytest.mark.parametrize("overrides, frozen", [
    (["run.mixed_precision_training=true", "run.mixed_precision_dtype=bf16"], torch.bfloat16),
    (["run.mixed_precision_training=true", "run.mixed_precision_dtype=fp16"], torch.float16),
    (["run.mixed_precision_training=true", "run.mixed_precision_dtype=auto"], torch.float16),
    (["run.mixed_precision_training=false"], torch.float32),
])
def test_frozen_networks_on_cuda_take_the_runs_precision(setup, tmp_path, monkeypatch, overrides, frozen):
    """On CUDA the frozen VAE is loaded in the autocast dtype (a bf16 run was given a float16 VAE), float32
    without mixed precision. CUDA is simulated up to the VAE's loading: the UNet is built on the CPU."""
    from latentsync.training import distributed, train_unet as train_unet_module

    class Loaded(Exception):
        pass

    def load_vae(path, *, device, dtype, **kwargs):
        seen.update(device=device, dtype=dtype)
        raise Loaded

    seen = {}
    monkeypatch.setattr(distributed, "init", lambda device: distributed.Dist(device=torch.device("cuda")))
    monkeypatch.setattr(train_unet_module, "load_unet", lambda cfg, *args, **kwargs: load_unet(cfg))
    monkeypatch.setattr(train_unet_module, "load_vae", load_vae)
    with pytest.raises(Loaded):
        run(setup, tmp_path / "run", *overrides, max_steps=1)
    assert seen == {"device": torch.device("cuda"), "dtype": frozen}


def test_only_the_trainable_modules_change(setup, tmp_path):
    from latentsync.training.state import seed_everything

    checkpoints = setup[0]
    run(setup, tmp_path / "run", "ckpt.save_ckpt_steps=2", max_steps=2)  # tiny config: motion_modules., attentions.
    seed_everything(1247)  # the run's seed (run.seed + rank 0): the same fresh weights it started from
    before = load_unet(checkpoints / UNET_CONFIG_NAME).state_dict()
    after = torch.load(tmp_path / "run" / "exports" / "unet-00000002.pt", weights_only=True)["state_dict"]
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all("motion_modules." in k or "attentions." in k for k in changed)
    assert any("motion_modules." in k for k in changed) and any("attentions." in k for k in changed)


def test_exported_weights_run_inference(setup, tmp_path):
    from latentsync.demo import make_talking_clip
    from latentsync.inference import InferenceOptions, LipSync

    checkpoints, clips, root = setup
    run(setup, tmp_path / "run", "ckpt.save_ckpt_steps=1", max_steps=1)
    layout = tmp_path / "checkpoints"
    layout.mkdir()
    for name in ("whisper", "sd-vae-ft-mse"):
        (layout / name).symlink_to(checkpoints / name)
    (layout / "latentsync_unet.pt").symlink_to(tmp_path / "run" / "exports" / "unet-00000001.pt")
    lipsync = LipSync(layout, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False)
    video = make_talking_clip(tmp_path / "talk.mp4", seconds=1.0)
    result = lipsync.run(video, clips / "clip0.wav", tmp_path / "out.mp4", InferenceOptions(steps=1), progress=False)
    assert result.frames > 0 and (tmp_path / "out.mp4").is_file()


def test_two_gloo_ranks_agree(setup, tmp_path):
    """torchrun with 2 CPU processes: DDP keeps the ranks' weights identical."""
    checkpoints, clips, _ = setup
    script = tmp_path / "launch.py"
    script.write_text(
        "import hashlib, os\n"
        "from latentsync.training.train_unet import train_unet\n"
        f"result = train_unet({str(checkpoints / UNET_CONFIG_NAME)!r}, {str(tmp_path / 'run')!r}, "
        f"overrides={RECON_ONLY + ['ckpt.save_ckpt_steps=1000', 'run.trainable_modules=[]']!r}, "
        f"checkpoints={str(checkpoints)!r}, data={str(clips)!r}, progress=False, device='cpu', max_steps=2, "
        "return_model=True)\n"
        "digest = hashlib.sha256()\n"
        "for k, v in sorted(result['model'].state_dict().items()):\n"
        "    digest.update(k.encode()); digest.update(v.numpy().tobytes())\n"
        f"open(os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK']), 'w').write(digest.hexdigest())\n"
    )
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    assert sorted(losses(tmp_path / "run")) == [1, 2]  # rank 0 logged both steps


def test_stage2_step_uses_every_loss(setup, tmp_path, monkeypatch):
    """Pixel-space supervision: LPIPS (our VGG + lpips heads), TREPA (tiny VideoMAE-v2), the StableSyncNet loss,
    each finite and logged; the frozen networks' weight files are read from the checkpoints layout. The VAE decode
    that carries the gradients is checkpointed, as the reference's (its activations dominate a step's memory)."""
    import torch.utils.checkpoint
    from test_losses import _tiny_state_dict, _vgg_state_dict

    from latentsync.models.syncnet import load_syncnet, save_syncnet_checkpoint

    checkpoints, clips, _ = setup
    layout = tmp_path / "checkpoints"
    (layout / "auxiliary").mkdir(parents=True)
    for name in ("whisper", "sd-vae-ft-mse"):
        (layout / name).symlink_to(checkpoints / name)
    torch.save(_vgg_state_dict(), layout / "auxiliary" / "vgg16-397923af.pth")
    torch.save({"module": _tiny_state_dict()}, layout / "auxiliary" / "vit_g_hybrid_pt_1200e_ssv2_ft.pth")
    torch.manual_seed(0)
    save_syncnet_checkpoint(load_syncnet("tiny/syncnet"), layout / "stable_syncnet.pt")
    # diffusers' checkpointing calls torch.utils.checkpoint.checkpoint by its module attribute (our UNet's blocks
    # imported the function itself): the calls counted here are the VAE's.
    vae_blocks = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda fn, *args, **kwargs: vae_blocks.append(fn) or checkpoint(fn, *args, **kwargs))
    train_unet(checkpoints / UNET_CONFIG_NAME, tmp_path / "run", checkpoints=layout, data=clips, progress=False,
               device="cpu", max_steps=2,
               overrides=["data.batch_size=1", "data.num_workers=0", "data.resolution=64", "data.num_frames=16",
                          "run.enable_gradient_checkpointing=true", "run.trepa_model=tiny",
                          "ckpt.save_ckpt_steps=1000", "run.mixed_precision_training=false"])
    decoder_blocks = {type(getattr(fn, "__self__", fn)).__name__ for fn in vae_blocks}  # bound forward methods
    assert {"UNetMidBlock2D", "UpDecoderBlock2D"} <= decoder_blocks, decoder_blocks
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        for term in ("recon", "sync", "lpips", "trepa"):
            assert np.isfinite(record[term]) and record[term] >= 0, (term, record)
        weighted = record["recon"] + 0.05 * record["sync"] + 0.1 * record["lpips"] + 10 * record["trepa"]
        assert record["loss"] == pytest.approx(weighted, rel=1e-4)
    assert (tmp_path / "run" / "charts" / "loss.png").is_file()


def test_validation_lip_syncs_the_clip_and_logs_sync_confidence(setup, tmp_path):
    """With data.val_video_path/val_audio_path set, each save lip-syncs the validation clip with the UNet being
    trained and, when the evaluation SyncNet is in the layout, logs its LSE-C / LSE-D next to the losses."""
    from latentsync.demo import make_talking_clip
    from latentsync.media import VideoReader, probe_audio
    from latentsync.models.syncnet_v2 import SyncNetV2

    checkpoints, clips, _ = setup
    layout = tmp_path / "checkpoints"
    (layout / "auxiliary").mkdir(parents=True)
    for name in ("whisper", "sd-vae-ft-mse"):
        (layout / name).symlink_to(checkpoints / name)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), layout / "auxiliary" / "syncnet_v2.model")
    video = make_talking_clip(tmp_path / "val.mp4", seconds=2.8)
    audio = write_wav(tmp_path / "val.wav", synth_speech(2.8, seed=3), 16_000)
    train_unet(checkpoints / UNET_CONFIG_NAME, tmp_path / "run", checkpoints=layout, data=clips, progress=False,
               device="cpu", max_steps=1,
               overrides=RECON_ONLY + [f"data.val_video_path={video}", f"data.val_audio_path={audio}",
                                       "run.inference_steps=1", "ckpt.save_ckpt_steps=1"])
    out = tmp_path / "run" / "validation" / "step-00000001.mp4"
    assert out.is_file()
    assert 70 <= len(list(VideoReader(out).frames())) <= 72  # 2.8 s of speech (+2 frames, as the reference)
    assert probe_audio(out) is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_lse_c" in r]
    assert len(val) == 1 and val[0]["step"] == 1
    assert np.isfinite(val[0]["val_lse_c"]) and np.isfinite(val[0]["val_lse_d"])


def test_dataset_replaces_a_corrupt_clip_with_the_next_one(setup, tmp_path, caplog):
    import logging
    import shutil

    from latentsync.config import load_unet_config
    from latentsync.errors import InputError
    from latentsync.data.unet import UNetDataset, WhisperFeatures

    checkpoints, clips, _ = setup
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(clips / "clip0.mp4", folder / "a_good.mp4")
    bad = folder / "b_truncated.mp4"
    shutil.copy(clips / "clip0.mp4", bad)
    with open(bad, "r+b") as f:  # the header still passes the probe; the frames run out
        f.truncate(bad.stat().st_size * 2 // 5)
    config = load_unet_config(checkpoints / UNET_CONFIG_NAME)
    config.data.num_frames, config.data.resolution = 8, 64
    features = WhisperFeatures(checkpoints / "whisper" / "tiny.pt", cache_dir=tmp_path / "cache")
    ds = UNetDataset(folder, config, features, length=4)
    assert [c.key for c in ds.clips] == ["a_good.mp4", "b_truncated.mp4"]
    with caplog.at_level(logging.WARNING):
        ds[1]  # the truncated clip's index: served by the good one
    assert "b_truncated.mp4" in ds.failed and "b_truncated.mp4" in caplog.text
    strict = UNetDataset(folder, config, features, length=4, on_error="raise")
    with pytest.raises(InputError):
        strict[1]


def test_dataset_uses_the_published_mask_or_the_configs_mask_image(setup, tmp_path):
    import cv2

    from latentsync.config import load_unet_config
    from latentsync.errors import InputError
    from latentsync.face.mask import mouth_mask
    from latentsync.data.unet import UNetDataset, WhisperFeatures

    checkpoints, clips, _ = setup
    config = load_unet_config(checkpoints / UNET_CONFIG_NAME)
    config.data.num_frames, config.data.resolution = 8, 64
    features = WhisperFeatures(checkpoints / "whisper" / "tiny.pt", cache_dir=tmp_path / "cache")
    sample = UNetDataset(clips, config, features, length=2)[0]
    np.testing.assert_array_equal(sample["masks"][0, 0].numpy(), mouth_mask(64))  # what inference uses
    torch.testing.assert_close(sample["masked_pixel_values"], sample["gt_pixel_values"] * torch.from_numpy(mouth_mask(64).copy()))

    chin = np.full((64, 64), 255, np.uint8)
    chin[30:, 4:60] = 0
    cv2.imwrite(str(tmp_path / "chin.png"), chin)
    config.data.mask_image_path = str(tmp_path / "chin.png")
    sample = UNetDataset(clips, config, features, length=2)[0]
    np.testing.assert_array_equal(sample["masks"][0, 0].numpy(), chin / np.float32(255))
    assert (sample["masked_pixel_values"][:, :, 30:, 4:60] == 0).all()

    config.data.mask_image_path = str(tmp_path / "nowhere.png")
    with pytest.raises(InputError, match="nowhere.png: mask image not found"):
        UNetDataset(clips, config, features, length=2)
