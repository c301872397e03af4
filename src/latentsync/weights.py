"""Where the published weights live on disk, and the `latentsync download` command that puts them there.

One layout under a checkpoints folder (default `./checkpoints`, or `$LATENTSYNC_CHECKPOINTS`), the same as the
original LatentSync repository's, so an existing `checkpoints/` folder works as it is:

    latentsync_unet.pt              UNet (1.6: 512 px faces, 1.5: 256 px)
    whisper/tiny.pt                 OpenAI Whisper tiny, the audio encoder
    stable_syncnet.pt               StableSyncNet, the sync loss of stage-2 training
    sd-vae-ft-mse/                  the Stable Diffusion VAE in diffusers format (config.json + weights)
    auxiliary/                      networks for data processing, training losses and evaluation
    latentsync_version.txt          "1.6" or "1.5": which UNet `latentsync download` installed

`MANIFEST` says, as data, which file each `--with` group fetches and from which Hub repository. The paths of
the auxiliary files inside `ByteDance/LatentSync-1.5` are our best knowledge of the published repository (the
original code fetches `checkpoints/<path>` as `<path>` from that repository); `latentsync download` names the
exact URL of any file it could not fetch, so a moved file shows up as a clear error rather than a wrong model.

Downloads go through `huggingface_hub.hf_hub_download` (which honours `HF_ENDPOINT`, `HF_TOKEN`,
`HF_HUB_OFFLINE`, `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT`; the last two default to 10 s in
huggingface_hub 2.x) into a staging folder inside the checkpoints folder, and each file is renamed to its final
path only once complete: a file at its final path is always whole.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import CheckpointError, DownloadError
from .fileio import atomic_write

log = logging.getLogger(__name__)

CHECKPOINTS_ENV = "LATENTSYNC_CHECKPOINTS"
DEFAULT_CHECKPOINTS_DIR = Path("checkpoints")

# Hub repositories. VERSIONED stands for the LatentSync repository of the version being installed.
LATENTSYNC_REPOS = {"1.6": "ByteDance/LatentSync-1.6", "1.5": "ByteDance/LatentSync-1.5"}
AUXILIARY_REPO = "ByteDance/LatentSync-1.5"  # the auxiliary/ networks are published with 1.5 only
VAE_REPO = "stabilityai/sd-vae-ft-mse"
VERSIONED = "<LatentSync repo of the version>"

# The UNet config that matches each published UNet (spec 3.1): 1.6 is trained at 512 px, 1.5 at 256 px.
UNET_CONFIG_FOR_VERSION = {"1.6": "stage2_512", "1.5": "stage2"}

VERSION_FILE = "latentsync_version.txt"
STAGING_DIR = ".download"  # inside the checkpoints folder, so the final rename never crosses file systems

GROUPS = ("inference", "training", "eval", "insightface")

# Every weight by name (`CheckpointLayout.<name>`, `CheckpointLayout.require(name)`, in the order `require`
# reports them): its path under the checkpoints folder.
FILES = {
    "unet": "latentsync_unet.pt",  # the UNet (1.6: 512 px faces, 1.5: 256 px)
    "whisper": "whisper/tiny.pt",  # OpenAI Whisper tiny, the audio encoder
    "vae": "sd-vae-ft-mse",  # a folder in diffusers format (config.json + diffusion_pytorch_model.safetensors/.bin)
    "syncnet": "stable_syncnet.pt",  # StableSyncNet (training loss)
    "syncnet_v2": "auxiliary/syncnet_v2.model",  # joonson SyncNet (sync confidence metric and data filtering)
    "sfd_face": "auxiliary/sfd_face.pth",  # S3FD face detector (evaluation and data filtering)
    "koniq": "auxiliary/koniq_pretrained.pkl",  # hyperIQA trained on KonIQ (quality filter)
    "videomae": "auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth",  # VideoMAE v2 ViT-g (TREPA loss)
    "i3d": "auxiliary/i3d_torchscript.pt",  # I3D TorchScript (FVD)
    "vgg16": "auxiliary/vgg16-397923af.pth",  # torchvision VGG16 (LPIPS)
    # pytorch-fid's Inception weights (FID): published on GitHub, not on the Hub (see `CheckpointLayout.ELSEWHERE`)
    "fid_inception": "auxiliary/pt_inception-2015-12-05-6726825d.pth",
    # InsightFace buffalo_l (the published face stack); InsightFace's `root` is auxiliary/
    "insightface_det": "auxiliary/models/buffalo_l/det_10g.onnx",
    "insightface_landmarks": "auxiliary/models/buffalo_l/2d106det.onnx",
}


def default_checkpoints_dir() -> Path:
    """`$LATENTSYNC_CHECKPOINTS` if set, else `./checkpoints`."""
    env = os.environ.get(CHECKPOINTS_ENV)
    return Path(env) if env else DEFAULT_CHECKPOINTS_DIR


@dataclass(frozen=True)
class Remote:
    """One file of the manifest: `filename` of `repo` (or of the versioned LatentSync repo), fetched into the
    path of the weights called `name` (`FILES`), or into `part` inside it when that is a folder."""

    group: str  # the `--with` group that fetches it ("inference" is always fetched)
    repo: str  # Hub repo id, or VERSIONED
    filename: str  # path inside the repo
    name: str  # which weights (`FILES`)
    part: str = ""  # a file inside the weights' folder
    per_version: bool = False  # the file differs between 1.5 and 1.6: replaced when switching versions

    @property
    def dest(self) -> str:
        """Its path under the checkpoints folder."""
        return f"{FILES[self.name]}/{self.part}" if self.part else FILES[self.name]

    def repo_for(self, version: str) -> str:
        return LATENTSYNC_REPOS[version] if self.repo == VERSIONED else self.repo


def _published(group: str, name: str, repo: str = AUXILIARY_REPO, per_version: bool = False) -> Remote:
    """A file published in a LatentSync repo at the path it has in the checkpoints folder."""
    return Remote(group, repo, FILES[name], name, per_version=per_version)


MANIFEST: tuple[Remote, ...] = (
    _published("inference", "unet", VERSIONED, per_version=True),
    # Whisper tiny is the same file in both repos, so switching versions keeps it.
    _published("inference", "whisper", VERSIONED),
    Remote("inference", VAE_REPO, "config.json", "vae", "config.json"),
    Remote("inference", VAE_REPO, "diffusion_pytorch_model.safetensors", "vae", "diffusion_pytorch_model.safetensors"),
    _published("training", "syncnet", VERSIONED, per_version=True),
    _published("training", "videomae"),
    _published("training", "vgg16"),
    _published("eval", "syncnet_v2"),
    _published("eval", "sfd_face"),
    _published("eval", "i3d"),
    _published("eval", "koniq"),
    _published("insightface", "insightface_det"),
    _published("insightface", "insightface_landmarks"),
)


def _is_file(path: Path) -> bool:
    """A weight file counts as present when it is a non-empty file (an empty one is a failed copy)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


@dataclass(frozen=True)
class CheckpointLayout:
    """Paths of every weight file under one checkpoints folder. Nothing is checked until `require`."""

    root: Path

    NAMES = tuple(FILES)  # names accepted by `require`, in the order they are reported
    # Files not published on the Hub, so not fetched by `latentsync download`: where each one comes from.
    ELSEWHERE = {
        "fid_inception": "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                         "pt_inception-2015-12-05-6726825d.pth",
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __getattr__(self, name: str) -> Path:
        """`layout.unet`, `layout.vae`, ...: the path of each weight in `FILES`."""
        if name in FILES and "root" in self.__dict__:
            return self.root / FILES[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def auxiliary(self) -> Path:
        """Also the InsightFace `root`: it looks for `models/buffalo_l/*.onnx` below it."""
        return self.root / "auxiliary"

    @property
    def version_file(self) -> Path:
        return self.root / VERSION_FILE

    def is_present(self, name: str) -> bool:
        """Whether the weights called `name` are there (the VAE: its config and a weight file)."""
        path = self._path(name)
        if name == "vae":
            weights = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
            return _is_file(path / "config.json") and any(_is_file(path / w) for w in weights)
        return _is_file(path)

    def require(self, *names: str) -> tuple[Path, ...]:
        """The paths of `names` (see `NAMES`), or CheckpointError naming every missing one in one line.

        The message says which `latentsync download` command fetches them, or where to put them by hand.
        """
        paths = tuple(self._path(n) for n in names)
        missing = [(n, p) for n, p in zip(names, paths) if not self.is_present(n)]
        if not missing:
            return paths
        hub = [(n, p) for n, p in missing if n not in self.ELSEWHERE]
        shown = ", ".join(str(p.absolute()) + ("/ (config.json + weights)" if n == "vae" else "")
                          for n, p in missing)
        hints = []
        if hub:
            groups = {r.group for n, _ in hub for r in MANIFEST if self._owns(n, r)}
            command = "latentsync download"
            if self.root.absolute() != default_checkpoints_dir().absolute():
                command += f" --dir {self.root}"
            command += "".join(f" --with {g}" for g in GROUPS if g in groups and g != "inference")
            hints.append(f"run `{command}`")
        hints += [f"download {self.ELSEWHERE[n]}" for n, _ in missing if n in self.ELSEWHERE]
        raise CheckpointError(
            f"missing checkpoint{'s' if len(missing) > 1 else ''}: {shown}; {' and '.join(hints)} "
            f"or put {'each file' if len(missing) > 1 else 'the file'} at that path"
        )

    def _path(self, name: str) -> Path:
        if name not in self.NAMES:
            raise ValueError(f"unknown checkpoint name {name!r}; expected one of {', '.join(self.NAMES)}")
        return getattr(self, name)

    def _owns(self, name: str, remote: Remote) -> bool:
        """Whether the manifest entry `remote` fetches (part of) the weights called `name`."""
        dest = self.root / remote.dest
        path = self._path(name)
        return dest == path or path in dest.parents


def _recorded_version(root: Path) -> str | None:
    """The text of the version file: a version, or a note that a switch between versions did not finish."""
    try:
        return CheckpointLayout(root).version_file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def installed_version(root: str | Path) -> str | None:
    """The LatentSync version ("1.6" or "1.5") that `latentsync download` installed under `root`, if known.

    Inference uses it to pick the UNet config that matches the weights by default (`UNET_CONFIG_FOR_VERSION`:
    1.6 -> stage2_512, 1.5 -> stage2). None when the folder was filled by hand or by another tool, or when a
    switch between versions was interrupted (rerun `latentsync download --version ...` to finish it).
    """
    text = _recorded_version(Path(root))
    return text if text in LATENTSYNC_REPOS else None


def _expand_groups(groups: Iterable[str]) -> list[str]:
    groups = list(groups)
    unknown = [g for g in groups if g not in GROUPS and g != "all"]
    if unknown:
        raise ValueError(f"unknown download group(s) {unknown}; expected {', '.join(GROUPS)} or all")
    return list(GROUPS) if "all" in groups else [g for g in GROUPS if g in groups]


class _HubUnreachable(Exception):
    """The Hub endpoint cannot be reached at all: no point trying the other files."""


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text[:200]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection, timeout and protocol errors of the HTTP client under huggingface_hub.

    httpx2 in huggingface_hub 2.x, httpx in 1.x, requests before; whichever are installed.
    """
    found: list[type[BaseException]] = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(found)


def _check_remote(repo: str, filename: str) -> None:
    """One HEAD request without retries, so that an unreachable Hub fails in seconds.

    hf_hub_download retries a failed HEAD with exponential backoff (about 30 s per file) before giving up;
    this check runs first and reports a refused or timed-out connection at once.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except OfflineModeIsEnabled:
        raise _HubUnreachable("offline mode is on (HF_HUB_OFFLINE)") from None
    except EntryNotFoundError:
        raise OSError(f"not found in {repo}") from None
    except GatedRepoError:
        raise OSError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise OSError(f"repository {repo} not found") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise OSError(f"HTTP {status} from {constants.ENDPOINT}") from None
    except _transport_errors() as e:
        raise _HubUnreachable(f"cannot reach {constants.ENDPOINT} ({_reason(e)})") from None


def _fetch(remote: Remote, version: str, root: Path, progress: bool) -> Path:
    """Download one file into the staging folder under `root`; returns its path there."""
    from huggingface_hub import hf_hub_download
    from tqdm.auto import tqdm

    repo = remote.repo_for(version)
    _check_remote(repo, remote.filename)
    # hf_hub_download writes a uniquely named `.incomplete` file and renames it when complete; but when the file
    # is already in the HF cache it copies it in place, so we stage and rename ourselves as well.
    return Path(hf_hub_download(repo, remote.filename, local_dir=root / STAGING_DIR / repo,
                                tqdm_class=None if progress else functools.partial(tqdm, disable=True)))


def _write_version(root: Path, version: str) -> None:
    with atomic_write(CheckpointLayout(root).version_file) as tmp:
        tmp.write_text(version + "\n")


def download(
    version: str = "1.6",
    root: str | Path = DEFAULT_CHECKPOINTS_DIR,
    groups: Iterable[str] = ("inference",),
    progress: bool = True,
) -> list[Path]:
    """Fetch the weights of `groups` ("inference", "training", "eval", "insightface", or "all") into `root`.

    Files already present (non-empty) are kept, except the version-specific ones (UNet, StableSyncNet, whether
    requested or not) when `root` holds another LatentSync version or an unfinished switch. Once the inference
    files are all present, writes `latentsync_version.txt` (see `installed_version`). Raises DownloadError, in one line naming each file that
    could not be fetched, its source URL and where to put it by hand. Returns the paths of all requested files.
    """
    if version not in LATENTSYNC_REPOS:
        raise ValueError(f"unknown LatentSync version {version!r}; expected one of {', '.join(LATENTSYNC_REPOS)}")
    root = Path(root)
    wanted = _expand_groups(groups)
    entries = [r for r in MANIFEST if r.group in wanted]
    # Switching versions replaces every version-specific file in the folder, requested or not, so that the
    # folder never pairs a UNet with the other version's SyncNet. An unfinished switch is recorded as such.
    recorded = _recorded_version(root)
    switching = recorded is not None and recorded != version
    todo = [r for r in MANIFEST
            if (r in entries and not _is_file(root / r.dest))
            or (switching and r.per_version and (r in entries or _is_file(root / r.dest)))]

    failures: list[tuple[Remote, str]] = []
    unreachable: str | None = None
    switch_started = False
    if todo:
        root.mkdir(parents=True, exist_ok=True)
    try:
        for remote in todo:
            if unreachable is not None:
                failures.append((remote, unreachable))
                continue
            log.info("fetching %s from %s", remote.dest, remote.repo_for(version))
            try:
                staged = _fetch(remote, version, root, progress)
                if switching and remote.per_version and not switch_started:
                    _write_version(root, f"{recorded} -> {version} (unfinished)")
                    switch_started = True
                dest = root / remote.dest
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, dest)
            except _HubUnreachable as e:
                unreachable = str(e)
                failures.append((remote, unreachable))
            except (OSError, *_transport_errors()) as e:  # HTTP errors, lost connections, a full disk
                failures.append((remote, _reason(e)))
    finally:
        shutil.rmtree(root / STAGING_DIR, ignore_errors=True)

    inference = [r for r in entries if r.group == "inference"]
    failed = [r for r, _ in failures]
    if (inference and all(_is_file(root / r.dest) for r in inference)
            and not any(r in inference or r.per_version for r in failed)):
        _write_version(root, version)
    if failures:
        raise DownloadError(_failure_message(failures, version, root))
    return [root / r.dest for r in entries]


def _failure_message(failures: list[tuple[Remote, str]], version: str, root: Path) -> str:
    from huggingface_hub import hf_hub_url

    reasons = {reason for _, reason in failures}
    shared = reasons.pop() if len(reasons) == 1 else None
    items = []
    for remote, reason in failures:
        repo = remote.repo_for(version)
        item = (f"{remote.dest} from {repo} ({hf_hub_url(repo, remote.filename)}) "
                f"-> {(root / remote.dest).absolute()}")
        items.append(item if shared else f"{item} [{reason}]")
    head = f"could not download {len(failures)} file(s)" + (f" ({shared})" if shared else "")
    return f"{head}; fetch each by hand and put it in place: {'; '.join(items)}"
