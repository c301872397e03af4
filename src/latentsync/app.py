"""The web app: one Gradio page over the same `LipSync` as the CLI, for a small team to leave running.

    latentsync app [--checkpoints DIR] [--host 127.0.0.1] [--port 7860] [--concurrency 1]
    latentsync app --demo          # tiny random weights, no download: try the page offline

Unlike the reference's demo, the models load once, when the server starts, and stay loaded; requests wait in
Gradio's queue and at most `concurrency` run at once; each request works in a folder of its own, removed when it
ends (its result is moved into Gradio's cache, the one copy, which Gradio serves and deletes after
`keep_minutes`).
Errors a user can cause (no face, an unreadable file, no audio, too long, too large) come back as the CLI's
one-line message, naming the uploaded file by its name, and the server carries on.

The server binds to 127.0.0.1 unless told otherwise and never opens a public share link. Gradio serves only
files it created or received (uploads, results, examples): a path sent by a client cannot read anything else.
Clients never see where the server keeps them: `HiddenFolder` (in `latentsync.app_middleware`) shows the cache
folder as `/files` in every page, API answer and error, and maps it back in their requests.

`LipSyncService` is the part without Gradio (limits, folders, options); `build_app` lays out the page over it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

from .app_middleware import HiddenFolder
from .defaults import (
    DEFAULT_CRF,
    DEFAULT_GUIDANCE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_PRESET,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    FPS,
)
from .errors import InputError, LatentSyncError

if TYPE_CHECKING:  # the models load with the server, not when its options are listed (`latentsync app --help`)
    from .inference import InferenceOptions, InferenceResult, LipSync

# Before gradio is imported anywhere: no usage reports leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

# Output quality presets offered in the page: (x264 constant rate factor, encoder preset).
QUALITY = {
    "standard": (DEFAULT_CRF, DEFAULT_PRESET),  # visually lossless, fast to encode (the CLI's default)
    "high": (14, "medium"),  # larger files, slower encode
    "small file": (23, "veryfast"),  # for sharing
}
# Face choices in the page, as `InferenceOptions.face` values.
FACES = {
    "largest": "largest",
    "closest to the centre": "center",
    "1st from the left": 0,
    "2nd from the left": 1,
    "3rd from the left": 2,
    "4th from the left": 3,
}


@dataclass
class AppSettings:
    """Limits and defaults of the web app (each is a `latentsync app` option)."""

    max_upload_mb: float = 500  # per file; Gradio refuses larger uploads before they reach us
    max_seconds: float = 600  # longest video or audio accepted, in seconds (0: no limit)
    concurrency: int = 1  # jobs running at once on the shared models (more needs more GPU memory)
    queue_size: int = 32  # jobs waiting at most; further requests are turned away until one finishes
    keep_minutes: float = 60  # how long uploads and results stay in Gradio's cache
    steps: int = DEFAULT_STEPS  # the page's default number of denoising steps
    low_memory: bool = False  # every job in the low-memory mode, the VAE and Whisper offloaded while idle

    def __post_init__(self):
        if self.concurrency < 1 or self.queue_size < 1:
            raise ValueError("concurrency and queue size must be at least 1")
        if self.max_upload_mb <= 0 or self.max_seconds < 0 or self.keep_minutes <= 0:
            raise ValueError("upload limit and keep time must be positive, the duration limit 0 or more")


LipSyncSource = Union["LipSync", Callable[[], "LipSync"]]


class LipSyncService:
    """Runs lip-sync requests for the app: one `LipSync` (or a function making it, called once on the first
    request) shared by every request, each request in a folder of its own under a private root."""

    def __init__(self, lipsync: LipSyncSource, settings: AppSettings | None = None, root: str | Path | None = None):
        from .inference import LipSync

        self.settings = settings or AppSettings()
        self._lipsync = lipsync if isinstance(lipsync, LipSync) else None
        self._make = None if isinstance(lipsync, LipSync) else lipsync
        self._load_lock = threading.Lock()
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="latentsync-app-")) if root is None else Path(root)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "results").mkdir(parents=True, exist_ok=True)

    @property
    def lipsync(self) -> LipSync:
        if self._lipsync is None:
            with self._load_lock:  # concurrent first requests load the models once
                if self._lipsync is None:
                    self._lipsync = self._make()
        return self._lipsync

    def run(self, video: str | Path | None, audio: str | Path | None, options: InferenceOptions,
            progress: Callable[[str, int, int], None] | None = None,
            results: str | Path | None = None) -> tuple[Path, InferenceResult]:
        """Lip-sync one request; returns the result's path (in a folder of its own under `results`, by default
        `root/results`) and the job's summary. Raises LatentSyncError with the message for the page."""
        if not video:
            raise InputError("no video: upload a video with a face")
        if not audio:
            raise InputError("no audio: upload or record a speech track")
        video, audio = Path(video), Path(audio)
        self._check_duration(video, audio)
        job = self.root / "jobs" / uuid.uuid4().hex
        job.mkdir()
        try:
            out = job / f"{_safe_stem(video)}_lipsync.mp4"
            result = self.lipsync.run(video, audio, out, options, progress=progress or False)
            kept = Path(results or self.root / "results") / job.name
            kept.mkdir(parents=True)
            final = kept / out.name
            shutil.move(out, final)  # a rename, unless `results` is on another file system
            result.output = final
            return final, result
        finally:
            shutil.rmtree(job, ignore_errors=True)

    def _check_duration(self, video: Path, audio: Path) -> None:
        from .media import audio_duration_s, probe_video

        limit = self.settings.max_seconds
        info = probe_video(video)  # InputError: unreadable, no video stream
        seconds = audio_duration_s(audio)  # InputError: unreadable, no audio track
        if seconds <= 0:
            raise InputError(f"{audio}: the audio track is empty")
        if limit:
            for path, length, what in ((video, info.duration_s, "video"), (audio, seconds, "audio")):
                if length > limit:
                    raise InputError(f"{path}: the {what} lasts {length:.0f} s, longer than this server's "
                                     f"limit of {limit:.0f} s")

    def close(self) -> None:
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def public_message(error: BaseException, *uploads: str | Path | None) -> str:
    """The error's one-line message with the server's paths of the uploads replaced by their file names."""
    message = str(error)
    for path in uploads:
        if path:
            message = message.replace(str(path), Path(path).name)
    return message


def _safe_stem(path: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:60]
    return stem or "video"


def _import_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise LatentSyncError("the web app needs Gradio: pip install 'latentsync[app]'") from None
    return gr


def write_examples(folder: str | Path) -> list[list[str]]:
    """The page's example inputs, built from the demo clip (a portrait shipped with matplotlib) and synthetic
    speech: [[video, audio]]."""
    from .demo import write_demo_media

    return [[str(p) for p in write_demo_media(folder)]]


def build_app(service: LipSyncService, *, description: str = "", examples: list[list[str]] | None = None):
    """The Gradio page over `service`. Element ids (for scripts and tests): video-input, audio-input, steps,
    guidance, seed, face, quality, scheduler, deepcache, run-button, result-video, status."""
    from .inference import InferenceOptions

    gr = _import_gradio()
    settings = service.settings

    def lipsync(video, audio, steps, guidance, seed, face, quality, scheduler, deepcache,
                progress=gr.Progress()):
        crf, preset = QUALITY.get(quality, QUALITY["standard"])
        options = InferenceOptions(steps=int(steps), guidance=float(guidance), seed=int(seed),
                                   scheduler=scheduler, deepcache=3 if deepcache else 0,
                                   face=FACES.get(face, "largest"), crf=crf, preset=preset,
                                   low_memory=settings.low_memory)

        def report(stage: str, done: int, total: int) -> None:
            progress((done, total), desc=stage, unit="frames" if stage == "lip sync" else "steps")

        t0 = time.perf_counter()
        try:
            # Straight into Gradio's cache, so that the result is stored once.
            out, result = service.run(video, audio, options, progress=report, results=result_video.GRADIO_CACHE)
        except LatentSyncError as e:
            raise gr.Error(public_message(e, video, audio), duration=None, print_exception=False) from None
        except Exception as e:  # a bug: keep serving, keep the traceback in the server's log
            log.exception("lip sync failed")
            raise gr.Error(f"internal error ({type(e).__name__}); the server log has the details",
                           duration=None, print_exception=False) from None
        missing = f"; {result.missing_summary()}" if result.frames_without_face else ""
        status = (f"{result.frames} frames ({result.frames / FPS:.1f} s) in {time.perf_counter() - t0:.1f} s"
                  f"{missing}.")
        return str(out), status

    limit = f"{settings.max_seconds:.0f} s" if settings.max_seconds else "no limit"
    with gr.Blocks(title="LatentSync", delete_cache=(600, int(settings.keep_minutes * 60))) as app:
        gr.Markdown("# LatentSync lip sync\n"
                    "Upload a video with a face and a speech track (or record one); the mouth is regenerated to "
                    f"follow the speech. Files up to {settings.max_upload_mb:g} MB and {limit}. {description}")
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                audio_in = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                    buttons=["download"], elem_id="audio-input")
                with gr.Row():
                    steps = gr.Slider(1, 50, value=settings.steps, step=1, label="Steps",
                                      info="more: finer detail, slower", elem_id="steps")
                    guidance = gr.Slider(1.0, 3.0, value=DEFAULT_GUIDANCE, step=0.1, label="Guidance",
                                         info="1 turns guidance off and halves the UNet's work", elem_id="guidance")
                with gr.Row():
                    face = gr.Dropdown(list(FACES), value="largest", label="Face", elem_id="face",
                                       info="which face to sync when there are several")
                    quality = gr.Radio(list(QUALITY), value="standard", label="Quality", elem_id="quality")
                with gr.Accordion("Advanced", open=False):
                    seed = gr.Number(value=DEFAULT_SEED, precision=0, label="Seed", elem_id="seed")
                    scheduler = gr.Radio(["ddim", "dpm++"], value="ddim", label="Sampler", elem_id="scheduler",
                                         info="dpm++ does well with fewer steps")
                    deepcache = gr.Checkbox(value=False, label="DeepCache (about 2x faster, slightly different)",
                                            elem_id="deepcache")
                run = gr.Button("Lip sync", variant="primary", elem_id="run-button")
            with gr.Column():
                result_video = gr.Video(label="Result", interactive=False, buttons=["download"],
                                        elem_id="result-video")
                status = gr.Markdown(elem_id="status")
        if examples:
            gr.Examples(examples=examples, inputs=[video_in, audio_in], label="Example (the demo clip)")
        run.click(lipsync, inputs=[video_in, audio_in, steps, guidance, seed, face, quality, scheduler, deepcache],
                  outputs=[result_video, status], api_name="lipsync", concurrency_limit=settings.concurrency)
    app.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return app


def launch(app, settings: AppSettings, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, *,
           quiet: bool = False, blocked_paths: list[str | Path] = ()):
    """Start serving `app` on host:port (never a public share link) and return at once; the caller stops it with
    `app.close()`. `blocked_paths` are never served, whatever else allows them. Clients see Gradio's cache folder
    only as `/files` (`HiddenFolder`)."""
    from starlette.middleware import Middleware

    try:
        app.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                   max_file_size=f"{settings.max_upload_mb:g}mb", prevent_thread_lock=True, quiet=quiet,
                   show_error=False, footer_links=["api"],
                   blocked_paths=[str(Path(p).resolve()) for p in blocked_paths] or None,
                   app_kwargs={"middleware": [Middleware(HiddenFolder, folder=app.GRADIO_CACHE)]})
    except OSError as e:
        if "empty port" in str(e):  # Gradio's words for a port that is taken
            raise LatentSyncError(f"cannot serve on {host}:{port}: the port is in use (choose another with "
                                  "--port)") from None
        raise LatentSyncError(f"cannot serve on {host}:{port}: {e}") from None
    return app


def serve(settings: AppSettings | None = None, *, checkpoints: str | Path | None = None, version: str | None = None,
          unet_config: str | Path | None = None, demo: bool = False, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, lazy: bool = False, device: str = "auto", dtype: str = "auto",
          face_backend: str = "auto", compile: bool = False, quiet: bool = False,
          unet: str | Path | None = None) -> None:
    """`latentsync app`: load the models (now, or on the first request with `lazy`), build the page with the
    demo clip as its example, and serve until interrupted. Everything the server writes (its Gradio cache,
    jobs, results, examples, and with `demo` the tiny checkpoints) lives in one temporary folder, removed
    when it stops."""
    from .inference import LipSync
    from .weights import CheckpointLayout, default_checkpoints_dir

    settings = settings or AppSettings()
    root = Path(tempfile.mkdtemp(prefix="latentsync-app-"))
    # Gradio's upload and result cache, private to this server (unless the user chose one) and removed with it;
    # set before Gradio is imported, which reads it then.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / "gradio"))
    try:
        _import_gradio()  # a missing Gradio is reported before anything is loaded
        if demo:
            from .demo import UNET_CONFIG_NAME, write_tiny_checkpoints

            checkpoints = write_tiny_checkpoints(root / "checkpoints")
            unet_config = checkpoints / UNET_CONFIG_NAME
        checkpoints = Path(checkpoints) if checkpoints is not None else default_checkpoints_dir()
        # Missing weights: one line, at start. `unet`: the user's own UNet file instead of the folder's.
        CheckpointLayout(checkpoints).require(*(["unet"] if unet is None else []), "whisper", "vae")

        def make() -> LipSync:
            return LipSync(checkpoints, version=version, unet_config=unet_config, device=device, dtype=dtype,
                           face_backend=face_backend, audio_cache=False if demo else None, compile=compile,
                           offload=settings.low_memory, unet=unet)

        if not quiet and not lazy:
            print("loading the models ...", file=sys.stderr)
        service = LipSyncService(make if lazy else make(), settings, root=root / "service")
        examples = write_examples(root / "examples")
        note = ("**Demo mode: tiny random weights, so the mouth is regenerated by an untrained network and does "
                "not follow the speech.**" if demo else "")
        app = build_app(service, description=note, examples=examples)
        _stop_on_sigterm()
        launch(app, settings, host, port, quiet=True, blocked_paths=[checkpoints])
        if not quiet:
            shown = "localhost" if host in ("127.0.0.1", "localhost") else host
            print(f"serving on http://{shown}:{port} (Ctrl-C stops)", file=sys.stderr)
        try:
            while app.is_running:  # until Ctrl-C or SIGTERM
                time.sleep(0.2)
        except KeyboardInterrupt:
            if not quiet:
                print("stopping the server", file=sys.stderr)
        finally:
            app.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """`kill` and service managers stop a server with SIGTERM: treat it as Ctrl-C, so the server closes and its
    temporary folder is removed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
