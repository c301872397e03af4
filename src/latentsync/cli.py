"""The `latentsync` command: one entry with subcommands, each a thin adapter over a library call.

Errors the user can cause (missing files, bad configs, unusable media) are reported in one line on stderr with
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import LatentSyncError


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the published weights into the checkpoints folder",
        description=(
            "Download the published LatentSync weights from the Hugging Face Hub into one layout that every "
            "other command reads by default: latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt, "
            "sd-vae-ft-mse/ and auxiliary/. Files already present are kept. Without network access it names "
            "each missing file and where to put it."
        ),
    )
    p.add_argument("--version", choices=["1.6", "1.5"], default="1.6",
                   help="1.6: 512 px faces (sharper, needs ~18 GB VRAM); 1.5: 256 px (default: %(default)s)")
    p.add_argument("--dir", type=Path, default=None,
                   help="checkpoints folder (default: $LATENTSYNC_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--with", dest="groups", action="append", default=[],
                   choices=["training", "eval", "insightface", "all"],
                   help="also fetch the weights for training, evaluation, or the InsightFace aligner (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from .weights import default_checkpoints_dir, download

    root = args.dir if args.dir is not None else default_checkpoints_dir()
    groups = ["inference", *args.groups]
    paths = download(version=args.version, root=root, groups=groups, progress=not args.quiet)
    if not args.quiet:
        print(f"{len(paths)} file(s) ready under {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentsync",
        description="Audio-driven lip sync with latent diffusion (LatentSync 1.5 / 1.6).",
    )
    parser.add_argument("--version", action="version", version=f"latentsync {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (loading reports, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_download(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except LatentSyncError as e:
        print(f"latentsync {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
