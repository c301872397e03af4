"""Lip sync on tensors: regenerate the mouth of aligned face crops, chunk by chunk, from audio tokens.

This is the published algorithm (spec 2.2 steps 7-8, 12) with no file paths and no video: `inference.py` owns
reading, face alignment, pasting back and writing. For one chunk of f aligned faces (f <= 24, normally 16):

1. reference = the face in [-1, 1]; masked = reference x mouth mask (the mouth region blacked out);
2. both are VAE-encoded (posterior *samples*, x 0.18215) and the mask is resized to the latent grid (nearest);
3. starting from the job's initial noise (one latent frame, repeated over every frame of the video), DDIM
   runs `num_steps` steps on the 13-channel input `[noisy, mask, masked latents, reference latents]`, with
   classifier-free guidance whose unconditional branch has all-zero audio tokens;
4. the result is decoded and only the mouth region is taken from it, unclamped as in the reference:
   `out = decoded (1 - m) + reference m`; the clamp to [0, 255] comes after the paste-back warp.

`LipSyncPipeline.__call__` follows diffusers' conventions: `generator=`, `latents=` (the initial noise),
`output_type=` ("uint8", "float" faces or the final "latent"s) and `return_dict=`, so the loop can be driven
and tested from given noise; `on_step=` is told each denoising step as it ends (progress bars, a Stop
button). The stages around it are public, each in its module:

- alignment points: `face.insightface.alignment_points` (106 landmarks), `face.mediapipe.mesh_alignment_points`;
- the warp to the aligned face and back: `face.align.align_face`, `face.align.restore_face` / `restore_frames`;
- the mouth mask: `face.mask.mouth_mask`, `mouth_mask_tensor`, `latent_mask_of`;
- the VAE: `models.vae.encode_frames`, `models.vae.decode_frames`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from einops import rearrange, repeat

from .defaults import DEFAULT_GUIDANCE, DEFAULT_SEED, DEFAULT_STEPS  # noqa: F401 - the pipeline's own
from .face.mask import MaskSource, latent_mask_of, mouth_mask_tensor
from .models.attention import feed_forward_rows
from .models.offload import Offloaded, residency
from .models.unet import DeepCache, UNet3DConditionModel
from .models.vae import VAE_DOWNSAMPLING, VAE_LATENT_CHANNELS, decode_frames, encode_frames

log = logging.getLogger(__name__)

# configs/scheduler_config.json of the reference (spec 2.1): SD 1.x's scaled-linear betas, "leading" spacing.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
SCHEDULERS = ("ddim", "dpm++")
CHUNK_FRAMES = 16  # frames per UNet call, as trained; the temporal position encoding allows up to 24


def make_scheduler(kind: str = "ddim"):
    """A fresh diffusers scheduler: "ddim" (the published sampler) or "dpm++" (DPM-Solver++ multistep, which
    reaches similar quality in fewer steps)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    ddim = DDIMScheduler(**SCHEDULER_CONFIG)
    if kind == "ddim":
        return ddim
    if kind == "dpm++":  # the same noise schedule; from_config drops the DDIM-only keys
        return DPMSolverMultistepScheduler.from_config(ddim.config, algorithm_type="dpmsolver++")
    raise ValueError(f"unknown scheduler {kind!r}; expected one of {', '.join(SCHEDULERS)}")


@dataclass
class SamplingOptions:
    """How a chunk is denoised. `guidance_scale <= 1` skips the unconditional branch entirely."""

    num_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    scheduler: str = "ddim"
    eta: float = 0.0
    deepcache_interval: int = 0  # 0: off; 3 is the published pipeline's setting (spec 2.3)
    deepcache_branch: int = 0
    # Run guidance's two branches as two UNet calls of half the batch: half the activation memory (for small
    # GPUs running 1.6), the same results, somewhat slower.
    split_guidance: bool = False
    # Tokens per feed-forward pass inside the UNet (0: all at once); see `models.attention.FeedForward`.
    # The same results; a lower activation peak.
    feed_forward_rows: int = 0
    # Frames per VAE call (0: a whole chunk at once, as the reference). Slicing lowers the VAE's activation
    # peak and gives the same latents; `LipSync` picks it from the memory estimate (`estimate.choose_vae_slice`).
    vae_slice: int = 0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
        if self.feed_forward_rows < 0:
            raise ValueError(f"feed_forward_rows must be 0 or positive, got {self.feed_forward_rows}")
        if self.vae_slice < 0:
            raise ValueError(f"vae_slice must be 0 or positive, got {self.vae_slice}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")


class LipSyncPipeline:
    """UNet + VAE + mouth mask; `__call__` turns a chunk of aligned faces and audio tokens into synced faces.

    Built once and reused for many chunks and jobs; holds no per-job state except what `__call__` is given.
    The device and dtype are the UNet's. `offload_vae`: the VAE's weights stay in host memory and visit the
    device only to encode and decode (low-memory mode; the VAE is idle while the UNet works).
    """

    def __init__(self, unet: UNet3DConditionModel, vae, resolution: int, offload_vae: bool = False):
        if resolution % VAE_DOWNSAMPLING:
            raise ValueError(f"resolution {resolution} is not a multiple of {VAE_DOWNSAMPLING}")
        self.unet, self.vae, self.resolution = unet, vae, resolution
        self.device, self.dtype = unet.device, unet.dtype
        self.vae_offload = Offloaded(vae, self.device) if offload_vae else None
        # 1 = keep, 0 = regenerate; (1, R, R) in pixels and (1, R/8, R/8) on the latent grid.
        self.pixel_mask = mouth_mask_tensor(resolution, device=self.device, dtype=torch.float32)
        self.latent_mask = latent_mask_of(self.pixel_mask).to(dtype=self.dtype)

    @property
    def latent_size(self) -> int:
        return self.resolution // VAE_DOWNSAMPLING

    def initial_noise(self, seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The one latent frame every frame of a job starts from, (1, 4, 1, R/8, R/8) on the UNet's device.

        Drawn on the CPU from `seed` (or from `generator`, a CPU generator), so a seed gives the same video on
        any device."""
        if generator is None:
            generator = torch.Generator().manual_seed(DEFAULT_SEED if seed is None else seed)
        shape = (1, VAE_LATENT_CHANNELS, 1, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=generator).to(self.device, self.dtype)

    def masks(self, mask: torch.Tensor | MaskSource = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (pixel, latent) masks of one call: the published mask when `mask` is None, else the pixel mask
        `(1, R, R)` given (1 = keep) or the mask image at that path (`face.mask.mouth_mask`)."""
        if mask is None:
            return self.pixel_mask, self.latent_mask
        if not isinstance(mask, torch.Tensor):
            mask = mouth_mask_tensor(self.resolution, source=mask)
        if tuple(mask.shape) != (1, self.resolution, self.resolution):
            raise ValueError(f"a mask of shape (1, {self.resolution}, {self.resolution}) was expected, "
                             f"got {tuple(mask.shape)}")
        pixel = mask.to(self.device, torch.float32)
        return pixel, latent_mask_of(pixel).to(dtype=self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        faces: torch.Tensor,
        audio_tokens: torch.Tensor,
        options: SamplingOptions = SamplingOptions(),
        *,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        mask: torch.Tensor | MaskSource = None,
        output_type: Literal["uint8", "float", "latent"] = "uint8",
        return_dict: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ):
        """One chunk: faces (f, R, R, 3) uint8 and audio tokens (f, t, d); or n chunks of equal length in one
        batch: (n, f, R, R, 3) and (n, f, t, d).

        `latents`: the initial noise, one latent frame for every frame `(1, 4, 1, R/8, R/8)` (what
        `initial_noise` gives) or one per frame, `(n, 4, f, R/8, R/8)` (`(4, f, R/8, R/8)` for one chunk);
        None draws one frame as `initial_noise` does, from `generator` when it is a CPU generator (before the
        VAE's draws), else from the default seed. `generator` also drives the VAE's posterior
        samples and a stochastic sampler. `mask`: see `masks`; it applies to this call only.

        `on_step(i, n)`: called with (0, n) when the denoising loop starts (the VAE encoding done), then after
        each step i = 1 ... n, from the calling thread; an exception it raises ends the call (a Stop button).

        `output_type`: "uint8" the synced faces (f, R, R, 3) (rounded and clamped); "float" the same faces as
        float32 in [0, 255] *unclamped*, as the reference hands them to the paste-back (which clamps after its
        warp); "latent" the final latents (n, 4, f, R/8, R/8) undecoded. Faces are on the CPU, shaped like
        `faces`. `return_dict=True` returns a `LipSyncPipelineOutput` with the faces and the final latents.

        A batch of chunks gives the results of calling chunk by chunk: each chunk is its own sample to the UNet,
        so its GroupNorm statistics stay its own, and the VAE encodes chunk by chunk in the same order."""
        if output_type not in ("uint8", "float", "latent"):
            raise ValueError(f"unknown output_type {output_type!r}; expected uint8, float or latent")
        single = faces.dim() == 4
        if single:
            faces, audio_tokens = faces[None], audio_tokens[None]
            if latents is not None and latents.dim() == 4:
                latents = latents[None]
        n, f = faces.shape[:2]
        if audio_tokens.shape[:2] != (n, f):
            raise ValueError(f"{n} x {f} faces but audio tokens for {tuple(audio_tokens.shape[:2])} frames")
        r = self.latent_size
        if latents is None:
            latents = self.initial_noise(generator=generator if _on_cpu(generator) else None)
        if tuple(latents.shape) not in ((1, VAE_LATENT_CHANNELS, 1, r, r), (n, VAE_LATENT_CHANNELS, f, r, r)):
            raise ValueError(f"latents of shape (1, 4, 1, {r}, {r}) or ({n}, 4, {f}, {r}, {r}) were expected, "
                             f"got {tuple(latents.shape)}")
        pixel_mask, latent_mask = self.masks(mask)
        pixels = faces.to(self.device)  # n f R R 3 uint8, kept for the paste at the end
        reference = _unit_range(pixels)  # n f 3 R R
        masked = reference * pixel_mask  # n f 3 R R, mouth region -> 0
        # Chunk by chunk, the masked faces then the reference faces, each in its own VAE calls as the reference
        # (the same posterior draws, in the same order).
        with residency(self.vae_offload):
            encoded = [encode_frames(self.vae, frames[i], generator=generator, slice_size=options.vae_slice or None)
                       for i in range(n) for frames in (masked, reference)]  # 2n x (f 4 r r)
        del reference, masked  # float frames are 8x the uint8 ones; rebuilt after denoising
        encoded = rearrange(torch.stack(encoded).to(self.dtype), "(n two) f c h w -> two n c f h w", two=2)
        conditions = torch.cat([repeat(latent_mask, "c h w -> n c f h w", n=n, f=f), encoded[0], encoded[1]],
                               dim=1)  # n 9 f r r: mask, masked, reference
        del encoded

        audio = rearrange(audio_tokens.to(self.device, self.dtype), "n f t d -> (n f) t d")
        guided = options.guidance_scale > 1.0
        # One UNet call per entry: (audio, DeepCache state). Guidance adds the unconditional branch (all-zero
        # audio), in the same call (batch doubled) or, with split_guidance, in a call of its own.
        branches = [audio] if not guided else [torch.zeros_like(audio), audio]
        if guided and not options.split_guidance:
            branches = [torch.cat(branches)]  # (2 n f) t d: [unconditional, conditional]
        caches = [DeepCache(options.deepcache_interval, options.deepcache_branch) if options.deepcache_interval
                  else None for _ in branches]

        scheduler = make_scheduler(options.scheduler)  # fresh per call: multistep solvers keep history
        # Timesteps stay on the host: the schedulers index their host-side tables with them, which for device
        # timesteps means a device-to-host sync every step.
        scheduler.set_timesteps(options.num_steps)
        x = latents.to(self.device, self.dtype).expand(n, -1, f, -1, -1) * scheduler.init_noise_sigma  # n 4 f r r
        steps = len(scheduler.timesteps)
        if on_step is not None:
            on_step(0, steps)
        # The feed-forward slice is this call's setting (thread-local), never written onto the shared UNet.
        with feed_forward_rows(options.feed_forward_rows):
            for i, t in enumerate(scheduler.timesteps, start=1):
                x_t = scheduler.scale_model_input(x, t)
                eps = torch.cat([
                    self.unet(torch.cat([x_t.repeat(a.shape[0] // (n * f), 1, 1, 1, 1),
                                         conditions.repeat(a.shape[0] // (n * f), 1, 1, 1, 1)], dim=1),
                              t, encoder_hidden_states=a, deep_cache=cache)
                    for a, cache in zip(branches, caches)
                ])  # b 4 f r r, unconditional first when guided
                if guided:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + options.guidance_scale * (eps_cond - eps_uncond)
                x = scheduler.step(eps, t, x, **self._step_kwargs(scheduler, options, generator)).prev_sample
                if on_step is not None:
                    on_step(i, steps)

        out = None
        if output_type != "latent":
            with residency(self.vae_offload):
                decoded = decode_frames(self.vae, rearrange(x, "n c f h w -> (n f) c h w"),
                                        slice_size=options.vae_slice or None).float()  # (n f) 3 R R
            reference = rearrange(_unit_range(pixels), "n f c h w -> (n f) c h w")
            # Unclamped, as the reference: decoded values outside [-1, 1] reach the paste-back's warp.
            out = (decoded * (1 - pixel_mask) + reference * pixel_mask + 1.0) * 127.5  # (n f) 3 R R in ~[0, 255]
            if output_type == "uint8":
                out = out.round().clamp(0, 255).to(torch.uint8)
            out = rearrange(out, "(n f) c h w -> n f h w c", n=n).cpu()
            out = out[0] if single else out
        final = x[0] if single else x
        if return_dict:
            return LipSyncPipelineOutput(faces=out, latents=final)
        return final if output_type == "latent" else out

    @staticmethod
    def _step_kwargs(scheduler, options: SamplingOptions, generator) -> dict:
        if options.scheduler == "ddim":
            return {"eta": options.eta, "generator": generator}
        return {"generator": generator}


@dataclass
class LipSyncPipelineOutput:
    """`LipSyncPipeline(..., return_dict=True)`: the faces of the requested `output_type` (None for "latent")
    and the final latents (n, 4, f, R/8, R/8), (4, f, R/8, R/8) for one chunk, on the device."""

    faces: torch.Tensor | None
    latents: torch.Tensor


def _on_cpu(generator: torch.Generator | None) -> bool:
    return generator is not None and generator.device.type == "cpu"


def _unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 faces (n, f, R, R, 3) -> float32 (n, f, 3, R, R) in [-1, 1]."""
    return rearrange(pixels, "n f h w c -> n f c h w").float() / 127.5 - 1.0
