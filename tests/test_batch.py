"""`latentsync batch` with tiny weights: outputs equal to `latentsync infer`'s, bad jobs, resuming after kill -9,
a worker killed mid-job, --retry-failed, and a local Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentsync import cli
from latentsync.batch import MANIFEST_NAME, SUMMARY_NAME, read_jobs
from latentsync.demo import UNET_CONFIG_NAME, make_talking_clip, synth_speech
from latentsync.errors import ConfigError
from latentsync.inference import InferenceOptions
from latentsync.media import write_wav

FAST = ["--steps", "1", "--guidance", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch-media")
    for name, seconds in (("a", 0.8), ("b", 0.6), ("c", 0.6)):
        make_talking_clip(folder / f"{name}.mp4", seconds=seconds)
    for i, seconds in enumerate((0.6, 0.5, 0.7)):
        write_wav(folder / f"s{i}.wav", synth_speech(seconds, seed=i), 16_000)
    (folder / "broken.mp4").write_bytes(b"not a video")
    return folder


def model_args(checkpoints: Path) -> list[str]:
    return ["--checkpoints", str(checkpoints), "--unet-config", str(checkpoints / UNET_CONFIG_NAME)]


def jobs_file(folder: Path, rows: list[str], name: str = "jobs.csv") -> Path:
    path = folder / name
    path.write_text("video,audio,steps,output\n" + "\n".join(rows) + "\n")
    return path


def records(out: Path) -> dict[str, tuple[str, str]]:
    """Each job's outcome (status, output) by key, from the manifest's last line for it."""
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    return {r["key"]: (r["status"], Path(r["output"]).name) for r in lines}


@pytest.fixture(scope="module")
def references(lipsync, media, tmp_path_factory) -> dict[str, bytes]:
    """What `latentsync infer` writes for each job (`LipSync.run` with the CLI's options), by output name."""
    folder = tmp_path_factory.mktemp("batch-references")
    made = {}
    for video, audio, steps in (("a", "s0", 1), ("b", "s1", 2), ("c", "s2", 1)):
        out = folder / f"{video}_{audio}.mp4"
        lipsync.run(media / f"{video}.mp4", media / f"{audio}.wav", out, InferenceOptions(steps=steps, guidance=1),
                    progress=False)
        made[out.name] = out.read_bytes()
    return made


def test_the_references_are_what_infer_writes(checkpoints, media, references, tmp_path):
    out = tmp_path / "b.mp4"
    assert cli.main(["infer", "--video", str(media / "b.mp4"), "--audio", str(media / "s1.wav"), "--out", str(out),
                     *model_args(checkpoints), *FAST, "--steps", "2"]) == 0
    assert out.read_bytes() == references["b_s1.mp4"]


def test_outputs_equal_infers_and_a_bad_job_is_recorded(checkpoints, media, references, tmp_path, capsys):
    jobs = jobs_file(media, ["a.mp4,s0.wav,,", "b.mp4,s1.wav,2,", f"broken.mp4,s0.wav,,{tmp_path}/x.mp4"],
                     name="good-and-bad.csv")
    out = tmp_path / "out"
    code = cli.main(["batch", str(jobs), "--out-dir", str(out), "--workers", "2", *model_args(checkpoints), *FAST])
    assert code == 1  # one job failed
    assert "broken.mp4" in capsys.readouterr().err
    for name in ("a_s0.mp4", "b_s1.mp4"):  # b with its own steps
        assert (out / name).read_bytes() == references[name], name
    assert not (tmp_path / "x.mp4").exists()
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["done"], summary["failed"], summary["workers"]) == (2, 1, 2)
    assert "not a readable" in summary["failures"][0]["reason"]
    assert sorted(records(out).values()) == [("done", "a_s0.mp4"), ("done", "b_s1.mp4"), ("failed", "x.mp4")]

    # Again: nothing to do (no worker starts); --retry-failed runs the failed one again.
    before = (out / MANIFEST_NAME).read_text()
    assert cli.main(["batch", str(jobs), "--out-dir", str(out), *model_args(checkpoints), *FAST]) == 1
    assert (out / MANIFEST_NAME).read_text() == before
    assert json.loads((out / SUMMARY_NAME).read_text())["workers"] == 0
    assert cli.main(["batch", str(jobs), "--out-dir", str(out), "--retry-failed", *model_args(checkpoints), *FAST]) == 1
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["status"] == "failed"


def test_unusable_jobs_files_are_refused_before_anything_runs(media, tmp_path):
    with pytest.raises(ConfigError, match="line 3: steps: expected an integer, got 'many'"):
        read_jobs(jobs_file(tmp_path, ["a.mp4,s0.wav,,", "a.mp4,s1.wav,many,"]), tmp_path / "out")
    with pytest.raises(ConfigError, match="line 1: guidance: must be at least 1"):
        read_jobs(_jsonl(tmp_path, [{"video": "a.mp4", "audio": "s.wav", "guidance": 0.5}]), tmp_path / "out")
    with pytest.raises(ConfigError, match="writes .*same.mp4, as .* line 2 does"):
        read_jobs(jobs_file(tmp_path, ["a.mp4,s0.wav,,same.mp4", "b.mp4,s1.wav,,same.mp4"]), tmp_path)
    with pytest.raises(ConfigError, match="is a video of the batch"):
        read_jobs(jobs_file(tmp_path, ["a.mp4,s0.wav,,", "b.mp4,s1.wav,,a.mp4"]), tmp_path)
    with pytest.raises(ConfigError, match="unknown column"):
        (tmp_path / "u.csv").write_text("video,audio,stepz\na.mp4,s.wav,3\n")
        read_jobs(tmp_path / "u.csv", tmp_path)
    # Relative paths are the jobs file's; JSONL values keep their types.
    (job,) = read_jobs(_jsonl(tmp_path, [{"video": "v/a.mp4", "audio": "s.wav", "seed": 7, "face": "1"}]), "o")
    assert job.video == tmp_path / "v" / "a.mp4" and job.output == Path("o") / "a_s.mp4"
    assert job.options.seed == 7 and job.options.face == 1
    assert cli.main(["batch", str(tmp_path / "missing.csv"), "--out-dir", str(tmp_path / "o")]) == 2


def _jsonl(folder: Path, rows: list[dict]) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r))
    return path


def _batch(checkpoints, jobs, out, *extra) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSYNC_")}
    return subprocess.Popen([sys.executable, "-m", "latentsync", "batch", str(jobs), "--out-dir", str(out),
                             *model_args(checkpoints), *FAST, *extra], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".partial" in p.name]


def test_kill_9_mid_batch_then_rerun_ends_as_an_uninterrupted_run(checkpoints, media, references, tmp_path):
    rows = ["a.mp4,s0.wav,,", "b.mp4,s1.wav,2,", "c.mp4,s2.wav,,"]
    jobs = jobs_file(media, rows, name="three.csv")
    out = tmp_path / "killed"
    out.mkdir()
    batch = _batch(checkpoints, jobs, out)
    _wait_for(lambda: _partials(out) and (out / MANIFEST_NAME).exists())  # one done, the next being written
    os.killpg(batch.pid, signal.SIGKILL)  # the batch and its workers, at once
    batch.wait()
    _wait_for(lambda: not any(_alive(int(p.name.split(".")[-3].split("-")[0])) for p in _partials(out)), 10)
    assert len(records(out)) < 3

    assert cli.main(["batch", str(jobs), "--out-dir", str(out), *model_args(checkpoints), *FAST]) == 0
    assert sorted(records(out).values()) == [("done", name) for name in sorted(references)]
    for name in references:
        assert (out / name).read_bytes() == references[name]
    assert sorted(p.name for p in out.iterdir()) == sorted([*references, MANIFEST_NAME, SUMMARY_NAME])  # no partial


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_killed_mid_job_has_its_job_retried(checkpoints, media, tmp_path):
    jobs = jobs_file(media, ["a.mp4,s0.wav,,", "b.mp4,s1.wav,,"], name="two.csv")
    out = tmp_path / "out"
    out.mkdir()
    batch = _batch(checkpoints, jobs, out)
    _wait_for(lambda: _partials(out))  # a worker is writing its first output
    (partial,) = _partials(out)
    os.kill(int(partial.name.split(".")[-3].split("-")[0]), signal.SIGKILL)  # `.<name>.<pid>-<hex>.partial.mp4`
    _, err = batch.communicate(timeout=300)
    assert batch.returncode == 0, err
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert sorted(r["status"] for r in lines) == ["done", "done"]
    assert max(r["attempts"] for r in lines) == 2  # the killed job, run again by a fresh worker
    assert not _partials(out)


def test_a_local_ray_cluster_gives_the_same_outputs(checkpoints, media, references, tmp_path):
    jobs = jobs_file(media, ["a.mp4,s0.wav,,", "b.mp4,s1.wav,2,"], name="ray.csv")
    on_ray = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSYNC_")}
    result = subprocess.run([sys.executable, "-m", "latentsync", "batch", str(jobs), "--out-dir", str(on_ray),
                             "--ray", "--workers", "2", *model_args(checkpoints), *FAST],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(records(on_ray).values()) == [("done", "a_s0.mp4"), ("done", "b_s1.mp4")]
    for name in ("a_s0.mp4", "b_s1.mp4"):
        assert (on_ray / name).read_bytes() == references[name], name
    assert json.loads((on_ray / SUMMARY_NAME).read_text())["workers"] == 2


def test_a_lora_adapter_and_its_scale_are_part_of_each_jobs_key(checkpoints, tmp_path):
    """Results made with an adapter are never taken for results without it, nor for another scale or file."""
    from latentsync.batch import model_identity

    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"adapter")
    plain = model_identity({"checkpoints": checkpoints})
    assert "lora" not in plain  # the keys of batches without an adapter are as before
    with_adapter = model_identity({"checkpoints": checkpoints, "lora": adapter, "lora_scale": 1.0})
    assert with_adapter["lora"][0] == str(adapter.absolute()) and with_adapter["lora"][-1] == 1.0
    assert model_identity({"checkpoints": checkpoints, "lora": adapter, "lora_scale": 0.5}) != with_adapter
    adapter.write_bytes(b"retrained adapter")  # the same path, another file
    assert model_identity({"checkpoints": checkpoints, "lora": adapter, "lora_scale": 1.0}) != with_adapter
