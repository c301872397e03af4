"""Training losses and their frozen networks: torchvision's VGG-16 file layout and strict loading, LPIPS against
the lpips formula written out with F.conv2d on the installed package's real heads, the VideoMAE v2 ViT-g layout
(built on the meta device) and a tiny ViT checked against a functional re-statement and a pinned value, TREPA,
and the SyncNet cosine BCE by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from latentsync.errors import CheckpointError
from latentsync.models.checkpoint import expected_shapes
from latentsync.models.vgg import VGG16Features, load_vgg16_features
from latentsync.models.videomae import CONFIGS, VideoMAEv2, load_videomae, sinusoid_table
from latentsync.training.losses import (
    COSINE_BCE_EPS,
    LPIPS,
    TREPALoss,
    cosine_bce,
    lpips_heads_path,
)
from latentsync.weights import CheckpointLayout

# ---- facts -----------------------------------------------------------------------------------------------------

# torchvision's vgg16-397923af.pth: `features` = cfgs["D"] through make_layers (conv 3x3 + ReLU per number, a
# max pool per "M"), so the convolutions sit at these indices; then the classifier Linear layers 0, 3, 6.
VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
               14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}
VGG16_CLASSIFIER = {"classifier.0.weight": (4096, 512 * 7 * 7), "classifier.0.bias": (4096,),
                    "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}
VGG16_FEATURES = {f"features.{i}.{p}": ((o, c, 3, 3) if p == "weight" else (o,))
                  for i, (o, c) in VGG16_CONVS.items() for p in ("weight", "bias")}
# lpips (PerceptualSimilarity pretrained_networks.vgg16): relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
LPIPS_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

# VideoMAE v2 vit_giant_patch14_224(num_classes=174, all_frames=16, tubelet_size=2, use_mean_pooling=True), as
# LatentSync's TREPA builds it and loads vit_g_hybrid_pt_1200e_ssv2_ft.pth strictly: a literal subset.
VIT_G_SAMPLE = {
    "patch_embed.proj.weight": (1408, 3, 2, 14, 14),
    "patch_embed.proj.bias": (1408,),
    "blocks.0.norm1.weight": (1408,),
    "blocks.0.attn.qkv.weight": (3 * 1408, 1408),
    "blocks.0.attn.q_bias": (1408,),
    "blocks.0.attn.v_bias": (1408,),
    "blocks.17.attn.proj.weight": (1408, 1408),
    "blocks.17.attn.proj.bias": (1408,),
    "blocks.39.norm2.bias": (1408,),
    "blocks.39.mlp.fc1.weight": (6144, 1408),  # int(1408 * 48 / 11)
    "blocks.39.mlp.fc1.bias": (6144,),
    "blocks.39.mlp.fc2.weight": (1408, 6144),
    "fc_norm.weight": (1408,),
    "fc_norm.bias": (1408,),
    "head.weight": (174, 1408),  # Something-Something v2 classes
    "head.bias": (174,),
}
VIT_G_KEYS_PER_BLOCK = 13  # norm1 (2), q_bias, v_bias, qkv.weight, proj (2), norm2 (2), fc1 (2), fc2 (2)
VIT_G_PARAMS = 1_011_855_918  # 40 x 25,248,768 per block + patch embedding + fc_norm + head
# Not in the file: fixed sinusoid positions, no class token, no final `norm` (Identity with mean pooling),
# no layer scale (init_values 0), no cosine-attention scale, no key bias.
VIT_G_ABSENT = ("pos_embed", "cls_token", "norm.weight", "blocks.0.gamma_1", "blocks.0.attn.scale",
                "blocks.0.attn.k_bias", "blocks.0.attn.qkv.bias")

TINY = CONFIGS["tiny"]


# ---- VGG-16 ----------------------------------------------------------------------------------------------------

def _vgg_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's exact layout. He-scaled so activations neither vanish nor explode; the
    classifier (unused, 400 MB if real) as stride-0 views of the right shapes, which torch.save stores in bytes."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (o, c) in VGG16_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g) * math.sqrt(2 / (9 * c))
        sd[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    for k, shape in VGG16_CLASSIFIER.items():
        sd[k] = torch.zeros(1).expand(*shape) if len(shape) == 2 else torch.zeros(shape)
    return sd


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(_vgg_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def lpips_model(vgg_file) -> LPIPS:
    return LPIPS(vgg_file)


def test_vgg16_loads_torchvision_layout_strictly(vgg_file):
    model = load_vgg16_features(vgg_file)
    assert {k: tuple(v) for k, v in expected_shapes(model).items()} == VGG16_FEATURES
    sd = torch.load(vgg_file, weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_vgg16_taps():
    torch.manual_seed(0)
    with torch.no_grad():
        taps = VGG16Features()(torch.randn(2, 3, 64, 64))
    assert [tuple(t.shape) for t in taps] == [(2, 64, 64, 64), (2, 128, 32, 32), (2, 256, 16, 16),
                                              (2, 512, 8, 8), (2, 512, 4, 4)]
    assert all((t >= 0).all() for t in taps)  # ReLU outputs


def test_vgg16_bad_files(tmp_path):
    sd = _vgg_state_dict()
    del sd["features.28.bias"]
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_vgg16_features(path)
    assert str(path) in str(err.value) and "features.28.bias" in str(err.value) and "\n" not in str(err.value)

    sd = _vgg_state_dict()
    sd["features.1.weight"] = torch.zeros(64)  # a BatchNorm: vgg16_bn, not vgg16
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="features.1.weight"):
        load_vgg16_features(path)

    missing = tmp_path / "auxiliary" / "vgg16-397923af.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_vgg16_features(missing)
    with pytest.raises(CheckpointError, match="vgg16-397923af.pth"):
        CheckpointLayout(tmp_path).require("vgg16")


# ---- LPIPS -----------------------------------------------------------------------------------------------------

def _images(seed: int, b: int = 2, h: int = 32, w: int = 48) -> torch.Tensor:
    """Smooth images in [-1, 1] (upsampled noise), so that deep taps see structure."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, h // 4, w // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).clamp(-1, 1)


def _lpips_by_hand(vgg_sd, heads, x0, x1) -> torch.Tensor:
    """lpips.LPIPS(net="vgg").forward written out: ScalingLayer, VGG-16 to relu5_3 with F.conv2d, normalize_tensor
    (x / (sqrt(sum_c x^2) + 1e-10)), squared difference, 1x1 head, spatial average, sum over layers."""
    def taps(x):
        x = (x - LPIPS_SHIFT) / LPIPS_SCALE
        out = []
        for i in range(TAP_INDICES[-1] + 1):
            if i in VGG16_CONVS:
                x = F.conv2d(x, vgg_sd[f"features.{i}.weight"], vgg_sd[f"features.{i}.bias"], padding=1)
            elif i - 1 in VGG16_CONVS:
                x = torch.relu(x)
            else:
                x = F.max_pool2d(x, 2, 2)
            if i in TAP_INDICES:
                out.append(x / (torch.sqrt((x ** 2).sum(dim=1, keepdim=True)) + 1e-10))
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x0), taps(x1))):
        total = total + F.conv2d((a - b) ** 2, heads[f"lin{k}.model.1.weight"]).mean(dim=(2, 3), keepdim=True)
    return total.flatten()


def test_lpips_heads_are_the_packages():
    path = lpips_heads_path()
    assert path.parts[-4:] == ("lpips", "weights", "v0.1", "vgg.pth") and path.is_file()
    heads = torch.load(path, map_location="cpu", weights_only=True)  # saved from CUDA
    assert {k: tuple(v.shape) for k, v in heads.items()} == {
        f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}
    assert all((v > 0).all() for v in heads.values())  # the published heads are positive
    assert "lpips" not in sys.modules  # located, never imported (it imports torchvision)


def test_lpips_uses_real_heads_and_matches_formula(lpips_model, vgg_file):
    heads = torch.load(lpips_heads_path(), map_location="cpu", weights_only=True)
    for k, conv in enumerate(lpips_model.heads):
        assert torch.equal(conv.weight, heads[f"lin{k}.model.1.weight"])
    vgg_sd = torch.load(vgg_file, weights_only=True)
    x0, x1 = _images(1), _images(2)
    with torch.no_grad():
        d = lpips_model(x0, x1)
    assert d.shape == (2,) and d.dtype == torch.float32
    torch.testing.assert_close(d, _lpips_by_hand(vgg_sd, heads, x0, x1), rtol=1e-4, atol=1e-6)


def test_lpips_properties(lpips_model):
    x0, x1 = _images(3), _images(4)
    with torch.no_grad():
        assert torch.equal(lpips_model(x0, x0), torch.zeros(2))
        d01, d10 = lpips_model(x0, x1), lpips_model(x1, x0)
    torch.testing.assert_close(d01, d10)
    assert (d01 > 0).all()
    with torch.no_grad():  # closer images are closer
        assert (lpips_model(x0, 0.9 * x0 + 0.1 * x1) < d01).all()


def test_lpips_gradients_reach_pred_only(lpips_model):
    pred = _images(5).requires_grad_(True)
    lpips_model(pred, _images(6)).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lpips_model.parameters())
    lpips_model.train()
    assert not lpips_model.training and not lpips_model.vgg.training


def test_lpips_checkpointing_gives_the_same_distance_and_gradient_from_the_inputs_alone(vgg_file):
    """With gradient_checkpointing the forward pass keeps only what it was given (the VGG runs again in
    backward); the distance and the gradient are those without it."""
    pred, target = _images(9), _images(10)
    results = {}
    for checkpointing in (False, True):
        model = LPIPS(vgg_file, gradient_checkpointing=checkpointing)
        x = pred.clone().requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            distance = model(x, target)
        distance.sum().backward()
        results[checkpointing] = distance.detach(), x.grad, sum(saved)
    (d0, g0, kept0), (d1, g1, kept1) = results[False], results[True]
    assert torch.equal(d0, d1) and torch.equal(g0, g1)
    assert kept1 <= 2 * pred.numel() < kept0  # pred and target, where the VGG's activations were kept before


def test_lpips_accepts_loaded_vgg(lpips_model, vgg_file):
    other = LPIPS(load_vgg16_features(vgg_file))
    x0, x1 = _images(7), _images(8)
    with torch.no_grad():
        torch.testing.assert_close(other(x0, x1), lpips_model(x0, x1))


def test_lpips_missing_files(tmp_path, vgg_file):
    vgg, heads = tmp_path / "auxiliary" / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    with pytest.raises(CheckpointError) as err:
        LPIPS(vgg, heads_path=heads)
    assert str(vgg) in str(err.value) and str(heads) in str(err.value) and "\n" not in str(err.value)
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, heads)
    with pytest.raises(CheckpointError, match="lin1.model.1.weight"):
        LPIPS(vgg_file, heads_path=heads)


# ---- VideoMAE v2 -----------------------------------------------------------------------------------------------

def test_vit_g_layout_on_meta():
    with torch.device("meta"):
        model = VideoMAEv2("vit_giant_patch14")
    shapes = {k: tuple(v) for k, v in expected_shapes(model).items()}
    for k, shape in VIT_G_SAMPLE.items():
        assert shapes[k] == shape, k
    assert len(shapes) == 40 * VIT_G_KEYS_PER_BLOCK + 6
    assert "blocks.39.mlp.fc2.bias" in shapes and "blocks.40.norm1.weight" not in shapes
    assert not any(k in shapes for k in VIT_G_ABSENT)
    assert sum(p.numel() for p in model.parameters()) == VIT_G_PARAMS
    assert tuple(model.pos_embed.shape) == (1, 8 * 16 * 16, 1408)  # 2048 tokens, not a state-dict entry


def test_sinusoid_table_matches_formula():
    n, d = 7, 10
    expected = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    expected[:, 0::2] = np.sin(expected[:, 0::2])
    expected[:, 1::2] = np.cos(expected[:, 1::2])
    torch.testing.assert_close(sinusoid_table(n, d), torch.tensor(expected, dtype=torch.float32))


def _tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = expected_shapes(VideoMAEv2("tiny"))
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        base = 1.0 if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "fc_norm.weight" else 0.0
        sd[k] = base + torch.randn(shape, generator=g) * (0.2 if base or k.endswith("bias") else 0.15)
    return sd


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("videomae") / "vit_tiny.pth"
    torch.save({"module": _tiny_state_dict()}, path)
    return path


@pytest.mark.parametrize("wrapper", ["model", "module", None])
def test_videomae_loads_wrapped_file_strictly(tmp_path, wrapper):
    sd = _tiny_state_dict()
    path = tmp_path / "vit.pth"
    torch.save(sd if wrapper is None else {wrapper: sd}, path)
    model = load_videomae(path, config="tiny")
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    torch.testing.assert_close(model.pos_embed[0], sinusoid_table(TINY.num_patches, TINY.embed_dim))


def test_videomae_bad_files(tmp_path):
    path = tmp_path / "vit.pth"
    sd = _tiny_state_dict()
    sd["pos_embed"] = torch.zeros(1, TINY.num_patches, TINY.embed_dim)
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_videomae(path, config="tiny")
    sd = _tiny_state_dict()
    del sd["blocks.1.attn.v_bias"]
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_videomae(path, config="tiny")
    assert str(path) in str(err.value) and "blocks.1.attn.v_bias" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=str(tmp_path / "missing.pth")):
        load_videomae(tmp_path / "missing.pth", config="tiny")
    with pytest.raises(CheckpointError, match="vit_g_hybrid_pt_1200e_ssv2_ft.pth"):
        CheckpointLayout(tmp_path).require("videomae")


def _vit_by_hand(sd, cfg, video) -> torch.Tensor:
    """VideoMAEv2 VisionTransformer.forward_features (mean pooling) written out with explicit softmax attention."""
    x = F.conv3d(video, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=(cfg.tubelet_size, cfg.patch_size, cfg.patch_size))
    x = x.flatten(2).transpose(1, 2)  # b n d, tokens in (t, h, w) order
    x = x + sinusoid_table(x.shape[1], cfg.embed_dim)[None]
    ln = lambda t, p: F.layer_norm(t, (cfg.embed_dim,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    heads, hd = cfg.num_heads, cfg.embed_dim // cfg.num_heads
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1")
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]])
        qkv = (h @ sd[p + "attn.qkv.weight"].T + bias).reshape(x.shape[0], x.shape[1], 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(x.shape)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = ln(x, p + "norm2") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return ln(x.mean(1), "fc_norm")


def _video(seed: int, b: int = 2, f: int = TINY.num_frames, s: int = TINY.img_size) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, s, s, generator=g)


# feats[0, :4] of the tiny ViT with _tiny_state_dict(0) on _video(0), pinned once from this implementation.
PINNED_TINY_FEATURES = [-0.07769, -0.72308, -0.12431, -1.46441]


def test_videomae_forward_matches_reference_and_pinned_value(tiny_file):
    model = load_videomae(tiny_file, config="tiny")
    video = _video(0)
    with torch.no_grad():
        feats = model(video)
    assert feats.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(feats, _vit_by_hand(_tiny_state_dict(), TINY, video), rtol=1e-4, atol=1e-5)
    assert model.logits(feats).shape == (2, TINY.num_classes)
    # Pinned once from this implementation (seeded weights and input); guards against silent changes.
    torch.testing.assert_close(feats[0, :4], torch.tensor(PINNED_TINY_FEATURES), rtol=1e-4, atol=1e-5)


def test_videomae_other_clip_length_and_checkpointing(tiny_file):
    model = load_videomae(tiny_file, config="tiny")
    with torch.no_grad():
        assert model(_video(1, f=6)).shape == (2, TINY.embed_dim)  # 3 token steps: positions interpolated
    with pytest.raises(ValueError, match="28"):
        model(_video(1, s=32))

    video = _video(2).requires_grad_(True)
    model.requires_grad_(True)
    plain = model(video)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), video)
    model.gradient_checkpointing = True
    ckpt = model(video)
    (g_ckpt,) = torch.autograd.grad(ckpt.square().sum(), video)
    torch.testing.assert_close(ckpt, plain)
    torch.testing.assert_close(g_ckpt, g_plain)


# ---- TREPA -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trepa(tiny_file) -> TREPALoss:
    return TREPALoss(tiny_file, config="tiny")


def _clip(seed: int, b: int = 2, f: int = TINY.num_frames, s: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, s, s, generator=g) * 2 - 1  # b c f h w in [-1, 1]


def test_trepa_zero_for_identical_positive_otherwise(trepa):
    x, y = _clip(0), _clip(1)
    with torch.no_grad():
        assert trepa(x, x.clone()).item() < 1e-12
        loss = trepa(x, y)
    assert loss.ndim == 0 and loss.item() > 0
    assert trepa.model.gradient_checkpointing  # on by default, as LatentSync trains


def test_trepa_matches_reference_preprocessing(trepa):
    x, y = _clip(2), _clip(3)

    def feats(v):  # LatentSync TREPALoss.__call__: bicubic to the ViT size, [-1, 1] -> [0, 1], clamp
        frames = F.interpolate(rearrange(v, "b c f h w -> (b f) c h w"), size=(28, 28), mode="bicubic")
        v = (rearrange(frames, "(b f) c h w -> b c f h w", f=v.shape[2]) / 2 + 0.5).clamp(0, 1)
        return F.normalize(_vit_by_hand(_tiny_state_dict(), TINY, v), p=2, dim=1)

    with torch.no_grad():
        torch.testing.assert_close(trepa(x, y), F.mse_loss(feats(x), feats(y)), rtol=1e-4, atol=1e-7)


def test_trepa_gradients_reach_pred(trepa):
    pred = _clip(4).requires_grad_(True)
    trepa(pred, _clip(5)).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in trepa.parameters())
    trepa.train()
    assert not trepa.model.training


def test_trepa_missing_file(tmp_path):
    path = CheckpointLayout(tmp_path).videomae
    with pytest.raises(CheckpointError, match=str(path)):
        TREPALoss(path)


# ---- SyncNet cosine BCE ----------------------------------------------------------------------------------------

def test_cosine_bce_by_hand():
    vision = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [1.0, 0.0]])
    audio = torch.tensor([[1.0, 1.0], [0.0, 2.0], [6.0, 8.0], [0.0, 5.0]])
    y = torch.tensor([[1.0], [0.0], [1.0], [1.0]])  # (b, 1), as the SyncNet dataset gives it
    # cos = 1/sqrt2, 1/sqrt2, 1 (clamped to 1 - eps), 0 (clamped to eps)
    expected = torch.tensor([-math.log(1 / math.sqrt(2)), -math.log(1 - 1 / math.sqrt(2)),
                             -math.log(1 - COSINE_BCE_EPS), -math.log(COSINE_BCE_EPS)])
    loss = cosine_bce(vision, audio, y, reduction="none")
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(cosine_bce(vision, audio, y), expected.mean())  # the trainers' scalar
    torch.testing.assert_close(cosine_bce(vision[:2], audio[:2], torch.tensor([1.0, 0.0]), reduction="none"),
                               expected[:2])
    torch.testing.assert_close(cosine_bce(vision[:1], audio[:1], 1.0, reduction="none"), expected[:1])
    # Inside [eps, 1 - eps] it is torch's BCE of the cosine similarity (LatentSync's cosine_loss).
    sims = F.cosine_similarity(vision[:2], audio[:2])
    torch.testing.assert_close(cosine_bce(vision[:2], audio[:2], y[:2], reduction="none"),
                               F.binary_cross_entropy(sims, y[:2, 0], reduction="none"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # usable inside an autocast region
        assert cosine_bce(vision, audio, y).dtype == torch.float32
