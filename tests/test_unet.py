"""UNet3DConditionModel: published names and shapes, strict loading, the numbers-changing quirks, and
parity with independent implementations (diffusers' SD UNet and AnimateDiff transformer)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file

from latentsync.config import MotionModuleConfig, load_unet_config
from latentsync.errors import CheckpointError
from latentsync.models import UNet3DConditionModel, load_unet
from latentsync.models.motion_module import MotionModule
from latentsync.models.resnet import FrameGroupNorm
from latentsync.models.unet import save_unet_checkpoint

# The published key list (a copy of shared/spec/unet-keys.tsv kept with the tests).
KEYS_TSV = Path(__file__).parent / "data" / "unet-keys.tsv"


def published_unet_keys() -> dict[str, tuple]:
    rows = {}
    for line in KEYS_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        rows[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return rows


def meta_unet(name: str, **changes) -> UNet3DConditionModel:
    model_cfg = dataclasses.replace(load_unet_config(name).model, **changes)
    with torch.device("meta"):
        return UNet3DConditionModel(model_cfg)


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Random weights with nothing left at an exact zero/one init (zero-initialised layers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def tiny_unet(seed: int = 0, **changes) -> UNet3DConditionModel:
    cfg = dataclasses.replace(load_unet_config("tiny/unet").model, **changes)
    torch.manual_seed(seed)
    return perturb_(UNet3DConditionModel(cfg), seed + 1).eval()


def tiny_inputs(b=1, f=4, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 13, f, hw, hw, generator=g), torch.randn(b * f, 50, 384, generator=g))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("unet") / "latentsync_unet.pt"
    save_unet_checkpoint(tiny_unet(), path, global_step=123)
    return path


# --------------------------------------------------------------------------------------------------------
# Published layout
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stage2", "stage2_512"])
def test_full_size_names_and_shapes_match_published_checkpoint(name):
    ours = {k: tuple(v.shape) for k, v in meta_unet(name).state_dict().items()}
    assert ours == published_unet_keys()


@pytest.mark.parametrize(
    "name, params",
    [("stage1", 849_962_244), ("stage1_512", 849_962_244), ("stage2", 1_267_099_844),
     ("stage2_512", 1_267_099_844), ("stage2_efficient", 1_100_244_804)],
)
def test_parameter_counts_match_published_models(name, params):
    assert sum(p.numel() for p in meta_unet(name).parameters()) == params


def test_position_encodings_are_persistent_buffers_of_24_frames():
    pe_keys = [k for k in meta_unet("stage2").state_dict() if k.endswith("pos_encoder.pe")]
    assert len(pe_keys) == 40
    model = load_unet("tiny/unet")
    pe = model.down_blocks[0].motion_modules[0].temporal_transformer.transformer_blocks[0] \
        .attention_blocks[0].pos_encoder.pe
    assert pe.shape == (1, 24, 32)
    pos = torch.arange(24.0)[:, None]
    div = torch.exp(torch.arange(0, 32, 2) * (-torch.log(torch.tensor(10000.0)) / 32))
    torch.testing.assert_close(pe[0, :, 0::2], torch.sin(pos * div))
    torch.testing.assert_close(pe[0, :, 1::2], torch.cos(pos * div))


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def test_published_format_loads_strictly_and_forward_is_pinned(tiny_checkpoint):
    model = load_unet("tiny/unet", tiny_checkpoint)
    assert not model.training
    x, audio = tiny_inputs()
    with torch.no_grad():
        out = model(x, torch.tensor([501]), encoder_hidden_states=audio)
    assert out.shape == (1, 4, 4, 8, 8)
    # Seeded regression: produced by this implementation once its parity tests (below) passed.
    expected = torch.tensor([0.46169, 1.44533, 1.21544, 1.06972, 0.32798, -0.11069])
    torch.testing.assert_close(out[0, :, 0, 3, 2:5].flatten()[:6], expected, atol=2e-4, rtol=1e-3)


def test_bare_state_dict_and_safetensors_load_identically(tiny_checkpoint, tmp_path):
    reference = load_unet("tiny/unet", tiny_checkpoint)
    state = reference.state_dict()
    torch.save(state, tmp_path / "bare.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "unet.safetensors"))
    x, audio = tiny_inputs()
    with torch.no_grad():
        want = reference(x, 10, audio)
        for path in (tmp_path / "bare.pt", tmp_path / "unet.safetensors"):
            torch.testing.assert_close(load_unet("tiny/unet", path)(x, 10, audio), want, atol=0, rtol=0)


def test_checkpoint_without_position_encodings_loads(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    kept = {k: v for k, v in state.items() if not k.endswith("pos_encoder.pe")}
    assert len(kept) < len(state)
    torch.save({"state_dict": kept}, tmp_path / "no_pe.pt")
    model = load_unet("tiny/unet", tmp_path / "no_pe.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_strict_loading_names_file_and_keys(tiny_checkpoint, tmp_path, change):
    state = dict(torch.load(tiny_checkpoint, weights_only=True)["state_dict"])
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    if change == "missing":
        del state[key]
    elif change == "unexpected":
        state["down_blocks.0.extra.weight"] = torch.zeros(1)
        key = "down_blocks.0.extra.weight"
    else:
        state[key] = torch.zeros(32, 768)
    path = tmp_path / f"{change}.pt"
    torch.save({"global_step": 1, "state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_unet("tiny/unet", path)
    message = str(err.value)
    assert str(path) in message and key in message and "\n" not in message
    assert {"missing": "1 missing", "unexpected": "1 unexpected", "shape": "(32, 768) vs (32, 384)"}[change] in message


def test_stage1_checkpoint_into_stage2_config_explains_itself(tmp_path):
    stage1 = load_unet(dataclasses.asdict(load_unet_config("tiny/unet")) | {
        "model": dataclasses.asdict(dataclasses.replace(load_unet_config("tiny/unet").model, use_motion_module=False))
    })
    save_unet_checkpoint(stage1, tmp_path / "stage1.pt")
    with pytest.raises(CheckpointError, match="stage-1"):
        load_unet("tiny/unet", tmp_path / "stage1.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_unreadable_checkpoint_is_one_line_error(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pt: not a readable PyTorch checkpoint"):
        load_unet("tiny/unet", path)
    with pytest.raises(CheckpointError, match="weight file not found"):
        load_unet("tiny/unet", tmp_path / "absent.pt")


def test_same_dtype_cpu_load_maps_the_file_instead_of_copying(tiny_checkpoint):
    """Weights are assigned from the memory-mapped file: no second copy of the checkpoint in RAM."""
    model = load_unet("tiny/unet", tiny_checkpoint)
    ptr = model.down_blocks[0].resnets[0].conv1.weight.data_ptr()
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(tiny_checkpoint.resolve()):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            regions.append((lo, hi))
    assert any(lo <= ptr < hi for lo, hi in regions)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loads_and_runs_in_half_precision(tiny_checkpoint, dtype):
    model = load_unet("tiny/unet", tiny_checkpoint, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert {b.dtype for b in model.buffers()} == {dtype}
    x, audio = tiny_inputs()
    with torch.no_grad():
        out = model(x, 300, audio)
        ref = load_unet("tiny/unet", tiny_checkpoint)(x, 300, audio)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # bf16 keeps 8 mantissa bits to fp16's 10: its rounding error through the whole network is about 4x larger
    # (measured ~5% of the mean output with AVX-512 bf16 kernels, ~2% elsewhere); a broken path is off by ~100%.
    bound = 0.1 if dtype == torch.bfloat16 else 0.05
    assert (out.float() - ref).abs().mean() < bound * ref.abs().mean()


# --------------------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------------------


def test_matches_diffusers_sd_unet_on_single_frames():
    """With one frame and no temporal layers our UNet is SD 1.5's: load our weights into diffusers'
    UNet2DConditionModel (attention_head_dim 8 = 8 heads there too) and compare outputs."""
    from diffusers import UNet2DConditionModel

    ours = tiny_unet(use_motion_module=False)
    cfg = ours.config
    theirs = UNet2DConditionModel(
        sample_size=8, in_channels=13, out_channels=4, block_out_channels=cfg.block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=cfg.layers_per_block, cross_attention_dim=384, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x, audio = tiny_inputs(b=2, f=1, hw=16)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        want = theirs(x[:, :, 0], t, encoder_hidden_states=audio).sample
        got = ours(x, t, audio)[:, :, 0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_motion_module_matches_animatediff_with_per_frame_norm():
    """Our temporal layer against diffusers' AnimateDiff transformer. diffusers pools that GroupNorm over
    frames; the published LatentSync/AnimateDiff-v1 module normalises each frame (spec 3.2), so diffusers'
    norm is applied per frame for the comparison; everything else (position encoding on the normalised input
    only, two temporal self-attentions, GEGLU) must agree exactly."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    channels = 64
    torch.manual_seed(0)
    ours = perturb_(MotionModule(channels, MotionModuleConfig()), 3, scale=0.1).eval()
    theirs = AnimateDiffTransformer3D(
        num_attention_heads=8, attention_head_dim=channels // 8, in_channels=channels, num_layers=1,
        norm_num_groups=32, cross_attention_dim=None, double_self_attention=True, activation_fn="geglu",
        positional_embeddings="sinusoidal", num_positional_embeddings=24, attention_bias=False,
    ).eval()
    rename = {"attention_blocks.0": "attn1", "attention_blocks.1": "attn2", "norms.0": "norm1",
              "norms.1": "norm2", "ff_norm": "norm3", "temporal_transformer.": ""}
    state = {}
    for k, v in ours.state_dict().items():
        if not k.endswith("pos_encoder.pe"):
            for a, b in rename.items():
                k = k.replace(a, b)
            state[k] = v
    theirs.load_state_dict(state, strict=False)
    class PerFrameNorm(torch.nn.Module):  # (b, c, f, h, w) normalised frame by frame
        def __init__(self, norm):
            super().__init__()
            self.norm = norm

        def forward(self, x):
            frames = rearrange(x, "b c f h w -> (b f) c h w")
            return rearrange(self.norm(frames), "(b f) c h w -> b c f h w", f=x.shape[2])

    theirs.norm = PerFrameNorm(theirs.norm)
    x = torch.randn(2 * 12, channels, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, 12), theirs(x, num_frames=12), atol=1e-5, rtol=1e-5)


def test_frame_group_norm_pools_statistics_over_frames():
    norm = FrameGroupNorm(4, 8, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2 * 5, 8, 3, 3)
    want = torch.nn.GroupNorm(4, 8, eps=1e-5).requires_grad_(False)
    want.weight.copy_(norm.weight)
    want.bias.copy_(norm.bias)
    five_d = rearrange(x, "(b f) c h w -> b c f h w", f=5)
    torch.testing.assert_close(norm(x, 5), rearrange(want(five_d), "b c f h w -> (b f) c h w"))
    assert not torch.allclose(norm(x, 5), norm(x, 1))


def test_frames_influence_each_other_even_without_temporal_layers():
    """Published quirk: a frame's output depends on the rest of its chunk through GroupNorm statistics."""
    model = tiny_unet(use_motion_module=False)
    x, audio = tiny_inputs(f=4)
    changed = x.clone()
    changed[:, :, 1] += 1.0
    with torch.no_grad():
        base = model(x, 50, audio)
        other = model(changed, 50, audio)
        alone = model(x[:, :, :1], 50, audio[:1])
    assert (base[:, :, 0] - other[:, :, 0]).abs().max() > 1e-3
    assert (base[:, :, 0] - alone[:, :, 0]).abs().max() > 1e-3


def test_audio_token_layouts_are_equivalent_and_checked():
    model = tiny_unet()
    x, audio = tiny_inputs(b=2, f=3)
    with torch.no_grad():
        flat = model(x, 100, audio)
        nested = model(x, 100, audio.reshape(2, 3, 50, 384))
        per_sample_t = model(x, torch.tensor([100, 100]), audio)
        no_audio = model(x, 100, torch.zeros_like(audio))
    torch.testing.assert_close(flat, nested, atol=0, rtol=0)
    torch.testing.assert_close(flat, per_sample_t, atol=0, rtol=0)
    assert (flat - no_audio).abs().max() > 1e-3  # the audio actually conditions the output
    with pytest.raises(ValueError, match="do not fit 2 x 3 frames"):
        model(x, 100, audio[:5])


def test_zero_audio_makes_cross_attention_return_its_bias():
    """The unconditional (CFG) branch feeds all-zero audio: attn2 then outputs only to_out's bias."""
    attn = tiny_unet().down_blocks[0].attentions[0].transformer_blocks[0].attn2
    with torch.no_grad():
        out = attn(torch.randn(3, 7, 32), torch.zeros(3, 50, 384))
    torch.testing.assert_close(out, attn.to_out[0].bias.expand(3, 7, 32))


def test_chunks_are_capped_by_the_position_encoding():
    model = tiny_unet()
    x, audio = tiny_inputs(f=25, hw=8)
    with pytest.raises(ValueError, match="exceed the temporal position encoding"):
        model(x, 1, audio)


def test_odd_latent_sizes_keep_their_shape():
    model = tiny_unet()
    x = torch.randn(1, 13, 2, 10, 14)
    with torch.no_grad():
        assert model(x, 1, torch.randn(2, 50, 384)).shape == (1, 4, 2, 10, 14)


def test_gradient_checkpointing_gives_identical_gradients():
    x, audio = tiny_inputs(f=2)

    def grads(checkpointing: bool):
        model = tiny_unet().train()
        model.enable_gradient_checkpointing(checkpointing)
        model(x, 400, audio).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 100
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Initialisation from Stable Diffusion 1.5
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory) -> Path:
    """A tiny SD-1.5-style diffusers UNet (4 input channels, 768-d text cross-attention) saved as diffusers does."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    sd = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )
    folder = tmp_path_factory.mktemp("sd15")
    sd.save_pretrained(folder / "unet")
    return folder


def test_sd15_initialisation_keeps_what_fits_and_reports_the_rest(sd15_folder):
    from safetensors.torch import load_file

    sd = load_file(str(sd15_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    model = load_unet("tiny/unet", sd15_folder, from_sd15=True)
    report = model.load_report
    state = model.state_dict()
    dropped = {k for k, _, _ in report.dropped}
    assert {"conv_in.weight", "conv_in.bias"} <= dropped
    assert all(k.startswith("conv_in.") or ".attn2.to_k." in k or ".attn2.to_v." in k for k in dropped)
    assert len([k for k in dropped if "attn2" in k]) == 2 * 10  # 10 spatial transformers: 3 down, 1 mid, 6 up
    assert torch.count_nonzero(state["conv_in.weight"]) == 0  # stays zero-initialised, as published
    for k, v in sd.items():
        if k not in dropped:
            torch.testing.assert_close(state[k], v, atol=0, rtol=0)
    assert any("motion_modules" in k for k in report.fresh)
    assert "dropped" in report.summary()
    # Fresh temporal layers are the identity: outputs equal a UNet without them.
    plain = load_unet({"model": dataclasses.asdict(dataclasses.replace(
        load_unet_config("tiny/unet").model, use_motion_module=False))}, sd15_folder, from_sd15=True)
    with torch.no_grad():
        torch.nn.init.normal_(model.conv_in.weight, std=0.1)
        plain.conv_in.weight.copy_(model.conv_in.weight)
        for name, p in plain.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.copy_(state[name])
        x, audio = tiny_inputs(f=3)
        torch.testing.assert_close(model(x, 20, audio), plain(x, 20, audio), atol=1e-5, rtol=1e-5)


def test_sd15_initialisation_rejects_other_networks(tmp_path, tiny_checkpoint):
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, tmp_path / "v1.ckpt")
    with pytest.raises(CheckpointError, match="not a Stable Diffusion 1.5 UNet in diffusers format"):
        load_unet("tiny/unet", tmp_path / "v1.ckpt", from_sd15=True)
    with pytest.raises(CheckpointError, match="no diffusers UNet weights"):
        load_unet("tiny/unet", tmp_path, from_sd15=True)


def test_saved_checkpoint_is_the_published_format(tmp_path):
    model = tiny_unet()
    path = save_unet_checkpoint(model, tmp_path / "out" / "checkpoint-5.pt", global_step=5)
    stored = torch.load(path, weights_only=True)
    assert set(stored) == {"global_step", "state_dict"} and stored["global_step"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint-5.pt"]  # no temporary files left behind


# --------------------------------------------------------------------------------------------------------
# DeepCache
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branch", [0, 1])
def test_deep_cache_shallow_step_reproduces_the_full_step(branch):
    """On the same input and timestep, the shallow path fed the features kept by the full pass must give the
    full pass's output: the right layer is cached and the fresh skips are the right ones."""
    from latentsync.models.unet import DeepCache

    model = tiny_unet()
    x, audio = tiny_inputs(f=3)
    cache = DeepCache(interval=3, branch=branch)
    with torch.no_grad():
        full = model(x, 400, audio, deep_cache=cache)
        assert cache.features is not None and not cache.full_step
        shallow = model(x, 400, audio, deep_cache=cache)
    torch.testing.assert_close(shallow, full, atol=1e-5, rtol=1e-5)


def test_deep_cache_skips_the_deep_layers_between_full_steps(monkeypatch):
    from latentsync.models.unet import DeepCache

    model = tiny_unet()
    calls = []
    mid = model.mid_block.forward
    monkeypatch.setattr(model.mid_block, "forward", lambda *a, **k: calls.append(1) or mid(*a, **k))
    x, audio = tiny_inputs(f=2)
    cache = DeepCache(interval=3)
    outputs = []
    with torch.no_grad():
        for step, t in enumerate([900, 800, 700, 600, 500]):
            outputs.append(model(x + 0.1 * step, t, audio, deep_cache=cache))
    assert len(calls) == 2  # full passes at calls 0 and 3 only
    assert not torch.allclose(outputs[1], outputs[2])  # shallow steps still follow their input and timestep
    with pytest.raises(ValueError, match="exceeds"):
        model(x, 1, audio, deep_cache=DeepCache(branch=2))  # the tiny UNet has one layer per down block


def test_deep_cache_with_interval_one_is_exact():
    from latentsync.models.unet import DeepCache

    model = tiny_unet()
    x, audio = tiny_inputs(f=2)
    cache = DeepCache(interval=1)
    with torch.no_grad():
        for t in (900, 500):
            torch.testing.assert_close(model(x, t, audio, deep_cache=cache), model(x, t, audio), atol=0, rtol=0)
