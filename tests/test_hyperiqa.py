"""hyperIQA and the visual-quality step: the published weight layout and strict loading, the forward checked
against an independent functional re-statement of models.py (grouped-convolution target network included),
per-image target networks, backbone sizes, a seeded regression value; the step's frame choice, crop,
thresholds and errors on generated aligned-style clips."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentsync.config import PreprocessConfig
from latentsync.errors import CheckpointError, InputError
from latentsync.media import VideoReader, VideoWriter, write_wav
from latentsync.models.checkpoint import expected_shapes
from latentsync.models.hyperiqa import HyperNet, load_hyperiqa, target_net
from latentsync.preprocess.base import Item, StepContext
from latentsync.preprocess.quality import QualityStep, clip_quality, sample_frames

FPS = 25
SIZE = 256  # aligned clips of LatentSync 1.5
CROP = 224
BORDER = (SIZE - CROP) // 2  # torchvision CenterCrop(224) of a 256 frame drops 16 px on each side
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# ---------------------------------------------------------------------------------------------------------
# The published layout: the state dict of models.py's HyperNet(16, 112, 224, 112, 56, 28, 14, 7), written out
# from its layer definitions (SSL-Group-SP/hyperIQA models.py; ResNet-50 = Bottleneck x [3, 4, 6, 3], names as
# torchvision's, no `fc`).

# A representative subset, literally: backbone, LDA modules, hyper network convs, weight and bias generators.
PUBLISHED_SAMPLE = {
    "res.conv1.weight": (64, 3, 7, 7),
    "res.bn1.running_var": (64,),
    "res.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "res.layer2.0.conv2.weight": (128, 128, 3, 3),
    "res.layer3.5.bn3.num_batches_tracked": (),
    "res.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "res.lda1_pool.0.weight": (16, 256, 1, 1),
    "res.lda1_fc.weight": (16, 1024),  # 16 channels x 8 x 8 cells
    "res.lda2_pool.0.weight": (32, 512, 1, 1),
    "res.lda2_fc.weight": (16, 512),  # 32 x 4 x 4
    "res.lda3_pool.0.weight": (64, 1024, 1, 1),
    "res.lda3_fc.weight": (16, 256),  # 64 x 2 x 2
    "res.lda4_fc.weight": (176, 2048),  # 224 - 3 x 16
    "conv1.0.weight": (1024, 2048, 1, 1),
    "conv1.2.weight": (512, 1024, 1, 1),
    "conv1.4.weight": (112, 512, 1, 1),
    "fc1w_conv.weight": (512, 112, 3, 3),  # 224 x 112 / 7^2
    "fc1b_fc.weight": (112, 112),
    "fc2w_conv.weight": (128, 112, 3, 3),  # 112 x 56 / 49
    "fc3w_conv.bias": (32,),  # 56 x 28 / 49
    "fc4w_conv.weight": (8, 112, 3, 3),  # 28 x 14 / 49
    "fc4b_fc.bias": (14,),
    "fc5w_fc.weight": (14, 112),
    "fc5b_fc.weight": (1, 112),
}


def published_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, c_out, c_in, k, bias=False):
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        if bias:
            shapes[f"{name}.bias"] = (c_out,)

    def linear(name, c_out, c_in):
        shapes[f"{name}.weight"] = (c_out, c_in)
        shapes[f"{name}.bias"] = (c_out,)

    def bn(name, c):
        for t in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{t}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("res.conv1", 64, 3, 7)
    bn("res.bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for block in range(blocks):
            p = f"res.layer{stage}.{block}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if block == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    for i, (c_in, c, cells) in enumerate([(256, 16, 64), (512, 32, 16), (1024, 64, 4)], start=1):
        conv(f"res.lda{i}_pool.0", c, c_in, 1)
        linear(f"res.lda{i}_fc", 16, c * cells)
    linear("res.lda4_fc", 224 - 16 * 3, 2048)
    conv("conv1.0", 1024, 2048, 1, bias=True)
    conv("conv1.2", 512, 1024, 1, bias=True)
    conv("conv1.4", 112, 512, 1, bias=True)
    sizes = [224, 112, 56, 28, 14]
    for k in range(4):
        conv(f"fc{k + 1}w_conv", sizes[k] * sizes[k + 1] // 49, 112, 3, bias=True)
        linear(f"fc{k + 1}b_fc", sizes[k + 1], 112)
    linear("fc5w_fc", 14, 112)
    linear("fc5b_fc", 1, 112)
    return shapes


def _is_bn(name: str) -> bool:
    return ".bn" in name or ".downsample.1." in name


def random_published_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the published layout, scaled so that activations stay O(1) through the ResNet and
    the target network's sigmoids do not saturate (so that scores depend on the image)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in published_shapes().items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            t = torch.zeros((), dtype=torch.long)
        elif _is_bn(name) and leaf == "weight":
            # Residual branches (bn3) small, so 16 blocks do not blow the activations up.
            low, high = (0.1, 0.3) if ".bn3." in name else (0.5, 1.0)
            t = low + (high - low) * torch.rand(shape, generator=g)
        elif leaf == "running_var":
            t = 0.5 + torch.rand(shape, generator=g)
        elif leaf in ("bias", "running_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        sd[name] = t
    return sd


def reference_scores(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """models.py's HyperNet + TargetNet re-stated with torch.nn.functional on the raw state dict."""

    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)

    t = F.relu(bn(F.conv2d(x, sd["res.conv1.weight"], stride=2, padding=3), "res.bn1"))
    t = F.max_pool2d(t, 3, stride=2, padding=1)
    lda = []
    for stage, blocks in enumerate([3, 4, 6, 3], start=1):
        for block in range(blocks):
            p = f"res.layer{stage}.{block}"
            stride = 2 if (block == 0 and stage > 1) else 1
            y = F.relu(bn(F.conv2d(t, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
            y = F.relu(bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            y = bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            if block == 0:
                t = bn(F.conv2d(t, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            t = F.relu(y + t)
        pooled = t if stage == 4 else F.conv2d(t, sd[f"res.lda{stage}_pool.0.weight"])
        pooled = F.avg_pool2d(pooled, 7, stride=7).reshape(x.shape[0], -1)
        lda.append(F.linear(pooled, sd[f"res.lda{stage}_fc.weight"], sd[f"res.lda{stage}_fc.bias"]))
    vec = torch.cat(lda, 1).view(-1, 224, 1, 1)
    h = t
    for i in (0, 2, 4):
        h = F.relu(F.conv2d(h, sd[f"conv1.{i}.weight"], sd[f"conv1.{i}.bias"]))
    pooled = F.adaptive_avg_pool2d(h, (1, 1)).squeeze(-1).squeeze(-1)
    sizes = [224, 112, 56, 28, 14]
    layers = []
    for k in range(4):
        w = F.conv2d(h, sd[f"fc{k + 1}w_conv.weight"], sd[f"fc{k + 1}w_conv.bias"], padding=1)
        w = w.view(-1, sizes[k + 1], sizes[k], 1, 1)
        layers.append((w, F.linear(pooled, sd[f"fc{k + 1}b_fc.weight"], sd[f"fc{k + 1}b_fc.bias"])))
    layers.append((F.linear(pooled, sd["fc5w_fc.weight"], sd["fc5w_fc.bias"]).view(-1, 1, 14, 1, 1),
                   F.linear(pooled, sd["fc5b_fc.weight"], sd["fc5b_fc.bias"])))

    q = vec
    for k, (w, b) in enumerate(layers):  # TargetFC: one group per image
        n = w.shape[0]
        out = F.conv2d(q.view(1, n * q.shape[1], 1, 1), w.reshape(n * w.shape[1], w.shape[2], 1, 1),
                       b.reshape(-1), groups=n)
        q = out.view(n, w.shape[1], 1, 1)
        if k < 4:
            q = torch.sigmoid(q)
    return q.view(-1)


def images(n: int, seed: int = 1) -> torch.Tensor:
    """Random smooth RGB images in [0, 1] of differing brightness and contrast, ImageNet-normalised,
    (n, 3, 224, 224)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 28, 28, generator=g)
    x = F.interpolate(coarse, size=(CROP, CROP), mode="bilinear", align_corners=False)
    contrast = 1.5 * torch.rand(n, 1, 1, 1, generator=g)
    brightness = 0.3 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = (0.5 + contrast * (x - 0.5) + brightness).clamp(0, 1)
    return (x - MEAN) / STD


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def published_sd():
    return random_published_state_dict(0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, published_sd) -> Path:
    """A checkpoints folder whose auxiliary/koniq_pretrained.pkl holds random weights in the published layout."""
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "auxiliary").mkdir()
    torch.save(published_sd, root / "auxiliary" / "koniq_pretrained.pkl")
    return root


@pytest.fixture(scope="module")
def model(checkpoints) -> HyperNet:
    return load_hyperiqa(checkpoints / "auxiliary" / "koniq_pretrained.pkl")


def level(k: int) -> int:
    """The grey level of frame k inside the crop: 4 levels apart, robust to H.264 rounding."""
    return 20 + 4 * k


def write_clip(path: Path, n_frames: int) -> Path:
    """An aligned-style clip: 256 x 256, 25 fps, with sound; frame k is grey level(k) inside the central
    224 x 224 window and white in the 16 px border (which the crop must drop)."""
    wav = path.with_suffix(".wav")
    t = np.arange(int(n_frames / FPS * 16_000)) / 16_000
    write_wav(wav, 0.3 * np.sin(2 * np.pi * 220 * t))
    with VideoWriter(path, SIZE, SIZE, fps=FPS, crf=10, audio=wav) as writer:
        for k in range(n_frames):
            frame = np.full((SIZE, SIZE, 3), 255, np.uint8)
            frame[BORDER:SIZE - BORDER, BORDER:SIZE - BORDER] = level(k)
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Two seconds: frames 0..49."""
    folder = tmp_path_factory.mktemp("clips") / "speaker"
    folder.mkdir()
    return write_clip(folder / "clip.mp4", 50)


# ---------------------------------------------------------------------------------------------------------
# The network


def test_module_has_exactly_the_published_keys_and_shapes():
    shapes = published_shapes()
    for name, shape in PUBLISHED_SAMPLE.items():
        assert shapes[name] == shape, name
    assert len(shapes) == 355
    with torch.device("meta"):
        ours = {k: tuple(v) for k, v in expected_shapes(HyperNet(16, 112, 224, 112, 56, 28, 14, 7)).items()}
    assert ours == shapes


def test_published_file_loads_strictly(model, published_sd):
    assert not model.training
    state = model.state_dict()
    assert set(state) == set(published_sd)
    for name in ("res.layer3.2.conv2.weight", "res.lda2_fc.bias", "fc1w_conv.weight", "fc5b_fc.bias"):
        torch.testing.assert_close(state[name], published_sd[name], rtol=0, atol=0)


def test_missing_key_is_a_one_line_checkpoint_error(tmp_path, published_sd):
    path = tmp_path / "koniq_pretrained.pkl"
    torch.save({k: v for k, v in published_sd.items() if k != "fc3b_fc.bias"}, path)
    with pytest.raises(CheckpointError) as err:
        load_hyperiqa(path)
    message = str(err.value)
    assert str(path) in message and "fc3b_fc.bias" in message and "1 missing" in message
    assert "\n" not in message


def test_file_without_batchnorm_counters_loads(tmp_path, published_sd):
    """Files saved before PyTorch 0.4.1 lack num_batches_tracked; they do not affect inference."""
    path = tmp_path / "old.pkl"
    torch.save({k: v for k, v in published_sd.items() if not k.endswith("num_batches_tracked")}, path)
    x = images(1)
    torch.testing.assert_close(load_hyperiqa(path)(x), reference_scores(published_sd, x))


def test_forward_matches_the_reference_formulation(model, published_sd):
    x = images(3)
    with torch.inference_mode():
        ours = model(x)
        ref = reference_scores(published_sd, x)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ref.std() > 1e-3  # the random weights give image-dependent scores (the check is not vacuous)


def test_target_network_is_generated_per_image(model):
    x = images(2, seed=7)
    with torch.inference_mode():
        params = model.target_params(x)
        together = target_net(params)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    assert [tuple(w.shape) for w in params.weights] == [(2, 112, 224), (2, 56, 112), (2, 28, 56), (2, 14, 28),
                                                         (2, 1, 14)]
    assert [tuple(b.shape) for b in params.biases] == [(2, 112), (2, 56), (2, 28), (2, 14), (2, 1)]
    assert params.input.shape == (2, 224)
    for w, b in zip(params.weights, params.biases):
        assert (w[0] - w[1]).abs().max() > 1e-3
        assert (b[0] - b[1]).abs().max() > 1e-4
    # Each image is scored by its own network: batching does not change a score.
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert abs(float(together[0] - together[1])) > 1e-4


def test_seeded_regression_value(model):
    with torch.inference_mode():
        scores = model(images(2, seed=3))
    torch.testing.assert_close(scores, torch.tensor(REGRESSION), rtol=1e-4, atol=1e-4)


REGRESSION = [-0.113517, -0.114979]  # random published-layout weights (seed 0), images(2, seed=3)


def test_backbone_feature_map_sizes(model):
    sizes = {}
    hooks = [getattr(model.res, f"layer{i}").register_forward_hook(
        lambda m, inp, out, i=i: sizes.__setitem__(i, tuple(out.shape))) for i in range(1, 5)]
    try:
        with torch.inference_mode():
            features, vector = model.res(images(2))
    finally:
        for h in hooks:
            h.remove()
    assert sizes == {1: (2, 256, 56, 56), 2: (2, 512, 28, 28), 3: (2, 1024, 14, 14), 4: (2, 2048, 7, 7)}
    assert features.shape == (2, 2048, 7, 7) and vector.shape == (2, 224)


def test_other_input_sizes_are_refused(model):
    with pytest.raises(ValueError, match="224"):
        model(torch.zeros(1, 3, 256, 256))


# ---------------------------------------------------------------------------------------------------------
# The step


@pytest.fixture
def spy(monkeypatch):
    """Records every batch HyperNet scores."""
    seen: list[torch.Tensor] = []
    forward = HyperNet.forward

    def recording(self, x):
        seen.append(x.detach().clone())
        return forward(self, x)

    monkeypatch.setattr(HyperNet, "forward", recording)
    return seen


def _frame_indices(batch: torch.Tensor) -> list[int]:
    grey = ((batch * STD + MEAN) * 255).mean(dim=(1, 2, 3))
    return [round((float(v) - 20) / 4) for v in grey]


def _expected_input(path: Path, indices: list[int]) -> torch.Tensor:
    frames = list(VideoReader(path).frames())
    x = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2).float() / 255
    return (x[:, :, BORDER:BORDER + CROP, BORDER:BORDER + CROP] - MEAN) / STD


@pytest.mark.parametrize("start_s, end_s, expected", [(0.0, None, [0, 25, 49]), (0.4, 1.6, [10, 25, 39]),
                                                      (1.0, None, [25, 37, 49])])
def test_step_scores_first_middle_last_of_the_range_in_one_batch(clip, checkpoints, spy, start_s, end_s, expected):
    step = QualityStep(PreprocessConfig(quality_threshold=-1e9))
    ctx = StepContext(output_dir=clip.parent / "out", checkpoints=checkpoints)
    result = step.run(Item(id="speaker/clip.mp4", path=str(clip), start_s=start_s, end_s=end_s), ctx)
    assert result.rejected is None
    assert len(spy) == 1 and spy[0].shape == (3, 3, CROP, CROP)  # the three frames in one forward
    assert _frame_indices(spy[0]) == expected
    # Exactly the reference's preprocessing: no resize, the central 224 px, /255, ImageNet normalisation.
    torch.testing.assert_close(spy[0], _expected_input(clip, expected), rtol=0, atol=1e-5)


def test_sample_frames_reports_indices(clip):
    frames, indices = sample_frames(clip, 10, 40)
    assert indices == [10, 25, 39]
    assert [abs(int(f[128, 128, 0]) - level(i)) <= 2 for f, i in zip(frames, indices)] == [True] * 3
    assert sample_frames(clip, 60, 70) == ([], [])
    with pytest.raises(InputError, match="no frames"):
        clip_quality(clip, None, 60, 70)


def test_step_passes_and_rejects_by_the_injected_threshold(clip, checkpoints, model):
    score = clip_quality(clip, model)
    assert math.isfinite(score)
    item = Item(id="speaker/clip.mp4", path=str(clip), meta={"sync_conf": 7.5})
    ctx = StepContext(output_dir=clip.parent / "out", checkpoints=checkpoints)

    low = QualityStep(PreprocessConfig(quality_threshold=score - 0.5))
    kept = low.run(item, ctx)
    assert kept.rejected is None and len(kept.outputs) == 1
    out = kept.outputs[0]
    assert (out.id, out.path, out.start_s, out.end_s) == (item.id, item.path, item.start_s, item.end_s)
    assert out.meta["sync_conf"] == 7.5 and out.meta["quality"] == pytest.approx(score, abs=1e-5)
    cached = dict(ctx.models)
    assert len(cached) == 1
    # A score equal to the threshold passes (the reference keeps score >= 40).
    assert QualityStep(PreprocessConfig(quality_threshold=score)).run(item, ctx).rejected is None

    high_threshold = score + 0.5
    high = QualityStep(PreprocessConfig(quality_threshold=high_threshold))
    rejected = high.run(item, ctx)
    assert rejected.outputs == []
    assert rejected.rejected == f"low visual quality: {rejected.metrics['quality']:.1f} < {high_threshold}"
    assert rejected.metrics["quality"] == pytest.approx(score, abs=1e-5)
    # The network was loaded once for the process and reused.
    assert dict(ctx.models) == cached

    assert low.params() != high.params() and low.params()["quality_threshold"] == score - 0.5
    assert "version" in low.params()


def test_missing_weights_are_a_one_line_checkpoint_error(clip, tmp_path):
    ctx = StepContext(output_dir=tmp_path / "out", checkpoints=tmp_path / "empty")
    with pytest.raises(CheckpointError) as err:
        QualityStep(PreprocessConfig()).run(Item(id="c.mp4", path=str(clip)), ctx)
    message = str(err.value)
    assert "auxiliary/koniq_pretrained.pkl" in message and "\n" not in message
    assert ctx.models == {}


def test_step_rejects_an_empty_time_range(clip, checkpoints):
    ctx = StepContext(output_dir=clip.parent / "out", checkpoints=checkpoints)
    result = QualityStep(PreprocessConfig()).run(Item(id="c.mp4", path=str(clip), start_s=3.0, end_s=4.0), ctx)
    assert result.outputs == [] and "no frames" in result.rejected
