"""The web app over tiny random-weight models: the service's folders, limits and model loading; the real Gradio
server over HTTP (concurrent requests, a bad file then a good one, upload limits, files it must not serve); and
the page itself in headless Chromium driven by Playwright (upload, run, a playable result, an error message)."""

from __future__ import annotations

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
from latentsync.app import AppSettings, LipSyncService, build_app, launch, public_message, write_examples
from latentsync.audio import num_video_frames
from latentsync.demo import make_talking_clip, synth_speech
from latentsync.errors import InputError
from latentsync.inference import InferenceOptions
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
    """A 1 s clip of the portrait, two speech tracks of different lengths, a corrupt video, a faceless video
    and a speech track over the server's duration limit."""
    folder = work / "media"
    folder.mkdir()
    broken = folder / "broken clip.mp4"
    clip = make_talking_clip(folder / "talk ing.mp4", seconds=CLIP_SECONDS)
    broken.write_bytes(clip.read_bytes()[:2000])  # the header survives, the picture does not
    with VideoWriter(folder / "empty room.mp4", 320, 240, fps=25) as writer:
        for i in range(25):
            writer.write(np.full((240, 320, 3), 90 + i, np.uint8))
    return {
        "clip": clip,
        "speech": write_wav(folder / "speech.wav", synth_speech(1.0, seed=1), 16_000),
        "longer speech": write_wav(folder / "longer speech.wav", synth_speech(1.4, seed=2), 16_000),
        "too long": write_wav(folder / "lecture.wav", np.zeros(int((MAX_SECONDS + 2) * 8_000)), 8_000),
        "broken": broken,
        "faceless": folder / "empty room.mp4",
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
def server(lipsync, work, checkpoints):
    """The app as `latentsync app` serves it (examples from the demo clip), two jobs at once, on a free port of
    127.0.0.1, with its Gradio cache in the test's folder."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio-cache")
    settings = AppSettings(concurrency=2, max_seconds=MAX_SECONDS, max_upload_mb=MAX_UPLOAD_MB, steps=2)
    service = RecordingService(lipsync, settings)
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


def call(client, video: Path, audio: Path, *, steps: int = 2, seed: int = 1247):
    """Submit one request over Gradio's HTTP API, the page's own endpoint; returns a Job."""
    from gradio_client import handle_file

    return client.submit(handle_file(str(video)), handle_file(str(audio)), steps, 1.5, seed, "largest", "standard",
                         "ddim", False, api_name="/lipsync")


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
                       json={"data": [*data, 2, 1.5, 1247, "largest", "standard", "ddim", False]}).json()
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
                           json={"data": [*data, 2, 1.5, 1247, "largest", "standard", "ddim", False]}).json()
        return shows_no_folder(httpx.get(f"{url}/gradio_api/call/lipsync/{event['event_id']}", timeout=300).text)

    results_before = {p for p in cache.rglob("*_lipsync.mp4")}
    stream = run(*uploaded)
    assert "event: complete" in stream, stream
    (output, _) = json.loads(stream.split("data: ", 1)[1])
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


def test_page_uploads_runs_and_plays_the_result(server, browser, media):
    _, _, url = server
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#run-button")
    assert page.locator("text=Example (the demo clip)").count() == 1  # examples built from the demo clip

    # An upload over the server's size limit is refused in the page, naming the file.
    big = media["clip"].parent / "huge.mp4"
    big.write_bytes(os.urandom(int((MAX_UPLOAD_MB + 0.5) * 1024 * 1024)))
    page.locator("#video-input input[type=file]").set_input_files(str(big))
    refused = page.locator(".toast-body", has_text="exceed the maximum allowed size")
    refused.wait_for(timeout=30_000)
    assert '"huge.mp4"' in refused.inner_text()

    # A bad file: the page shows the CLI's one-line message and keeps working.
    page.locator("#video-input input[type=file]").set_input_files(str(media["faceless"]))
    page.locator("#audio-input input[type=file]").set_input_files(str(media["speech"]))
    page.locator("#video-input video").wait_for(timeout=30_000)
    page.click("#run-button")
    toast = page.locator(".toast-body", has_text="no face found in any frame")
    toast.wait_for(timeout=120_000)
    assert "empty room.mp4: no face found in any frame" in toast.inner_text()

    page.locator("#video-input button[aria-label='Clear']").click()
    page.locator("#video-input input[type=file]").set_input_files(str(media["clip"]))
    page.locator("#video-input video").wait_for(timeout=30_000)
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
    page.close()
