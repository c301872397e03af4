"""Fine-tuning with LoRA on tiny models on the CPU: the adapter lowers the loss while the base stays bitwise as
it was, it gives at inference the frames of its merged export, a killed run resumes exactly, an adapter for
another base is refused, and `latentsync finetune` goes from raw videos to an adapter and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_train_unet import RECON_ONLY, losses
from test_train_unet import setup as train_setup  # noqa: F401 - a fixture, used by `setup` below

from latentsync import cli
from latentsync.demo import UNET_CONFIG_NAME, make_talking_clip, synth_speech
from latentsync.errors import CheckpointError
from latentsync.fileio import sha256_file
from latentsync.inference import InferenceOptions, LipSync
from latentsync.media import VideoReader, VideoWriter, write_wav
from latentsync.models.lora import load_adapter, merge_lora, read_adapter
from latentsync.models.unet import load_unet, save_unet_checkpoint
from latentsync.training.train_unet import train_unet

RANK = 8


@pytest.fixture(scope="module")
def setup(train_setup):
    """The UNet trainer's tiny checkpoints and two training clips, and a base UNet to adapt. The base's output
    layer is scaled up (std 0.1 instead of the demo's 0.02): the adapter changes what that layer reads, so
    through the demo's near-zero output layer no adapter could move the loss much, unlike through a trained
    model's."""
    checkpoints, clips, root = train_setup
    torch.manual_seed(1)
    unet = load_unet(checkpoints / UNET_CONFIG_NAME, checkpoints / "latentsync_unet.pt")
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.1)
    base = save_unet_checkpoint(unet, root / "base.pt")
    return checkpoints, clips, base


def lora_run(setup, run_dir: Path, *overrides: str, **kwargs) -> dict:
    checkpoints, clips, base = setup
    return train_unet(checkpoints / UNET_CONFIG_NAME, run_dir, checkpoints=checkpoints, data=clips, progress=False,
                      device="cpu", overrides=RECON_ONLY + [f"run.lora_rank={RANK}", f"ckpt.resume_ckpt_path={base}",
                                                            *overrides], **kwargs)


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """30 steps of LoRA at a high learning rate on the two clips (an overfit set)."""
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    result = lora_run(setup, run_dir, "optimizer.lr=1e-2", "ckpt.save_ckpt_steps=15", max_steps=30,
                      return_model=True)
    return run_dir, result


def test_lora_lowers_the_loss_and_leaves_the_base_bitwise_unchanged(setup, trained):
    checkpoints, _, base = setup
    run_dir, result = trained
    values = list(losses(run_dir).values())
    assert len(values) == 30
    first, last = np.mean(values[:6]), np.mean(values[-6:])
    assert last < 0.7 * first, (first, last)

    # Every base weight is what the base file holds, bit for bit; only the adapter's matrices trained.
    model = result["model"]
    published = torch.load(base, weights_only=True)["state_dict"]
    kept = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert kept.keys() == published.keys()
    assert all(torch.equal(kept[k], published[k]) for k in published)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # Targets: spatial self- and audio cross-attention, the temporal layers, the feed-forward projections.
    for part in (".attn1.to_q.", ".attn2.to_v.", ".attention_blocks.0.to_out.0.", ".ff.net.0.proj.", ".ff.net.2."):
        assert any(part in n for n in trainable), part

    # The training state holds the adapter alone (the base is read again from its file on resume).
    saved = torch.load(run_dir / "checkpoints" / "state-00000030.pt", weights_only=False)
    assert set(saved["model"]) == trainable

    # The exported adapter says what it is and which base it was trained on.
    adapter = run_dir / "exports" / "adapter-00000030.safetensors"
    with safe_open(str(adapter), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["format"] == "latentsync-lora" and meta["rank"] == str(RANK) and meta["step"] == "30"
    assert meta["base_sha256"] == sha256_file(base)
    assert names and all(".lora_A.weight" in n or ".lora_B.weight" in n for n in names)


def test_the_adapter_at_inference_gives_the_frames_of_the_merged_export(setup, trained, tmp_path):
    checkpoints, clips, base = setup
    adapter = trained[0] / "exports" / "adapter-00000030.safetensors"
    merged = load_unet(checkpoints / UNET_CONFIG_NAME, base)
    load_adapter(merged, adapter)
    merged_path = save_unet_checkpoint(merge_lora(merged), tmp_path / "merged.pt")
    assert set(torch.load(merged_path, weights_only=True)["state_dict"]) == \
        set(torch.load(base, weights_only=True)["state_dict"])  # the published key names

    video = make_talking_clip(tmp_path / "talk.mp4", seconds=1.0)
    options = InferenceOptions(steps=2, guidance=1.0)

    def frames(**model) -> np.ndarray:
        lipsync = LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", audio_cache=False,
                          **model)
        out = []
        lipsync.process(video, clips / "clip0.wav", out.append, options)
        return np.stack(out).astype(np.int16)

    applied = frames(unet=base, lora=adapter)
    exported = frames(unet=merged_path)
    without = frames(unet=base)
    assert np.abs(applied - exported).max() <= 1  # float rounding, in 8-bit levels
    assert np.abs(applied - without).max() > 10  # and the adapter does change the mouth
    halfway = frames(unet=base, lora=adapter, lora_scale=0.5)
    assert 0 < np.abs(halfway - without).mean() < np.abs(applied - without).mean()


def test_a_killed_lora_run_resumes_as_an_uninterrupted_one(setup, tmp_path):
    common = ("optimizer.lr=1e-2", "ckpt.save_ckpt_steps=2")
    lora_run(setup, tmp_path / "whole", *common, max_steps=4)
    lora_run(setup, tmp_path / "split", *common, max_steps=2)  # what a kill after the save at step 2 leaves
    lora_run(setup, tmp_path / "split", *common, max_steps=4)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(split) == [1, 2, 3, 4]
    for step in whole:
        assert split[step] == pytest.approx(whole[step], rel=1e-6, abs=1e-7), step
    a = read_adapter(tmp_path / "whole" / "exports" / "adapter-00000004.safetensors").tensors
    b = read_adapter(tmp_path / "split" / "exports" / "adapter-00000004.safetensors").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Another rank cannot continue this run's state: one line, not a shape error from deep inside torch.
    with pytest.raises(CheckpointError, match="other LoRA settings"):
        lora_run(setup, tmp_path / "split", *common, "run.lora_rank=4", max_steps=6)


def test_an_adapter_for_another_base_is_refused(setup, trained, tmp_path, capsys):
    checkpoints, clips, base = setup
    adapter = trained[0] / "exports" / "adapter-00000030.safetensors"
    other = checkpoints / "latentsync_unet.pt"  # the demo's UNet: the same architecture, other weights
    with pytest.raises(CheckpointError, match="trained on another base UNet"):
        LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", lora=adapter, unet=other)

    video = make_talking_clip(tmp_path / "talk.mp4", seconds=1.0)
    out = tmp_path / "out.mp4"
    code = cli.main(["infer", "--video", str(video), "--audio", str(clips / "clip0.wav"), "--out", str(out),
                     "--checkpoints", str(checkpoints), "--unet-config", str(checkpoints / UNET_CONFIG_NAME),
                     "--lora", str(adapter), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "trained on another base UNet" in err and len(err.splitlines()) == 1
    assert not out.exists()

    not_adapter = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(not_adapter))
    with pytest.raises(CheckpointError, match="not a LatentSync LoRA adapter"):
        LipSync(checkpoints, unet_config=checkpoints / UNET_CONFIG_NAME, device="cpu", lora=not_adapter, unet=base)


def test_finetune_never_writes_over_its_inputs(setup, tmp_path):
    """The base UNet kept where the export would go is refused before any work, and nothing is written."""
    from latentsync.errors import InputError
    from latentsync.finetune import finetune

    checkpoints, clips, base = setup
    run = tmp_path / "run"
    run.mkdir()
    inside = run / "latentsync_unet.pt"
    inside.write_bytes(base.read_bytes())
    with pytest.raises(InputError, match="same file as the base UNet"):
        finetune(clips, run, unet_config=checkpoints / UNET_CONFIG_NAME, unet=inside, checkpoints=checkpoints,
                 merge=True, device="cpu", progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["latentsync_unet.pt"] and inside.read_bytes() == base.read_bytes()


def _raw_videos(folder: Path, work: Path, count: int = 2, seconds: float = 3.2) -> Path:
    """Talking-head videos with speech, as a user's raw footage."""
    frames = list(VideoReader(make_talking_clip(work / "portrait.mp4", seconds=seconds)).frames())
    folder.mkdir(parents=True)
    for k in range(count):
        speech = write_wav(work / f"speech{k}.wav", synth_speech(seconds, seed=k), 16_000)
        with VideoWriter(folder / f"talk{k}.mp4", frames[0].shape[1], frames[0].shape[0], audio=speech) as writer:
            for frame in frames:
                writer.write(frame)
    return folder


def test_finetune_from_raw_videos_to_an_adapter_and_on_after_a_stop(setup, tmp_path, capsys):
    from latentsync.models.hyperiqa import HyperNet
    from latentsync.models.syncnet_v2 import SyncNetV2

    checkpoints, _, base = setup
    (checkpoints / "auxiliary").mkdir(exist_ok=True)
    torch.manual_seed(0)  # random data-pipeline networks; the thresholds below let every clip through
    torch.save(SyncNetV2().state_dict(), checkpoints / "auxiliary" / "syncnet_v2.model")
    torch.save(HyperNet().state_dict(), checkpoints / "auxiliary" / "koniq_pretrained.pkl")
    raw = _raw_videos(tmp_path / "raw", tmp_path)
    before = {p: p.read_bytes() for p in raw.iterdir()}
    run = tmp_path / "run"
    val = ["--val-clip", str(make_talking_clip(tmp_path / "held_out.mp4", seconds=2.8)),
           "--val-audio", str(write_wav(tmp_path / "held_out.wav", synth_speech(2.8, seed=5), 16_000))]

    def finetune(steps: int, *extra: str, rank: int = 4) -> int:
        return cli.main(["finetune", str(raw), "--out", str(run), "--checkpoints", str(checkpoints),
                         "--unet-config", str(checkpoints / UNET_CONFIG_NAME), "--unet", str(base),
                         "--lora-rank", str(rank), "--steps", str(steps), "--device", "cpu", "--quiet", *extra,
                         "preprocess.sync_conf_threshold=-1000", "preprocess.sync_max_offset=15",
                         "preprocess.quality_threshold=-1000", *RECON_ONLY, "ckpt.save_ckpt_steps=2"])

    assert finetune(2, *val) == 0
    clips = (run / "clips.txt").read_text().split()
    assert len(clips) == 2 and all(Path(c).is_file() and str(run / "data") in c for c in clips)
    adapter = read_adapter(run / "adapter.safetensors")
    assert adapter.info.rank == 4 and adapter.info.step == 2 and adapter.info.base_sha256 == sha256_file(base)
    markers = {p: p.stat().st_mtime_ns for p in (run / "data" / "state").rglob("*.json")}

    # Run again with more steps: the data is not processed again, training goes on from step 2.
    assert finetune(3, "--merge", *val) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "data" / "state").rglob("*.json")} == markers
    assert sorted(losses(run / "train")) == [1, 2, 3]
    # Each save lip-synced the held-out clip; the one that synced best is the one exported.
    records = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["val_lse_c"] for r in records if "val_lse_c" in r}
    assert sorted(scores) == [2, 3] and len(list((run / "train" / "validation").glob("step-*.mp4"))) == 2
    best = json.loads((run / "train" / "best.json").read_text())
    assert best["val_lse_c"] == max(scores.values()) and scores[best["step"]] == best["val_lse_c"]
    assert read_adapter(run / "adapter.safetensors").info.step == best["step"]
    merged = load_unet(checkpoints / UNET_CONFIG_NAME, run / "latentsync_unet.pt")  # strict: the published keys
    assert not any("lora" in k for k in merged.state_dict())
    assert {p: p.read_bytes() for p in raw.iterdir()} == before  # the raw videos are never touched

    # The same run folder with another rank: refused in one line, nothing changed.
    capsys.readouterr()
    assert finetune(4, rank=8) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "lora_rank 4 -> 8" in err and len(err.splitlines()) == 1
    assert json.loads((run / "finetune.json").read_text())["lora_rank"] == 4
