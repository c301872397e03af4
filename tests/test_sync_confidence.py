"""LSE-C / LSE-D (joonson SyncNet): the network's published layout and loading, the reference's windowing,
MFCC and arithmetic, offset recovery through the whole crop path, and detection/tracking/cropping."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from latentsync.demo import load_portrait, make_talking_clip, synth_speech
from latentsync.errors import CheckpointError, ConfigError, InputError
from latentsync.evaluation.sync_confidence import evaluate_videos, format_results
from latentsync.face import Face
from latentsync.face.mediapipe import MediapipeBackend
from latentsync.face.sync_tracks import crop_face, crop_geometry, track_faces
from latentsync.media import VideoReader, VideoWriter, decode_audio, write_wav
from latentsync.models.syncnet_v2 import SyncNetV2, load_syncnet_v2
from latentsync.sync_score import (
    SAMPLES_PER_FRAME,
    SyncResult,
    TrackResult,
    crop_sync_confidence,
    distance_matrix,
    extract_features,
    mfcc_frames,
    num_windows,
    offset_and_confidence,
    pcm16,
    score_crop_video,
    score_features,
    sync_confidence,
)

KEYS_TSV = Path(__file__).parent / "data" / "syncnet-v2-keys.tsv"
FPS = 25
SR = 16_000


# ---------------------------------------------------------------------------------------------------------
# Fixtures


def _published_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS_TSV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            out[name] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return out


def _perturbed_net(seed: int = 0) -> SyncNetV2:
    """Random weights with every BatchNorm statistic and affine moved off its init, in eval mode."""
    torch.manual_seed(seed)
    net = SyncNetV2()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> SyncNetV2:
    return _perturbed_net()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, net) -> Path:
    """The random weights in the published format: a raw state dict (no "state_dict" wrapper)."""
    path = tmp_path_factory.mktemp("ckpt") / "syncnet_v2.model"
    torch.save(net.state_dict(), path)
    return path


def _write_video(path: Path, frames, audio: np.ndarray | None = None) -> Path:
    frames = list(frames)
    h, w = frames[0].shape[:2]
    wav = None
    if audio is not None:
        wav = write_wav(path.with_suffix(".wav"), audio, SR)
    with VideoWriter(path, w, h, fps=FPS, audio=wav) as writer:
        for f in frames:
            writer.write(f)
    return path


@pytest.fixture(scope="module")
def crop_clip(tmp_path_factory) -> Path:
    """A 224x224 face-crop video of the portrait, 12 frames, with speech."""
    face = cv2.resize(load_portrait()[60:460, 60:460], (224, 224))
    frames = [np.roll(face, 2 * i, axis=0) for i in range(12)]
    return _write_video(tmp_path_factory.mktemp("crop") / "crop.mp4", frames, synth_speech(12 / FPS))


@pytest.fixture(scope="module")
def crop_scores(crop_clip, checkpoint) -> tuple[float, float, float]:
    return crop_sync_confidence(crop_clip, checkpoint)


@pytest.fixture(scope="module")
def mediapipe():
    with MediapipeBackend() as backend:
        yield backend


BLANK_FRAMES = 8
FACE_FRAMES = 56


@pytest.fixture(scope="module")
def portrait_clip(tmp_path_factory) -> Path:
    """8 blank frames, then 56 frames of the portrait moving gently; 1080p-free (512x600), with speech."""
    folder = tmp_path_factory.mktemp("portrait")
    raw = make_talking_clip(folder / "raw.mp4", seconds=FACE_FRAMES / FPS)
    faces = list(VideoReader(raw).frames())
    assert len(faces) == FACE_FRAMES
    blank = np.full_like(faces[0], 128)
    frames = [blank] * BLANK_FRAMES + faces
    return _write_video(folder / "clip.mp4", frames, synth_speech(len(frames) / FPS))


# ---------------------------------------------------------------------------------------------------------
# The network and its weight file


def test_names_and_shapes_equal_the_published_file():
    ours = {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}
    assert ours == _published_keys()
    net = SyncNetV2().eval()
    with torch.no_grad():
        assert net.forward_aud(torch.zeros(3, 1, 13, 20)).shape == (3, 1024)
        assert net.forward_lip(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)


@pytest.mark.parametrize("half", [False, True])
def test_raw_state_dict_loads_strictly(tmp_path, net, half):
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    loaded = load_syncnet_v2(path)
    assert not loaded.training  # BatchNorm must use the running statistics
    assert next(loaded.parameters()).dtype == torch.float32
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k
    torch.manual_seed(3)
    x = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        expected = net.forward_aud(x)
        got = loaded.forward_aud(x)
    if half:
        assert torch.allclose(got, expected, rtol=1e-2, atol=1e-2)
    else:
        assert torch.equal(got, expected)


def test_missing_key_names_the_file(tmp_path, net):
    state = net.state_dict()
    del state["netcnnlip.18.weight"]
    path = tmp_path / "broken.model"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        load_syncnet_v2(path)
    assert "netcnnlip.18.weight" in str(err.value)


def test_seeded_regression(net):
    # Values produced by this implementation (torch 2.x CPU, float32); they pin the layer order, strides,
    # paddings and BatchNorm-in-eval behaviour against accidental change.
    g = torch.Generator().manual_seed(1)
    mfcc = torch.randn(2, 1, 13, 20, generator=g) * 10
    lips = torch.rand(2, 3, 5, 224, 224, generator=g) * 255
    with torch.no_grad():
        a, v = net.forward_aud(mfcc), net.forward_lip(lips)
    expected_a = torch.tensor([[-0.096366, 0.109870, 0.214600, 0.134015],
                               [-0.053962, 0.126344, 0.159688, 0.116268]])
    expected_v = torch.tensor([[-0.389044, 0.668371, 0.457575, -0.290459],
                               [-0.339654, 0.772934, 0.524918, -0.238511]])
    assert torch.allclose(a[:, :4], expected_a, atol=2e-5)
    assert torch.allclose(v[:, :4], expected_v, atol=2e-4)
    assert torch.allclose(a.norm(dim=1), torch.tensor([3.050640, 2.975179]), atol=1e-4)
    assert torch.allclose(v.norm(dim=1), torch.tensor([23.586037, 23.115868]), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# The arithmetic, by hand


EPS = 1e-5  # pairwise_distance adds 1e-6 to each difference: values are off by a few 1e-6


def test_distances_offset_and_confidence_by_hand():
    # 1-D features, vshift 2. Audio feature j holds j + 1, lip feature i holds i: lip i matches audio i - 1.
    lip = torch.tensor([[0.0], [1.0], [2.0]])
    audio = torch.tensor([[1.0], [2.0], [3.0]])
    # Audio zero-padded by 2: [0, 0, 1, 2, 3, 0, 0]; row i compares lip i with padded[i : i + 5].
    expected = torch.tensor([
        [0.0, 0.0, 1.0, 2.0, 3.0],  # |0 - [0, 0, 1, 2, 3]|
        [1.0, 0.0, 1.0, 2.0, 1.0],  # |1 - [0, 1, 2, 3, 0]|
        [1.0, 0.0, 1.0, 2.0, 2.0],  # |2 - [1, 2, 3, 0, 0]|
    ])
    dists = distance_matrix(lip, audio, vshift=2)
    assert torch.allclose(dists, expected, atol=2 * EPS)
    mean = dists.mean(0)
    assert torch.allclose(mean, torch.tensor([2 / 3, 0.0, 1.0, 2.0, 2.0]), atol=2 * EPS)
    offset, lse_d, lse_c = offset_and_confidence(mean, vshift=2)
    # argmin 1 -> offset 2 - 1 = 1 (the sound comes one frame early); min 0; median of
    # [0, 2/3, 1, 2, 2] is 1 -> confidence 1 - 0.
    assert offset == 1
    assert lse_d == pytest.approx(0.0, abs=2 * EPS)
    assert lse_c == pytest.approx(1.0, abs=2 * EPS)
    score = score_features(lip, audio, vshift=2)
    assert (score.offset, score.windows) == (1, 3)
    assert np.allclose(score.mean_dists, [2 / 3, 0, 1, 2, 2], atol=2 * EPS)


def test_euclidean_distances_by_hand():
    # 2-D features, vshift 1: a 3-4-5 triangle. Padded audio: [0,0], [3,4], [0,0], [0,0].
    lip = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    audio = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    dists = distance_matrix(lip, audio, vshift=1)
    assert torch.allclose(dists, torch.tensor([[0.0, 5.0, 0.0], [0.0, 5.0, 5.0]]), atol=1e-5)
    offset, lse_d, lse_c = offset_and_confidence(dists.mean(0), vshift=1)  # mean [0, 5, 2.5]
    assert (offset, round(lse_d, 4), round(lse_c, 4)) == (1, 0.0, 2.5)


# ---------------------------------------------------------------------------------------------------------
# Audio and windows


def test_mfcc_is_the_reference_call_on_int16_samples(tmp_path):
    audio = synth_speech(0.5, seed=2)
    wav = write_wav(tmp_path / "a.wav", audio, SR)
    rate, int16 = wavfile.read(wav)  # what the reference reads
    import python_speech_features

    reference = python_speech_features.mfcc(int16, rate).T.astype(np.float32)
    pcm = pcm16(decode_audio(wav, SR))
    assert np.array_equal(pcm, int16)
    ours = mfcc_frames(pcm)
    assert ours.shape == (13, 4 * 25 // 2 - 1)  # 0.5 s: 4 * 12.5 frames at 100 Hz, minus one (25 ms window)
    assert np.array_equal(ours, reference)
    # The int16 scale matters: the first coefficient is the log frame energy.
    scaled_down = python_speech_features.mfcc(int16 / 32768.0, rate).T
    assert not np.allclose(scaled_down[0], ours[0])


@pytest.mark.parametrize("n_frames, n_audio_frames, batch_size", [(30, 20, 20), (12, 30, 4), (40, 40, 7)])
def test_windows_follow_the_reference(n_frames, n_audio_frames, batch_size):
    frames = [np.full((224, 224, 3), i, np.uint8) for i in range(n_frames)]
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(n_audio_frames * SAMPLES_PER_FRAME + 100) * 3000).astype(np.int16)
    lip, audio = extract_features(
        iter(frames), pcm,
        lip_fn=lambda x: x[:, 0, :, 0, 0],  # b 3 5 h w -> the five frame values
        audio_fn=lambda x: x.flatten(1),  # b 1 13 20 -> b 260
        batch_size=batch_size,
    )
    n = min(n_frames, n_audio_frames) - 5  # the reference's lastframe, an exclusive bound
    assert n == num_windows(n_frames, len(pcm))
    assert lip.shape == (n, 5)
    assert torch.equal(lip, torch.arange(n)[:, None] + torch.arange(5)[None].float())
    mfcc = mfcc_frames(pcm)
    expected = np.stack([mfcc[:, 4 * i: 4 * i + 20].reshape(-1) for i in range(n)])
    assert np.array_equal(audio.numpy(), expected)


def test_frames_are_bgr_raw_values_resized_to_224(tmp_path):
    rgb = np.zeros((160, 192, 3), np.uint8)
    rgb[:] = (200, 40, 90)
    video = _write_video(tmp_path / "red.mp4", [rgb] * 8, synth_speech(8 / FPS))
    seen = []

    def lip_fn(x):
        assert x.shape[1:] == (3, 5, 224, 224) and x.dtype == torch.float32
        seen.append(x.mean(dim=(2, 3, 4)))  # b 3
        return torch.zeros(len(x), 1)

    score_crop_video(video, lip_fn, lambda x: torch.zeros(len(x), 1))
    means = torch.cat(seen).mean(0)
    assert torch.allclose(means, torch.tensor([90.0, 40.0, 200.0]), atol=6)  # B, G, R on the 0-255 scale


# ---------------------------------------------------------------------------------------------------------
# Offset recovery through the whole crop path with synthetic features

CODE_FRAMES = 64
LOW_HZ, HIGH_HZ = 300.0, 3000.0


def _coded_clip(path: Path, bits: np.ndarray, shift: int) -> Path:
    """Frame i is bright when bits[i] is set; audio segment j (640 samples) is a high tone when
    bits[j + shift] is set, else a low one: the sound runs `shift` frames ahead of the picture."""
    margin = (len(bits) - CODE_FRAMES) // 2
    video_bits = bits[margin: margin + CODE_FRAMES]
    audio_bits = bits[margin + shift: margin + shift + CODE_FRAMES]
    frames = [np.full((160, 160, 3), 215 if b else 40, np.uint8) for b in video_bits]
    freq = np.repeat(np.where(audio_bits == 1, HIGH_HZ, LOW_HZ), SAMPLES_PER_FRAME)
    tone = 0.5 * np.sin(2 * np.pi * np.cumsum(freq) / SR)  # continuous phase: no clicks at segment edges
    return _write_video(path, frames, tone)


def _lip_bits(x: torch.Tensor) -> torch.Tensor:
    assert x.shape[1:] == (3, 5, 224, 224)
    return (x.mean(dim=(1, 3, 4)) > 127).float()  # b 5: one bit per frame


def _audio_bits(x: torch.Tensor) -> torch.Tensor:
    assert x.shape[1:] == (1, 13, 20)
    # The first MFCC frame of each 40 ms segment lies inside it; a high tone makes the first cepstral
    # coefficient (spectral tilt) negative.
    return (x[:, 0, 1, 0::4] < 0).float()  # b 5


@pytest.mark.parametrize("shift", [3, -4, 0])
def test_offset_recovered_through_the_crop_path(tmp_path, shift):
    bits = np.random.default_rng(7).integers(0, 2, CODE_FRAMES + 20)
    video = _coded_clip(tmp_path / "coded.mp4", bits, shift)
    score = score_crop_video(video, _lip_bits, _audio_bits, vshift=15, batch_size=20)
    assert score.offset == shift
    assert score.windows == CODE_FRAMES - 5
    assert score.lse_c > 1.0


# ---------------------------------------------------------------------------------------------------------
# crop_sync_confidence with the network


def test_crop_sync_confidence_random_weights(crop_clip, crop_scores, net):
    offset, lse_d, lse_c = crop_scores
    assert all(isinstance(v, float) and math.isfinite(v) for v in (offset, lse_d, lse_c))
    assert offset == int(offset) and -15 <= offset <= 15
    assert lse_d > 0 and lse_c >= 0
    # A loaded network gives the same numbers.
    assert crop_sync_confidence(crop_clip, net) == (offset, lse_d, lse_c)


def test_crop_sync_confidence_input_errors(tmp_path, checkpoint, net):
    silent = _write_video(tmp_path / "silent.mp4", [np.zeros((224, 224, 3), np.uint8)] * 8)
    with pytest.raises(InputError, match=re.escape(str(silent))):
        crop_sync_confidence(silent, checkpoint)
    short = _write_video(tmp_path / "short.mp4", [np.zeros((224, 224, 3), np.uint8)] * 5, synth_speech(0.2))
    with pytest.raises(InputError, match=re.escape(str(short)) + ".*too short"):
        crop_sync_confidence(short, net)


# ---------------------------------------------------------------------------------------------------------
# Tracking and cropping


def _box(cx, cy, size):
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def test_tracks_bridge_gaps_and_interpolate():
    dets = [[_box(100 + i, 100, 120)] for i in range(60)]
    for i in range(20, 30):  # a 10-frame gap (<= 25): bridged, boxes interpolated
        dets[i] = []
    (track,) = track_faces(dets, min_track=40, min_face_size=100)
    assert (track.start, track.stop) == (0, 60)
    assert np.allclose(track.boxes, np.stack([_box(100 + i, 100, 120) for i in range(60)]))


@pytest.mark.parametrize("resume, expected", [(54, [(0, 40), (0, 120)]), (55, [(0, 30), (0, 40), (55, 120)])])
def test_tracks_split_at_long_gaps_and_separate_faces(resume, expected):
    dets = [[] for _ in range(120)]
    # Last seen at frame 29: seen again at 54 (25 frames later) continues the track, at 55 starts another.
    for i in list(range(0, 30)) + list(range(resume, 120)):
        dets[i].append(_box(100, 100, 120))
    for i in range(0, 40):  # another face elsewhere (IoU 0)
        dets[i].append(_box(400, 100, 120))
    tracks = track_faces(dets, min_track=20, min_face_size=100)
    assert sorted((t.start, t.stop) for t in tracks) == expected


def test_track_breaks_when_iou_drops():
    dets = [[_box(100, 100, 100)] for _ in range(30)] + [[_box(160, 100, 100)] for _ in range(30)]
    # Boxes 60 px apart overlap by 40/160 = 0.25 <= 0.5: two tracks.
    assert sorted((t.start, t.stop) for t in track_faces(dets, min_track=20, min_face_size=50)) == [(0, 30), (30, 60)]


def test_track_filters_length_and_size_both_sides():
    dets = [[_box(200, 200, 100)] for _ in range(21)]
    assert len(track_faces(dets, min_track=20, min_face_size=50)) == 1  # 21 detections > 20
    assert track_faces(dets, min_track=21, min_face_size=50) == []  # 21 is not > 21
    assert len(track_faces(dets, min_track=5, min_face_size=99.5)) == 1  # size 100 > 99.5
    assert track_faces(dets, min_track=5, min_face_size=100) == []  # 100 is not > 100
    # The size is the larger of mean width and mean height: a tall narrow box passes on its height.
    tall = [[np.array([0, 0, 40, 150])] for _ in range(21)]
    assert len(track_faces(tall, min_track=5, min_face_size=149)) == 1


def _reference_crop(image, cx, cy, s, cs=0.4):
    """The reference's crop written out literally: pad the whole frame with 110, slice, resize."""
    pad = int(s * (1 + 2 * cs))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = cy + pad, cx + pad
    face = padded[int(my - s): int(my + s * (1 + 2 * cs)), int(mx - s * (1 + cs)): int(mx + s * (1 + cs))]
    return cv2.resize(face, (224, 224))


@pytest.mark.parametrize("cx, cy, s", [(256.3, 280.7, 101.4), (20.0, 30.5, 90.0), (500.2, 590.9, 120.6),
                                       (256.0, 300.0, 400.0)])
def test_crop_matches_the_padded_reference(cx, cy, s):
    image = load_portrait()
    assert np.array_equal(crop_face(image, cx, cy, s), _reference_crop(image, cx, cy, s))


def test_crop_geometry_is_median_filtered():
    boxes = np.stack([_box(200, 150, 100) for _ in range(30)])
    boxes[10] = _box(260, 150, 140)  # one outlier frame
    cx, cy, half = crop_geometry(boxes)
    assert np.allclose(cx, 200) and np.allclose(cy, 150) and np.allclose(half, 50)


# ---------------------------------------------------------------------------------------------------------
# sync_confidence on whole videos


def test_sync_confidence_finds_the_portrait_track(portrait_clip, net, mediapipe):
    result = sync_confidence(portrait_clip, net, backend=mediapipe)
    assert result.frames == BLANK_FRAMES + FACE_FRAMES
    assert len(result.tracks) == 1
    track = result.tracks[0]
    assert (track.start, track.stop) == (BLANK_FRAMES, BLANK_FRAMES + FACE_FRAMES)
    assert result.offset == track.offset and -15 <= result.offset <= 15
    assert math.isfinite(result.lse_d) and math.isfinite(result.lse_c)
    assert (result.lse_d, result.lse_c) == (track.lse_d, track.lse_c)


class ScriptedBackend:
    """A face backend that reports one fixed box on frames first..: what detection would give, without a
    detector."""

    name = "scripted"

    def __init__(self, box, first: int):
        self.box, self.first, self.index = np.asarray(box, np.float32), first, 0

    def reset(self):
        self.index = 0

    def detect(self, frame):
        self.index += 1
        if self.index - 1 < self.first:
            return []
        return [Face(box=self.box, score=1.0, landmarks=np.zeros((0, 2), np.float32),
                     points=np.zeros((3, 2), np.float32))]


def test_sync_confidence_honours_the_track_filters(crop_clip, net):
    # 12 frames; a 100 x 120 face on frames 2..11: 10 detections, size max(100, 120) = 120.
    backend = ScriptedBackend([50, 40, 150, 160], first=2)
    kept = sync_confidence(crop_clip, net, backend=backend, min_track=9, min_face_size=119)
    assert [(t.start, t.stop) for t in kept.tracks] == [(2, 12)]
    assert sync_confidence(crop_clip, net, backend=backend, min_track=10, min_face_size=119).tracks == []
    assert sync_confidence(crop_clip, net, backend=backend, min_track=9, min_face_size=120).tracks == []


def test_sync_confidence_without_faces(tmp_path, net, mediapipe):
    noise = np.random.default_rng(0).integers(0, 255, (30, 240, 320, 3), dtype=np.uint8)
    video = _write_video(tmp_path / "noface.mp4", noise, synth_speech(30 / FPS))
    result = sync_confidence(video, net, backend=mediapipe, min_track=10)
    assert not result.found and result.tracks == []
    assert (result.offset, result.lse_d, result.lse_c, result.frames) == (None, None, None, 30)
    assert "no face track" in format_results([result])


def test_sync_confidence_loads_a_named_backend(crop_clip, net):
    """A backend given by name is loaded by the face loader (training's validation passes none): an unknown
    name is its one-line ConfigError."""
    with pytest.raises(ConfigError, match="unknown face backend 'no-such-backend'"):
        sync_confidence(crop_clip, net, backend="no-such-backend")


def test_evaluate_videos_and_formatting(crop_clip, crop_scores, tmp_path, net):
    silent = _write_video(tmp_path / "silent.mp4", [np.zeros((224, 224, 3), np.uint8)] * 8)
    with pytest.raises(InputError):
        evaluate_videos([silent, crop_clip], net, crops=True, progress=False)
    results = evaluate_videos([crop_clip, silent], net, crops=True, skip_errors=True, progress=False)
    first, second = results
    assert (first.offset, first.lse_d, first.lse_c) == crop_scores
    assert (first.tracks[0].start, first.tracks[0].stop) == (0, 11)  # 7 windows span frames 0..10
    assert second.error and str(silent) in second.error and not second.found
    table = format_results(results)
    assert f"{first.lse_c:.3f}" in table and "mean (1 of 2)" in table and "has no audio track" in table
    data = json.loads(format_results(results, as_json=True))
    assert data["mean"] == {"videos": 1, "offset": float(first.offset), "lse_d": first.lse_d, "lse_c": first.lse_c}
    assert data["videos"][0]["tracks"][0]["lse_c"] == first.lse_c


def test_result_types():
    r = SyncResult("a.mp4", 1, 7.0, 2.0, [TrackResult(0, 60, 1, 7.0, 2.0)], frames=60)
    assert r.found and not SyncResult("b.mp4", None, None, None, []).found


def test_former_import_paths_give_the_same_objects():
    """The scorer moved to `latentsync.sync_score` and its face tracks to `latentsync.face.sync_tracks`, the
    datasets to `latentsync.data` (issue 15); the former paths re-export the very same objects for one release."""
    import latentsync.data.syncnet as syncnet_data
    import latentsync.data.unet as unet_data
    import latentsync.evaluation as evaluation
    import latentsync.evaluation.sync_confidence as former
    import latentsync.face.sync_tracks as tracks
    import latentsync.sync_score as core
    import latentsync.training.syncnet_data as former_syncnet_data
    import latentsync.training.unet_data as former_unet_data

    for home, names in ((core, core.__all__), (tracks, tracks.__all__)):
        for name in names:
            assert getattr(former, name) is getattr(home, name), name
    assert evaluation.crop_sync_confidence is core.crop_sync_confidence
    for home, shim in ((syncnet_data, former_syncnet_data), (unet_data, former_unet_data)):
        assert shim.__all__
        for name in shim.__all__:
            assert getattr(shim, name) is getattr(home, name), name
    assert former_syncnet_data.SyncNetDataset is syncnet_data.SyncNetDataset
    assert former_unet_data.UNetDataset is unet_data.UNetDataset
