"""The UNet's training objective: a batch in, the loss terms out (spec 7.2). The loop only orchestrates.

1. The target, masked and reference windows go through the frozen VAE (posterior samples x 0.18215).
2. Noise: PYoCo's mixed noise (arXiv 2305.10474), a component shared by the clip's frames plus one per frame,
   with variances alpha^2/(1+alpha^2) and 1/(1+alpha^2) (alpha = 1: 0.5 each), so consecutive frames start
   correlated; or, without it, one noise frame repeated (the reference's fallback). Timesteps uniform in
   [0, 1000).
3. The UNet predicts the noise from `[noisy, mask, masked latents, reference latents]` and the audio tokens:
   `recon` = MSE(predicted noise, noise).
4. Stage 2 (`pixel_space_supervise`): the one-step clean estimate x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) is
   decoded through the frozen VAE with gradients, and compared with the target frames: LPIPS on the lower half
   of the face, TREPA on the 16-frame clips, and the StableSyncNet's in-sync probability (BCE against 1) with
   the target's mel window.
Total = recon_w recon + sync_w sync + lpips_w lpips + trepa_w trepa (spec: 1, 0.05, 0.1, 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..config import UNetRunConfig
from ..models.vae import decode_frames, encode_frames
from .losses import cosine_bce

SYNCNET_RESOLUTION = 256  # StableSyncNet sees the lower half of 256 px faces


def mixed_noise(shape: tuple[int, ...], alpha: float, generator: torch.Generator | None = None,
                device=None, dtype=torch.float32) -> torch.Tensor:
    """(b, c, f, h, w) unit-variance noise whose frames share a component of variance alpha^2 / (1 + alpha^2)."""
    b, c, f, h, w = shape
    shared = torch.randn((b, c, 1, h, w), generator=generator, device=device, dtype=dtype)
    own = torch.randn((b, c, f, h, w), generator=generator, device=device, dtype=dtype)
    return math.sqrt(alpha**2 / (1 + alpha**2)) * shared + math.sqrt(1 / (1 + alpha**2)) * own


@dataclass
class Frozen:
    """The networks the objective uses but does not train (None: that loss term is off)."""

    vae: nn.Module
    syncnet: nn.Module | None = None
    lpips: nn.Module | None = None
    trepa: nn.Module | None = None


class UNetObjective:
    def __init__(self, unet: nn.Module, frozen: Frozen, run: UNetRunConfig, noise_schedule):
        self.unet, self.frozen, self.run = unet, frozen, run
        self.alphas_cumprod = noise_schedule.alphas_cumprod  # (T,)
        self.num_timesteps = len(self.alphas_cumprod)

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, f, 3, R, R) in [-1, 1] -> (b, 4, f, r, r) scaled posterior samples, without gradients."""
        b = pixels.shape[0]
        with torch.no_grad():
            z = encode_frames(self.frozen.vae, rearrange(pixels, "b f c h w -> (b f) c h w"))
        return rearrange(z.float(), "(b f) c h w -> b c f h w", b=b)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = next(self.unet.parameters()).device
        gt = batch["gt_pixel_values"].to(device)  # b f 3 R R
        b, f, _, size, _ = gt.shape
        gt_latents = self._latents(gt)  # b 4 f r r
        masked_latents = self._latents(batch["masked_pixel_values"].to(device))
        ref_latents = self._latents(batch["ref_pixel_values"].to(device))
        r = gt_latents.shape[-1]
        masks = rearrange(batch["masks"].to(device), "b f c h w -> (b f) c h w")
        masks = rearrange(F.interpolate(masks, size=(r, r), mode="nearest"), "(b f) c h w -> b c f h w", b=b)

        if self.run.use_mixed_noise:
            noise = mixed_noise(gt_latents.shape, self.run.mixed_noise_alpha, device=device)
        else:
            noise = repeat(torch.randn((b, 4, 1, r, r), device=device), "b c 1 h w -> b c f h w", f=f)
        t = torch.randint(0, self.num_timesteps, (b,), device=device)
        a = self.alphas_cumprod.to(device)[t].view(b, 1, 1, 1, 1)  # b 1 1 1 1
        noisy = a.sqrt() * gt_latents + (1 - a).sqrt() * noise  # b 4 f r r

        model_input = torch.cat([noisy, masks, masked_latents, ref_latents], dim=1)  # b 13 f r r
        pred = self.unet(model_input, t, encoder_hidden_states=batch["audio_embeds"].to(device))  # b 4 f r r
        terms = {"recon": F.mse_loss(pred.float(), noise.float())}

        if self.run.pixel_space_supervise and any(m is not None for m in (self.frozen.syncnet, self.frozen.lpips,
                                                                           self.frozen.trepa)):
            x0 = (noisy - (1 - a).sqrt() * pred.float()) / a.sqrt()  # one-step clean estimate, b 4 f r r
            pixels = decode_frames(self.frozen.vae, rearrange(x0, "b c f h w -> (b f) c h w")).float()  # (bf) 3 R R
            target = rearrange(gt, "b f c h w -> (b f) c h w")
            if self.frozen.lpips is not None:
                half = size // 2  # the lower half: the mouth region of an aligned face
                terms["lpips"] = self.frozen.lpips(pixels[..., half:, :], target[..., half:, :]).mean()
            if self.frozen.trepa is not None:
                terms["trepa"] = self.frozen.trepa(rearrange(pixels, "(b f) c h w -> b c f h w", b=b),
                                                   rearrange(target, "(b f) c h w -> b c f h w", b=b))
            if self.frozen.syncnet is not None:
                frames = pixels
                if size != SYNCNET_RESOLUTION:
                    frames = F.interpolate(frames, size=(SYNCNET_RESOLUTION, SYNCNET_RESOLUTION), mode="bicubic",
                                           align_corners=False)
                frames = rearrange(frames[..., SYNCNET_RESOLUTION // 2:, :], "(b f) c h w -> b (f c) h w", b=b)
                vision, audio = self.frozen.syncnet(frames, batch["mel"].to(device))
                terms["sync"] = cosine_bce(vision.float(), audio.float(), torch.ones(b, 1, device=device))

        weights = {"recon": self.run.recon_loss_weight, "sync": self.run.sync_loss_weight,
                   "lpips": self.run.perceptual_loss_weight, "trepa": self.run.trepa_loss_weight}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms
