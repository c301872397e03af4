"""StableSyncNet: published layout, shapes of every config, strict loading, regression, precision, checkpointing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentsync.config import CONFIG_ROOT, load_syncnet_config
from latentsync.errors import CheckpointError
from latentsync.models.syncnet import (
    ResnetBlock2D,
    StableSyncNet,
    load_syncnet,
    save_syncnet_checkpoint,
    syncnet_input_shapes,
)

# The published key list (a copy of shared/spec/syncnet-keys.tsv kept with the tests).
KEYS_TSV = Path(__file__).parent / "data" / "syncnet-keys.tsv"
TINY = "tiny/syncnet"
PUBLISHED_PARAMS = 401_306_080  # stable_syncnet.pt (spec 5.1)

# Embedding width of every packaged config (the last entry of block_out_channels of each tower).
EMBED_DIMS = {
    "syncnet_16_pixel_attn": 2048,
    "syncnet_16_pixel": 2048,
    "syncnet_16_latent": 1024,
    "syncnet_25_pixel": 1024,
    "tiny/syncnet": 64,
}
INPUT_SHAPES = {
    "syncnet_16_pixel_attn": ((48, 128, 256), (1, 80, 52)),
    "syncnet_16_pixel": ((48, 128, 256), (1, 80, 52)),
    "syncnet_16_latent": ((64, 32, 32), (1, 80, 52)),
    "syncnet_25_pixel": ((75, 128, 256), (1, 80, 80)),
    "tiny/syncnet": ((48, 128, 256), (1, 80, 52)),
}


def _published_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS_TSV.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split("\t")
        out[name] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return out


def _perturbed_tiny(seed: int = 0) -> StableSyncNet:
    """The tiny net with every tensor moved away from its init (GroupNorm ones/zeros included)."""
    torch.manual_seed(seed)
    net = StableSyncNet(load_syncnet_config(TINY).model)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    visual, audio = INPUT_SHAPES[TINY]
    return torch.randn(batch, *visual, generator=g), torch.randn(batch, *audio, generator=g)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> tuple[Path, StableSyncNet]:
    path = tmp_path_factory.mktemp("syncnet") / "tiny_syncnet.pt"
    net = _perturbed_tiny()
    save_syncnet_checkpoint(net, path, global_step=7, train_step_list=[5], train_loss_list=[0.69])
    return path, net


# -- layout ------------------------------------------------------------------------------------------------


def test_published_layout_names_shapes_and_count():
    with torch.device("meta"):
        net = StableSyncNet(load_syncnet_config("syncnet_16_pixel_attn").model)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = _published_keys()
    assert len(expected) == 266
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS


@pytest.mark.parametrize("name", sorted(EMBED_DIMS))
def test_every_config_builds_and_embeds_on_meta(name):
    cfg = load_syncnet_config(name)
    assert syncnet_input_shapes(cfg) == INPUT_SHAPES[name]
    visual, audio = INPUT_SHAPES[name]
    with torch.device("meta"):
        net = StableSyncNet(cfg.model)
        v, a = net(torch.empty(3, *visual), torch.empty(3, *audio))
    assert tuple(v.shape) == (3, EMBED_DIMS[name])
    assert tuple(a.shape) == (3, EMBED_DIMS[name])
    has_attn = any(".attn." in k for k in net.state_dict())
    assert has_attn == (name in ("syncnet_16_pixel_attn", "tiny/syncnet"))


def test_config_files_listed_here_cover_the_package():
    packaged = {p.stem for p in (CONFIG_ROOT / "syncnet").glob("*.yaml")} | {TINY}
    assert packaged == set(EMBED_DIMS)


# -- loading and regression --------------------------------------------------------------------------------


def test_tiny_checkpoint_roundtrip_and_seeded_regression(tiny_ckpt):
    path, original = tiny_ckpt
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "global_step", "train_step_list", "train_loss_list",
                          "val_step_list", "val_loss_list"}  # fmt: skip
    assert saved["global_step"] == 7 and saved["train_loss_list"] == [0.69] and saved["val_step_list"] == []
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed into place

    net = load_syncnet(TINY, path)
    assert not net.training
    # The towers' last features before GroupNorm+ReLU: at 1x1 a group of two channels normalises to about
    # +-1, so the embeddings alone would hide most numerical drift in the deep layers.
    features = {}
    for tower in ("visual_encoder", "audio_encoder"):
        getattr(net, tower).norm_out.register_forward_pre_hook(
            lambda module, args, tower=tower: features.__setitem__(tower, args[0])
        )
    x_v, x_a = _inputs()
    with torch.no_grad():
        v, a = net(x_v, x_a)
        v0, a0 = original.eval()(x_v, x_a)
    torch.testing.assert_close(v, v0, rtol=0, atol=0)
    torch.testing.assert_close(a, a0, rtol=0, atol=0)

    assert v.shape == a.shape == (2, 64)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2), rtol=0, atol=1e-5)
    assert (v >= 0).all() and (a >= 0).all()
    # Expected values produced once by running this code (torch 2.13, CPU, fp32); a change in the
    # architecture, the padding, the attention or the parameter order shows up here.
    expected = {
        "vision_embeds": (v[:, :6], [[0.17457, 0.0, 0.16615, 0.0, 0.16671, 0.0],
                                     [0.0, 0.17100, 0.16557, 0.0, 0.0, 0.15699]]),
        "audio_embeds": (a[:, :6], [[0.0, 0.18517, 0.0, 0.18361, 0.0, 0.16367],
                                    [0.17003, 0.0, 0.17255, 0.0, 0.17725, 0.0]]),
        "cosine": ((v * a).sum(dim=1), [0.42573, 0.53816]),
        "visual_features": (features["visual_encoder"].flatten(1)[:, :6],
                            [[4.22955, 1.87550, -0.92324, -2.07338, -1.79581, -3.09474],
                             [-0.94115, 1.33081, -0.70603, -1.48895, -0.84670, 3.47421]]),
        "audio_features": (features["audio_encoder"].flatten(1)[:, :6],
                           [[0.84852, 2.14464, -0.48802, 2.46939, -6.24638, 2.94734],
                            [6.09472, 1.35682, 3.96663, 2.95658, 0.30889, -2.02376]]),
    }  # fmt: skip
    # The embeddings come out of that ill-conditioned GroupNorm, which turns the features' ~1e-6 differences
    # between CPU kernels (AVX2 / AVX-512) into ~1e-4: they get a looser tolerance than the features.
    tolerance = {"vision_embeds": 5e-4, "audio_embeds": 5e-4, "cosine": 5e-4}
    for name, (got, want) in expected.items():
        torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=tolerance.get(name, 1e-4), msg=name)


@pytest.mark.parametrize("damage", ["missing", "wrong_shape"])
def test_mismatched_checkpoint_names_file_and_key(tiny_ckpt, tmp_path, damage):
    path, _ = tiny_ckpt
    state_dict = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    key = "visual_encoder.down_blocks.5.attn.to_q.bias"  # stage 4's attention block, at its own index
    assert key in state_dict
    if damage == "missing":
        del state_dict[key]
    else:
        state_dict[key] = torch.zeros(3)
    bad = tmp_path / f"{damage}.pt"
    torch.save({"state_dict": state_dict, "global_step": 0}, bad)
    with pytest.raises(CheckpointError) as info:
        load_syncnet(TINY, bad)
    message = str(info.value)
    assert str(bad) in message and key in message
    assert ("missing" if damage == "missing" else "(3,)") in message


def test_bfloat16_and_safetensors(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    path, original = tiny_ckpt
    x_v, x_a = _inputs()
    with torch.no_grad():
        ref_v, ref_a = original.eval()(x_v, x_a)

    net16 = load_syncnet(TINY, path, dtype=torch.bfloat16)
    assert {p.dtype for p in net16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        v, a = net16(x_v.bfloat16(), x_a.bfloat16())
    assert v.dtype == a.dtype == torch.bfloat16
    # At 1x1, GroupNorm over channel pairs + ReLU keeps whichever of two close values is larger, so bf16
    # rounding may swap a pair; nearly all entries must still agree with fp32.
    for got, ref in ((v, ref_v), (a, ref_a)):
        close = (got.float() - ref).abs() < 0.02
        assert close.float().mean() > 0.9

    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(st))
    net_st = load_syncnet(TINY, st)
    with torch.no_grad():
        v, a = net_st(x_v, x_a)
    torch.testing.assert_close(v, ref_v, rtol=0, atol=0)
    torch.testing.assert_close(a, ref_a, rtol=0, atol=0)


# -- training ----------------------------------------------------------------------------------------------


def _loss_grads_and_saved(net: StableSyncNet, x_v, x_a):
    """BCE on the cosine similarity (the SyncNet loss), its gradients, and how many tensors autograd kept."""
    saved = 0

    def pack(t):
        nonlocal saved
        saved += 1
        return t

    net.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        v, a = net(x_v, x_a)
        cos = (v * a).sum(dim=1).clamp(1e-6, 1 - 1e-6)
        loss = F.binary_cross_entropy(cos, torch.tensor([1.0, 0.0]))
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}, saved


def test_gradient_checkpointing_matches_plain_backward():
    net = _perturbed_tiny(seed=3).train()
    x_v, x_a = _inputs(seed=4)
    loss0, grads0, saved0 = _loss_grads_and_saved(net, x_v, x_a)
    net.enable_gradient_checkpointing()
    loss1, grads1, saved1 = _loss_grads_and_saved(net, x_v, x_a)
    # Checkpointed blocks hand autograd nothing but their inputs: far fewer saved activations.
    assert saved1 < saved0 // 3
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    assert grads0.keys() == grads1.keys()
    assert any(g.abs().sum() > 0 for g in grads0.values())
    for k in grads0:
        torch.testing.assert_close(grads1[k], grads0[k], rtol=1e-4, atol=1e-6, msg=k)


# -- downsampling geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factor, expected_hw, sample",
    [
        # Input 11x14. Pads (left, right, top, bottom) then 3x3 conv, stride `factor`, padding 0:
        # (2,1): pad (1,1,0,1) -> 12x16 -> h (12-3)//2+1 = 5, w 16-3+1 = 14; centre tap reads x[2i+1, j]
        ((2, 1), (5, 14), lambda x: x[..., 1::2, :][..., :5, :]),
        # (1,2): pad (0,1,1,1) -> 13x15 -> h 13-3+1 = 11, w (15-3)//2+1 = 7; centre tap reads x[i, 2j+1]
        ((1, 2), (11, 7), lambda x: x[..., :, 1::2][..., :, :7]),
        # 2: pad (0,1,0,1) -> 12x15 -> h 5, w 7; centre tap reads x[2i+1, 2j+1]
        (2, (5, 7), lambda x: x[..., 1::2, 1::2][..., :5, :7]),
        # (2,3): pad (0,1,0,1) -> 12x15 -> h 5, w (15-3)//3+1 = 5; centre tap reads x[2i+1, 3j+1]
        ((2, 3), (5, 5), lambda x: x[..., 1::2, 1::3][..., :5, :5]),
        # 1: no downsample at all
        (1, (11, 14), lambda x: x),
    ],
)
def test_downsample_geometry(factor, expected_hw, sample):
    torch.manual_seed(0)
    assert tuple(ResnetBlock2D(32, 64, factor)(torch.randn(1, 32, 11, 14)).shape) == (1, 64, *expected_hw)

    # With both 3x3 convs zeroed the residual branch adds nothing (block(x) = x before the downsample), and a
    # downsample conv that copies its centre tap shows exactly which input pixel each output comes from.
    block = ResnetBlock2D(32, 32, factor)
    assert (block.downsample_conv is None) == (factor == 1)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
        if block.downsample_conv is not None:
            block.downsample_conv.weight.zero_()
            block.downsample_conv.bias.zero_()
            block.downsample_conv.weight[range(32), range(32), 1, 1] = 1.0
        x = torch.randn(1, 32, 11, 14)
        y = block(x)
    torch.testing.assert_close(y, sample(x), rtol=0, atol=0)
