"""The loss terms of LatentSync training that are more than one line (spec 7.2, 7.3).

* `cosine_bce`: the SyncNet loss (LatentSync `utils/util.py: cosine_loss`): binary cross-entropy of the cosine
  similarity of the visual and audio embeddings against y (1 in sync, 0 not). StableSyncNet's embeddings are
  non-negative (final ReLU), so the similarity lies in [0, 1] and is read as a probability.
* `LPIPS`: the learned perceptual distance of Zhang et al., "The Unreasonable Effectiveness of Deep Features as
  a Perceptual Metric" (CVPR 2018), VGG variant v0.1, as `lpips.LPIPS(net="vgg")` computes it
  (richzhang/PerceptualSimilarity `lpips/lpips.py`). Stage-2 training applies it to the lower half of the
  predicted and ground-truth frames, weight 0.1.
* `TREPALoss`: temporal representation alignment (LatentSync `latentsync/trepa/loss.py`): VideoMAE v2 ViT-g
  features of the predicted and ground-truth 16-frame clips, L2-normalised, compared by MSE; weight 10.

`LPIPS(layout.vgg16)` and `TREPALoss(layout.videomae)` load their frozen networks (VGG-16 trunk, lpips heads,
VideoMAE v2) from the files named in `latentsync.weights.CheckpointLayout` and from the `lpips` package.

Axis letters in shape comments: b batch, c channels, f frames, h height, w width, d feature dimension.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError
from ..models.checkpoint import read_state_dict, resolve_device
from ..models.vgg import TAP_CHANNELS, VGG16Features, load_vgg16_features
from ..models.videomae import VideoMAEConfig, VideoMAEv2, load_videomae

# ---- SyncNet loss ------------------------------------------------------------------------------------------

# Keeps the logarithms finite: a similarity of exactly 0 (orthogonal non-negative embeddings) or a rounding
# error above 1. torch's BCELoss instead clamps log() at -100 and rejects inputs above 1.
COSINE_BCE_EPS = 1e-7


def cosine_bce(vision: torch.Tensor, audio: torch.Tensor, y: torch.Tensor | float,
               reduction: str = "mean") -> torch.Tensor:
    """SyncNet loss: BCE(cos(vision, audio) clamped to [eps, 1 - eps], y), in float32.

    `vision`, `audio`: (b, d) embeddings; `y`: (b,) or (b, 1) targets in [0, 1], or one number for all.
    `reduction`: "mean" (a scalar, what both LatentSync trainers take) or "none" (per sample, (b,)).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    sims = F.cosine_similarity(vision.float(), audio.float(), dim=1)  # b
    sims = sims.clamp(COSINE_BCE_EPS, 1 - COSINE_BCE_EPS)
    target = torch.as_tensor(y, dtype=sims.dtype, device=sims.device)
    target = target.expand_as(sims) if target.ndim == 0 else target.reshape(sims.shape)
    # Written out rather than F.binary_cross_entropy, which refuses to run inside an autocast region.
    loss = -(target * sims.log() + (1 - target) * (1 - sims).log())  # b
    return loss.mean() if reduction == "mean" else loss


# ---- LPIPS -------------------------------------------------------------------------------------------------

# lpips v0.1 `ScalingLayer`: maps [-1, 1] RGB to (roughly) ImageNet-normalised input, (x - shift) / scale.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_NORM_EPS = 1e-10  # lpips `normalize_tensor`: x / (||x||_2 over channels + eps)
# The VGG heads inside the lpips package: `lin{k}.model.1.weight`, (1, C_k, 1, 1) each (Dropout at .0).
LPIPS_PACKAGE = "lpips"
LPIPS_HEADS_FILE = Path("weights") / "v0.1" / "vgg.pth"
LPIPS_HEAD_KEY = "lin{}.model.1.weight"


def lpips_heads_path() -> Path:
    """Where the installed `lpips` package keeps its VGG linear heads (found without importing it: the package
    imports torchvision)."""
    spec = importlib.util.find_spec(LPIPS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointError(f"LPIPS linear heads not found: the `{LPIPS_PACKAGE}` package (0.1.x) is not "
                              f"installed; `pip install lpips==0.1.4` (its weights/v0.1/vgg.pth is used)")
    return Path(locations[0]) / LPIPS_HEADS_FILE


def _heads_from_file(state_dict: Mapping[str, torch.Tensor], source: str) -> list[torch.Tensor]:
    expected = {LPIPS_HEAD_KEY.format(k): (1, c, 1, 1) for k, c in enumerate(TAP_CHANNELS)}
    wrong = [k for k, shape in expected.items() if k not in state_dict or tuple(state_dict[k].shape) != shape]
    extra = [k for k in state_dict if k not in expected]
    if wrong or extra:
        raise CheckpointError(f"{source}: not the lpips v0.1 VGG heads (missing or other shape: {wrong[:3]}; "
                              f"unexpected: {extra[:3]})")
    return [state_dict[k] for k in expected]


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1 distance between images in [-1, 1]: `forward(pred, target)` -> (b,).

    d = sum over the five VGG taps l of mean_{h,w} ( w_l . (f_l(pred) - f_l(target))^2 ), where f_l are the tap
    activations unit-normalised over channels and w_l the non-negative learned 1x1 heads. Frozen, eval mode.

    `vgg`: torchvision's `vgg16-397923af.pth` (`CheckpointLayout.vgg16`), or a loaded `VGG16Features`. The heads
    are read from `heads_path` (default: the installed lpips package's `weights/v0.1/vgg.pth`). `device`: None for
    the CPU; `dtype`: None for float32 (LatentSync calls it on `.float()` frames). A missing weight file raises
    CheckpointError in one line naming every missing file. `gradient_checkpointing`: keep only the inputs when
    gradients flow to `pred`, and run the VGG again in backward (the trainer's setting).
    """

    def __init__(
        self,
        vgg: str | Path | VGG16Features,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        heads_path: str | Path | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        heads_path = Path(heads_path) if heads_path is not None else lpips_heads_path()
        if isinstance(vgg, VGG16Features):
            vgg_path = None
            vgg = vgg.to(device=resolve_device(device) if device is not None else None, dtype=dtype)
        else:
            vgg_path = Path(vgg)
        missing = [str(p) for p in (vgg_path, heads_path) if p is not None and not p.is_file()]
        if missing:
            raise CheckpointError(f"missing LPIPS weight file(s): {', '.join(missing)}; the VGG-16 file comes with "
                                  f"`latentsync download --with training`, the heads with `pip install lpips==0.1.4`")
        self.vgg = vgg if vgg_path is None else load_vgg16_features(vgg_path, device=device, dtype=dtype)
        p = next(self.vgg.parameters())
        heads = _heads_from_file(read_state_dict(heads_path), str(heads_path))
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in TAP_CHANNELS)
        with torch.no_grad():
            for conv, weight in zip(self.heads, heads):
                conv.weight.copy_(weight)
        self.heads.to(device=p.device)  # float32 whatever the trunk's dtype: see _features
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT, device=p.device, dtype=p.dtype).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE, device=p.device, dtype=p.dtype).view(1, 3, 1, 1),
                             persistent=False)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen: always in eval mode

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.to(self.shift.dtype) - self.shift) / self.scale  # b 3 h w
        # Normalised in float32: the 1e-10 of lpips is 0 in float16, and an all-zero ReLU column would give 0/0.
        taps = [t.float() for t in self.vgg(x)]  # b c_l h_l w_l each
        return [t / (t.norm(dim=1, keepdim=True) + LPIPS_NORM_EPS) for t in taps]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (b, 3, h, w) in [-1, 1] -> (b,) distances in float32; gradients flow to `pred` (and to
        `target` only if it requires them)."""
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"expected two (b, 3, h, w) batches of the same shape, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        if self.gradient_checkpointing and torch.is_grad_enabled() and pred.requires_grad:
            # Only the inputs are kept; the VGG runs again in backward. At 512 px (16 lower halves of 256 x 512)
            # its activations were 4.1 GB of a LoRA step's 21.9 (bench/finetune_memory.py). The same values.
            return checkpoint(self._distance, pred, target, use_reentrant=False)
        return self._distance(pred, target)

    def _distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_pred = self._features(pred)
        # No graph for a target that needs no gradient (the usual ground truth).
        with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
            feats_target = self._features(target)
        dist = 0
        for head, a, b in zip(self.heads, feats_pred, feats_target):
            dist = dist + head((a - b) ** 2).mean(dim=(1, 2, 3))  # b
        return dist


# ---- TREPA -------------------------------------------------------------------------------------------------


class TREPALoss(nn.Module):
    """Temporal representation alignment: `forward(pred, target)` -> scalar MSE between the L2-normalised
    VideoMAE v2 features of two clips (b, c, f, h, w) in [-1, 1].

    Preprocessing as LatentSync's `TREPALoss.__call__` (current code; an earlier revision resized bilinearly):
    every frame bicubic-resized to the ViT's input size (224; no antialias, align_corners False), then mapped
    [-1, 1] -> [0, 1] by x / 2 + 0.5 clamped to [0, 1]; no ImageNet normalisation. The ViT runs in its own dtype;
    normalisation and MSE in float32. Frozen.

    `videomae`: `vit_g_hybrid_pt_1200e_ssv2_ft.pth` (`CheckpointLayout.videomae`), or a loaded `VideoMAEv2`.
    `device`: None for the CPU; `dtype`: None for float32 (LatentSync runs the ViT in float16).
    `gradient_checkpointing` (default on, as LatentSync trains with it) recomputes each ViT block in the backward
    pass instead of keeping its activations. A missing or mismatched file raises CheckpointError in one line.
    """

    def __init__(
        self,
        videomae: str | Path | VideoMAEv2,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = True,
        config: str | VideoMAEConfig = "vit_giant_patch14",
    ):
        super().__init__()
        if isinstance(videomae, VideoMAEv2):
            model = videomae.to(device=resolve_device(device) if device is not None else None, dtype=dtype)
        else:
            model = load_videomae(videomae, config=config, device=device, dtype=dtype)
        model.gradient_checkpointing = gradient_checkpointing
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> TREPALoss:
        return super().train(False)  # frozen: always in eval mode

    @property
    def config(self) -> VideoMAEConfig:
        return self.model.config

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(b, c, f, h, w) in [-1, 1] -> (b, d) L2-normalised float32 features."""
        size = self.config.img_size
        dtype = self.model.fc_norm.weight.dtype
        f = video.shape[2]
        frames = rearrange(video, "b c f h w -> (b f) c h w")
        frames = F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False)  # (b f) c s s
        clip = rearrange(frames, "(b f) c h w -> b c f h w", f=f)
        clip = (clip / 2 + 0.5).clamp(0, 1)  # b c f s s, the [0, 1] range VideoMAE v2 was trained on
        return F.normalize(self.model(clip.to(dtype)).float(), p=2, dim=1)  # b d

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim != 5:
            raise ValueError(f"expected two (b, c, f, h, w) clips of the same shape, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        feats_pred = self.features(pred)  # b d
        # No graph, and no checkpointing bookkeeping, for a target that needs no gradient (the ground truth).
        with torch.set_grad_enabled(torch.is_grad_enabled() and target.requires_grad):
            feats_target = self.features(target)  # b d
        return F.mse_loss(feats_pred, feats_target)


__all__ = ["COSINE_BCE_EPS", "LPIPS", "TREPALoss", "cosine_bce", "lpips_heads_path"]
