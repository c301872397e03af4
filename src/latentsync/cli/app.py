"""`latentsync app`: serve the lip-sync web page."""

from __future__ import annotations

import argparse

from ..errors import LatentSyncError
from .options import add_hardware_options, add_model_choice, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from ..app import CALIBRATION_SECONDS, DEFAULT_HOST, DEFAULT_PORT, DEMO_STEPS, AppSettings

    d = AppSettings()
    p = sub.add_parser(
        "app",
        help="serve the lip-sync web page (Gradio) over models loaded once",
        description=(
            "Serve a web page where you upload a video or a still image and a speech track (or record one, or "
            "take the sound of a video) and get the lip-synced video back: the page shows the faces on the first "
            "frame to pick one, a progress bar that moves every denoising step, an estimate of the time, a Stop "
            "button and the session's results. The models load once, when the server starts; requests wait in a "
            "queue and at most --concurrency run at once, each in a private folder removed when it ends (or "
            "when it is stopped). It listens on 127.0.0.1 (this machine only) unless --host says otherwise, and "
            "never opens a public share link. Needs Gradio: pip install 'latentsync[app]'."
        ),
    )
    which = add_model_choice(p)
    which.add_argument("--demo", action="store_true",
                       help="tiny random-weight models written into a temporary folder: try the page with no "
                            f"download (no real lip sync); the page defaults to {DEMO_STEPS} steps without "
                            f"guidance, and the server times a {CALIBRATION_SECONDS:g} s job at start for the "
                            "page's estimate of the time")
    g = p.add_argument_group("server")
    g.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on; 0.0.0.0 serves the whole network (default: %(default)s)")
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    g.add_argument("--concurrency", type=positive_int, default=d.concurrency,
                   help="jobs running at once on the shared models; more needs more GPU memory (default: "
                        "%(default)s)")
    g.add_argument("--queue-size", type=positive_int, default=d.queue_size,
                   help="requests allowed to wait; more are turned away (default: %(default)s)")
    g.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                   help="largest upload accepted, per file, in MB (default: %(default)g)")
    g.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="longest video or audio accepted, in seconds; 0: no limit (default: %(default)g)")
    g.add_argument("--keep-minutes", type=float, default=d.keep_minutes,
                   help="how long uploads and results stay on the server (default: %(default)g)")
    g.add_argument("--lazy", action="store_true",
                   help="load the models on the first request instead of at start")
    g = add_hardware_options(p)
    g.add_argument("--low-memory", action="store_true",
                   help="every job in the low-memory mode (for small GPUs; see `latentsync infer --help`)")
    p.add_argument("--quiet", action="store_true", help="no start-up messages")
    p.set_defaults(func=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    from ..app import AppSettings, serve

    try:
        settings = AppSettings(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                               concurrency=args.concurrency, queue_size=args.queue_size,
                               keep_minutes=args.keep_minutes, low_memory=args.low_memory)
    except ValueError as e:
        raise LatentSyncError(str(e)) from None
    serve(settings, checkpoints=args.checkpoints, version=args.version, unet_config=args.unet_config,
          demo=args.demo, host=args.host, port=args.port, lazy=args.lazy, device=args.device, dtype=args.dtype,
          face_backend=args.face_backend, compile=args.compile, quiet=args.quiet, unet=args.unet, lora=args.lora,
          lora_scale=args.lora_scale)
    return 0
