"""latentsync: audio-driven lip sync with latent diffusion (LatentSync 1.5 / 1.6).

`latentsync.LipSync` loads the models once and lip-syncs videos (`run` writes a file, `process` hands out
frames). Subpackages: `models` (UNet, SyncNet, VAE loaders), `audio` (Whisper features, SyncNet mel), `face`
(detection, alignment, mouth mask), `media` (streaming video and audio), `weights` (checkpoint layout and
download). The `latentsync` command is a thin adapter over these.
"""

__version__ = "0.1.0"

__all__ = ["InferenceOptions", "LipSync", "__version__"]


def __getattr__(name: str):
    # Imported on first use: `import latentsync` (and `latentsync --help`) should not load torch and friends.
    if name in ("LipSync", "InferenceOptions"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'latentsync' has no attribute {name!r}")
