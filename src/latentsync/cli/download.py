"""`latentsync download`: fetch the published weights into the checkpoints folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch the published weights into the checkpoints folder",
        description=(
            "Download the published LatentSync weights from the Hugging Face Hub into its cache (shared with "
            "every Hugging Face tool: files already there are not fetched again, an interrupted download "
            "resumes) and link them into one layout that every other command reads by default: "
            "latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt, sd-vae-ft-mse/ and auxiliary/. Files "
            "already in the folder are kept. Without network access it names each missing file and where to "
            "put it. HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE work as in every Hugging Face tool."
        ),
    )
    p.add_argument("--version", choices=["1.6", "1.5"], default="1.6",
                   help="1.6: 512 px faces, sharper (about 4.7 GB of GPU memory for its tensors, 3 GB with "
                        "--low-memory; the original needs 18 GB); 1.5: 256 px (3.1 GB) (default: %(default)s)")
    p.add_argument("--revision", default=None,
                   help="a branch, tag or commit of the version's LatentSync repository, to pin the weights "
                        "(default: its main branch)")
    p.add_argument("--dir", type=Path, default=None,
                   help="checkpoints folder (default: $LATENTSYNC_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--with", dest="groups", action="append", default=[],
                   choices=["training", "eval", "insightface", "all"],
                   help="also fetch the weights for training or evaluation (repeatable; default: only what "
                        "inference needs, which includes the published InsightFace face models; insightface is "
                        "accepted as before)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from ..hub import download
    from ..weights import default_checkpoints_dir

    root = args.dir if args.dir is not None else default_checkpoints_dir()
    groups = ["inference", *args.groups]
    paths = download(version=args.version, root=root, groups=groups, progress=not args.quiet,
                     revision=args.revision)
    if not args.quiet:
        print(f"{len(paths)} file(s) ready under {root}")
    return 0
