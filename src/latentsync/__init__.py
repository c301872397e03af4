"""latentsync: audio-driven lip sync with latent diffusion (LatentSync 1.5 / 1.6).

Subpackages: `models` (UNet, SyncNet, VAE loaders), `audio` (Whisper features, SyncNet mel), `weights`
(checkpoint layout and download). The `latentsync` command is a thin adapter over these.
"""

__version__ = "0.1.0"
