"""`SyncNetDataset`: in-sync and off-sync (frames, mel) pairs from processed clips (spec 7.1, 5.1).

The clips are what the data pipeline produces (spec 6): aligned faces at 25 fps, 256 or 512 px, with their
audio track. A sample is a window of `data.num_frames` (16) consecutive frames and the SyncNet mel window
(spec 5.1) under a start frame `start`:

* positive (y = 1): the frames at `start`, the mel at `start`;
* negative (y = 0, probability 1/2): the frames at another start `frames_start != start` of the same clip
  (the windows may overlap), the mel at `start`.

Frames are resized to `data.resolution` (bicubic, antialiased), mapped to [-1, 1], cut to their lower half if
`data.lower_half`, and stacked on channels: `(f c) h w`, (48, 128, 256) for the published config. The mel
window is (1, 80, 52).

Unlike the reference, which ignores the index and draws a random clip on every call (retrying forever on a
bad one), the index decides the sample: index i takes clip `i mod N` (so N consecutive indices visit every
clip once) and its label and starts from a generator seeded by `(seed, epoch, i)`. An epoch is therefore
reproducible, DataLoader workers never duplicate each other's samples, and `set_epoch` draws fresh windows
for the next epoch (as `DistributedSampler.set_epoch` reshuffles).

Bad clips. Unreadable clips, clips without audio and clips shorter than `2 * num_frames` frames are skipped
when the dataset is built and listed in `skipped` with the reason. A clip that passes that check but fails
later (a truncated file, corrupt data) is handled by `on_error`:

* "replace" (default, for long training runs): a warning names the clip and the reason once per process,
  the clip is remembered in `failed`, and the sample is taken, with the same draw, from the next clip in
  index order (`i + 1 mod N`, ...) that works. Failure is a property of the file, so the replacement is
  deterministic. If every clip fails, `InputError`.
* "raise": `InputError` naming the clip.

Mels: each clip's whole-clip mel is computed once per dataset object (per DataLoader worker) and kept in a
bounded in-memory LRU (`LRUMelCache`). `cache` accepts any object with the same `get(path, compute)` method:
that is the hook for the shared on-disk cache of the training loop.

Latent-space SyncNets (`data.latent_space: true`, frames encoded by the SD VAE) are not supported yet.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset

from ..audio import SYNCNET_MEL_RATE_HZ, SYNCNET_SAMPLE_RATE_HZ, mel_window, mel_window_length, syncnet_mel
from ..config import SyncNetConfig, load_syncnet_config
from ..errors import ConfigError, InputError
from ..media import VideoReader, decode_audio, probe_video

log = logging.getLogger(__name__)

VIDEO_SUFFIX = ".mp4"  # the pipeline writes mp4 clips; folders are searched recursively for these
FILESLIST_SUFFIX = ".txt"  # a files list: one clip path per line (tools/write_fileslist.py of the reference)
FILESLIST_COMMENT = "#"
# The reference skips clips shorter than two windows, so that a negative start other than the positive's exists.
MIN_WINDOWS_PER_CLIP = 2
NEGATIVE_PROBABILITY = 0.5  # the reference picks positive or negative with random.choice([True, False])
PIXEL_HALF_RANGE = 127.5  # uint8 [0, 255] -> [-1, 1]: x / 127.5 - 1
# Whole-clip mels kept in memory per dataset object: a 10 s clip's mel is 80 x 801 float32, about 256 KB,
# so the default holds at most about 32 MB.
DEFAULT_MEL_CACHE_CLIPS = 128
ON_ERROR_MODES = ("replace", "raise")

ClipSource = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


# --------------------------------------------------------------------------------------------------------
# Mel cache
# --------------------------------------------------------------------------------------------------------


class MelCache(Protocol):
    """Where whole-clip SyncNet mels live between samples.

    `get(path, compute)` returns the (80, T) float32 mel of the clip at `path`, calling `compute()` (which
    decodes the audio) only when it does not have it. An on-disk cache shared by workers and runs implements
    the same method (keyed by content, not by name: STYLE 7).
    """

    def get(self, path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray: ...


class LRUMelCache:
    """In-memory mels of the `max_clips` most recently used clips (least recently used evicted first)."""

    def __init__(self, max_clips: int = DEFAULT_MEL_CACHE_CLIPS):
        if max_clips < 1:
            raise ValueError(f"max_clips must be >= 1, got {max_clips}")
        self.max_clips = int(max_clips)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
        key = str(Path(path).resolve())
        mel = self._items.get(key)
        if mel is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return mel
        self.misses += 1
        mel = compute()
        self._items[key] = mel
        while len(self._items) > self.max_clips:
            self._items.popitem(last=False)
        return mel


# --------------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A usable clip: `key` is its identity (path relative to the dataset folder, or as listed), `path` the
    file, `num_frames` its length at the dataset's frame rate (from the container's duration)."""

    key: str
    path: Path
    num_frames: int


@dataclass(frozen=True)
class SamplePlan:
    """What index `i` stands for: the clip, the mel window's start frame, the shown frames' start, the label."""

    clip: str
    path: Path
    start: int
    frames_start: int
    y: int


def find_clips(source: ClipSource) -> tuple[list[tuple[str, Path]], str]:
    """(identity, path) of every clip named by `source`, and a description of the source for messages.

    `source` is a folder (searched recursively for .mp4; identity = path relative to the folder), a files
    list .txt (one path per line; blank lines and lines starting with # ignored; relative paths are relative
    to the list's folder; identity = the line), a single video file, or a sequence of paths (identity = the
    path as given). Raises InputError for a missing or unsupported source.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob(f"*{VIDEO_SUFFIX}") if p.is_file())
            return [(p.relative_to(path).as_posix(), p) for p in found], f"{path} (folder)"
        if not path.exists():
            raise InputError(f"{path}: no such folder or file")
        if path.suffix.lower() == FILESLIST_SUFFIX:
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: cannot read the files list ({e})") from None
            entries = [s.strip() for s in lines]
            entries = [s for s in entries if s and not s.startswith(FILESLIST_COMMENT)]
            return [(s, path.parent / s) for s in entries], f"{path} (files list)"
        return [(str(path), path)], str(path)
    paths = list(source)
    return [(str(p), Path(p)) for p in paths], f"a list of {len(paths)} clip paths"


def load_or_skip(dataset, start: int, load: Callable[[Clip], dict], errors: tuple[type[BaseException], ...]) -> dict:
    """`load(clip)` for the dataset's clip at `start`, or else for the next one that loads (in order, wrapping).

    A clip that fails with one of `errors` is remembered in `dataset.failed` (key -> reason), logged once and
    never tried again; with `dataset.on_error == "raise"` the error is raised instead. Raises InputError when
    every clip has failed. `dataset` has `clips`, `failed`, `on_error` and `source`."""
    n = len(dataset.clips)
    for step in range(n):
        clip = dataset.clips[(start + step) % n]
        if clip.key in dataset.failed:
            continue
        try:
            return load(clip)
        except errors as e:
            if dataset.on_error == "raise":
                raise
            dataset.failed[clip.key] = " ".join(str(e).split())
            log.warning("%s: %s failed (%s); its samples come from the next clip", type(dataset).__name__, clip.key,
                        dataset.failed[clip.key])
    raise InputError(f"{dataset.source}: every clip failed to decode (e.g. {next(iter(dataset.failed.values()))})")


# --------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------


class SyncNetDataset(Dataset):
    """Positive and negative (frames, mel) pairs from processed clips; see the module docstring.

    Args:
        clips: a folder (recursive .mp4 search), a files list .txt, or a sequence of clip paths.
        config: a SyncNet config (packaged name, YAML path, mapping or `SyncNetConfig`); its `data` section
            gives num_frames, resolution, lower_half, video_fps and audio_sample_rate.
        seed: seeds every draw together with the epoch and the index.
        length: samples per epoch (default: one per usable clip); index i uses clip i mod (number of clips).
        cache: a `MelCache`, or an int (size of a new `LRUMelCache`), or None for the default LRU.
        on_error: "replace" or "raise": what a clip that fails to decode does (module docstring).
        progress: a progress bar while the clips are probed.

    Items are dicts: `frames` float32 `(f*c, h, w)` in [-1, 1], `audio` float32 `(1, 80, L)`, `y` float32
    `(1,)` (1 in sync), `clip` (identity str), `start` (mel window's start frame), `frames_start`.

    Attributes: `clips` (usable `Clip`s), `skipped` ((identity, reason) of clips left out when building),
    `failed` ({identity: reason} of clips that failed later, in this process), `source` (description).
    """

    def __init__(
        self,
        clips: ClipSource,
        config: str | os.PathLike | dict | SyncNetConfig,
        seed: int = 0,
        length: int | None = None,
        cache: MelCache | int | None = None,
        on_error: str = "replace",
        progress: bool = False,
    ):
        self.config = load_syncnet_config(config)
        data = self.config.data
        if data.latent_space:
            raise NotImplementedError(
                "SyncNetDataset: data.latent_space: true (a latent-space SyncNet fed SD-VAE latents) is not "
                "supported yet; use a pixel-space config (data.latent_space: false)"
            )
        if data.audio_sample_rate != SYNCNET_SAMPLE_RATE_HZ:
            raise ConfigError(
                f"data.audio_sample_rate is {data.audio_sample_rate}; the SyncNet mel is defined at "
                f"{SYNCNET_SAMPLE_RATE_HZ} Hz"
            )
        if data.num_frames < 1 or data.resolution < 2 or data.video_fps <= 0:
            raise ConfigError(
                f"data.num_frames ({data.num_frames}), data.resolution ({data.resolution}) and data.video_fps "
                f"({data.video_fps}) must be positive"
            )
        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if length is not None and length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.num_frames = data.num_frames
        self.resolution = data.resolution
        self.lower_half = data.lower_half
        self.fps = data.video_fps
        self.mel_length = mel_window_length(self.num_frames, self.fps)
        self.seed = int(seed)
        self.epoch = 0
        self.on_error = on_error
        if cache is None:
            cache = LRUMelCache()
        elif isinstance(cache, int):
            cache = LRUMelCache(cache)
        self.cache: MelCache = cache
        self.failed: dict[str, str] = {}

        found, self.source = find_clips(clips)
        self.clips, self.skipped = self._probe(found, progress)
        if not self.clips:
            detail = f"; {len(self.skipped)} skipped, e.g. {self.skipped[0][1]}" if self.skipped else ""
            raise InputError(f"{self.source}: no usable clips{detail}")
        if self.skipped:
            log.warning("%s: skipped %d of %d clips (see SyncNetDataset.skipped)", self.source,
                        len(self.skipped), len(found))
        self.length = int(length) if length is not None else len(self.clips)

    # ---- construction -----------------------------------------------------------------------------------

    def _probe(self, found: list[tuple[str, Path]], progress: bool) -> tuple[list[Clip], list[tuple[str, str]]]:
        """Split the clips into usable ones and (identity, reason) of the others, from container headers."""
        from tqdm.auto import tqdm

        min_frames = MIN_WINDOWS_PER_CLIP * self.num_frames
        usable, skipped = [], []
        for key, path in tqdm(found, desc="probing clips", unit="clip", disable=not progress):
            try:
                info = probe_video(path)
            except InputError as e:
                skipped.append((key, str(e)))
                continue
            if not info.has_audio:
                skipped.append((key, f"{path}: has no audio track"))
                continue
            # The container's duration, not a full decode: probing stays cheap for large datasets. A clip whose
            # frames run out before that (damaged) is caught when a window past the damage is read.
            count = info.frames_at(self.fps)
            if count < min_frames:
                skipped.append((key, f"{path}: {count} frames at {self.fps} fps, fewer than {min_frames} "
                                     f"({MIN_WINDOWS_PER_CLIP} x data.num_frames)"))
                continue
            usable.append(Clip(key, path, count))
        return usable, skipped

    # ---- index -> sample --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw different windows and labels for the same indices. DataLoader workers copy the dataset when
        an iterator starts, so call this before iterating (and not with `persistent_workers=True`)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} samples")
        return index

    def _draw(self, index: int) -> tuple[int, float, float]:
        """(y, u_start, u_other) for an index: the label and two uniforms in [0, 1) placing the windows."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        y = int(rng.random() >= NEGATIVE_PROBABILITY)
        u_start, u_other = rng.random(2)
        return y, float(u_start), float(u_other)

    def plan(self, index: int) -> SamplePlan:
        """The clip, starts and label of sample `index` (needs the clip's mel; no frames are decoded).

        This is the index's own clip: if it fails, `__getitem__` may take the sample from another (on_error).
        """
        index = self._index(index)
        return self._plan(self.clips[index % len(self.clips)], self._draw(index))

    def _plan(self, clip: Clip, draw: tuple[int, float, float]) -> SamplePlan:
        y, u_start, u_other = draw
        last = self._last_start(clip)
        start = int(u_start * (last + 1))  # uniform over 0..last
        other = int(u_other * last)  # uniform over the `last` starts other than `start`
        other += other >= start
        return SamplePlan(clip.key, clip.path, start, start if y else other, y)

    def _last_start(self, clip: Clip) -> int:
        """The last start whose frames and mel window both lie inside the clip; InputError if < 1."""
        mel_frames = self._mel(clip).shape[-1]
        last = clip.num_frames - self.num_frames
        # The mel window of start s begins at int(80 s / fps) (spec 5.1); the audio may end a little early.
        while last >= 0 and int(SYNCNET_MEL_RATE_HZ * last / self.fps) + self.mel_length > mel_frames:
            last -= 1
        if last < 1:
            raise InputError(
                f"{clip.path}: its audio ({mel_frames} mel frames) holds fewer than two {self.num_frames}-frame "
                "windows"
            )
        return last

    def _mel(self, clip: Clip) -> np.ndarray:
        """The whole clip's SyncNet mel, (80, T) float32, through the cache."""

        def compute() -> np.ndarray:
            return syncnet_mel(decode_audio(clip.path, SYNCNET_SAMPLE_RATE_HZ))

        return self.cache.get(clip.path, compute)

    def _frames(self, clip: Clip, first: int) -> torch.Tensor:
        """Frames first ... first + num_frames - 1 as the SyncNet's visual input: (f*c, h, w) in [-1, 1]."""
        stop = first + self.num_frames
        images = list(VideoReader(clip.path, fps=self.fps).frames(first, stop))
        if len(images) < self.num_frames:
            raise InputError(
                f"{clip.path}: frames {first}..{stop - 1} requested, but the video ends after "
                f"{first + len(images)} frames (its container declares {clip.num_frames}; damaged file?)"
            )
        x = rearrange(torch.from_numpy(np.stack(images)), "f h w c -> f c h w")  # f c h w, uint8 (a view)
        if x.shape[-2:] != (self.resolution, self.resolution):
            # Bicubic with antialiasing, as the reference's torchvision Resize (bicubic, antialias=True); the
            # whole face is resized, then cut, as there. Bicubic overshoots [0, 255]: clamped.
            x = F.interpolate(x.float(), size=(self.resolution, self.resolution), mode="bicubic",
                              align_corners=False, antialias=True).clamp_(0, 2 * PIXEL_HALF_RANGE)  # f c r r
        if self.lower_half:
            x = x[:, :, self.resolution // 2 :, :]  # f c r/2 r: the mouth region of an aligned face
        # Cut before converting: the float work (the bulk of a sample's cost) covers only the kept rows.
        x = rearrange(x.contiguous(), "f c h w -> (f c) h w").float()  # (f c) h w
        return x.div_(PIXEL_HALF_RANGE).sub_(1)  # [-1, 1]

    def _load(self, clip: Clip, draw: tuple[int, float, float]) -> dict:
        plan = self._plan(clip, draw)
        mel = mel_window(self._mel(clip), plan.start, self.num_frames, self.fps)  # 80 L
        return {
            "frames": self._frames(clip, plan.frames_start),  # (f c) h w
            "audio": torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None],  # 1 80 L
            "y": torch.tensor([float(plan.y)]),  # (1,), as the reference (BCE on b x 1)
            "clip": plan.clip,
            "start": plan.start,
            "frames_start": plan.frames_start,
        }

    def __getitem__(self, index: int) -> dict:
        index = self._index(index)
        draw = self._draw(index)
        return load_or_skip(self, index, lambda clip: self._load(clip, draw), (InputError, OSError))
