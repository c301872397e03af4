"""Frame FID: the FID Inception-v3 (the published key layout, strict loading, the places where TF's graph differs
from torchvision's Inception, the resize and [-1, 1] input, the feature map sizes, a pinned regression value),
frame sampling and cropping, and FID end to end on generated folders, with the errors a user can cause.

The facts are from pytorch-fid's `src/pytorch_fid/inception.py` (`fid_inception_v3`: torchvision's Inception3
with num_classes=1008, aux_logits=False, loaded strictly from pt_inception-2015-12-05-6726825d.pth;
`FIDInceptionA/C/E_1/E_2`) and torchvision's `models/inception.py` (layer shapes, BasicConv2d with eps 0.001).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import video_util
from video_util import SMALL, stripes

from latentsync.demo import load_portrait
from latentsync.errors import CheckpointError, InputError
from latentsync.evaluation.fid import frame_fid, frame_indices, inception_features, video_frames
from latentsync.evaluation.fvd import FaceCropper
from latentsync.media import VideoReader
from latentsync.models.inception import FID_WEIGHTS_URL, FIDInceptionV3, load_fid_inception

# ---- the published layout -------------------------------------------------------------------------------------

# Names and shapes of pt_inception-2015-12-05-6726825d.pth, from torchvision's layer definitions as pytorch-fid
# builds them (conv weights are (out, in, kh, kw)).
PUBLISHED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_1a_3x3.bn.num_batches_tracked": (),  # the file has them (pytorch-fid issue #34: "Unexpected key(s)")
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch3x3dbl_3.conv.weight": (96, 96, 3, 3),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_6e.branch_pool.conv.weight": (192, 768, 1, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.weight": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
# 94 BasicConv2d (stem 5, A 3 x 7, B 4, C 4 x 10, D 6, E 2 x 9), each a conv weight and five BatchNorm tensors,
# plus fc weight and bias.
NUM_TENSORS = 94 * 6 + 2
# torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits). Without AuxLogits
# (conv0 128*768 + bn 2*128, conv1 768*128*25 + bn 2*768, fc 768*1000 + 1000 = 3,326,696) and with 1008 classes
# (+ 8 * 2048 + 8 = 16,392): 27,161,264 - 3,326,696 + 16,392.
NUM_PARAMS = 23_850_960


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the published layout: He-normal convs, BatchNorm near the identity with varied running
    statistics (so that every BatchNorm tensor matters), so that activations stay O(1) through the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FIDInceptionV3().state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("conv.weight"):
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:  # fc
            state[key] = 0.01 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(random_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception(weights_file):
    return load_fid_inception(weights_file)


def test_module_has_the_published_names_and_shapes():
    model = FIDInceptionV3()
    state = model.state_dict()
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == NUM_TENSORS
    assert not any(k.startswith("AuxLogits") for k in state)  # built with aux_logits=False
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(m.eps == 1e-3 for m in bns)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None for m in convs)


def test_weights_load_strictly(weights_file, inception, tmp_path):
    state = random_state_dict()
    loaded = inception.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not inception.training and not any(p.requires_grad for p in inception.parameters())

    incomplete = tmp_path / "incomplete.pth"
    torch.save({k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"}, incomplete)
    with pytest.raises(CheckpointError, match=r"incomplete\.pth: .*missing \(Mixed_7c\.branch_pool\.conv\.weight"):
        load_fid_inception(incomplete)

    extra = tmp_path / "extra.pth"
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}, extra)
    with pytest.raises(CheckpointError, match=r"extra\.pth: .*unexpected \(AuxLogits.*torchvision"):
        load_fid_inception(extra)

    # BatchNorm's batch counter carries nothing FID uses: a copy without it loads, with the same weights.
    no_counts = tmp_path / "no_counts.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, no_counts)
    model = load_fid_inception(no_counts)
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


def test_missing_weights_say_where_to_get_them_and_where_to_put_them(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_fid_inception(tmp_path / "absent.pth")
    message = str(info.value)
    assert "\n" not in message and "absent.pth" in message
    assert FID_WEIGHTS_URL in message
    assert FID_WEIGHTS_URL.startswith("https://github.com/mseitzer/pytorch-fid/releases/download/")
    assert "checkpoints/auxiliary/pt_inception-2015-12-05-6726825d.pth" in message


# ---- where the FID network differs from torchvision's ---------------------------------------------------------

def pool_branch(block, x):
    """The output channels of a block's pool branch (the last `branch_pool.conv.out_channels`)."""
    return block(x)[:, -block.branch_pool.conv.out_channels:]


@pytest.mark.parametrize("name", ["Mixed_5b", "Mixed_6b", "Mixed_7b"])
def test_average_pools_exclude_the_padding(inception, name):
    block = getattr(inception, name)
    x = torch.randn(1, block.branch_pool.conv.in_channels, 5, 5, generator=torch.Generator().manual_seed(1)) + 2
    with torch.no_grad():
        got = pool_branch(block, x)
        tf_pool = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        torchvision_pool = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
    torch.testing.assert_close(got, tf_pool)
    assert (got - torchvision_pool).abs().max() > 0.1  # the two differ on the border: the input tells them apart


def test_last_block_max_pools_where_torchvision_averages(inception):
    block = inception.Mixed_7c
    x = torch.randn(1, 2048, 5, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = pool_branch(block, x)
        max_pool = block.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1))
        avg_pool = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    torch.testing.assert_close(got, max_pool)
    assert (got - avg_pool).abs().max() > 0.1


def test_feature_map_sizes_and_output(inception):
    sizes = {}
    hooks = [getattr(inception, name).register_forward_hook(
        lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape)))
        for name in ("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7a", "Mixed_7c")]
    try:
        with torch.no_grad():
            features = inception(torch.rand(2, 3, 299, 299))
    finally:
        for h in hooks:
            h.remove()
    assert sizes == {
        "Conv2d_4a_3x3": (2, 192, 71, 71),
        "Mixed_5d": (2, 288, 35, 35),
        "Mixed_6e": (2, 768, 17, 17),
        "Mixed_7a": (2, 1280, 8, 8),
        "Mixed_7c": (2, 2048, 8, 8),
    }
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert (features >= 0).all()  # an average of ReLU outputs


def test_input_is_resized_bilinearly_to_299_and_mapped_to_minus_one_one(inception):
    images = torch.rand(2, 3, 120, 90, generator=torch.Generator().manual_seed(3))
    seen = []
    hook = inception.Conv2d_1a_3x3.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            features = inception(images)
    finally:
        hook.remove()
    resized = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen[0], 2 * resized - 1)
    with torch.no_grad():
        torch.testing.assert_close(inception(resized), features)  # a 299 input is not resized again
    with pytest.raises(ValueError, match="RGB images"):
        inception(torch.rand(2, 1, 64, 64))


def test_features_regression(inception):
    images = torch.rand(2, 3, 160, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        features = inception(images)
    # Pinned from this implementation with the seeded weights above (guards against silent changes).
    expected = torch.tensor([[0.0, 4.439185, 3.093365, 2.941844, 0.779744],
                             [0.0, 4.461228, 3.080333, 2.887877, 0.819646]])
    torch.testing.assert_close(features[:, 2:7], expected, rtol=1e-4, atol=1e-5)
    assert features.sum().item() == pytest.approx(4400.0703, rel=1e-4)


# ---- frames -----------------------------------------------------------------------------------------------------

NUM_FRAMES = 12


def write_video(path, frame_fn, n=NUM_FRAMES, size=(SMALL, SMALL)):
    return video_util.write_video(path, frame_fn, n, size)


blobs = video_util.blobs


def test_frame_indices_are_segment_centres():
    assert frame_indices(100, 4) == [12, 37, 62, 87]
    assert frame_indices(12, 4) == [1, 4, 7, 10]
    assert frame_indices(17, 16) == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]
    assert frame_indices(5, 16) == [0, 1, 2, 3, 4]  # a short video gives all its frames
    assert frame_indices(7, None) == list(range(7))
    assert frame_indices(0, 4) == []


def test_video_frames_sample_and_crop(tmp_path):
    # Frame i is grey level 20 i on the left half and white on the right: the crop and the index both show.
    def frame(i):
        image = np.full((48, 80, 3), 255, np.uint8)
        image[:, :40] = 20 * i
        return image

    path = write_video(tmp_path / "levels.mp4", frame, size=(80, 48))
    crops = list(video_frames(path, frames_per_video=4, crop="none", size=32))
    assert len(crops) == 4 and all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
    assert [round(c[:, :12].mean() / 20) for c in crops] == [1, 4, 7, 10]
    centred = list(video_frames(path, frames_per_video=4, crop="center", size=32))
    # The centred 48 x 48 square spans columns 16..63: grey on its left third only.
    assert [round(c[:, :8].mean() / 20) for c in centred] == [1, 4, 7, 10]
    assert np.abs(centred[0][:, 24:].astype(float) - 255).mean() < 3
    assert len(list(video_frames(path, frames_per_video=None, crop="none", size=16))) == NUM_FRAMES


def test_video_frames_crop_the_face(tmp_path):
    portrait = load_portrait()[::2, ::2]  # 300 x 256
    h, w = portrait.shape[:2]
    path = write_video(tmp_path / "face.mp4", lambda i: np.roll(portrait, 2 * i, axis=1), n=8, size=(w, h))
    crops = list(video_frames(path, frames_per_video=2, crop="face", size=64))  # frames 2 and 6
    assert len(crops) == 2
    with FaceCropper() as cropper:
        frame = next(VideoReader(path).frames(6, 7))
        x0, y0, x1, y1 = cropper.box(frame)
    assert 0.15 * w < x1 - x0 < 0.9 * w
    assert np.array_equal(crops[1], cv2.resize(frame[y0:y1, x0:x1], (64, 64), interpolation=cv2.INTER_AREA))

    faceless = write_video(tmp_path / "faceless.mp4", lambda i: np.full((64, 64, 3), 90, np.uint8), n=4)
    with pytest.raises(InputError, match=r"faceless\.mp4: no face found in frame 1"):
        list(video_frames(faceless, frames_per_video=2, crop="face"))


class Recorder(torch.nn.Module):
    """Stands in for Inception: records each batch and returns, per image, its mean and its first pixel."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.batches = []

    def forward(self, x):
        self.batches.append(x)
        return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 0, 0, 0]], dim=1)


def test_inception_features_layout_range_and_batches():
    frames = [np.full((8, 6, 3), v, np.uint8) for v in (0, 51, 255)]
    frames[1][0, 0] = (102, 0, 0)
    recorder = Recorder()
    feats = inception_features(iter(frames), recorder, batch_size=2)
    assert [tuple(b.shape) for b in recorder.batches] == [(2, 3, 8, 6), (1, 3, 8, 6)]  # b c h w
    assert feats.shape == (3, 2)
    np.testing.assert_allclose(feats[:, 1], [0.0, 0.4, 1.0], atol=1e-6)  # 0..255 -> [0, 1], red channel first


# ---- FID end to end -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return video_util.real_and_different(tmp_path_factory.mktemp("fid_videos"), write_video, blobs)


class FirstFeatures(torch.nn.Module):
    """The first `dims` Inception features: the same pipeline with a 64 x 64 covariance, whose square root takes
    milliseconds (the 2048 x 2048 one takes about 15 s on two CPU cores)."""

    def __init__(self, inception, dims: int = 64):
        super().__init__()
        self.inception, self.dims = inception, dims

    def forward(self, x):
        return self.inception(x)[:, :self.dims]


def test_frame_fid_end_to_end(folders, inception):
    kwargs = dict(model=FirstFeatures(inception), crop="center", frames_per_video=2, size=96, progress=False)
    same = frame_fid(folders / "real", folders / "real", **kwargs)
    different = frame_fid(folders / "real", folders / "different", **kwargs)
    assert math.isfinite(different) and different > 1.0
    assert abs(same) < 1e-6 * different


def test_frame_fid_default_path_feeds_2048_d_statistics(folders, weights_file, monkeypatch):
    # The path the CLI takes: weights from the file, 2048-d pool3 features. The distance itself is fvd.py's
    # (tested in test_fvd.py); it is recorded here rather than run, as its 2048 x 2048 square root costs 15-40 s.
    seen = []

    def spy(mu1, sigma1, mu2, sigma2):
        seen.append((mu1, sigma1, mu2, sigma2))
        return 123.0

    monkeypatch.setattr("latentsync.evaluation.fid.frechet_distance", spy)
    value = frame_fid(folders / "real", folders / "different", weights=weights_file, crop="center",
                      frames_per_video=2, progress=False)
    assert value == 123.0
    (mu1, sigma1, mu2, sigma2), = seen
    assert mu1.shape == mu2.shape == (2048,) and sigma1.shape == sigma2.shape == (2048, 2048)
    assert sigma1.dtype == np.float64 and np.isfinite(sigma1).all() and np.isfinite(mu2).all()
    assert np.abs(mu1 - mu2).max() > 0.1  # stripes and blobs give different features


def test_frame_fid_input_errors(tmp_path, folders, weights_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty: no videos found"):
        frame_fid(empty, folders / "real", weights=weights_file, progress=False)
    one = write_video(tmp_path / "one.mp4", stripes(0.0, (1, 1, 1)), n=1)
    with pytest.raises(InputError, match=r"at least 2 real frames, got 1 .*one\.mp4"):
        frame_fid([one], folders / "real", model=Recorder(), crop="center", progress=False)
    with pytest.raises(CheckpointError, match="absent.pth: FID Inception weights not found"):
        frame_fid(folders / "real", folders / "real", weights=tmp_path / "absent.pth", progress=False)
    with pytest.raises(ValueError, match="unknown crop"):
        frame_fid(folders / "real", folders / "real", model=Recorder(), crop="mouth", progress=False)
