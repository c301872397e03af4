"""The `latentsync` command: one entry with subcommands, each a thin adapter over a library call.

Each subcommand lives in a module of its own (`infer.py`, `batch.py`, `demo.py`, `evaluate.py`, `preprocess.py`,
`train.py`, `finetune.py`, `app.py`, `download.py`) whose `register(sub)` adds its parser; shared options are in
`options.py`. Building the parser imports no heavy library, so `--help` answers at once; each command imports what
it needs when it runs.

Errors the user can cause (missing files, bad configs, unusable media) are reported in one line on stderr with
exit status 2; anything else is a bug and keeps its traceback. Ctrl-C exits with 130 and SIGTERM with 143,
both after the same clean-up (no temporary file is left).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from .. import __version__
from ..errors import LatentSyncError
from . import app, batch, demo, download, evaluate, finetune, infer, preprocess, train
from .options import HelpFormatter, check_device

COMMANDS = (infer, batch, demo, evaluate, preprocess, train, finetune, app, download)  # in the order `--help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentsync",
        description="Audio-driven lip sync with latent diffusion (LatentSync 1.5 / 1.6).",
    )
    parser.add_argument("--version", action="version", version=f"latentsync {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (loading reports, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter  # the original's flag spellings stay out of every --help
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "command", None) in ("train", "finetune"):
        args.overrides = [a for a in unknown if "=" in a and not a.startswith("-")]
        unknown = [a for a in unknown if a not in args.overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in ("infer", "batch", "demo", "eval", "preprocess", "finetune", "app"):
        from .. import stderr_filter

        stderr_filter.install()  # mediapipe prints C++ notices whenever its graph starts
    try:
        with _sigterm_as_interrupt():
            if getattr(args, "device", None) not in (None, "auto"):
                check_device(args.device)  # a device that is not there: one line before anything is read or loaded
            return args.func(args)
    except LatentSyncError as e:
        print(f"latentsync {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that every command cleans up the same way."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM (job schedulers, containers, `timeout`) raises `Terminated` in the main thread:
    the same unwinding as Ctrl-C (temporary files removed, workers stopped). The old handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
