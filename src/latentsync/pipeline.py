"""Lip sync on tensors: regenerate the mouth of aligned face crops, chunk by chunk, from audio tokens.

This is the published algorithm (spec 2.2 steps 7-8, 12) with no file paths and no video: `inference.py` owns
reading, face alignment, pasting back and writing. For one chunk of f aligned faces (f <= 24, normally 16):

1. reference = the face in [-1, 1]; masked = reference x mouth mask (the mouth region blacked out);
2. both are VAE-encoded (posterior *samples*, x 0.18215) and the mask is resized to the latent grid (nearest);
3. starting from the job's initial noise (one latent frame, repeated over every frame of the video), DDIM
   runs `num_steps` steps on the 13-channel input `[noisy, mask, masked latents, reference latents]`, with
   classifier-free guidance whose unconditional branch has all-zero audio tokens;
4. the result is decoded and only the mouth region is taken from it: `out = decoded (1 - m) + reference m`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from .face.mask import latent_mask, mouth_mask_tensor
from .models.attention import set_feed_forward_rows
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
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5
DEFAULT_SEED = 1247
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

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
        if self.feed_forward_rows < 0:
            raise ValueError(f"feed_forward_rows must be 0 or positive, got {self.feed_forward_rows}")
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
        self.latent_mask = latent_mask(resolution).to(device=self.device, dtype=self.dtype)

    @property
    def latent_size(self) -> int:
        return self.resolution // VAE_DOWNSAMPLING

    def initial_noise(self, seed: int) -> torch.Tensor:
        """The one latent frame every frame of a job starts from, (1, 4, 1, R/8, R/8) on the UNet's device.

        Drawn on the CPU from `seed`, so a seed gives the same video on any device."""
        g = torch.Generator().manual_seed(seed)
        shape = (1, VAE_LATENT_CHANNELS, 1, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=g).to(self.device, self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        faces: torch.Tensor,
        audio_tokens: torch.Tensor,
        noise: torch.Tensor,
        options: SamplingOptions = SamplingOptions(),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One chunk: faces (f, R, R, 3) uint8 and audio tokens (f, t, d); or n chunks of equal length in one
        batch: (n, f, R, R, 3) and (n, f, t, d). `noise` comes from `initial_noise`. Returns the synced faces,
        uint8 on the CPU, shaped like `faces`. `generator` drives the VAE posterior samples.

        A batch of chunks gives the results of calling chunk by chunk: each chunk is its own sample to the UNet,
        so its GroupNorm statistics stay its own, and the VAE encodes chunk by chunk in the same order."""
        single = faces.dim() == 4
        if single:
            faces, audio_tokens = faces[None], audio_tokens[None]
        n, f = faces.shape[:2]
        if audio_tokens.shape[:2] != (n, f):
            raise ValueError(f"{n} x {f} faces but audio tokens for {tuple(audio_tokens.shape[:2])} frames")
        pixels = faces.to(self.device)  # n f R R 3 uint8, kept for the paste at the end
        reference = _unit_range(pixels)  # n f 3 R R
        masked = reference * self.pixel_mask  # n f 3 R R, mouth region -> 0
        # Both through the VAE in one call per chunk (the reference encodes them separately), masked first.
        with residency(self.vae_offload):
            latents = torch.stack([encode_frames(self.vae, torch.cat([masked[i], reference[i]]),
                                                 generator=generator) for i in range(n)])  # n 2f 4 r r
        del reference, masked  # float frames are 8x the uint8 ones; rebuilt after denoising
        latents = rearrange(latents.to(self.dtype), "n (two f) c h w -> two n c f h w", two=2)
        mask = repeat(self.latent_mask, "c h w -> n c f h w", n=n, f=f)  # n 1 f r r
        conditions = torch.cat([mask, latents[0], latents[1]], dim=1)  # n 9 f r r: mask, masked, reference
        del latents

        audio = rearrange(audio_tokens.to(self.device, self.dtype), "n f t d -> (n f) t d")
        guided = options.guidance_scale > 1.0
        # One UNet call per entry: (audio, DeepCache state). Guidance adds the unconditional branch (all-zero
        # audio), in the same call (batch doubled) or, with split_guidance, in a call of its own.
        branches = [audio] if not guided else [torch.zeros_like(audio), audio]
        if guided and not options.split_guidance:
            branches = [torch.cat(branches)]  # (2 n f) t d: [unconditional, conditional]
        caches = [DeepCache(options.deepcache_interval, options.deepcache_branch) if options.deepcache_interval
                  else None for _ in branches]

        # A setting of the shared UNet: jobs running at once with different values only change each other's
        # memory, never their results.
        set_feed_forward_rows(self.unet, options.feed_forward_rows)
        scheduler = make_scheduler(options.scheduler)  # fresh per call: multistep solvers keep history
        # Timesteps stay on the host: the schedulers index their host-side tables with them, which for device
        # timesteps means a device-to-host sync every step.
        scheduler.set_timesteps(options.num_steps)
        x = noise.repeat(n, 1, f, 1, 1) * scheduler.init_noise_sigma  # n 4 f r r
        for t in scheduler.timesteps:
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

        with residency(self.vae_offload):
            decoded = decode_frames(self.vae, rearrange(x, "n c f h w -> (n f) c h w")).float()  # (n f) 3 R R
        reference = rearrange(_unit_range(pixels), "n f c h w -> (n f) c h w")
        out = decoded.clamp(-1, 1) * (1 - self.pixel_mask) + reference * self.pixel_mask
        out = ((out + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        out = rearrange(out, "(n f) c h w -> n f h w c", n=n).cpu()
        return out[0] if single else out

    @staticmethod
    def _step_kwargs(scheduler, options: SamplingOptions, generator) -> dict:
        if options.scheduler == "ddim":
            return {"eta": options.eta, "generator": generator}
        return {"generator": generator}


def _unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 faces (n, f, R, R, 3) -> float32 (n, f, 3, R, R) in [-1, 1]."""
    return rearrange(pixels, "n f h w c -> n f c h w").float() / 127.5 - 1.0
