"""The checkpoint layout, and `latentsync download` against a local fake Hub (no network)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub

from latentsync.errors import CheckpointError
from latentsync.weights import (
    AUXILIARY_REPO,
    GROUPS,
    LATENTSYNC_REPOS,
    MANIFEST,
    UNET_CONFIG_FOR_VERSION,
    VAE_REPO,
    VERSIONED,
    CheckpointLayout,
    default_checkpoints_dir,
    installed_version,
)

INFERENCE_FILES = ["latentsync_unet.pt", "whisper/tiny.pt", "sd-vae-ft-mse/config.json",
                   "sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "auxiliary/models/buffalo_l/det_10g.onnx",
                   "auxiliary/models/buffalo_l/2d106det.onnx"]


# ---------------------------------------------------------------------------------------------------------------
# Layout


def test_layout_paths(tmp_path):
    layout = CheckpointLayout(tmp_path)
    aux = tmp_path / "auxiliary"
    assert layout.unet == tmp_path / "latentsync_unet.pt"
    assert layout.whisper == tmp_path / "whisper" / "tiny.pt"
    assert layout.syncnet == tmp_path / "stable_syncnet.pt"
    assert layout.vae == tmp_path / "sd-vae-ft-mse"
    assert layout.syncnet_v2 == aux / "syncnet_v2.model"
    assert layout.sfd_face == aux / "sfd_face.pth"
    assert layout.koniq == aux / "koniq_pretrained.pkl"
    assert layout.videomae == aux / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
    assert layout.i3d == aux / "i3d_torchscript.pt"
    assert layout.vgg16 == aux / "vgg16-397923af.pth"
    assert layout.insightface_det == aux / "models" / "buffalo_l" / "det_10g.onnx"
    assert layout.insightface_landmarks == aux / "models" / "buffalo_l" / "2d106det.onnx"
    assert CheckpointLayout(str(tmp_path)).root == tmp_path  # str roots become Paths


def test_every_layout_file_is_in_the_manifest(tmp_path):
    layout = CheckpointLayout(tmp_path)
    dests = {tmp_path / r.dest for r in MANIFEST}
    for name in CheckpointLayout.NAMES:
        path = getattr(layout, name)
        if name in CheckpointLayout.ELSEWHERE:  # not on the Hub: require() names its own source instead
            assert path not in dests and CheckpointLayout.ELSEWHERE[name].endswith(path.name)
            continue
        assert path in dests or any(path in d.parents for d in dests), name
    assert {r.group for r in MANIFEST} == set(GROUPS)
    assert UNET_CONFIG_FOR_VERSION == {"1.6": "stage2_512", "1.5": "stage2"}


def test_default_checkpoints_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("LATENTSYNC_CHECKPOINTS", raising=False)
    assert default_checkpoints_dir() == Path("checkpoints")
    monkeypatch.setenv("LATENTSYNC_CHECKPOINTS", str(tmp_path))
    assert default_checkpoints_dir() == tmp_path


def test_require_names_every_missing_file_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTSYNC_CHECKPOINTS", raising=False)
    layout = CheckpointLayout(tmp_path)
    layout.whisper.parent.mkdir(parents=True)
    layout.whisper.write_bytes(b"x")
    layout.unet.write_bytes(b"")  # an empty file is a failed copy, not a checkpoint
    (layout.vae).mkdir()
    (layout.vae / "config.json").write_text("{}")  # config without weights

    with pytest.raises(CheckpointError) as info:
        layout.require("unet", "whisper", "vae", "sfd_face", "syncnet_v2")
    message = str(info.value)
    assert "\n" not in message
    for missing in (layout.unet, layout.vae, layout.sfd_face, layout.syncnet_v2):
        assert str(missing.absolute()) in message
    assert str(layout.whisper) not in message
    assert "latentsync download" in message and "--with eval" in message
    assert f"--dir {tmp_path}" in message  # not the default folder, so the command must say which

    layout.unet.write_bytes(b"weights")
    (layout.vae / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    assert layout.require("unet", "whisper", "vae") == (layout.unet, layout.whisper, layout.vae)
    with pytest.raises(ValueError):
        layout.require("not_a_checkpoint")


def test_installed_version(tmp_path):
    assert installed_version(tmp_path) is None
    (tmp_path / "latentsync_version.txt").write_text("1.5\n")
    assert installed_version(tmp_path) == "1.5"
    (tmp_path / "latentsync_version.txt").write_text("garbage")
    assert installed_version(tmp_path) is None


# ---------------------------------------------------------------------------------------------------------------
# Download against a fake Hub


def _content(repo: str, filename: str) -> bytes:
    # Distinct bytes per repo and file; the UNet is large enough to be streamed in several chunks.
    seed = f"{repo}/{filename}|".encode()
    return seed * (40_000 if filename == "latentsync_unet.pt" else 3)


@pytest.fixture
def hub(tmp_path):
    with FakeHub(tmp_path / "hub") as hub:
        for version, repo in LATENTSYNC_REPOS.items():
            for filename in ("latentsync_unet.pt", "whisper/tiny.pt", "stable_syncnet.pt"):
                hub.add(repo, filename, _content(repo, filename))
        for r in MANIFEST:
            if r.repo != VERSIONED:
                hub.add(r.repo, r.filename, _content(r.repo, r.filename))
        yield hub


def file_requests(hub) -> list[tuple[str, str, str]]:
    """The requests for files, without snapshot_download's API calls (revision, tree)."""
    return [r for r in hub.requests if not r[2].startswith("api:")]


def _run(endpoint: str, root: Path, *args: str, timeout: float = 60, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "LATENTSYNC_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(root.parent / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "latentsync", "download", "--dir", str(root), "--quiet", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_download_inference_then_nothing_more(hub, tmp_path):
    root = tmp_path / "ckpt"
    result = _run(hub.url, root)
    assert result.returncode == 0, result.stderr
    repo = LATENTSYNC_REPOS["1.6"]
    assert (root / "latentsync_unet.pt").read_bytes() == _content(repo, "latentsync_unet.pt")
    assert (root / "whisper/tiny.pt").read_bytes() == _content(repo, "whisper/tiny.pt")
    for filename in ("config.json", "diffusion_pytorch_model.safetensors"):
        assert (root / "sd-vae-ft-mse" / filename).read_bytes() == _content(VAE_REPO, filename)
    assert not (root / "stable_syncnet.pt").exists()  # training group not requested
    assert installed_version(root) == "1.6"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temporary left
    cache = tmp_path / "hf_home" / "hub"
    for dest in INFERENCE_FILES:  # the folder is a view of the Hub cache
        assert (root / dest).is_symlink() and cache in Path(os.readlink(root / dest)).parents, dest
    assert {(r, f) for m, r, f in file_requests(hub) if m == "GET"} == {
        (repo, "latentsync_unet.pt"), (repo, "whisper/tiny.pt"),
        (VAE_REPO, "config.json"), (VAE_REPO, "diffusion_pytorch_model.safetensors"),
        (AUXILIARY_REPO, "auxiliary/models/buffalo_l/det_10g.onnx"),
        (AUXILIARY_REPO, "auxiliary/models/buffalo_l/2d106det.onnx")}
    CheckpointLayout(root).require("unet", "whisper", "vae")

    before = len(hub.requests)
    again = _run(hub.url, root)
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == before  # everything was present: not even a HEAD


def test_download_version_15_and_switching(hub, tmp_path):
    root = tmp_path / "ckpt"
    assert _run(hub.url, root).returncode == 0
    assert installed_version(root) == "1.6"
    # Switching fails offline: nothing was replaced, so the folder still holds 1.6.
    assert _run(f"http://127.0.0.1:{_closed_port()}", root, "--version", "1.5").returncode == 2
    assert installed_version(root) == "1.6"
    assert (root / "latentsync_unet.pt").read_bytes() == _content(LATENTSYNC_REPOS["1.6"], "latentsync_unet.pt")

    result = _run(hub.url, root, "--version", "1.5")
    assert result.returncode == 0, result.stderr
    repo15 = LATENTSYNC_REPOS["1.5"]
    assert (root / "latentsync_unet.pt").read_bytes() == _content(repo15, "latentsync_unet.pt")
    assert installed_version(root) == "1.5"
    got = [(r, f) for m, r, f in file_requests(hub) if m == "GET"][len(INFERENCE_FILES):]
    assert got == [(repo15, "latentsync_unet.pt")]  # whisper and the VAE are shared by both versions

    fresh = tmp_path / "fresh15"
    assert _run(hub.url, fresh, "--version", "1.5").returncode == 0
    assert (fresh / "whisper/tiny.pt").read_bytes() == _content(repo15, "whisper/tiny.pt")
    assert installed_version(fresh) == "1.5"


def test_unfinished_switch_is_finished_by_the_next_run(hub, tmp_path):
    root = tmp_path / "ckpt"
    assert _run(hub.url, root, "--with", "training").returncode == 0
    repo15 = LATENTSYNC_REPOS["1.5"]
    syncnet15 = hub.root / repo15 / "stable_syncnet.pt"
    syncnet15.rename(syncnet15.with_suffix(".away"))
    hub.revisions["main"] = "e" * 40  # a new commit: a commit's files never change (the cache relies on it)
    # Not asking for training files still replaces the 1.6 SyncNet, which would not match a 1.5 UNet.
    result = _run(hub.url, root, "--version", "1.5")
    assert result.returncode == 2 and "stable_syncnet.pt" in result.stderr
    assert (root / "latentsync_unet.pt").read_bytes() == _content(repo15, "latentsync_unet.pt")
    assert installed_version(root) is None  # half switched: neither version

    syncnet15.with_suffix(".away").rename(syncnet15)
    hub.revisions["main"] = "d" * 40
    result = _run(hub.url, root, "--version", "1.5")
    assert result.returncode == 0, result.stderr
    assert (root / "stable_syncnet.pt").read_bytes() == _content(repo15, "stable_syncnet.pt")
    assert installed_version(root) == "1.5"


def test_download_all_groups(hub, tmp_path):
    root = tmp_path / "ckpt"
    result = _run(hub.url, root, "--with", "all")
    assert result.returncode == 0, result.stderr
    for r in MANIFEST:
        repo = r.repo_for("1.6")
        assert (root / r.dest).read_bytes() == _content(repo, r.filename), r.dest
    layout = CheckpointLayout(root)
    on_hub = [n for n in CheckpointLayout.NAMES if n not in CheckpointLayout.ELSEWHERE]
    assert layout.require(*on_hub)


def test_download_reports_a_file_missing_on_the_hub_and_fetches_the_rest(hub, tmp_path):
    (hub.root / LATENTSYNC_REPOS["1.6"] / "whisper/tiny.pt").unlink()
    root = tmp_path / "ckpt"
    result = _run(hub.url, root)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("latentsync download: error:"), result.stderr
    assert "whisper/tiny.pt" in lines[1] and "not found" in lines[0]
    assert str((root / "whisper/tiny.pt").absolute()) in lines[1]
    assert "latentsync_unet.pt" not in result.stderr
    assert (root / "latentsync_unet.pt").is_file()
    assert installed_version(root) is None  # the inference set is incomplete


def test_the_hub_cache_is_shared_and_a_cached_revision_asks_no_one(hub, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(hub.url, first).returncode == 0
    before = len(hub.requests)
    assert _run(hub.url, second).returncode == 0  # another folder, the same cache
    assert len(hub.requests) == before
    assert (second / "latentsync_unet.pt").resolve() == (first / "latentsync_unet.pt").resolve()
    # Offline, the cache still serves what it holds; what it does not hold is named, one line per file.
    offline = _run(f"http://127.0.0.1:{_closed_port()}", tmp_path / "third", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert CheckpointLayout(tmp_path / "third").require("unet", "whisper", "vae")
    cold = _run(hub.url, tmp_path / "fourth", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "cold"))
    lines = cold.stderr.strip().splitlines()
    assert cold.returncode == 2 and "HF_HUB_OFFLINE" in lines[0]
    assert [line for line in lines[1:] if "->" in line] and len([l for l in lines if "->" in l]) == len(INFERENCE_FILES)
    assert "HF_ENDPOINT" in lines[-1]
    assert not (tmp_path / "fourth").exists()  # no empty folder left behind


def test_a_revision_pins_the_weights(hub, tmp_path):
    tagged = "f" * 40
    hub.revisions["v1.0"] = tagged
    root = tmp_path / "ckpt"
    result = _run(hub.url, root, "--revision", "v1.0")
    assert result.returncode == 0, result.stderr
    def commit_of(dest: str) -> str:
        target = Path(os.readlink(root / dest))  # .../snapshots/<commit>/<path in the repository>
        return target.parts[target.parts.index("snapshots") + 1]

    assert commit_of("latentsync_unet.pt") == commit_of("whisper/tiny.pt") == tagged  # the tag's snapshot
    assert commit_of("sd-vae-ft-mse/config.json") != tagged  # the VAE's repository: its own main branch
    again = _run(hub.url, root, "--revision", "main")  # another revision: the LatentSync files are linked anew
    assert again.returncode == 0, again.stderr
    assert commit_of("latentsync_unet.pt") == hub.revisions["main"]
    missing = _run(hub.url, tmp_path / "other", "--revision", "no-such-tag")
    assert missing.returncode == 2 and "revision 'no-such-tag' not found" in missing.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_offline_fails_fast_naming_each_file(tmp_path):
    root = tmp_path / "ckpt"
    start = time.monotonic()
    result = _run(f"http://127.0.0.1:{_closed_port()}", root)
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert elapsed < 10
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("latentsync download: error:") and "cannot reach" in lines[0]
    for dest in INFERENCE_FILES:  # one line each, with where it comes from
        (line,) = [line for line in lines[1:] if str((root / dest).absolute()) in line]
    assert any("ByteDance/LatentSync-1.6" in line for line in lines)
    assert any("stabilityai/sd-vae-ft-mse" in line for line in lines)
    assert "HF_ENDPOINT" in lines[-1] and "HF_HUB_OFFLINE" in lines[-1]
    assert not root.exists()  # nothing half-written anywhere, not even an empty folder


def test_download_from_a_silent_server_times_out(tmp_path):
    root = tmp_path / "ckpt"
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        start = time.monotonic()
        result = _run(f"http://127.0.0.1:{silent.getsockname()[1]}", root, HF_HUB_ETAG_TIMEOUT="1")
        elapsed = time.monotonic() - start
    assert result.returncode == 2
    assert elapsed < 10  # one timed-out request, not one per file with retries
    assert len(result.stderr.strip().splitlines()) == 1 + len(INFERENCE_FILES) + 1, result.stderr
    assert str((root / "latentsync_unet.pt").absolute()) in result.stderr


def test_interrupted_download_leaves_no_file_and_resumes(hub, tmp_path):
    root = tmp_path / "ckpt"
    hub.stall.add("latentsync_unet.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "LATENTSYNC_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.Popen([sys.executable, "-m", "latentsync", "download", "--dir", str(root), "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.stalled.wait(timeout=30)
        time.sleep(0.3)  # let the client write the first half to disk
    finally:
        proc.kill()
        proc.wait()
    assert not (root / "latentsync_unet.pt").exists()
    # The half that was received waits in the Hub cache, where the next run resumes it.
    assert any(p.name.endswith(".incomplete") for p in (tmp_path / "hf_home").rglob("*"))

    hub.stall.clear()
    hub.release.set()
    result = _run(hub.url, root)
    assert result.returncode == 0, result.stderr
    assert (root / "latentsync_unet.pt").read_bytes() == _content(LATENTSYNC_REPOS["1.6"], "latentsync_unet.pt")


def test_require_names_the_source_of_files_not_on_the_hub(tmp_path):
    with pytest.raises(CheckpointError) as err:
        CheckpointLayout(tmp_path).require("fid_inception", "syncnet_v2")
    message = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message and "github.com/mseitzer/pytorch-fid" in message
    assert "latentsync download" in message and "--with eval" in message and "\n" not in message


def test_from_pretrained_fetches_through_the_cache_then_loads(checkpoints, tmp_path):
    """`LipSync.from_pretrained`: the files of the repository (here the tiny models, served as 1.6) through the
    Hub cache into a checkpoints folder, then loaded; a second call asks the Hub nothing."""
    with FakeHub(tmp_path / "hub") as hub:
        for name in ("latentsync_unet.pt", "whisper/tiny.pt"):
            hub.add(LATENTSYNC_REPOS["1.6"], name, (checkpoints / name).read_bytes())
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            hub.add(VAE_REPO, name, (checkpoints / "sd-vae-ft-mse" / name).read_bytes())
        for r in MANIFEST:  # the InsightFace files come along (stand-ins: this test's faces are mediapipe's)
            if r.group == "inference" and r.repo == AUXILIARY_REPO:
                hub.add(r.repo, r.filename, b"not read here")
        code = (
            "import sys\n"
            "from latentsync.inference import LipSync\n"
            f"ls = LipSync.from_pretrained('ByteDance/LatentSync-1.6', checkpoints={str(tmp_path / 'ck')!r},\n"
            f"    unet_config={str(checkpoints / 'unet.yaml')!r}, device='cpu', audio_cache=False, progress=False,\n"
            "    face_backend='mediapipe')\n"
            "print(ls.resolution)\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "LATENTSYNC_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"))
        first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert first.stdout.split()[-1] == "128" and installed_version(tmp_path / "ck") == "1.6"
        before = len(hub.requests)
        again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert len(hub.requests) == before
    from latentsync.errors import ConfigError
    from latentsync.inference import LipSync

    with pytest.raises(ConfigError, match="not a LatentSync repository"):
        LipSync.from_pretrained("someone/else", checkpoints=tmp_path / "x")
    assert not (tmp_path / "x").exists()
