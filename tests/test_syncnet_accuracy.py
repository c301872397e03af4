"""SyncNetDataset (spec 7.1) and the SyncNet accuracy evaluation (spec 5.1) on generated processed clips.

The clips encode time: the bottom half of frame k is grey level BASE + STEP * k (the top half a fixed colour),
and during frame k the audio is a tone whose frequency is symbol CODE[k] of a seeded sequence. A synthetic
"SyncNet" reads the start frame back from each side (grey level of the first frame; best match of the tone
symbols under the mel window against CODE), so its verdicts are known exactly.
"""

from __future__ import annotations

import logging
import math
import shutil

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.audio import (
    SYNCNET_FMAX_HZ,
    SYNCNET_FMIN_HZ,
    SYNCNET_MEL_RATE_HZ,
    SYNCNET_N_MELS,
    mel_window,
    syncnet_mel,
)
from latentsync.config import load_syncnet_config
from latentsync.data.syncnet import LRUMelCache, SyncNetDataset
from latentsync.errors import InputError
from latentsync.evaluation.syncnet_accuracy import AccuracyResult, syncnet_accuracy
from latentsync.media import VideoWriter, decode_audio, write_wav
from latentsync.models.syncnet import load_syncnet, syncnet_input_shapes

FPS = 25
SR = 16_000
SIZE = 256
NUM_FRAMES = 16
BASE, STEP = 16, 3  # grey level of frame k's bottom half: BASE + STEP * k (<= 255 for k < 80)
TOP_COLOUR = (200, 30, 30)
FREQS_HZ = (300, 500, 800, 1200, 1800, 2700, 4000, 6000)  # tone symbols, far apart on the mel scale
CODE = np.random.default_rng(1234).integers(0, len(FREQS_HZ), size=80)  # symbol of each frame
TINY = "tiny/syncnet"
PIXEL = "syncnet_16_pixel_attn"
# Clips of the main dataset: identity -> (frames, amplitude). Two files named clip.mp4 in different folders.
CLIPS = {"spk1/clip.mp4": (75, 0.5), "spk2/clip.mp4": (60, 0.25)}
SHORT = ("short/too_short.mp4", 20)  # < 2 * 16 frames: skipped


def _make_clip(path, num_frames: int, amplitude: float = 0.5) -> None:
    """A processed-style clip: 256x256, 25 fps, time encoded in the bottom half's grey and in the tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    freqs = np.repeat(np.array(FREQS_HZ, dtype=float)[CODE[:num_frames]], SR // FPS)  # per sample
    phase = 2 * np.pi * np.cumsum(freqs) / SR  # continuous phase: no clicks at frame boundaries
    wav = path.with_suffix(".wav")
    write_wav(wav, amplitude * np.sin(phase), SR)
    with VideoWriter(path, SIZE, SIZE, fps=FPS, audio=wav) as writer:
        for k in range(num_frames):
            image = np.empty((SIZE, SIZE, 3), np.uint8)
            image[: SIZE // 2] = TOP_COLOUR
            image[SIZE // 2 :] = BASE + STEP * k
            writer.write(image)
    wav.unlink()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("processed")
    for key, (frames, amplitude) in CLIPS.items():
        _make_clip(root / key, frames, amplitude)
    _make_clip(root / SHORT[0], SHORT[1])
    return root


@pytest.fixture(scope="module")
def dataset(root):
    return SyncNetDataset(root, TINY, seed=3, length=200)


def _grey(frames: torch.Tensor, j: int) -> float:
    """Mean grey level (0-255) of window frame j of a stacked (f c) h w tensor."""
    return float((frames[3 * j : 3 * j + 3].mean() + 1) * 127.5)


def _frame_index(frames: torch.Tensor, j: int = 0) -> int:
    return round((_grey(frames, j) - BASE) / STEP)


def _clip_mel(path) -> np.ndarray:
    return syncnet_mel(decode_audio(path, SR))


# -- dataset: discovery ------------------------------------------------------------------------------------


def test_folder_clip_identity_and_short_clip_skipped(dataset, root):
    assert [c.key for c in dataset.clips] == sorted(CLIPS)  # same basename, two clips
    assert [c.num_frames for c in dataset.clips] == [CLIPS[k][0] for k in sorted(CLIPS)]
    assert [key for key, _ in dataset.skipped] == [SHORT[0]]
    reason = dataset.skipped[0][1]
    assert "20 frames" in reason and "32" in reason
    # Each same-named clip gets its own mel (the clips' audio differs in level).
    for key in CLIPS:
        sample = next(dataset[i] for i in range(len(dataset)) if dataset.plan(i).clip == key)
        assert sample["clip"] == key
        expected = mel_window(_clip_mel(root / key), sample["start"])
        np.testing.assert_array_equal(sample["audio"][0].numpy(), expected)
    assert len(dataset.cache) == len(CLIPS)


def test_fileslist(root, tmp_path):
    listing = tmp_path / "list.txt"
    absolute = root / "spk2" / "clip.mp4"
    relative = tmp_path / "local" / "a.mp4"
    relative.parent.mkdir()
    shutil.copy(root / "spk1" / "clip.mp4", relative)
    listing.write_text(f"# train clips\n{absolute}\n\nlocal/a.mp4\nmissing.mp4\n")
    ds = SyncNetDataset(listing, TINY)
    assert [c.key for c in ds.clips] == [str(absolute), "local/a.mp4"]
    assert [c.path for c in ds.clips] == [absolute, relative]
    assert [key for key, _ in ds.skipped] == ["missing.mp4"] and "not found" in ds.skipped[0][1]
    assert ds[1]["frames"].shape == (48, 128, 256)
    # A plain list of paths works too.
    assert [c.key for c in SyncNetDataset([absolute], TINY).clips] == [str(absolute)]


def test_empty_or_unusable_data_is_an_input_error(root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty.*no usable clips"):
        SyncNetDataset(empty, TINY)
    with pytest.raises(InputError, match="no usable clips.*1 skipped"):
        SyncNetDataset([root / SHORT[0]], TINY)
    with pytest.raises(InputError, match="nowhere"):
        SyncNetDataset(tmp_path / "nowhere", TINY)


def test_latent_space_config_not_implemented(root):
    cfg = load_syncnet_config("syncnet_16_latent")
    with pytest.raises(NotImplementedError, match="data.latent_space"):
        SyncNetDataset(root, cfg)


# -- dataset: indexing -------------------------------------------------------------------------------------


def _key(sample: dict) -> tuple:
    return sample["clip"], sample["start"], sample["frames_start"], float(sample["y"])


def test_index_is_deterministic(dataset, root):
    again = SyncNetDataset(root, TINY, seed=3, length=200)
    for i in (0, 1, 7):
        a, b = dataset[i], again[i]
        assert _key(a) == _key(b)
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["audio"], b["audio"])
    # Index i takes clip i mod N; different indices give different samples.
    plans = [dataset.plan(i) for i in range(len(dataset))]
    assert [p.clip for p in plans[:4]] == sorted(CLIPS) * 2
    n = len(CLIPS)
    same_clip_pairs = [(p, q) for p, q in zip(plans, plans[n:])]  # indices i and i + N share a clip
    differ = sum((p.start, p.frames_start, p.y) != (q.start, q.frames_start, q.y) for p, q in same_clip_pairs)
    assert differ >= 0.95 * len(same_clip_pairs)
    assert not torch.equal(dataset[0]["frames"], dataset[2]["frames"])
    # Another seed or epoch draws other windows for the same indices.
    other = SyncNetDataset(root, TINY, seed=4, length=200)
    assert [other.plan(i) for i in range(20)] != plans[:20]
    epoch = SyncNetDataset(root, TINY, seed=3, length=200)
    epoch.set_epoch(1)
    assert [epoch.plan(i) for i in range(20)] != plans[:20]
    with pytest.raises(IndexError):
        dataset[200]


def test_labels_balanced_and_starts_valid(dataset):
    plans = [dataset.plan(i) for i in range(len(dataset))]
    positives = sum(p.y for p in plans)
    assert 0.4 * len(plans) <= positives <= 0.6 * len(plans)
    frames = {c.key: c.num_frames for c in dataset.clips}
    for p in plans:
        assert 0 <= p.start <= frames[p.clip] - NUM_FRAMES
        assert 0 <= p.frames_start <= frames[p.clip] - NUM_FRAMES
        assert (p.frames_start == p.start) == (p.y == 1)  # negatives never reuse the positive's start
    assert len({p.start for p in plans}) > 30  # starts spread over the clips


# -- dataset: sample content -------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [PIXEL, TINY])
def test_sample_shapes(root, config):
    ds = SyncNetDataset(root, config, length=4)
    visual, audio = syncnet_input_shapes(config)
    assert (visual, audio) == ((48, 128, 256), (1, 80, 52))
    sample = ds[0]
    assert sample["frames"].shape == visual and sample["frames"].dtype == torch.float32
    assert sample["audio"].shape == audio and sample["audio"].dtype == torch.float32
    assert sample["y"].shape == (1,)
    assert -1 <= float(sample["frames"].min()) and float(sample["frames"].max()) <= 1


def test_positive_frames_and_mel_window(dataset, root):
    i = next(i for i in range(len(dataset)) if dataset.plan(i).y == 1 and dataset.plan(i).start > 0)
    sample = dataset[i]
    start = sample["start"]
    assert sample["frames_start"] == start and float(sample["y"]) == 1
    mel = _clip_mel(root / sample["clip"])
    first = int(SYNCNET_MEL_RATE_HZ * start / FPS)
    np.testing.assert_array_equal(sample["audio"][0].numpy(), mel[:, first : first + 52])
    np.testing.assert_array_equal(sample["audio"][0].numpy(), mel_window(mel, start))
    # (f c) stacking: window frame j is video frame start + j.
    assert [_frame_index(sample["frames"], j) for j in range(NUM_FRAMES)] == list(range(start, start + NUM_FRAMES))


def test_negative_frames_from_another_start(dataset, root):
    i = next(i for i in range(len(dataset)) if dataset.plan(i).y == 0)
    sample = dataset[i]
    start, other = sample["start"], sample["frames_start"]
    assert other != start and float(sample["y"]) == 0
    assert _frame_index(sample["frames"]) == other
    np.testing.assert_array_equal(sample["audio"][0].numpy(), mel_window(_clip_mel(root / sample["clip"]), start))


def test_lower_half_is_the_bottom_of_the_frame(root):
    full = SyncNetDataset(root, load_syncnet_config(TINY, ["data.lower_half=false"]), length=4)
    half = SyncNetDataset(root, TINY, length=4)
    a, b = full[0], half[0]
    assert a["frames"].shape == (48, 256, 256) and b["frames"].shape == (48, 128, 256)
    assert torch.equal(b["frames"], a["frames"][:, 128:, :])
    top = (a["frames"][0:3, 16:112].mean(dim=(1, 2)) + 1) * 127.5  # rgb of the top half, away from the edge
    np.testing.assert_allclose(top.numpy(), TOP_COLOUR, atol=4)
    bottom = (b["frames"][0:3].mean(dim=(1, 2)) + 1) * 127.5
    assert float(bottom.max() - bottom.min()) < 2  # grey, not the top colour


def test_frames_resized_to_config_resolution(root):
    ds = SyncNetDataset(root, load_syncnet_config(TINY, ["data.resolution=128"]), length=4)
    sample = ds[0]
    assert sample["frames"].shape == (48, 64, 128)
    assert _frame_index(sample["frames"]) == sample["frames_start"]


# -- dataset: bad clips --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_corrupt(root, tmp_path_factory):
    """A folder with a good clip and a truncated one whose header still passes the probe."""
    folder = tmp_path_factory.mktemp("corrupt")
    shutil.copy(root / "spk1" / "clip.mp4", folder / "a_good.mp4")
    bad = folder / "b_truncated.mp4"
    shutil.copy(root / "spk1" / "clip.mp4", bad)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size * 2 // 5)
    return folder


def test_corrupt_clip_replaced_deterministically(with_corrupt, caplog):
    ds = SyncNetDataset(with_corrupt, TINY, length=4)
    assert [c.key for c in ds.clips] == ["a_good.mp4", "b_truncated.mp4"]  # passes the cheap probe
    with caplog.at_level(logging.WARNING):
        sample = ds[1]  # index 1 -> the truncated clip
    assert sample["clip"] == "a_good.mp4"
    assert "b_truncated.mp4" in ds.failed and "b_truncated.mp4" in caplog.text
    # The replacement uses index 1's own draw, so it does not depend on what was loaded before.
    fresh = SyncNetDataset(with_corrupt, TINY, length=4)
    fresh_sample = fresh[1]
    assert _key(fresh_sample) == _key(sample) and torch.equal(fresh_sample["frames"], sample["frames"])
    assert _key(ds[1]) == _key(sample)  # known-bad clips are not decoded again


def test_corrupt_clip_raises_when_asked(with_corrupt):
    ds = SyncNetDataset(with_corrupt, TINY, length=4, on_error="raise")
    ds[0]
    with pytest.raises(InputError, match="b_truncated.mp4"):
        ds[1]


def test_mel_cache_is_bounded():
    cache = LRUMelCache(max_clips=2)
    calls = []
    for name in ["a", "b", "a", "c", "b"]:
        cache.get(name, lambda name=name: calls.append(name) or np.zeros(1))
    assert calls == ["a", "b", "c", "b"] and len(cache) == 2  # "a" hit once; "b" evicted by "c"


# -- accuracy ------------------------------------------------------------------------------------------------

MEL_CENTRES_HZ = librosa.mel_frequencies(SYNCNET_N_MELS + 2, fmin=SYNCNET_FMIN_HZ, fmax=SYNCNET_FMAX_HZ)[1:-1]
SYMBOL_BINS = [int(np.argmin(np.abs(MEL_CENTRES_HZ - f))) for f in FREQS_HZ]
EMBED_DIM = 128  # > any start frame of the test clips


class TimeCodeSyncNet(nn.Module):
    """A stand-in SyncNet with StableSyncNet's call signature that decodes the start frame from each input.

    Vision: the grey level of the first frame. Audio: the tone symbol at the centre of each of the 16 frames
    under the mel window (mel column 3.2 j + 1.6 ... 2.6 from the window start), matched against every
    16-symbol stretch of CODE; the best match is the start (robust to a few misread symbols).

    `anti=False`: one-hot embeddings, cos = 1 in sync and 0 otherwise. `anti=True`: vision n(1 - e_s), audio
    n(1 + lam e_t) with (1 + lam)^2 = 3.5 (K - 1): cos = 1/sqrt(4.5) < 0.5 in sync and about 0.55 otherwise.
    """

    def __init__(self, anti: bool = False):
        super().__init__()
        self.anti = anti
        self.register_buffer("windows", torch.as_tensor(CODE).unfold(0, NUM_FRAMES, 1))  # S 16
        self.register_buffer("symbol_bins", torch.tensor(SYMBOL_BINS))  # 8
        centres = [round(SYNCNET_MEL_RATE_HZ / FPS * j + 2.1) for j in range(NUM_FRAMES)]
        self.register_buffer("columns", torch.tensor(centres))  # 16

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grey = (frames[:, 0:3].float().mean(dim=(1, 2, 3)) + 1) * 127.5  # b
        s_vision = ((grey - BASE) / STEP).round().long()  # b
        peaks = mel[:, 0][:, :, self.columns].argmax(dim=1)  # b 16: loudest mel bin per frame
        symbols = (peaks[..., None] - self.symbol_bins).abs().argmin(dim=-1)  # b 16
        s_audio = (symbols[:, None, :] == self.windows[None]).sum(-1).argmax(-1)  # b
        e_v = F.one_hot(s_vision, EMBED_DIM).float()
        e_a = F.one_hot(s_audio, EMBED_DIM).float()
        if self.anti:
            lam = math.sqrt(3.5 * (EMBED_DIM - 1)) - 1
            e_v, e_a = 1 - e_v, 1 + lam * e_a
        return F.normalize(e_v, dim=1), F.normalize(e_a, dim=1)


def _check_counts(result: AccuracyResult, num_samples: int) -> None:
    assert result.num_samples == num_samples == result.positives + result.negatives
    assert result.positives > 0 and result.negatives > 0
    assert result.clips == len(CLIPS) and [k for k, _ in result.skipped] == [SHORT[0]]


def test_accuracy_of_a_perfect_net(root):
    result = syncnet_accuracy(TINY, None, root, num_samples=64, batch_size=16, net=TimeCodeSyncNet(),
                              num_workers=0, progress=False)
    _check_counts(result, 64)
    assert result.accuracy == 1.0
    assert result.mean_cos_positive == pytest.approx(1.0) and result.mean_cos_negative == pytest.approx(0.0)


def test_accuracy_of_an_anti_correlated_net(root):
    result = syncnet_accuracy(TINY, None, root, num_samples=64, batch_size=16, net=TimeCodeSyncNet(anti=True),
                              num_workers=0, progress=False)
    _check_counts(result, 64)
    assert result.accuracy == 0.0
    assert result.mean_cos_positive < 0.5 < result.mean_cos_negative


def test_accuracy_with_a_random_tiny_syncnet(root):
    torch.manual_seed(0)
    net = load_syncnet(TINY)
    result = syncnet_accuracy(TINY, None, [root / k for k in CLIPS], num_samples=4, batch_size=2, net=net,
                              num_workers=0, progress=False)
    assert result.num_samples == 4 == result.positives + result.negatives
    assert 0.0 <= result.accuracy <= 1.0
    assert result.accuracy * 4 == pytest.approx(round(result.accuracy * 4))  # a whole number of correct pairs
    for count, mean in ((result.positives, result.mean_cos_positive), (result.negatives, result.mean_cos_negative)):
        assert 0.0 <= mean <= 1.0 if count else math.isnan(mean)  # ReLU embeddings: cosine in [0, 1]
    assert not net.training  # left as it was (load_syncnet returns it in eval mode)


def test_accuracy_without_clips_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}.*no usable clips") as info:
        syncnet_accuracy(TINY, None, tmp_path, num_samples=4, net=TimeCodeSyncNet(), progress=False)
    assert "\n" not in str(info.value)
