"""The web app over tiny random-weight models: the service's folders, limits, model loading, stopping, face
preview and speed estimate; the per-step progress under it; the real Gradio server over HTTP (concurrent
requests, Stop freeing a slot, a bad file then a good one, upload limits, files it must not serve); and the page
itself in headless Chromium driven by Playwright (upload, run, a playable result and the history, an error
message, a still image with a face picked on the preview and a video's sound as the speech, the bar moving
every denoising step, Stop during a job)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from latentsync import cli
from latentsync.app import (DEMO_GUIDANCE, DEMO_STEPS, AppSettings, JobStopped, LipSyncService, build_app,
                            estimate_line, launch, public_message, write_examples)
from latentsync.audio import num_video_frames
from latentsync.defaults import DEFAULT_CRF
from latentsync.demo import load_portrait, make_talking_clip, synth_speech
from latentsync.errors import InputError
from latentsync.inference import InferenceOptions
from latentsync.job import StepProgress
from latentsync.media import VideoReader, VideoWriter, probe_video, write_wav

FAST = InferenceOptions(steps=2, guidance=1.5)
CLIP_SECONDS = 1.0
MAX_SECONDS = 8.0  # the test server's duration limit
MAX_UPLOAD_MB = 2.0  # the test server's upload limit
CHROMIUM_ARGS = [  # what this machine's closed network needs (no background connections)
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def frames_for(seconds: float) -> int:
    return num_video_frames((int(seconds * 16_000) // 160) // 2)


def read_frames(path: Path) -> list[np.ndarray]:
    return list(VideoReader(path).frames())


# --------------------------------------------------------------------------------------------------------
# Fixtures: tiny models, media, a server
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def media(work) -> dict[str, Path]:
    """A 1 s clip of the portrait, speech tracks of different lengths (one long enough to stop mid-job), a
    corrupt video, a faceless video, a speech track over the server's duration limit, a still image of two
    faces (the portrait beside its mirror image) and a video whose sound is speech."""
    import cv2

    folder = work / "media"
    folder.mkdir()
    broken = folder / "broken clip.mp4"
    clip = make_talking_clip(folder / "talk ing.mp4", seconds=CLIP_SECONDS)
    broken.write_bytes(clip.read_bytes()[:2000])  # the header survives, the picture does not
    with VideoWriter(folder / "empty room.mp4", 320, 240, fps=25) as writer:
        for i in range(25):
            writer.write(np.full((240, 320, 3), 90 + i, np.uint8))
    portrait = load_portrait()
    pair = folder / "two faces.png"
    cv2.imwrite(str(pair), cv2.cvtColor(np.concatenate([portrait, portrait[:, ::-1]], axis=1), cv2.COLOR_RGB2BGR))
    speech = write_wav(folder / "speech.wav", synth_speech(1.0, seed=1), 16_000)
    with VideoWriter(folder / "speaker.mp4", 64, 64, fps=25, audio=speech) as writer:  # 1 s of speech, as sound
        for i in range(25):
            writer.write(np.full((64, 64, 3), 40 + 4 * i, np.uint8))
    return {
        "clip": clip,
        "speech": speech,
        "longer speech": write_wav(folder / "longer speech.wav", synth_speech(1.4, seed=2), 16_000),
        "long speech": write_wav(folder / "long speech.wav", synth_speech(6.0, seed=3), 16_000),
        "too long": write_wav(folder / "lecture.wav", np.zeros(int((MAX_SECONDS + 2) * 8_000)), 8_000),
        "broken": broken,
        "faceless": folder / "empty room.mp4",
        "two faces": pair,
        "speech video": folder / "speaker.mp4",
    }


class RecordingService(LipSyncService):
    """The service with the start and end time of each job recorded, to see whether jobs ran at once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.intervals: list[tuple[float, float]] = []

    def run(self, *args, **kwargs):
        start = time.monotonic()
        try:
            return super().run(*args, **kwargs)
        finally:
            self.intervals.append((start, time.monotonic()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(lipsync, work, checkpoints, media):
    """The app as `latentsync app --demo` serves it (examples from the demo clip, its speed measured before it
    serves), two jobs at once, on a free port of 127.0.0.1, with its Gradio cache in the test's folder."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio-cache")
    settings = AppSettings(concurrency=2, max_seconds=MAX_SECONDS, max_upload_mb=MAX_UPLOAD_MB, steps=2)
    service = RecordingService(lipsync, settings)
    service.calibrate(media["clip"], media["speech"])
    service.intervals.clear()
    app = build_app(service, examples=write_examples(work / "examples"))
    port = free_port()
    launch(app, settings, port=port, quiet=True, blocked_paths=[checkpoints])
    try:
        yield app, service, f"http://127.0.0.1:{port}"
    finally:
        app.close()
        service.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[2], verbose=False, download_files=str(server[1].root.parent / "client-downloads"))


def video_path(output) -> Path:
    """The result video of a client call (a path, or {"video": path, "subtitles": ...})."""
    return Path(output["video"] if isinstance(output, dict) else output)


def call(client, video: Path, audio: Path, *, steps: int = 2, seed: int = 1247, guidance: float = 1.5):
    """Submit one request over Gradio's HTTP API, the page's own endpoint; returns a Job."""
    from gradio_client import handle_file

    return client.submit(handle_file(str(video)), handle_file(str(audio)), steps, guidance, seed, "largest",
                         DEFAULT_CRF, "ddim", False, api_name="/lipsync")


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def face_boxes(frame: np.ndarray) -> list[np.ndarray]:
    """The boxes of the faces in `frame`, from the left."""
    from latentsync.face.mediapipe import MediapipeBackend

    with MediapipeBackend(video=False) as backend:
        return sorted((f.box for f in backend.detect(frame)), key=lambda b: float(b[0] + b[2]))


def changed_share(frames: list[np.ndarray], still: np.ndarray, box: np.ndarray) -> float:
    """The share of the pixels in `box` (x1, y1, x2, y2) that any of `frames` changed visibly from `still`."""
    x1, y1, x2, y2 = (int(v) for v in box)
    region = np.stack([np.abs(f[y1:y2, x1:x2].astype(int) - still[y1:y2, x1:x2].astype(int)).max(axis=2) > 24
                       for f in frames])
    return float(region.any(axis=0).mean())


# --------------------------------------------------------------------------------------------------------
# The service (no Gradio)
# --------------------------------------------------------------------------------------------------------


def test_service_loads_the_models_once_for_concurrent_first_requests(lipsync, media, tmp_path):
    made = []

    def make():
        time.sleep(0.2)  # a slow load: both requests arrive while it runs
        made.append(1)
        return lipsync

    service = LipSyncService(make, AppSettings(), root=tmp_path / "svc")
    outputs: list[Path] = []
    threads = [threading.Thread(target=lambda: outputs.append(service.run(media["clip"], media["speech"], FAST)[0]))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == [1] and len(outputs) == 2 and outputs[0] != outputs[1]
    # Each job worked in a folder of its own, removed at its end; only the two results remain.
    assert not any((tmp_path / "svc" / "jobs").iterdir())
    assert sorted(p.parent.parent for p in outputs) == [tmp_path / "svc" / "results"] * 2
    for out in outputs:
        assert len(read_frames(out)) == frames_for(1.0)


def test_service_rejects_inputs_over_the_limits_before_any_model_work(media, tmp_path):
    def no_models():
        raise AssertionError("models loaded for a request that should have been refused")

    service = LipSyncService(no_models, AppSettings(max_seconds=MAX_SECONDS), root=tmp_path / "svc")
    with pytest.raises(InputError, match=r"lecture.wav: the audio lasts 10 s, longer than this server's limit of 8 s"):
        service.run(media["clip"], media["too long"], FAST)
    with pytest.raises(InputError, match="broken clip.mp4"):
        service.run(media["broken"], media["speech"], FAST)
    with pytest.raises(InputError, match="no video"):
        service.run(None, media["speech"], FAST)
    with pytest.raises(InputError, match="no audio"):
        service.run(media["clip"], None, FAST)
    with pytest.raises(InputError, match="talk ing.mp4: has no audio track"):
        service.run(media["clip"], media["clip"], FAST)  # a video without sound given as the speech
    assert not any((tmp_path / "svc" / "jobs").iterdir())


def test_service_stop_ends_a_running_job_with_its_slot_and_files(lipsync, media, tmp_path):
    """Stop mid-denoising: `run` raises JobStopped within a step or so, the job's folder (its partial output) is
    gone, it no longer counts as running, and the next job runs; a job stopped while waiting never starts."""
    service = LipSyncService(lipsync, AppSettings(), root=tmp_path / "svc")
    long_job = InferenceOptions(steps=50, guidance=1.0)  # 152 frames x 50 steps: minutes on this CPU
    job = service.new_job(session="page A")
    other = service.new_job(session="page B")
    events: list[tuple[str, int, int]] = []
    denoising = threading.Event()
    outcome: list[BaseException] = []

    def progress(stage, done, total):
        events.append((stage, done, total))
        if stage == "denoise" and done:
            denoising.set()

    def run():
        try:
            service.run(media["clip"], media["long speech"], long_job, progress=progress, job=job)
        except BaseException as e:  # noqa: BLE001 - examined below
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    assert denoising.wait(120)
    assert service.running == 1
    (folder,) = (tmp_path / "svc" / "jobs").iterdir()  # the job's folder, its output being written there
    assert any(folder.iterdir())
    assert service.stop_session("page A") == 1
    stopped_at = time.monotonic()
    thread.join(60)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 20
    (error,) = outcome
    assert isinstance(error, JobStopped) and str(error).startswith("stopped at ")
    steps = [(done, total) for stage, done, total in events if stage == "denoise"]
    assert steps[-1][0] < steps[-1][1] / 4  # far from done: it did stop
    assert service.running == 0 and not any((tmp_path / "svc" / "jobs").iterdir())
    assert not any((tmp_path / "svc" / "results").iterdir())
    assert service.speed is None  # a stopped job measures nothing

    # Stopped while waiting (page B's job never reached a slot): it ends before any work.
    assert service.stop(other) is True
    heard = []
    with pytest.raises(JobStopped, match="stopped before it started"):
        service.run(media["clip"], media["speech"], FAST, progress=lambda *e: heard.append(e), job=other)
    assert heard == [] and service.stop(other) is False  # ended: nothing left to stop
    assert service.stop_session("page A") == 0

    # The service carries on: the next job runs to its end.
    out, result = service.run(media["clip"], media["speech"], FAST)
    assert len(read_frames(out)) == result.frames == frames_for(1.0) and service.running == 0


def test_service_face_preview_numbers_the_faces_the_job_syncs(lipsync, media, tmp_path):
    """The preview finds both faces of the still image, numbered from the left as `face=N` counts them; a click
    inside a face picks it; the face a job is given by that number is the one it syncs, the other untouched."""
    service = LipSyncService(lipsync, AppSettings(), root=tmp_path / "svc")
    preview = service.faces(media["two faces"])
    still = load_portrait()
    left, right = face_boxes(np.concatenate([still, still[:, ::-1]], axis=1))
    assert len(preview.faces) == 2 and preview.source_shape == (600, 1024)
    first, second = (f.box for f in preview.faces)
    assert (first[0] + first[2]) / 2 < 512 < (second[0] + second[2]) / 2  # from the left
    assert [preview.chosen(n) for n in (0, 1, 2)] == [0, 1, None] and preview.chosen("largest") in (0, 1)
    centre = ((second[:2] + second[2:]) / 2) * preview.scale  # in the preview's pixels
    assert preview.face_at(*centre) == 1 and preview.face_at(2, 2) is None
    # The chosen face is drawn green, the other white.
    image = preview.image(1)
    x1, y1 = (int(round(v * preview.scale)) for v in second[:2])
    x0, y0 = (int(round(v * preview.scale)) for v in first[:2])
    assert tuple(image[y1 + 1, (x1 + int(second[2] * preview.scale)) // 2]) == (40, 220, 90)
    assert tuple(image[y0 + 1, (x0 + int(first[2] * preview.scale)) // 2]) == (255, 255, 255)
    assert not np.array_equal(preview.image(0), image)

    frames: list[np.ndarray] = []
    lipsync.process(media["two faces"], media["speech"], frames.append, dataclasses.replace(FAST, face=1))
    pair = np.concatenate([still, still[:, ::-1]], axis=1)
    assert changed_share(frames, pair, right) > 0.05 and changed_share(frames, pair, left) == 0.0

    assert service.faces(media["faceless"]).faces == []
    with pytest.raises(InputError, match="broken clip.mp4"):
        service.faces(media["broken"])


def test_step_progress_hears_every_unet_step(lipsync, media):
    """A `StepProgress` hears ("denoise", frame-steps, frames x steps) after every step of every chunk, up to
    its total, with each step's timing, besides the stages every callable hears."""
    options = InferenceOptions(steps=3, guidance=1.0)
    events, timings = [], []
    result = lipsync.process(media["clip"], media["speech"], lambda frame: None, options,
                             progress=StepProgress(lambda *e: events.append(e), lambda *t: timings.append(t)))
    total = result.frames * options.steps
    steps = [(done, t) for stage, done, t in events if stage == "denoise"]
    chunks = -(-result.frames // 16)
    assert steps[0] == (0, total) and steps[-1] == (total, total)
    assert len(steps) == 1 + chunks * options.steps  # the start, then one per step of each chunk
    assert all(a < b for (a, _), (b, _) in zip(steps, steps[1:]))
    assert [f for f, _ in timings] == [16] * 3 + [result.frames - 16] * 3 and all(s > 0 for _, s in timings)
    assert {stage for stage, _, _ in events} == {"audio features", "denoise", "lip sync"}
    # (A plain callable hears no "denoise": tests/test_inference.py, test_progress_callback_reports_each_stage.)


def test_the_estimate_comes_from_the_last_job_and_follows_steps_and_guidance(lipsync, media, tmp_path):
    service = LipSyncService(lipsync, AppSettings(), root=tmp_path / "svc")
    assert service.speed is None
    assert "not known yet" in estimate_line(service.speed, 1.0, 4, 1.0)
    t0 = time.perf_counter()
    speed = service.calibrate(media["clip"], media["speech"])  # 2 steps, no guidance
    measured = time.perf_counter() - t0
    assert speed is service.speed and speed.frames == frames_for(1.0) and speed.unet_s > 0 and speed.other_s > 0
    # The model reproduces the job it was measured on (its time, split into the steps and the rest).
    assert speed.seconds(speed.frames, 2, 1.0) == pytest.approx(measured, rel=0.1)
    assert not any((tmp_path / "svc" / "jobs").iterdir()) and not any((tmp_path / "svc" / "results").iterdir())
    one, many = speed.seconds(100, 2, 1.0), speed.seconds(100, 20, 1.0)
    guided = speed.seconds(100, 20, 1.5)
    fixed = speed.seconds(100, 0, 1.0)  # the part that does not grow with the steps
    assert one < many < guided and guided - fixed == pytest.approx(2 * (many - fixed))
    line = estimate_line(speed, 1.0, 2, 1.0)
    assert line.startswith("Estimated time: about ") and f"({frames_for(1.0)} frames)" in line
    assert "without guidance" in line and "this server's last job" in line
    assert "per second of speech" in estimate_line(speed, None, 2, 1.5)
    # Each finished job measures again; a DeepCache job (cheaper steps) does not.
    service.run(media["clip"], media["speech"], InferenceOptions(steps=1, guidance=1.5))
    assert service.speed is not speed
    measured = service.speed
    service.run(media["clip"], media["speech"], InferenceOptions(steps=3, guidance=1.0, deepcache=3))
    assert service.speed is measured


def test_public_message_names_uploads_by_their_file_name_only():
    upload = "/srv/cache/0f3a9b/my talk.mp4"
    message = public_message(InputError(f"{upload}: no face found in any frame"), upload, None)
    assert message == "my talk.mp4: no face found in any frame"


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError):
        AppSettings(concurrency=0)
    with pytest.raises(ValueError):
        AppSettings(max_upload_mb=0)


def test_cli_reports_missing_weights_in_one_line(tmp_path, capsys):
    assert cli.main(["app", "--checkpoints", str(tmp_path / "nothing here"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latentsync_unet.pt" in err and err.startswith("latentsync app: error:")


def test_cli_low_memory_reaches_the_app_settings(monkeypatch):
    import latentsync.app as app_module

    seen = {}
    monkeypatch.setattr(app_module, "serve", lambda settings, **kwargs: seen.update(settings=settings))
    assert cli.main(["app", "--demo", "--low-memory"]) == 0
    assert seen["settings"].low_memory is True
    assert cli.main(["app", "--demo"]) == 0 and seen["settings"].low_memory is False


def test_cli_demo_server_serves_the_page_and_cleans_up_on_sigterm(tmp_path):
    """`latentsync app --demo` as a user runs it: the page answers on 127.0.0.1 only, and a SIGTERM (what
    `kill` and service managers send) stops it with everything it wrote removed."""
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "latentsync", "app", "--demo", "--port", str(port)], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("serving on"):
                break
        assert lines and lines[-1].strip() == f"serving on http://localhost:{port} (Ctrl-C stops)", lines
        (folder,) = tmp_path.glob("latentsync-app-*")  # its checkpoints, examples and cache, in one folder
        assert {p.name for p in folder.iterdir()} >= {"checkpoints", "examples", "gradio", "service"}
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "LatentSync" in page.text
        # The demo's defaults finish quickly, and the page estimates a job's time from the start.
        assert any(line.startswith("measuring this server's speed") for line in lines)
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=30).json()
        props = {c["props"].get("elem_id"): c["props"] for c in config["components"] if "props" in c}
        assert (props["steps"]["value"], props["guidance"]["value"]) == (DEMO_STEPS, DEMO_GUIDANCE) == (4, 1.0)
        assert props["estimate"]["value"].startswith("Estimated time: about ")
        assert "per second of speech at 4 steps without guidance" in props["estimate"]["value"]
        outside = [a for a in {i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
                   if not a.startswith("127.")]
        for address in outside:  # not reachable from the network
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{address}:{port}/", timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # (torch itself may leave its compiler cache folder in TMPDIR)
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("torchinductor_")] == []
    finally:
        if proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------------------------------------
# The server, over HTTP
# --------------------------------------------------------------------------------------------------------


def test_two_requests_at_once_give_two_correct_different_outputs(server, client, media):
    _, service, _ = server
    service.intervals.clear()
    speed = service.speed
    short = call(client, media["clip"], media["speech"], seed=1)
    longer = call(client, media["clip"], media["longer speech"], seed=2)
    (out_short, status_short), (out_long, status_long) = short.result(timeout=300), longer.result(timeout=300)
    out_short, out_long = video_path(out_short), video_path(out_long)
    assert out_short != out_long
    # Each follows its own audio: its length, and a sound track.
    assert len(read_frames(out_short)) == frames_for(1.0) and f"{frames_for(1.0)} frames" in status_short
    assert len(read_frames(out_long)) == frames_for(1.4) and f"{frames_for(1.4)} frames" in status_long
    for out in (out_short, out_long):
        info = probe_video(out)
        assert info.has_audio and (info.width, info.height) == (512, 600)
    first = min(len(read_frames(out_short)), len(read_frames(out_long)))
    assert any(not np.array_equal(a, b) for a, b in zip(read_frames(out_short)[:first], read_frames(out_long)[:first]))
    # With a concurrency of 2 they ran at the same time, not one after the other.
    (s1, e1), (s2, e2) = service.intervals
    assert max(s1, s2) < min(e1, e2)
    assert not any((service.root / "jobs").iterdir())
    assert service.speed is speed  # jobs sharing the server measure not its speed, but their sharing


def test_stop_over_the_api_frees_the_slot_for_the_next_request(server, media):
    """Both of the server's slots busy with long jobs; one page's /stop ends its own job (not the other's), whose
    call returns the one-line message at once, and a third request gets that slot while the other job runs."""
    from gradio_client import Client

    _, service, url = server
    a, b, c = (Client(url, verbose=False, download_files=str(service.root.parent / "client-downloads"))
               for _ in range(3))
    service.intervals.clear()
    long_a = call(a, media["clip"], media["long speech"], steps=50, guidance=1.0)
    long_b = call(b, media["clip"], media["long speech"], steps=50, guidance=1.0)
    wait_until(lambda: service.running == 2, 120, "both long jobs to run")
    a.predict(api_name="/stop")
    video, status = long_a.result(timeout=60)
    assert video is None and status.startswith("Stopped ") and status.endswith("; nothing was kept.")
    assert service.running == 1 and not long_b.done()
    out, _ = call(c, media["clip"], media["speech"]).result(timeout=300)  # the freed slot
    assert len(read_frames(video_path(out))) == frames_for(1.0)
    assert not long_b.done()  # ran beside the long job, not after it
    b.predict(api_name="/stop")
    assert long_b.result(timeout=60)[0] is None
    wait_until(lambda: service.running == 0, 30, "the jobs to end")
    assert not any((service.root / "jobs").iterdir())
    for client in (a, b, c):
        client.close()


def test_a_bad_file_fails_cleanly_and_the_next_request_succeeds(client, media):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as failure:
        call(client, media["broken"], media["speech"]).result(timeout=120)
    message = str(failure.value)
    assert message.startswith("broken clip.mp4: ")  # the CLI's one line, with the upload's own name
    assert "/" not in message.split(":")[0]  # no server path leaks into the page
    out, _ = call(client, media["clip"], media["speech"]).result(timeout=300)
    assert len(read_frames(video_path(out))) == frames_for(1.0)


def test_uploads_over_the_size_limit_are_refused(server):
    _, _, url = server
    big = os.urandom(int((MAX_UPLOAD_MB + 0.5) * 1024 * 1024))
    response = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.mp4", big, "video/mp4")}, timeout=60)
    assert response.status_code == 413 and "exceeded maximum allowed size" in response.text
    small = httpx.post(f"{url}/gradio_api/upload", files={"files": ("small.mp4", b"0" * 1000, "video/mp4")})
    assert small.status_code == 200


def test_the_server_serves_nothing_but_its_own_files(server, work, checkpoints, media):
    """Neither the file route nor a request naming a server path can read other files: not one in the system
    temp folder, not one under the working directory, not the weights."""
    _, service, url = server
    secret = work / "secret.txt"
    secret.write_text("TOP SECRET")
    here = Path.cwd() / "pyproject.toml"
    for path in (secret, here, checkpoints / "latentsync_unet.pt", Path("/etc/passwd"), "/files/../secret.txt",
                 "/files/%2E%2E/secret.txt"):
        response = httpx.get(f"{url}/gradio_api/file={path}")
        assert response.status_code in (403, 404), path
        assert "TOP SECRET" not in response.text and "[project]" not in response.text

    # A request whose inputs name files on the server instead of uploads: refused before the job starts.
    stolen = work / "someone else's clip.mp4"
    shutil.copy(media["clip"], stolen)
    data = [{"path": str(p), "meta": {"_type": "gradio.FileData"}} for p in (stolen, media["speech"])]
    before = len(service.intervals)
    event = httpx.post(f"{url}/gradio_api/call/lipsync",
                       json={"data": [*data, 2, 1.5, 1247, "largest", DEFAULT_CRF, "ddim", False, None]}).json()
    stream = httpx.get(f"{url}/gradio_api/call/lipsync/{event['event_id']}", timeout=60).text
    assert "event: error" in stream and "event: complete" not in stream
    assert len(service.intervals) == before  # no job ran on them


def test_clients_never_see_the_server_folders_and_results_are_stored_once(server, work, media):
    """Pages, API answers, uploads, results and errors name files only under `/files`, never where the server
    keeps them; `/files` paths work in requests; the result exists once, in Gradio's cache."""
    _, service, url = server
    cache = work / "gradio-cache"
    hidden = (str(cache), str(service.root), str(work))

    def shows_no_folder(text: str) -> str:
        assert not any(folder in text for folder in hidden), text[:2000]
        return text

    for route in ("/", "/config", "/gradio_api/info"):
        shows_no_folder(httpx.get(f"{url}{route}", timeout=30).text)
    uploaded = httpx.post(f"{url}/gradio_api/upload", timeout=60, files=[
        ("files", (path.name, path.read_bytes())) for path in (media["clip"], media["speech"])]).json()
    shows_no_folder(str(uploaded))
    assert all(p.startswith("/files/") for p in uploaded)

    def run(*paths) -> str:
        data = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in paths]
        event = httpx.post(f"{url}/gradio_api/call/lipsync",
                           json={"data": [*data, 2, 1.5, 1247, "largest", DEFAULT_CRF, "ddim", False, None]}).json()
        return shows_no_folder(httpx.get(f"{url}/gradio_api/call/lipsync/{event['event_id']}", timeout=300).text)

    results_before = {p for p in cache.rglob("*_lipsync.mp4")}
    stream = run(*uploaded)
    assert "event: complete" in stream, stream
    (output, _, history) = json.loads(stream.split("data: ", 1)[1])
    assert history is None  # the page's history (a session state) stays on the server
    assert output["path"].startswith("/files/") and output["url"].endswith(output["path"])
    video = httpx.get(output["url"], timeout=60)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    # One copy: the result in Gradio's cache, nothing left in the service's folders.
    (stored,) = {p for p in cache.rglob("*_lipsync.mp4")} - results_before
    assert stored.read_bytes() == video.content
    assert not any((service.root / "results").iterdir()) and not any((service.root / "jobs").iterdir())

    # Errors do not show them either: a bad upload, and a path out of `/files` that Gradio refuses.
    broken = httpx.post(f"{url}/gradio_api/upload", files={"files": ("b.mp4", media["broken"].read_bytes())}).json()
    assert "event: error" in run(broken[0], uploaded[1])
    assert "event: complete" not in run("/files/../secret.txt", uploaded[1])


def test_the_server_listens_on_localhost_without_a_share_link(server):
    app, _, url = server
    assert url.startswith("http://127.0.0.1:") and app.share is False and app.share_url is None
    assert cli.build_parser().parse_args(["app"]).host == "127.0.0.1"


# --------------------------------------------------------------------------------------------------------
# The page, in a real browser
# --------------------------------------------------------------------------------------------------------


def chromium_path() -> str:
    path = os.environ.get("LATENTSYNC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("LATENTSYNC_REQUIRE_BROWSER"):  # set by .ci/run, which installs Chromium
            pytest.fail("the web app's browser test needs Chromium (apt-get install chromium)")
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set LATENTSYNC_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def upload(page, element: str, path: Path) -> None:
    page.locator(f"#{element} input[type=file]").set_input_files(str(path))


def set_slider(page, element: str, value) -> None:
    box = page.locator(f"#{element} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def watch_progress(page) -> None:
    """Record every text the page's progress bars show, as they change (read back by `progress_seen`)."""
    page.evaluate("""() => { window.progressSeen = [];
        new MutationObserver(() => { for (const el of document.querySelectorAll('.progress-level-inner'))
            window.progressSeen.push(el.textContent.trim()); })
        .observe(document.body, {subtree: true, childList: true, characterData: true}); }""")


def progress_seen(page) -> list[str]:
    return page.evaluate("() => window.progressSeen")


def history_items(page) -> int:
    return page.locator("#history video, #history img").count()


def test_page_uploads_runs_and_plays_the_result(server, browser, media):
    _, _, url = server
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#run-button")
    assert page.locator("text=Examples (the demo clip, its portrait)").count() == 1  # built from the demo clip
    assert page.locator("#crf").get_by_text("Video quality (H.264 CRF, lower = better)").count() == 1
    # Before any upload, the estimate is per second of speech, from the speed measured at start.
    assert "per second of speech at 2 steps with guidance" in page.locator("#estimate").inner_text()

    # An upload over the server's size limit is refused in the page, naming the file.
    big = media["clip"].parent / "huge.mp4"
    big.write_bytes(os.urandom(int((MAX_UPLOAD_MB + 0.5) * 1024 * 1024)))
    upload(page, "video-input", big)
    refused = page.locator(".toast-body", has_text="exceed the maximum allowed size")
    refused.wait_for(timeout=30_000)
    assert '"huge.mp4"' in refused.inner_text()

    # A bad file: the preview finds no face, the page shows the CLI's one-line message and keeps working.
    upload(page, "video-input", media["faceless"])
    upload(page, "audio-input", media["speech"])
    page.locator("#face-preview img").wait_for(timeout=30_000)
    assert page.locator("#face-preview", has_text="No face found on the first frame").count() == 1
    page.locator("#estimate", has_text=f"for 1.0 s of speech ({frames_for(1.0)} frames) at 2 steps").wait_for(
        timeout=30_000)
    page.click("#run-button")
    toast = page.locator(".toast-body", has_text="no face found in any frame")
    toast.wait_for(timeout=120_000)
    assert "empty room.mp4: no face found in any frame" in toast.inner_text()
    assert history_items(page) == 0

    page.locator("#video-input button[aria-label='Clear']").click()
    upload(page, "video-input", media["clip"])
    page.locator("#face-preview", has_text="1 face on the first frame").wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('#run-button').disabled", timeout=30_000)
    page.click("#run-button")
    result = page.locator("#result-video video")
    result.wait_for(timeout=180_000)
    page.wait_for_function("() => document.querySelector('#result-video video').readyState >= 2", timeout=30_000)
    duration, width, height = page.evaluate(
        "() => { const v = document.querySelector('#result-video video'); return [v.duration, v.videoWidth, "
        "v.videoHeight]; }")
    assert (width, height) == (512, 600)
    assert duration == pytest.approx(frames_for(1.0) / 25, abs=0.1)
    assert f"{frames_for(1.0)} frames" in page.locator("#status").inner_text()
    # The history keeps it, playable and with a download button.
    page.wait_for_function("() => document.querySelectorAll('#history video').length === 1", timeout=30_000)
    page.locator("#history video").first.click()
    page.wait_for_function("() => [...document.querySelectorAll('#history video')].some(v => v.readyState >= 2)",
                           timeout=30_000)
    assert page.locator("#history a[download], #history button[aria-label='Download']").count() >= 1
    page.close()


def test_page_takes_a_still_image_a_face_from_the_preview_and_a_videos_sound(server, browser, media, work):
    """Two faces on a still image: the preview numbers them, a click on the right one picks "face 2", and only
    that face is synced; the speech is the sound of a video; the bar moves at every denoising step."""
    _, service, url = server
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#run-button")
    upload(page, "video-input", media["two faces"])
    page.locator("#face-preview", has_text="2 faces on the first frame").wait_for(timeout=60_000)
    assert page.locator("#face label", has_text="face 2").count() == 1
    assert page.locator("#face input[value='largest']").is_checked()
    before = page.locator("#face-preview img").get_attribute("src")

    # Click the middle of the right face's box on the preview (the image is scaled to fit the page).
    preview = service.faces(media["two faces"])
    x1, y1, x2, y2 = preview.faces[1].box * preview.scale
    img = page.locator("#face-preview img")
    shown = img.bounding_box()
    natural = page.evaluate("() => document.querySelector('#face-preview img').naturalWidth")
    zoom = shown["width"] / natural
    img.click(position={"x": float((x1 + x2) / 2 * zoom), "y": float((y1 + y2) / 2 * zoom)})
    page.wait_for_function("() => document.querySelector('#face input[value=\"1\"]').checked", timeout=30_000)
    page.wait_for_function(f"() => document.querySelector('#face-preview img').src !== {json.dumps(before)}",
                           timeout=30_000)  # redrawn with face 2 marked

    upload(page, "speech-video-input", media["speech video"])
    page.locator("#speech-video-input", has_text="speaker").wait_for(timeout=30_000)
    set_slider(page, "steps", 12)
    set_slider(page, "guidance", 1)
    watch_progress(page)
    page.click("#run-button")
    page.locator("#result-video video").wait_for(timeout=240_000)

    # Per step: with 27 frames (chunks of 16 and 11) and 12 steps, per-chunk reports would show only 0%, 59.3%
    # and 100%; every step of the first chunk adds 16 of 324 frame-steps.
    shares = {float(t.rsplit("- ", 1)[1].rstrip("%")) for t in progress_seen(page) if t.startswith("denoising - ")}
    assert len({x for x in shares if 0 < x < 59}) >= 5, sorted(shares)  # of 11 (a few may come too close)

    out = next(work.joinpath("gradio-cache").rglob("two_faces_lipsync.mp4"))
    info = probe_video(out)
    assert info.has_audio and (info.width, info.height) == (1024, 600)
    frames = read_frames(out)
    still = load_portrait()
    pair = np.concatenate([still, still[:, ::-1]], axis=1)
    left, right = face_boxes(pair)
    assert changed_share(frames, pair, right) > 0.05 and changed_share(frames, pair, left) < 0.01
    page.close()


def test_page_stop_ends_the_job_and_the_next_one_runs(server, browser, media, work):
    _, service, url = server
    cache = work / "gradio-cache"
    results_before = set(cache.rglob("*_lipsync.mp4"))
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#run-button")
    upload(page, "video-input", media["clip"])
    upload(page, "audio-input", media["long speech"])
    page.locator("#face-preview img").wait_for(timeout=30_000)
    set_slider(page, "steps", 50)
    set_slider(page, "guidance", 1)
    page.locator("#estimate", has_text="for 6.0 s of speech (152 frames) at 50 steps without guidance").wait_for(
        timeout=30_000)
    watch_progress(page)
    page.click("#run-button")
    page.wait_for_function("() => window.progressSeen.some(t => t.startsWith('denoising - ') && "
                           "!t.endsWith(' 0.0%'))", timeout=120_000)
    assert service.running == 1
    page.click("#stop-button")
    status = page.locator("#status", has_text="Stopped at ")
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip().endswith("of the denoising; nothing was kept.")
    assert service.running == 0 and not any((service.root / "jobs").iterdir())
    assert set(cache.rglob("*_lipsync.mp4")) == results_before  # nothing written for it
    assert history_items(page) == 0

    # The page works on: a short job runs to its end and lands in the history.
    page.wait_for_function("() => !document.querySelector('#run-button').disabled", timeout=30_000)
    page.locator("#audio-input button[aria-label='Clear']").click()
    upload(page, "audio-input", media["speech"])
    set_slider(page, "steps", 2)
    page.locator("#estimate", has_text="at 2 steps").wait_for(timeout=30_000)
    page.click("#run-button")
    page.locator("#status", has_text=f"{frames_for(1.0)} frames").wait_for(timeout=180_000)
    page.wait_for_function("() => document.querySelectorAll('#history video').length === 1", timeout=30_000)

    # Closing the page stops its running job too.
    page.locator("#audio-input button[aria-label='Clear']").click()
    upload(page, "audio-input", media["long speech"])
    set_slider(page, "steps", 50)
    page.locator("#estimate", has_text="at 50 steps").wait_for(timeout=30_000)
    page.click("#run-button")
    wait_until(lambda: service.running == 1, 60, "the job to start")
    page.close()
    wait_until(lambda: service.running == 0, 30, "the closed page's job to stop")
    assert not any((service.root / "jobs").iterdir())
