"""An offline demo: tiny random-weight checkpoints in the standard layout, a short talking-head clip made from a
real portrait shipped inside a package, synthetic speech, and the real inference path over them.

Random weights regenerate the mouth region with an untrained network: the output shows the pipeline working
(detection, alignment, diffusion, paste-back, encoding), not lip sync. The published weights are fetched with
`latentsync download`. Tests build their fixtures with the same functions.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import load_unet_config, to_dict
from .defaults import FPS, SAMPLE_RATE_HZ
from .media import VideoWriter, write_wav
from .models.unet import load_unet, save_unet_checkpoint
from .models.whisper import TINY_WHISPER_DIMS

DEMO_RESOLUTION = 128  # face crop of the tiny demo model (the published models use 256 and 512)
DEMO_FPS = FPS
SPEECH_RATE_HZ = SAMPLE_RATE_HZ
UNET_CONFIG_NAME = "unet.yaml"  # written beside the tiny weights

# A small AutoencoderKL with SD's latent geometry (4 channels, 8x downsampling).
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
    block_out_channels=(32, 32, 64, 64), sample_size=DEMO_RESOLUTION,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def portrait_path() -> Path:
    """A real frontal portrait shipped with matplotlib (Grace Hopper, 512x600; public domain)."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_portrait() -> np.ndarray:
    """The portrait as RGB uint8 (600, 512, 3), an array of the caller's own."""
    return _portrait().copy()


@functools.lru_cache(maxsize=1)
def _portrait() -> np.ndarray:
    """The portrait decoded once, read-only (clips of many frames paste it into every one)."""
    import cv2

    image = cv2.cvtColor(cv2.imread(str(portrait_path()), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=4)
def _backdrop(w: int, h: int) -> np.ndarray:
    """The wide shots' plain backdrop (h, w, 3) uint8, read-only: gentle colour gradients."""
    ys, xs = np.mgrid[:h, :w]
    frame = np.stack([70 + 40 * xs / w, 80 + 30 * ys / h, 90 + 20 * (xs + ys) / (w + h)], -1).astype(np.uint8)
    frame.setflags(write=False)
    return frame


def write_tiny_checkpoints(root: str | Path, seed: int = 0, resolution: int = DEMO_RESOLUTION) -> Path:
    """Random-weight UNet, Whisper and VAE in the published formats under `root` (the standard layout), plus the
    UNet config `root/unet.yaml`. Returns `root`."""
    from diffusers import AutoencoderKL
    from whisper.model import ModelDimensions, Whisper

    root = Path(root)
    (root / "whisper").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    config = load_unet_config("tiny/unet")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, resolution=resolution))
    (root / UNET_CONFIG_NAME).write_text(
        "# Tiny random-weight UNet written by `latentsync demo` (no real lip sync).\n"
        + yaml.safe_dump(to_dict(config), sort_keys=False)
    )
    unet = load_unet(config)
    with torch.no_grad():  # move every weight off its init so the untrained network still depends on its input
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_unet_checkpoint(unet, root / "latentsync_unet.pt")

    dims = ModelDimensions(**TINY_WHISPER_DIMS)
    whisper = Whisper(dims).half()  # the published tiny.pt holds float16 weights
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": whisper.state_dict()}, root / "whisper" / "tiny.pt")

    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(root / "sd-vae-ft-mse")
    return root


def synth_speech(seconds: float, seed: int = 0, sample_rate: int = SPEECH_RATE_HZ) -> np.ndarray:
    """Speech-like audio, float32 mono: a voiced source (harmonics of a wandering 110-150 Hz pitch) shaped by
    two moving formants and cut into syllables of ~250 ms with short pauses and noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 130 + 20 * np.sin(2 * np.pi * 0.7 * t)  # Hz
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    formant1 = 500 + 300 * np.sin(2 * np.pi * 3.1 * t)  # Hz, sweeps like open/close vowels
    formant2 = 1500 + 500 * np.sin(2 * np.pi * 2.3 * t + 1.0)
    voiced = np.zeros_like(t)
    for k in range(1, 40):
        f = k * pitch
        gain = np.exp(-(((f - formant1) / 150) ** 2)) + 0.5 * np.exp(-(((f - formant2) / 200) ** 2)) + 0.02
        voiced += gain * np.sin(k * phase) / k
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.5  # ~4 syllables per second
    pauses = (np.sin(2 * np.pi * 0.45 * t + 0.3) > -0.8).astype(float)
    bursts = rng.standard_normal(t.shape) * (np.sin(2 * np.pi * 4.0 * t) < -0.9) * 0.3
    audio = (voiced * syllables + bursts) * pauses
    return (0.5 * audio / (np.abs(audio).max() + 1e-9)).astype(np.float32)


def make_talking_clip(path: str | Path, seconds: float = 3.0, fps: float = DEMO_FPS,
                      image: np.ndarray | None = None) -> Path:
    """A short H.264 clip of the portrait with a gentle head-like motion (zoom and sway), no audio."""
    import cv2

    image = load_portrait() if image is None else image
    h, w = image.shape[:2]
    with VideoWriter(path, w, h, fps=fps) as writer:
        for i in range(int(round(seconds * fps))):
            t = i / fps
            angle = 2.0 * np.sin(2 * np.pi * 0.4 * t)  # degrees
            scale = 1.0 + 0.02 * np.sin(2 * np.pi * 0.3 * t)
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            m[:, 2] += (4 * np.sin(2 * np.pi * 0.5 * t), 2 * np.cos(2 * np.pi * 0.5 * t))
            writer.write(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return Path(path)


# The portrait's face box as the face mesh finds it in the full image (x1, y1, x2, y2, px): `place_portrait` sizes
# and places pasted copies by it.
PORTRAIT_FACE_BOX = (162.0, 121.0, 366.0, 343.0)


@dataclasses.dataclass
class Placement:
    """A copy of the portrait in a wide shot: its face `width` px wide, centred at (x, y) px of the frame at
    time 0 and drifting by (dx, dy) px per second; `mirror` flips it (a different-looking neighbour)."""

    width: float
    x: float
    y: float
    dx: float = 0.0
    dy: float = 0.0
    mirror: bool = False


def wide_shot_frame(size: tuple[int, int], placements: list[Placement], t: float = 0.0
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """A (h, w, 3) RGB frame of `size` (w, h): a plain backdrop with the portrait pasted as `placements` say at
    time `t` s, and for each copy the (2, 3) affine from portrait pixels to frame pixels (where its face is)."""
    import cv2

    w, h = size
    portrait = _portrait()
    frame = _backdrop(w, h).copy()
    fx1, fy1, fx2, fy2 = PORTRAIT_FACE_BOX
    transforms = []
    for place in placements:
        image = portrait[:, ::-1] if place.mirror else portrait
        face_cx = portrait.shape[1] - (fx1 + fx2) / 2 if place.mirror else (fx1 + fx2) / 2
        scale = place.width / (fx2 - fx1)
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
        left = int(round(place.x + place.dx * t - face_cx * sx))
        top = int(round(place.y + place.dy * t - (fy1 + fy2) / 2 * sy))
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + small.shape[1], w), min(top + small.shape[0], h)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = small[y0 - top:y1 - top, x0 - left:x1 - left]
        flip = np.array([[-1.0, 0, image.shape[1]], [0, 1, 0], [0, 0, 1]]) if place.mirror else np.eye(3)
        transforms.append((np.array([[sx, 0, left], [0, sy, top]]) @ flip)[:2])
    return frame, transforms


def make_wide_shot_clip(path: str | Path, size: tuple[int, int], placements: list[Placement],
                        seconds: float = 2.0, fps: float = DEMO_FPS) -> tuple[Path, list[list[np.ndarray]]]:
    """An H.264 clip of `wide_shot_frame`s; returns the path and each frame's portrait-to-frame affines."""
    transforms = []
    with VideoWriter(path, size[0], size[1], fps=fps) as writer:
        for i in range(int(round(seconds * fps))):
            frame, placed = wide_shot_frame(size, placements, i / fps)
            writer.write(frame)
            transforms.append(placed)
    return Path(path), transforms


def write_demo_media(folder: str | Path, seconds: float = 3.0) -> tuple[Path, Path]:
    """The demo clip `folder/portrait.mp4` and its speech `folder/speech.wav`; returns (video, audio)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video = make_talking_clip(folder / "portrait.mp4", seconds=seconds)
    audio = write_wav(folder / "speech.wav", synth_speech(seconds), SPEECH_RATE_HZ)
    return video, audio


def prepare_demo(workdir: str | Path, seconds: float = 3.0) -> tuple[Path, Path, Path]:
    """Write the tiny checkpoints, the clip and the speech into `workdir`; returns (checkpoints, video, audio)."""
    video, audio = write_demo_media(workdir, seconds)
    return write_tiny_checkpoints(Path(workdir) / "checkpoints"), video, audio
