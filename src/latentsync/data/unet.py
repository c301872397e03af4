"""`UNetDataset`: training samples for the LatentSync UNet from processed clips (spec 7.1).

A sample is a window of `data.num_frames` (16) consecutive aligned frames of a clip (the target), a second,
non-overlapping window of the same clip (the reference: the model must take identity and appearance from it,
not copy the target), the mouth mask, the Whisper tokens of the target frames and, for the SyncNet loss, the
mel window under them:

    gt_pixel_values      (f, 3, R, R) in [-1, 1]
    masked_pixel_values  gt x mask: the mouth region blacked out
    ref_pixel_values     (f, 3, R, R), the reference window, unmasked
    masks                (f, 1, R, R), 1 = keep, 0 = regenerate
    audio_embeds         (f, 10 * layers, width), (16, 50, 384) for Whisper tiny
    mel                  (1, 80, 52), when the SyncNet loss is on

As `SyncNetDataset`, the index decides the sample (clip `i mod N`, windows drawn from a generator seeded by
(seed, epoch, i)): epochs are reproducible, DataLoader workers never duplicate samples, a resumed run sees the
same data, and a clip that fails to decode is reported and its samples taken deterministically from the next
clip (the reference retries random clips forever).

Audio features come from a `WhisperFeatures` object: the inference encoder and its content-keyed disk cache,
so each clip's audio is encoded once, whatever the process (the trainer fills the cache before training).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset

from ..audio import (
    SYNCNET_MEL_RATE_HZ,
    SYNCNET_SAMPLE_RATE_HZ,
    frame_window,
    mel_window,
    mel_window_length,
    syncnet_mel,
)
from ..config import UNetConfig, load_unet_config
from ..errors import InputError
from ..face.mask import mouth_mask
from ..media import VideoReader, decode_audio, probe_video
from .syncnet import Clip, ClipSource, LRUMelCache, find_clips, load_or_skip

WINDOWS_PER_CLIP = 3  # the reference needs 3 x num_frames: a target and a non-overlapping reference window
PIXEL_HALF_RANGE = 127.5


class WhisperFeatures:
    """Per-clip Whisper hidden states through the inference encoder's disk cache. Picklable: each DataLoader
    worker builds its own encoder on first use (the cache makes that a file read once it is filled)."""

    def __init__(self, checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 window: str = "overlap", device: str = "cpu"):
        self.checkpoint, self.cache_dir, self.window, self.device = str(checkpoint), cache_dir, window, device
        self._encoder = None

    def __getstate__(self):
        return {**self.__dict__, "_encoder": None}

    def __call__(self, path: Path) -> torch.Tensor:
        """(N50, layers, width) float32 for the audio of `path`."""
        if self._encoder is None:
            from ..audio import WhisperAudioEncoder

            self._encoder = WhisperAudioEncoder(self.checkpoint, device=self.device, cache_dir=self.cache_dir)
        return self._encoder.hidden_states(path, window=self.window)


class UNetDataset(Dataset):
    """See the module docstring. `features` maps a clip path to its Whisper hidden states; `with_mel` adds the
    SyncNet mel window (stage 2)."""

    def __init__(self, clips: ClipSource, config: str | os.PathLike | dict | UNetConfig, features,
                 with_mel: bool = False, seed: int = 0, length: int | None = None, on_error: str = "replace",
                 mel_cache=None):
        self.config = load_unet_config(config)
        data = self.config.data
        self.num_frames, self.resolution, self.fps = data.num_frames, data.resolution, data.video_fps
        self.features, self.with_mel = features, with_mel
        self.seed, self.epoch, self.on_error = int(seed), 0, on_error
        self.mask = torch.from_numpy(np.array(mouth_mask(self.resolution, data.mask_image_path)))[None]  # 1 R R
        self.mels = mel_cache if mel_cache is not None else LRUMelCache()  # e.g. audio.SyncNetMelCache
        self.failed: dict[str, str] = {}
        found, self.source = find_clips(clips)
        self.clips, self.skipped = [], []
        for key, path in found:
            try:
                info = probe_video(path)
            except InputError as e:
                self.skipped.append((key, str(e)))
                continue
            count = info.frames_at(self.fps)
            if not info.has_audio or count < WINDOWS_PER_CLIP * self.num_frames:
                self.skipped.append((key, f"{path}: {'no audio track' if not info.has_audio else f'{count} frames'}"
                                          f", needs audio and {WINDOWS_PER_CLIP * self.num_frames} frames"))
                continue
            self.clips.append(Clip(key, Path(path), count))
        if not self.clips:
            raise InputError(f"{self.source}: no usable clips ({len(self.skipped)} skipped)")
        self.length = int(length) if length is not None else len(self.clips)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def starts(self, index: int, clip: Clip, last_target: int | None = None) -> tuple[int, int]:
        """(target start, reference start) of sample `index` in `clip`: uniform target start (at most
        `last_target`, when the audio ends before the video), then a uniform reference start among those whose
        window does not overlap the target's."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        f = self.num_frames
        last = clip.num_frames - f
        start = int(rng.integers(0, min(last, last_target if last_target is not None else last) + 1))
        allowed = [s for s in (range(0, start - f + 1), range(start + f, last + 1)) if len(s)]
        total = sum(len(s) for s in allowed)
        pick = int(rng.integers(0, total))
        for span in allowed:
            if pick < len(span):
                return start, span[pick]
            pick -= len(span)
        raise AssertionError("unreachable: a clip of 3 windows always has a non-overlapping reference")

    def _frames(self, clip: Clip, first: int) -> torch.Tensor:
        images = list(VideoReader(clip.path, fps=self.fps).frames(first, first + self.num_frames))
        if len(images) < self.num_frames:
            raise InputError(f"{clip.path}: the video ends before frame {first + self.num_frames}")
        x = rearrange(torch.from_numpy(np.stack(images)), "f h w c -> f c h w").float()  # f 3 h w
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0, 2 * PIXEL_HALF_RANGE)
        return x / PIXEL_HALF_RANGE - 1.0  # f 3 R R in [-1, 1]

    def _load(self, index: int, clip: Clip) -> dict:
        mel, last_target = None, None
        if self.with_mel:
            mel = self.mels.get(clip.path, lambda: syncnet_mel(decode_audio(clip.path, SYNCNET_SAMPLE_RATE_HZ)))
            last_target = clip.num_frames - self.num_frames
            while last_target > 0 and int(SYNCNET_MEL_RATE_HZ * last_target / self.fps) + \
                    mel_window_length(self.num_frames, self.fps) > mel.shape[-1]:
                last_target -= 1  # the sound ends a little before the picture (AAC padding, cuts)
        start, ref_start = self.starts(index, clip, last_target)
        gt = self._frames(clip, start)
        hidden = self.features(clip.path)
        sample = {
            "gt_pixel_values": gt,
            "masked_pixel_values": gt * self.mask,
            "ref_pixel_values": self._frames(clip, ref_start),
            "masks": self.mask.expand(self.num_frames, 1, -1, -1).clone(),  # f 1 R R
            "audio_embeds": frame_window(hidden, start, self.num_frames, fps=self.fps).contiguous(),  # f t d
            "clip": clip.key,
            "start": start,
        }
        if mel is not None:
            sample["mel"] = torch.from_numpy(np.ascontiguousarray(
                mel_window(mel, start, self.num_frames, self.fps), dtype=np.float32))[None]  # 1 80 L
        return sample

    def __getitem__(self, index: int) -> dict:
        return load_or_skip(self, index, lambda clip: self._load(index, clip), (InputError, OSError, ValueError))
