"""The data pipeline end to end: what passes, what is rejected and why, resumability (including SIGKILL),
parameter changes, parallel and Ray runs, and an input folder that is never touched.

Learned steps use random-weight networks written in the published formats, with thresholds injected so that
the test decides what passes (the networks themselves are tested elsewhere)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from latentsync import cli
from latentsync.config import load_preprocess_config
from latentsync.demo import make_talking_clip, synth_speech
from latentsync.errors import InputError
from latentsync.media import VideoReader, VideoWriter, probe_video, write_wav
from latentsync.models.hyperiqa import HyperNet
from latentsync.models.syncnet_v2 import SyncNetV2
from latentsync.preprocess.runner import Runner, passed_clips

STEPS = ["check", "resample", "shots", "segments", "align", "sync", "quality"]
# Everything in sync and of any quality passes (the random networks' scores mean nothing).
OVERRIDES = ["sync_conf_threshold=-1000", "sync_max_offset=15", "quality_threshold=-1000"]
PASSED = {"spk1/talk.mp4#shot000#seg00", "spk2/talk.mp4#shot000#seg00"}
REJECTED = {
    "broken.mp4": ("check", "not a readable"),
    "silent/noaudio.mp4": ("check", "no audio stream"),
    "spk2/talk.mp4#shot001#seg00": ("align", "no face in frame 0"),
}


def config(*extra: str):
    return load_preprocess_config(None, OVERRIDES + list(extra))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """Input videos and a checkpoints folder. spk1/talk.mp4 and spk2/talk.mp4 share a name; spk2 cuts to a
    faceless shot at 2 s."""
    root = tmp_path_factory.mktemp("data")
    inp = root / "in"
    for sub in ("spk1", "spk2", "silent"):
        (inp / sub).mkdir(parents=True)
    speech = write_wav(root / "speech.wav", synth_speech(4.4), 16_000)
    frames = list(VideoReader(make_talking_clip(root / "portrait.mp4", seconds=4.4)).frames())
    field = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (600, 512, 3), dtype=np.uint8), (0, 0), 6)
    for name, cut in (("spk1/talk.mp4", None), ("spk2/talk.mp4", 50)):
        with VideoWriter(inp / name, 512, 600, audio=speech) as writer:
            for i, frame in enumerate(frames):
                writer.write(field if cut is not None and i >= cut else frame)
    with VideoWriter(inp / "silent" / "noaudio.mp4", 512, 600) as writer:
        for frame in frames[:60]:
            writer.write(frame)
    (inp / "broken.mp4").write_text("not a video")
    checkpoints = root / "checkpoints"
    (checkpoints / "auxiliary").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), checkpoints / "auxiliary" / "syncnet_v2.model")
    torch.save(HyperNet().state_dict(), checkpoints / "auxiliary" / "koniq_pretrained.pkl")
    return inp, checkpoints


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest(out: Path) -> list[dict]:
    """The manifest with paths made relative to the output folder (to compare runs in different folders)."""
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for e in entries:
        if "path" in e:
            e["path"] = Path(e["path"]).relative_to(out).as_posix()
    return entries


def outputs(out: Path) -> dict[str, list]:
    """Decoded content of every passed clip (frames and sound), by id."""
    result = {}
    for e in manifest(out):
        if e["status"] == "passed":
            from latentsync.media import decode_audio

            path = out / e["path"]
            frames = [hashlib.sha256(f.tobytes()).hexdigest() for f in VideoReader(path).frames()]
            result[e["id"]] = [frames, hashlib.sha256(decode_audio(path).tobytes()).hexdigest()]
    return result


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
    inp, checkpoints = dataset
    before = snapshot(inp)
    out = tmp_path_factory.mktemp("out") / "processed"
    summary = Runner(inp, out, config(), steps=STEPS, checkpoints=checkpoints, progress=False).run()
    return out, summary, before


def test_what_passes_and_what_is_rejected_why(full_run, dataset):
    out, summary, before = full_run
    entries = manifest(out)
    assert {e["id"] for e in entries if e["status"] == "passed"} == PASSED
    rejected = {e["id"]: (e["step"], e["reason"]) for e in entries if e["status"] == "rejected"}
    assert rejected.keys() == REJECTED.keys()
    for item_id, (step, reason) in REJECTED.items():
        assert rejected[item_id][0] == step and reason in rejected[item_id][1], item_id
    assert not summary.failures
    steps = {s.name: s for s in summary.steps}
    assert (steps["check"].inputs, steps["check"].outputs) == (4, 2)
    assert steps["shots"].outputs == 3  # spk2 was cut in two
    assert summary.clips_out == 2
    # Hours in: the two readable talking videos (4.4 s each); out: spk1 whole, spk2 until its cut at 2 s.
    assert summary.hours_in * 3600 == pytest.approx(8.8, abs=0.05)
    assert summary.hours_out * 3600 == pytest.approx(6.4, abs=0.05)
    # The input folder is exactly as it was: no file added, changed or removed (the reference deletes).
    assert snapshot(dataset[0]) == before


def test_training_clips_are_aligned_faces_with_sound(full_run, capsys):
    out, _, _ = full_run
    paths = passed_clips(out)
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    for p in paths:
        info = probe_video(p)
        assert (info.width, info.height, info.fps, info.has_audio) == (256, 256, 25, True)
    spk1 = next(p for p in paths if "spk1" in p)
    assert VideoReader(spk1).count() == 110  # the whole 4.4 s clip
    assert sum(1 for _ in VideoReader(next(p for p in paths if "spk2" in p)).frames()) == 50  # until the cut
    assert cli.main(["fileslist", str(out)]) == 0
    assert capsys.readouterr().out.split() == paths


def test_a_second_run_redoes_nothing(full_run, dataset):
    out, _, _ = full_run
    inp, checkpoints = dataset
    files = snapshot(out / "sync")
    summary = Runner(inp, out, config(), steps=STEPS, checkpoints=checkpoints, progress=False).run()
    assert all(s.done_before == s.inputs for s in summary.steps)
    assert snapshot(out / "sync") == files


def test_changing_a_parameter_redoes_that_step_and_what_follows(dataset, tmp_path):
    inp, checkpoints = dataset
    out = tmp_path / "out"
    Runner(inp, out, config(), steps=STEPS, checkpoints=checkpoints, progress=False).run()
    summary = Runner(inp, out, config("aligned_crf=20"), steps=STEPS, checkpoints=checkpoints,
                     progress=False).run()
    done = {s.name: s.done_before for s in summary.steps}
    assert done["segments"] == 3 and done["align"] == 0 and done["sync"] == 0 and done["quality"] == 0


def test_killed_and_rerun_equals_an_uninterrupted_run(full_run, dataset, tmp_path):
    out_ref, _, _ = full_run
    inp, checkpoints = dataset
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "latentsync", "preprocess", str(inp), str(out), "--checkpoints", str(checkpoints),
           "--steps", ",".join(STEPS), "--quiet", *[a for o in OVERRIDES for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "state" / "align").glob("**/*.json")):
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)  # in the middle of the alignment step
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "manifest.jsonl").exists()
    assert subprocess.run(cmd, timeout=300).returncode == 0
    assert manifest(out) == manifest(out_ref)
    assert outputs(out) == outputs(out_ref)
    leftovers = [p for p in out.rglob(".*") if p.is_file()]
    assert leftovers == []  # no temporary file survives


def test_a_pool_of_workers_gives_the_same_result(full_run, dataset, tmp_path):
    out_ref, _, _ = full_run
    inp, checkpoints = dataset
    out = tmp_path / "pool"
    Runner(inp, out, config(), steps=STEPS, workers=2, checkpoints=checkpoints, progress=False).run()
    assert manifest(out) == manifest(out_ref)
    assert outputs(out) == outputs(out_ref)


def test_ray_gives_the_same_manifest(full_run, dataset, tmp_path):
    pytest.importorskip("ray", reason="installed by setup.sh (the [ray] extra)")
    import ray

    out_ref, _, _ = full_run
    inp, checkpoints = dataset
    out = tmp_path / "ray"
    try:
        Runner(inp, out, config(), steps=STEPS, workers=2, ray="auto", checkpoints=checkpoints,
               progress=False).run()
    finally:
        ray.shutdown()
    assert same_up_to_float_rounding(manifest(out), manifest(out_ref))
    assert outputs(out) == outputs(out_ref)


def same_up_to_float_rounding(a, b, rel: float = 1e-4) -> bool:
    """Equal, except that floats (network scores in the metrics) may differ in their last digits: Ray's workers
    run torch with one thread, which sums in another order."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_up_to_float_rounding(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_up_to_float_rounding(x, y, rel) for x, y in zip(a, b))
    return a == b


def test_sync_filter_shifts_or_rejects_by_offset(dataset, tmp_path, monkeypatch):
    """The filter's decisions and the audio shift, with the SyncNet's scores set per clip (the score itself is
    computed and tested in test_sync_confidence)."""
    import latentsync.preprocess.sync as sync_step
    from latentsync.media import decode_audio

    inp, checkpoints = dataset
    scores = {"spk1": (3.0, 7.0, 5.0), "spk2": (0.0, 7.0, 1.0)}  # (offset, LSE-D, LSE-C)
    monkeypatch.setattr(sync_step, "crop_sync_confidence",
                        lambda path, model, vshift: scores["spk1" if "spk1" in str(path) else "spk2"])
    out = tmp_path / "out"
    cfg = load_preprocess_config(None, ["sync_conf_threshold=3", "sync_max_offset=6", "quality_threshold=-1000"])
    Runner(inp, out, cfg, steps=STEPS, checkpoints=checkpoints, progress=False).run()
    entries = {e["id"]: e for e in manifest(out)}
    assert entries["spk1/talk.mp4#shot000#seg00"]["status"] == "passed"
    low = entries["spk2/talk.mp4#shot000#seg00"]
    assert low["status"] == "rejected" and low["reason"].startswith("out of sync: confidence 1.00 < 3")
    # The kept clip's sound is delayed by 3 frames (120 ms) against the aligned clip's.
    aligned = decode_audio(next((out / "align").rglob("spk1/*.mp4")))
    synced = decode_audio(out / entries["spk1/talk.mp4#shot000#seg00"]["path"])
    lag = int(np.argmax(np.correlate(synced[:16_000], aligned[:14_000], mode="valid")))
    assert abs(lag - 1920) <= 16  # 0.12 s at 16 kHz
    scores["spk1"] = (-8.0, 7.0, 5.0)
    out2 = tmp_path / "out2"
    Runner(inp, out2, cfg, steps=STEPS, checkpoints=checkpoints, progress=False).run()
    entry = {e["id"]: e for e in manifest(out2)}["spk1/talk.mp4#shot000#seg00"]
    assert entry["status"] == "rejected" and "offset -8 frames > 6" in entry["reason"]


def test_missing_weights_are_named_before_any_work(dataset, tmp_path, capsys):
    inp, _ = dataset
    code = cli.main(["preprocess", str(inp), str(tmp_path / "out"), "--checkpoints", str(tmp_path / "none"),
                     "--steps", ",".join(STEPS), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "syncnet_v2.model" in err and "koniq_pretrained.pkl" in err and "\n" not in err
    assert not (tmp_path / "out" / "state").exists()  # checked before any work


def test_output_inside_input_is_refused(dataset):
    inp, _ = dataset
    with pytest.raises(InputError, match="lies inside the input folder"):
        Runner(inp, inp / "out", config(), steps=STEPS)
    assert os.path.exists(inp)
