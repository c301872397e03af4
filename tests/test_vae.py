"""The VAE loader and the sliced encode/decode helpers, on a tiny seeded AutoencoderKL."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from latentsync.errors import CheckpointError
from latentsync.models.vae import VAE_SCALING_FACTOR, decode_frames, encode_frames, load_vae

SIZE = 32  # pixels; 4 latents per side


def _tiny_vae(**overrides) -> AutoencoderKL:
    torch.manual_seed(0)
    config = dict(
        block_out_channels=(32, 32, 64, 64),  # 4 blocks, 3 downsamplings: factor 8 as in sd-vae-ft-mse
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=32,
        latent_channels=4,
        sample_size=SIZE,
    )
    config.update(overrides)
    return AutoencoderKL(**config).eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "sd-vae-ft-mse"
    # Deliberately not LatentSync's values: load_vae must force 0.18215 and 0.
    _tiny_vae(scaling_factor=1.0, shift_factor=0.5).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae(vae_dir):
    return load_vae(vae_dir)


@pytest.fixture(params=["with accelerate", "without accelerate"])
def loader(request, monkeypatch):
    """diffusers loads another way when accelerate is installed (`latentsync[finetune]` brings it): the loader's
    errors and results must not depend on it."""
    import diffusers.utils

    if request.param == "without accelerate":
        monkeypatch.setattr(diffusers.utils, "is_accelerate_available", lambda: False)
    elif not diffusers.utils.is_accelerate_available():
        pytest.skip("accelerate is not installed")
    return request.param


def _frames(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


def test_load_vae_forces_latentsync_settings(vae_dir, vae):
    assert sorted(p.name for p in vae_dir.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert vae.config.scaling_factor == VAE_SCALING_FACTOR == 0.18215
    assert vae.config.shift_factor == 0
    assert not vae.use_slicing and not vae.use_tiling  # encode_frames / decode_frames slice, once
    assert not vae.training
    assert not any(p.requires_grad for p in vae.parameters())
    reference = _tiny_vae(scaling_factor=1.0, shift_factor=0.5)
    for (name, a), (_, b) in zip(vae.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name  # the saved weights, not a fresh init

    bf16 = load_vae(vae_dir, device="cpu", dtype=torch.bfloat16, slicing=True, tiling=True)
    assert bf16.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert bf16.use_slicing and bf16.use_tiling
    latents = encode_frames(bf16, _frames(2), sample=False)  # fp32 input, bf16 model
    assert latents.dtype == torch.bfloat16


def test_load_vae_reads_bin_weights(loader, tmp_path):
    _tiny_vae().save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    assert load_vae(tmp_path).config.scaling_factor == VAE_SCALING_FACTOR


def test_encode_is_the_scaled_posterior_mean_when_not_sampling(vae):
    x = _frames(3)
    with torch.no_grad():
        latents = encode_frames(vae, x, sample=False)
        expected = vae.encode(x).latent_dist.mean * 0.18215
    assert latents.shape == (3, 4, SIZE // 8, SIZE // 8)
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, expected)


def test_encode_samples_reproducibly_with_a_generator(vae):
    x = _frames(3)
    with torch.no_grad():
        a = encode_frames(vae, x, generator=torch.Generator().manual_seed(7))
        b = encode_frames(vae, x, generator=torch.Generator().manual_seed(7))
        c = encode_frames(vae, x, generator=torch.Generator().manual_seed(8))
        mean = encode_frames(vae, x, sample=False)
        posterior = vae.encode(x).latent_dist
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, mean)
    # A sample, not noise of some other scale: it lies within a few posterior std of the mean.
    assert ((a - mean).abs() <= 6 * posterior.std * 0.18215).all()


def test_slicing_does_not_change_results(vae):
    x = _frames(5)
    calls = []
    hook = vae.encoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        sliced = encode_frames(vae, x, sample=False, slice_size=2)
        whole = encode_frames(vae, x, sample=False)
        torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
        # Posterior samples too: the CPU generator's draws do not depend on the slice size.
        drawn = [encode_frames(vae, x, generator=torch.Generator().manual_seed(3), slice_size=size) for size in (1, 2, None)]
        torch.testing.assert_close(drawn[0], drawn[2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(drawn[1], drawn[2], rtol=1e-5, atol=1e-5)
        pixels_sliced = decode_frames(vae, whole, slice_size=2)
        pixels_whole = decode_frames(vae, whole)
    hook.remove()
    assert calls[:4] == [2, 2, 1, 5]  # sliced once: by slice_size, and not again inside diffusers
    torch.testing.assert_close(pixels_sliced, pixels_whole, rtol=1e-5, atol=1e-5)


def test_decode_inverts_the_scaling(vae):
    x = _frames(2)
    with torch.no_grad():
        latents = encode_frames(vae, x, sample=False)
        pixels = decode_frames(vae, latents)
        expected = vae.decode(latents / 0.18215).sample
    assert pixels.shape == x.shape
    torch.testing.assert_close(pixels, expected)


def test_decode_passes_gradients_to_latents(vae):
    latents = torch.zeros(1, 4, SIZE // 8, SIZE // 8, requires_grad=True)
    decode_frames(vae, latents).square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nowhere")):
        load_vae(tmp_path / "nowhere")


def test_folder_without_weights(vae_dir, tmp_path):
    (tmp_path / "config.json").write_text((vae_dir / "config.json").read_text())
    with pytest.raises(CheckpointError) as info:
        load_vae(tmp_path)
    assert str(tmp_path) in str(info.value) and "weights" in str(info.value)


def test_folder_without_config(vae_dir, tmp_path):
    name = "diffusion_pytorch_model.safetensors"
    (tmp_path / name).write_bytes((vae_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(tmp_path)


def test_corrupt_weights(loader, vae_dir, tmp_path):
    (tmp_path / "config.json").write_text((vae_dir / "config.json").read_text())
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(CheckpointError) as info:
        load_vae(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(tmp_path)


def test_weights_for_another_config(loader, vae_dir, tmp_path):
    config = json.loads((vae_dir / "config.json").read_text())
    config["block_out_channels"] = [32, 32, 64, 128]  # the file's last block has 64 channels
    (tmp_path / "config.json").write_text(json.dumps(config))
    name = "diffusion_pytorch_model.safetensors"
    (tmp_path / name).write_bytes((vae_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match=str(tmp_path)) as info:
        load_vae(tmp_path)
    message = str(info.value)
    assert "other shapes" in message and "(64,) vs (128,)" in message and "\n" not in message  # file vs config


def test_weights_with_a_missing_tensor(loader, vae_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    (tmp_path / "config.json").write_text((vae_dir / "config.json").read_text())
    state = load_file(vae_dir / "diffusion_pytorch_model.safetensors")
    del state["decoder.conv_out.weight"]
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        load_vae(tmp_path)
