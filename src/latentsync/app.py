"""The web app: one Gradio page over the same `LipSync` as the CLI, for a small team to leave running.

    latentsync app [--checkpoints DIR] [--host 127.0.0.1] [--port 7860] [--concurrency 1]
    latentsync app --demo          # tiny random weights, no download: try the page offline

Unlike the reference's demo, the models load once, when the server starts, and stay loaded; requests wait in
Gradio's queue and at most `concurrency` run at once; each request works in a folder of its own, removed when it
ends (its result is moved into Gradio's cache, the one copy, which Gradio serves and deletes after
`keep_minutes`).
Errors a user can cause (no face, an unreadable file, no audio, too long, too large) come back as the CLI's
one-line message, naming the uploaded file by its name, and the server carries on.

The page takes what the CLI takes: a video or a still image, and a speech track (uploaded or recorded) or a
video whose sound is the speech. It shows the faces on the first frame, numbered, to pick one by clicking
(`app_faces`); a bar that moves with every denoising step; a Stop button that ends the job at its next step,
its files removed and its slot free (`LipSyncService.stop_session`; closing the page does the same); a
history of the session's results to replay and download; and an estimate of the time before starting, from
this server's speed measured on the last job that ran alone on it (`app_service.Speed`). `--demo` defaults to
`DEMO_STEPS` steps without guidance and measures its speed on a short clip at start, so that its first estimate
is there at once.

The server binds to 127.0.0.1 unless told otherwise and never opens a public share link. Gradio serves only
files it created or received (uploads, results, examples): a path sent by a client cannot read anything else.
Clients never see where the server keeps them: `HiddenFolder` (in `latentsync.app_middleware`) shows the cache
folder as `/files` in every page, API answer and error, and maps it back in their requests.

`LipSyncService` (`latentsync.app_service`) is the part without Gradio (limits, folders, options, stopping,
speed); `build_app` lays out the page over it.
"""

# No `from __future__ import annotations` here: Gradio finds the special arguments of the page's functions
# (gr.Request, gr.SelectData) by evaluating their annotations, and `gr` is imported only when the page is built.

import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .app_middleware import HiddenFolder
from .app_service import AppSettings, JobStopped, LipSyncService, Speed, public_message
from .defaults import (
    DEFAULT_CRF,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_PRESET,
    DEFAULT_SEED,
    FPS,
    MAX_CRF,
    SAMPLE_RATE_HZ,
)
from .errors import LatentSyncError

__all__ = ["AppSettings", "JobStopped", "LipSyncService", "Speed", "build_app", "estimate_line", "launch",
           "public_message", "serve", "write_examples"]

# Before gradio is imported anywhere: no usage reports leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger(__name__)

# The demo page's defaults: random weights make no better mouth with more steps, so a first run takes seconds.
DEMO_STEPS = 4
DEMO_GUIDANCE = 1.0
CALIBRATION_SECONDS = 1.0  # of speech: the short job `serve(demo=True)` measures the server's speed on
# Face choices before the faces of a video are numbered, as (label, `InferenceOptions.face` value).
FACE_RULES = [("largest", "largest"), ("closest to the centre", "center")]
CHUNK_FRAMES = 16  # frames per UNet call (`pipeline.CHUNK_FRAMES`), to state the measured speed per call


def face_choices(count: int) -> list[tuple[str, str]]:
    """The face control's choices for a video with `count` faces: the rules, then "face 1" (value "0", the
    leftmost) ... "face `count`"."""
    return FACE_RULES + [(f"face {i + 1}", str(i)) for i in range(count)]


def _face_rule(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value


def output_frames(speech_seconds: float) -> int:
    """Output frames of a job over `speech_seconds` of speech (the published +2 rule, `audio.num_video_frames`)."""
    from .audio import MEL_FRAMES_PER_ROW, MEL_HOP_SAMPLES, num_video_frames

    return num_video_frames(int(speech_seconds * SAMPLE_RATE_HZ) // MEL_HOP_SAMPLES // MEL_FRAMES_PER_ROW, FPS)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def estimate_line(speed: Speed | None, speech_seconds: float | None, steps: int, guidance: float) -> str:
    """The page's line estimating a job's time, from `speed` (this server's, None before its first job) for
    `speech_seconds` of speech (None: per second of speech) at `steps` and `guidance`."""
    how = f"{steps} step{'s' if steps != 1 else ''} {'with' if guidance > 1 else 'without'} guidance"
    if speed is None:
        return f"Estimated time: not known yet; this server measures its speed on its first job ({how})."
    basis = (f"from this server's last job that ran alone, of {speed.frames} frames: "
             f"{speed.unet_s * CHUNK_FRAMES:.2f} s per denoising step of {CHUNK_FRAMES} frames, "
             f"{speed.other_s:.2f} s per frame for the rest; longer while other jobs run")
    if speech_seconds is None:
        return (f"Estimated time: about {_duration(speed.seconds(FPS, steps, guidance))} per second of speech "
                f"at {how} ({basis}).")
    frames = output_frames(speech_seconds)
    return (f"Estimated time: about {_duration(speed.seconds(frames, steps, guidance))} for "
            f"{speech_seconds:.1f} s of speech ({frames} frames) at {how} ({basis}).")


def _speech_seconds(path) -> float | None:
    from .media import audio_duration_s

    if not path:
        return None
    try:
        return audio_duration_s(path)
    except LatentSyncError:
        return None


def _import_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise LatentSyncError("the web app needs Gradio: pip install 'latentsync[app]'") from None
    return gr


def write_examples(folder: str | Path) -> list[list[str]]:
    """The page's example inputs, built from the demo clip (a portrait shipped with matplotlib) and synthetic
    speech: [[video, audio], [the portrait as a still image, audio]]."""
    from .demo import portrait_path, write_demo_media

    video, audio = write_demo_media(folder)
    still = Path(folder) / "portrait.jpg"
    shutil.copyfile(portrait_path(), still)
    return [[str(video), str(audio)], [str(still), str(audio)]]


def build_app(service: LipSyncService, *, description: str = "", examples: list[list[str]] | None = None):
    """The Gradio page over `service`. Element ids (for scripts and tests): video-input, face-preview, face,
    audio-input, speech-video-input, steps, guidance, crf, seed, scheduler, deepcache, estimate, run-button,
    stop-button, result-video, status, history. API endpoints: /lipsync (video or image, audio, steps, guidance,
    seed, face, crf, scheduler, deepcache, speech video; the audio may be a video with sound), /faces (video: the
    preview, after which /lipsync in the same session also takes face "0", "1", ...) and /stop (this session's
    jobs). /lipsync answers (result, status line); a stopped job answers (None, "Stopped ...")."""
    from .inference import InferenceOptions

    gr = _import_gradio()
    settings = service.settings

    def begin(request: gr.Request):
        """The click, before the job waits in the queue: its id, registered to this page (for Stop)."""
        return service.new_job(request.session_hash), gr.update(interactive=False)

    def lipsync(video, audio, steps, guidance, seed, face, crf, scheduler, deepcache, speech_video=None,
                job=None, history=None, request: gr.Request = None, progress=gr.Progress()):
        uploads = (video, audio, speech_video)
        denoised = [False]

        def report(stage: str, done: int, total: int) -> None:
            if stage == "denoise":  # every UNet step; counted in frame-steps, shown as a share
                denoised[0] = done >= total
                progress(done / total if total else 0.0, desc="denoising")
            elif stage == "lip sync" and denoised[0]:  # the last frames being pasted back and encoded
                progress((done, total), desc="writing the video", unit="frames")
            elif stage == "audio features":
                progress(0.0, desc="reading the speech")

        t0 = time.perf_counter()
        try:
            options = InferenceOptions(steps=int(steps), guidance=float(guidance), seed=int(seed),
                                       scheduler=scheduler, deepcache=3 if deepcache else 0, face=_face_rule(face),
                                       crf=int(crf), preset=DEFAULT_PRESET, low_memory=settings.low_memory)
            # Straight into Gradio's cache, so that the result is stored once.
            out, result = service.run(video, audio or speech_video, options, progress=report,
                                      results=result_video.GRADIO_CACHE, job=job,
                                      session=request.session_hash if request else None)
        except JobStopped as e:
            return None, f"{str(e).capitalize()}; nothing was kept.", history or []
        except LatentSyncError as e:
            raise gr.Error(public_message(e, *uploads), duration=None, print_exception=False) from None
        except Exception as e:  # a bug: keep serving, keep the traceback in the server's log
            log.exception("lip sync failed")
            raise gr.Error(f"internal error ({type(e).__name__}); the server log has the details",
                           duration=None, print_exception=False) from None
        seconds = time.perf_counter() - t0
        missing = f"; {result.missing_summary()}" if result.frames_without_face else ""
        status = f"{result.frames} frames ({result.frames / FPS:.1f} s) in {seconds:.1f} s{missing}."
        entry = (str(out), f"{len(history or []) + 1}. {Path(video).name}: {result.frames} frames, "
                           f"{int(steps)} steps, {seconds:.0f} s")
        return str(out), status, [*(history or []), entry]

    def stop(request: gr.Request):
        if not service.stop_session(request.session_hash):
            gr.Info("nothing to stop")

    def closed(request: gr.Request):
        service.stop_session(request.session_hash)

    def show_faces(video):
        label = "Faces on the first frame"
        if not video:
            return gr.update(value=None, label=label), gr.update(choices=face_choices(0), value="largest"), None
        try:
            preview = service.faces(video)
        except LatentSyncError as e:
            gr.Warning(public_message(e, video))
            return gr.update(value=None, label=label), gr.update(choices=face_choices(0), value="largest"), None
        n = len(preview.faces)
        if n:
            label = f"{n} face{'s' if n > 1 else ''} on the first frame, numbered from the left: click one to pick it"
        else:
            label = "No face found on the first frame (the job looks for one in every frame)"
        return (gr.update(value=preview.image("largest"), label=label),
                gr.update(choices=face_choices(n), value="largest"), preview)

    def pick_face(preview, evt: gr.SelectData):
        index = preview.face_at(*evt.index[:2]) if preview is not None and evt.index else None
        return gr.skip() if index is None else str(index)

    def redraw(preview, face):
        return gr.skip() if preview is None else preview.image(_face_rule(face))

    def estimate(audio, speech_video, steps, guidance):
        return estimate_line(service.speed, _speech_seconds(audio or speech_video), int(steps), float(guidance))

    limit = f"{settings.max_seconds:.0f} s" if settings.max_seconds else "no limit"
    with gr.Blocks(title="LatentSync", delete_cache=(600, int(settings.keep_minutes * 60))) as app:
        gr.Markdown("# LatentSync lip sync\n"
                    "Upload a video or a still image with a face, and a speech track (record one, or upload a "
                    "video whose sound to use); the mouth is regenerated to follow the speech. Files up to "
                    f"{settings.max_upload_mb:g} MB and {limit}. {description}")
        job = gr.State(None)
        history = gr.State([])
        faces = gr.State(None)
        with gr.Row():
            with gr.Column():
                video_in = gr.File(label="Video or still image", file_types=["video", "image"],
                                   elem_id="video-input")
                preview = gr.Image(label="Faces on the first frame", interactive=False, elem_id="face-preview",
                                   buttons=[], height=320)
                face = gr.Radio(face_choices(0), value="largest", label="Face", elem_id="face",
                                info="which face to sync when there are several (or click it above)")
                audio_in = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                    buttons=["download"], elem_id="audio-input")
                speech_video = gr.File(label="... or the sound of a video", file_types=["video"],
                                       elem_id="speech-video-input")
                with gr.Row():
                    steps = gr.Slider(1, 50, value=settings.steps, step=1, label="Steps",
                                      info="more: finer detail, slower", elem_id="steps")
                    guidance = gr.Slider(1.0, 3.0, value=settings.guidance, step=0.1, label="Guidance",
                                         info="1 turns guidance off and halves the UNet's work", elem_id="guidance")
                crf = gr.Slider(0, MAX_CRF, value=DEFAULT_CRF, step=1, elem_id="crf",
                                label="Video quality (H.264 CRF, lower = better)",
                                info=f"{DEFAULT_CRF}: visually lossless (the CLI's default); 23: smaller files; "
                                     "0: lossless")
                with gr.Accordion("Advanced", open=False):
                    seed = gr.Number(value=DEFAULT_SEED, precision=0, label="Seed", elem_id="seed")
                    scheduler = gr.Radio(["ddim", "dpm++"], value="ddim", label="Sampler", elem_id="scheduler",
                                         info="dpm++ does well with fewer steps")
                    deepcache = gr.Checkbox(value=False, label="DeepCache (about 2x faster, slightly different)",
                                            elem_id="deepcache")
                estimated = gr.Markdown(estimate_line(service.speed, None, settings.steps, settings.guidance),
                                        elem_id="estimate")
                with gr.Row():
                    run = gr.Button("Lip sync", variant="primary", elem_id="run-button")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop-button")
            with gr.Column():
                result_video = gr.Video(label="Result", interactive=False, buttons=["download"],
                                        elem_id="result-video")
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label=f"This session's results (kept {settings.keep_minutes:g} minutes): "
                                           "click one to replay it", columns=3, height=300, interactive=False,
                                     buttons=["download"], elem_id="history")
        if examples:
            gr.Examples(examples=examples, inputs=[video_in, audio_in],
                        label="Examples (the demo clip, its portrait)")

        quick = dict(queue=False, show_progress="hidden", api_visibility="private")
        video_in.change(show_faces, inputs=video_in, outputs=[preview, face, faces], api_name="faces")
        preview.select(pick_face, inputs=faces, outputs=face, **quick)
        face.change(redraw, inputs=[faces, face], outputs=preview, **quick)
        # One speech track at a time: a new upload or recording replaces the other kind.
        audio_in.upload(lambda: None, outputs=speech_video, **quick)
        audio_in.stop_recording(lambda: None, outputs=speech_video, **quick)
        speech_video.upload(lambda: None, outputs=audio_in, **quick)
        # One listener for every change the estimate depends on (a finished job's measured speed arrives with the
        # history): its runs never overlap and the last one reads the page as it is then, so an older answer
        # cannot land after a newer one, as it could with a listener per control.
        gr.on([control.change for control in (audio_in, speech_video, steps, guidance, gallery)], estimate,
              inputs=[audio_in, speech_video, steps, guidance], outputs=estimated, trigger_mode="always_last",
              **quick)

        inputs = [video_in, audio_in, steps, guidance, seed, face, crf, scheduler, deepcache, speech_video, job,
                  history]
        ran = run.click(begin, outputs=[job, run], **quick).then(
            lipsync, inputs=inputs, outputs=[result_video, status, history], api_name="lipsync",
            concurrency_limit=settings.concurrency)
        ran.success(lambda items: items, inputs=history, outputs=gallery, **quick)
        # The button comes back when the job ends, however it ends (Gradio 6's page runs a `.then` only after a
        # success, hence the `.failure`).
        for ended in (ran.then, ran.failure):
            ended(lambda: gr.update(interactive=True), outputs=run, **quick)
        stop_button.click(stop, api_name="stop", queue=False)
        app.unload(closed)  # a closed (or reloaded) page stops its jobs
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
          unet: str | Path | None = None, lora: str | Path | None = None, lora_scale: float = 1.0) -> None:
    """`latentsync app`: load the models (now, or on the first request with `lazy`), build the page with the
    demo clip as its example, and serve until interrupted. Everything the server writes (its Gradio cache,
    jobs, results, examples, and with `demo` the tiny checkpoints) lives in one temporary folder, removed
    when it stops. With `demo` the page defaults to `DEMO_STEPS` steps without guidance, and (unless `lazy`)
    the server measures its speed on a `CALIBRATION_SECONDS` job before serving, for the page's estimate;
    other servers measure it on their first job."""
    from .inference import LipSync
    from .weights import CheckpointLayout, default_checkpoints_dir

    settings = settings or AppSettings()
    if demo:
        settings = dataclasses.replace(settings, steps=DEMO_STEPS, guidance=DEMO_GUIDANCE)
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
                           offload=settings.low_memory, unet=unet, lora=lora, lora_scale=lora_scale)

        if not quiet and not lazy:
            print("loading the models ...", file=sys.stderr)
        service = LipSyncService(make if lazy else make(), settings, root=root / "service")
        examples = write_examples(root / "examples")
        if demo and not lazy:
            from .demo import synth_speech
            from .media import write_wav

            if not quiet:
                print("measuring this server's speed on a short clip ...", file=sys.stderr)
            speech = write_wav(root / "calibration.wav", synth_speech(CALIBRATION_SECONDS), SAMPLE_RATE_HZ)
            service.calibrate(examples[0][0], speech)
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
