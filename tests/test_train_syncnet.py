"""The SyncNet training loop (spec 7.3) on the tiny config, CPU, generated processed-style clips.

Each test breaks with its feature: learning (a fixed batch is overfitted), exact resume (a stopped and resumed
run computes what an uninterrupted one does), gradient accumulation (two micro-batches of one sample = one
batch of two), data-parallel training (two gloo ranks end with the same weights), the published-format
export, validation metrics and charts, and the one-line user errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from latentsync.config import load_syncnet_config
from latentsync.data.syncnet import SyncNetDataset
from latentsync.errors import ConfigError, InputError
from latentsync.media import VideoWriter, write_wav
from latentsync.models.syncnet import load_syncnet
from latentsync.training import state
from latentsync.training.train_syncnet import train_syncnet

TINY = "tiny/syncnet"
FPS, SR, SIZE = 25, 16_000, 256
CLIP_FRAMES = 62  # ~2.5 s, enough for two 16-frame windows
TONES_HZ = (300, 500, 800, 1200, 1800, 2700, 4000)
TRAIN_CLIPS = 4  # one global batch of 4 (batch 4, or 2 ranks x 2)


def _make_clip(path, seed: int) -> None:
    """256x256 25 fps clip: the lower half's grey level ramps with the frame index (offset per clip), the audio
    is a tone whose frequency changes every frame (seeded), so windows and clips differ."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    freqs = np.repeat(rng.choice(TONES_HZ, size=CLIP_FRAMES).astype(float), SR // FPS)  # per sample
    wav = path.with_suffix(".wav")
    write_wav(wav, 0.5 * np.sin(2 * np.pi * np.cumsum(freqs) / SR), SR)
    offset = int(rng.integers(0, 40))
    with VideoWriter(path, SIZE, SIZE, fps=FPS, audio=wav) as writer:
        for k in range(CLIP_FRAMES):
            image = np.empty((SIZE, SIZE, 3), np.uint8)
            image[: SIZE // 2] = (200, 30, 30)
            image[SIZE // 2 :] = offset + 3 * k
            image[SIZE // 2 :, (7 * k) % SIZE] = 255  # a moving bar: frames differ in structure, not just level
            writer.write(image)
    wav.unlink()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i in range(TRAIN_CLIPS):
        _make_clip(root / "train" / f"spk{i}" / "clip.mp4", seed=i)
    _make_clip(root / "val" / "clip.mp4", seed=100)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    # One intra-op thread: on a shared 2-core machine a busy core stalls every parallel region of a 2-thread
    # pool (steps 5-20x slower); one thread keeps these tests' time predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overrides(data, *extra: str, val: bool = False) -> list[str]:
    items = [f"data.train_data_dir={data / 'train'}", "data.num_workers=0"]
    if val:
        items += [f"data.val_data_dir={data / 'val'}", "data.num_val_samples=3"]
    return items + list(extra)


def _train(run_dir, overrides: list[str], **kwargs) -> dict:
    return train_syncnet(TINY, run_dir, overrides=overrides, progress=False, return_model=True, **kwargs)


def _losses(run_dir) -> dict[int, float]:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in lines if "train_loss" in r}


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_overfits_one_batch(data, tmp_path, monkeypatch):
    # The same four samples every epoch (one global batch): a working loop drives their loss towards zero.
    monkeypatch.setattr(SyncNetDataset, "set_epoch", lambda self, epoch: None)
    run = tmp_path / "run"
    result = _train(run, _overrides(data, "optimizer.lr=1e-3"), max_steps=12, save_checkpoints=False)
    losses = list(_losses(run).values())
    assert result["step"] == 12 and len(losses) == 12
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.5 * first, losses
    assert not (run / "checkpoints").exists()  # save_checkpoints=False


def test_resume_is_exact(data, tmp_path):
    # Dropout on (the RNG matters), bf16 autocast, accumulation over 3 micro-batches of 1: 4 per epoch, so
    # the stop at step 2 (6 micro-batches) falls in the middle of epoch 1; validation runs before each save.
    extra = _overrides(data, "model.visual_encoder.dropout=0.1", "data.batch_size=1",
                       "data.gradient_accumulation_steps=3", "optimizer.lr=1e-3", "ckpt.save_ckpt_steps=2",
                       "run.validation_steps=2", val=True)
    whole = _train(tmp_path / "whole", extra, max_steps=4)
    stopped = tmp_path / "stopped"
    first = _train(stopped, extra, max_steps=2)
    assert first["step"] == 2 and state.latest(stopped).name == "state-00000002.pt"
    saved = state.load(state.latest(stopped))
    assert saved["extra"]["data"]["epoch"] == 1 and saved["extra"]["data"]["done"] == 2  # mid-epoch
    resumed = _train(stopped, extra, max_steps=4, resume="auto")

    assert resumed["step"] == 4
    expected, got = _losses(tmp_path / "whole"), _losses(stopped)
    assert sorted(got) == [1, 2, 3, 4]  # the resumed run appended, no duplicated steps
    assert [got[s] for s in (3, 4)] == [expected[s] for s in (3, 4)]
    assert resumed["val_loss"] == whole["val_loss"]
    for key, value in whole["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    # The exports carry the whole loss history, the part before the restart included.
    export = torch.load(resumed["export"], map_location="cpu", weights_only=True)
    assert export["global_step"] == 4 and export["train_step_list"] == [1, 2, 3, 4]
    assert export["train_loss_list"] == [expected[s] for s in (1, 2, 3, 4)]
    assert export["val_step_list"] == [2, 4]


def test_gradient_accumulation_matches_one_big_batch(data, tmp_path):
    # Two micro-batches of one sample accumulate the gradient of one batch of two (same samples, same order).
    # Equal up to float32 rounding of different batch shapes (the untrained net saturates the
    # cosine, so the BCE gradient amplifies it to ~1e-3); a missing 1/accum or a lost micro-batch is 2x off.
    common = ["run.mixed_precision_training=false", "model.visual_encoder.dropout=0.0"]
    big = tmp_path / "big"
    small = tmp_path / "small"
    _train(big, _overrides(data, "data.batch_size=2", *common), max_steps=1, save_checkpoints=False)
    _train(small, _overrides(data, "data.batch_size=1", "data.gradient_accumulation_steps=2", *common), max_steps=1,
           save_checkpoints=False)
    a, b = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0]) for d in (big, small)]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2)


def test_gradient_checkpointing_same_gradients(data, tmp_path):
    # Recomputing the blocks in the backward pass changes memory, not the step.
    common = _overrides(data, "run.mixed_precision_training=false", "data.batch_size=2")
    _train(tmp_path / "plain", common, max_steps=1, save_checkpoints=False)
    net = _train(tmp_path / "ckpt", common, max_steps=1, save_checkpoints=False, gradient_checkpointing=True)["model"]
    assert net.visual_encoder.gradient_checkpointing and net.audio_encoder.gradient_checkpointing
    plain, recomputed = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])
                         for d in ("plain", "ckpt")]
    assert recomputed == pytest.approx(plain, rel=1e-5)


LAUNCHER = textwrap.dedent(
    """
    import hashlib, os, sys
    import torch
    torch.set_num_threads(1)
    from latentsync.training.train_syncnet import train_syncnet
    run_dir, out, *overrides = sys.argv[1:]
    r = train_syncnet("tiny/syncnet", run_dir, overrides=overrides, max_steps=3, progress=False, return_model=True)
    h = hashlib.sha256()
    for k, v in sorted(r["model"].state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    with open(os.path.join(out, "rank%s.txt" % os.environ["RANK"]), "w") as f:
        f.write("%d %s\\n" % (r["step"], h.hexdigest()))
    """
)


def test_two_process_torchrun(data, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(launcher),
            str(run), str(tmp_path), *_overrides(data, "data.batch_size=2", "ckpt.save_ckpt_steps=2",
                                                  "run.validation_steps=3", val=True)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert rank0[0] == "3" and rank0 == rank1  # same step, same weights on both ranks
    assert sorted(_losses(run)) == [1, 2, 3]  # rank 0 alone writes the metrics
    assert state.latest(run).name == "state-00000003.pt"
    saved = state.load(state.latest(run))
    assert saved["extra"]["data"]["world_size"] == 2 and len(saved["rng_per_rank"]) == 2  # every rank's generators
    # The export holds the weights both ranks ended with.
    net = load_syncnet(TINY, run / "exports" / "syncnet-00000003.pt")
    assert _weights_hash(net) == rank0[1]


def test_export_validation_charts_and_resume_modes(data, tmp_path):
    run = tmp_path / "run"
    overrides = _overrides(data, "run.validation_steps=1", "ckpt.save_ckpt_steps=2", val=True)
    result = _train(run, overrides, max_steps=2)

    # The published format, loaded strictly, holds the trained weights and the loss histories.
    assert result["export"] == run / "exports" / "syncnet-00000002.pt"
    net = load_syncnet(TINY, result["export"])
    assert _weights_hash(net) == _weights_hash(result["model"])
    export = torch.load(result["export"], map_location="cpu", weights_only=True)
    assert export["val_step_list"] == [1, 2] and len(export["val_loss_list"]) == 2
    # Validation: loss and accuracy logged at each validation step, charts drawn.
    records = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in val] == [1, 2] and all(0 <= r["val_accuracy"] <= 1 for r in val)
    assert result["val_loss"] == val[-1]["val_loss"]
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert (run / "charts" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # The resolved config, overrides applied, is in the run folder.
    saved = load_syncnet_config(run / "config.yaml")
    assert saved.run.validation_steps == 1 and saved.data.val_data_dir == str(data / "val")

    # resume="never" refuses a folder holding a run; "auto" at max_steps does nothing; a state path resumes.
    with pytest.raises(ConfigError, match="already holds a training run"):
        _train(run, overrides, max_steps=3, resume="never")
    again = _train(run, overrides, max_steps=2, resume="auto")
    assert again["step"] == 2 and again["train_loss"] is None
    assert _weights_hash(again["model"]) == _weights_hash(net)
    assert "model" not in train_syncnet(TINY, run, overrides=overrides, max_steps=2, progress=False)
    other = _train(tmp_path / "other", overrides, max_steps=2, resume=run / "checkpoints" / "state-00000002.pt")
    assert other["step"] == 2 and _weights_hash(other["model"]) == _weights_hash(net)


def test_user_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="train_fileslist and data.train_data_dir are both empty"):
        train_syncnet(TINY, tmp_path / "a", max_steps=1, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable clips"):
        train_syncnet(TINY, tmp_path / "b", data=empty, max_steps=1, progress=False)  # data= replaces the config's
    with pytest.raises(ConfigError, match="data.batch_size = 0"):
        train_syncnet(TINY, tmp_path / "c", overrides=_overrides(data, "data.batch_size=0"), progress=False)
    with pytest.raises(ConfigError, match="not a training state"):
        train_syncnet(TINY, tmp_path / "d", overrides=_overrides(data), resume=tmp_path / "nope.pt", progress=False)
    with pytest.raises(ConfigError, match="unknown key"):
        train_syncnet(TINY, tmp_path / "e", overrides=_overrides(data, "run.nonsense=1"), progress=False)


def test_both_trainers_share_one_resume_rule(tmp_path):
    """`state.find_state` is the rule of both trainers: "auto" takes the latest state (none for a new folder),
    "never" refuses a folder holding a run (a state, or metrics alone), a named state must exist."""
    from latentsync.training import state

    run = tmp_path / "run"
    assert state.find_state(run, "auto") is None and state.find_state(run, "never") is None
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="already holds a training run"):
        state.find_state(run, "never")
    saved = state.save(run, 7, model=torch.nn.Linear(2, 2),
                       optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
    assert state.find_state(run, "auto") == saved == state.find_state(run, saved)
    with pytest.raises(ConfigError, match="not a training state file"):
        state.find_state(run, tmp_path / "missing.pt")
