"""The Stable Diffusion VAE (`stabilityai/sd-vae-ft-mse`) that maps 8x8 pixel patches to 4 latent channels.

LatentSync uses diffusers' `AutoencoderKL` as published, with `scaling_factor = 0.18215` and `shift_factor = 0`
forced (spec 2.1), and encodes with a posterior *sample*, not the mean (spec 2.2 step 8). We load it from a
local folder only (`latentsync download` puts it at `checkpoints/sd-vae-ft-mse/`), so inference never reaches
the network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from .checkpoint import compare_keys, expected_shapes, resolve_device

log = logging.getLogger(__name__)

VAE_SCALING_FACTOR = 0.18215  # SD 1.x latent scale (Rombach et al. 2022, sec. 4.3.2 / D.1)
VAE_SHIFT_FACTOR = 0.0
VAE_DOWNSAMPLING = 8  # pixels per latent along each side
VAE_LATENT_CHANNELS = 4
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# The architecture of `stabilityai/sd-vae-ft-mse` (its config.json), for full-size random-weight benchmarks and
# memory estimates.
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=256,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)


def _check_folder(path: Path) -> dict:
    """Raise CheckpointError, naming what is missing, unless `path` looks like a diffusers VAE folder; returns
    its config."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: VAE folder not found (expected config.json and "
                              f"{VAE_WEIGHT_FILES[0]}); run `latentsync download`")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path}: VAE folder has no config.json")
    try:
        parsed = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config}: not a readable JSON config ({str(e)[:200]})") from None
    if not isinstance(parsed, dict) or parsed.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise CheckpointError(f"{config}: not an AutoencoderKL config")
    if not any((path / name).is_file() for name in VAE_WEIGHT_FILES):
        raise CheckpointError(f"{path}: VAE folder has no weights ({' or '.join(VAE_WEIGHT_FILES)})")
    return parsed


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a weight file, without reading its tensors' data where the format allows
    (a safetensors header; a torch pickle is memory-mapped)."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to replace
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"{path}: cannot read the VAE weights ({detail})") from None


def _check_weights(path: Path, config: dict) -> list[str]:
    """CheckpointError in one line when the weight file of the folder `path` lacks a tensor of `config`'s
    AutoencoderKL or holds one of another shape; returns the names it holds beyond them. Checked here because
    diffusers reports these differently with and without `accelerate` (with it, a missing tensor surfaces as
    "Cannot copy out of meta tensor")."""
    from diffusers import AutoencoderKL

    weights = next(path / name for name in VAE_WEIGHT_FILES if (path / name).is_file())
    found = {k: torch.empty(shape, device="meta") for k, shape in _file_shapes(weights).items()}
    try:
        with torch.device("meta"):
            model = AutoencoderKL.from_config(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: not a usable AutoencoderKL config ({e})") from None
    report = compare_keys(expected_shapes(model), found)
    if report.missing or report.mismatched:
        report.unexpected = []
        raise CheckpointError(f"{weights}: VAE weights do not match its config: {report.summary()}")
    return report.unexpected


def load_vae(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    slicing: bool = False,
    tiling: bool = False,
):
    """The VAE in the diffusers folder `path`, frozen, in eval mode, on `device` in `dtype`.

    `scaling_factor` and `shift_factor` are forced to LatentSync's values whatever the config says. Slicing
    (one frame at a time inside `vae.encode`/`vae.decode`) is on by default; tiling (overlapping tiles, for
    frames much larger than faces) is off. With `accelerate` installed the weights are loaded straight onto
    `device`; without it diffusers builds the model on the CPU already in `dtype` (no fp32 copy, no random
    init) and we move it. Raises CheckpointError naming the path when the folder, its config or its weights are
    missing or unreadable, or the weights do not fit the config (checked before diffusers loads them, so the
    message is the same with and without accelerate).
    """
    from diffusers import AutoencoderKL
    from diffusers.utils import is_accelerate_available

    path = Path(path)
    device = resolve_device(device)
    unused = _check_weights(path, _check_folder(path))
    kwargs: dict = dict(
        torch_dtype=dtype,
        local_files_only=True,
        output_loading_info=True,
        scaling_factor=VAE_SCALING_FACTOR,
        shift_factor=VAE_SHIFT_FACTOR,
    )
    if is_accelerate_available():
        kwargs.update(low_cpu_mem_usage=True, device_map={"": str(device)})
    else:
        kwargs.update(low_cpu_mem_usage=False)  # the default would only log that accelerate is missing
    try:
        vae, info = AutoencoderKL.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as e:
        # diffusers reports unreadable or mismatching weights with these; torch's shape report spans lines.
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise CheckpointError(f"{path}: cannot load the VAE ({detail})") from None
    if unused:
        log.warning("%s: %d unused VAE weights (%s)", path, len(unused), ", ".join(unused[:3]))

    vae.to(device).eval().requires_grad_(False)
    if slicing:
        vae.enable_slicing()
    if tiling:
        vae.enable_tiling()
    return vae


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels of shape (n, 3, h, w), got {tuple(pixels.shape)}")
    if pixels.shape[-1] % VAE_DOWNSAMPLING or pixels.shape[-2] % VAE_DOWNSAMPLING:
        raise ValueError(f"frame size {tuple(pixels.shape[-2:])} is not a multiple of {VAE_DOWNSAMPLING}")


def encode_frames(
    vae,
    pixels: torch.Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
    slice_size: int | None = None,
) -> torch.Tensor:
    """Frames (n, 3, h, w) in [-1, 1] -> scaled latents (n, 4, h/8, w/8), `slice_size` frames per VAE call
    (None: all at once).

    A posterior sample by default, as LatentSync encodes both the masked and the reference frames (spec 2.2);
    `generator` makes it reproducible. With a CPU generator the slice size does not change the latents (the
    draws are taken slice by slice in order, and each slice's count is a multiple of 16, so torch's CPU normal
    sampler gives the same numbers as one draw for all frames). `sample=False` gives the posterior mean. Inputs
    of any dtype/device are cast to the VAE's; the latents are returned in the VAE's dtype on its device. No
    autograd context is imposed: wrap the call in `torch.no_grad()` when no gradient is needed.
    """
    _check_pixels(pixels)
    scale = vae.config.scaling_factor
    shift = vae.config.shift_factor or 0.0
    out = []
    for chunk in pixels.split(slice_size or len(pixels) or 1):  # (s, 3, h, w)
        chunk = chunk.to(device=vae.device, dtype=vae.dtype)
        posterior = vae.encode(chunk).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mean  # (s, 4, h/8, w/8)
        out.append((z - shift) * scale)
    return torch.cat(out)  # (n, 4, h/8, w/8)


def decode_frames(vae, latents: torch.Tensor, slice_size: int | None = None) -> torch.Tensor:
    """Scaled latents (n, 4, h, w) -> frames (n, 3, 8h, 8w), roughly in [-1, 1] but not clamped.

    Decodes `slice_size` frames per VAE call (None: all at once). Latents of any dtype/device are cast to the
    VAE's; the frames are returned in the VAE's dtype on its device. Gradients flow to `latents` (pixel-space
    training losses decode predicted latents), so callers that need none wrap the call in `torch.no_grad()`.
    Callers clamp.
    """
    if latents.ndim != 4:
        raise ValueError(f"expected latents of shape (n, c, h, w), got {tuple(latents.shape)}")
    scale = vae.config.scaling_factor
    shift = vae.config.shift_factor or 0.0
    out = []
    for chunk in latents.split(slice_size or len(latents) or 1):  # (s, 4, h, w)
        chunk = chunk.to(device=vae.device, dtype=vae.dtype)
        out.append(vae.decode(chunk / scale + shift).sample)  # (s, 3, 8h, 8w)
    return torch.cat(out)  # (n, 3, 8h, 8w)
