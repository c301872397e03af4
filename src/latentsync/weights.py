"""Where the published weights live on disk: the checkpoints folder's layout and the manifest of its files.

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

`latentsync download` (`hub.download`) fills the folder from the Hugging Face Hub's cache: each file is then a
link into that cache, read like any other file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ConfigError

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
DEFAULT_VERSION = "1.6"  # what a checkpoints folder is taken to hold when `latentsync download` did not say

VERSION_FILE = "latentsync_version.txt"

GROUPS = ("inference", "training", "eval")
# Groups of earlier releases, and the group that now holds their files.
FORMER_GROUPS = {"insightface": "inference"}

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
    # InsightFace buffalo_l, the published face stack: with inference, so that `auto` finds faces as the
    # reference does (and a plain pip install needs no mediapipe). `--with insightface` (`FORMER_GROUPS`) still works.
    _published("inference", "insightface_det"),
    _published("inference", "insightface_landmarks"),
)


def is_weight_file(path: Path) -> bool:
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
            return is_weight_file(path / "config.json") and any(is_weight_file(path / w) for w in weights)
        return is_weight_file(path)

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


def recorded_version(root: Path) -> str | None:
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
    text = recorded_version(Path(root))
    return text if text in LATENTSYNC_REPOS else None


def unet_config_for(root: str | Path, version: str | None = None) -> str:
    """The packaged UNet config of `version` ("1.6" or "1.5"; default: what `latentsync download` installed under
    `root`, else `DEFAULT_VERSION`); ConfigError for another version."""
    version = version or installed_version(root) or DEFAULT_VERSION
    if version not in UNET_CONFIG_FOR_VERSION:
        raise ConfigError(f"unknown version {version!r}; expected one of {', '.join(UNET_CONFIG_FOR_VERSION)}")
    return UNET_CONFIG_FOR_VERSION[version]
