"""How much the audio-embedding cache saves: a cold `frame_embeddings` call against a cached one.

Builds a Whisper-tiny-sized encoder (384 wide, 6 heads, 4 layers; random weights, so no download), writes
60 s of audio to a WAV file, and times `WhisperAudioEncoder.frame_embeddings` on it twice with an empty
cache folder: the first call decodes, computes the mel and encodes the 30 s windows (three for 60 s in
overlap mode, two in reference mode); the second decodes, hashes and reads the cached hidden states. Both
then slice the per-frame tokens.

Target: the cached call is at least 20x faster than the cold one.

    .venv/bin/python bench/audio_cache.py [--seconds 60] [--device cpu] [--window overlap]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from latentsync.audio import SAMPLE_RATE_HZ, WhisperAudioEncoder
from latentsync.demo import TINY_WHISPER_DIMS
from latentsync.media import write_wav

TARGET_SPEEDUP = 20.0
SEED = 0
TONE_HZ = 220.0
TONE_AMPLITUDE = 0.3
NOISE_AMPLITUDE = 0.05
def write_tiny_checkpoint(path: Path) -> Path:
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(SEED)
    dims = ModelDimensions(**TINY_WHISPER_DIMS)  # Whisper tiny's encoder; a token-sized text decoder
    torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length (default 60)")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, auto")
    parser.add_argument("--window", default="overlap", choices=["overlap", "reference"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = write_tiny_checkpoint(tmp / "tiny-random.pt")
        n = int(args.seconds * SAMPLE_RATE_HZ)
        t = np.arange(n) / SAMPLE_RATE_HZ
        rng = np.random.default_rng(SEED)
        samples = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t) + NOISE_AMPLITUDE * rng.standard_normal(n)
        audio = write_wav(tmp / "speech.wav", samples, SAMPLE_RATE_HZ)

        encoder = WhisperAudioEncoder(checkpoint, device=args.device, cache_dir=tmp / "cache")
        print(
            f"Whisper-tiny-sized encoder (random weights) on {encoder.device} in {encoder.dtype}, "
            f"{args.seconds:g} s of audio from a WAV file, window={args.window}, "
            f"torch threads={torch.get_num_threads()}"
        )
        start = time.perf_counter()
        cold = encoder.frame_embeddings(audio, window=args.window)
        cold_s = time.perf_counter() - start
        windows = encoder.encoder_calls

        start = time.perf_counter()
        cached = encoder.frame_embeddings(audio, window=args.window)
        cached_s = time.perf_counter() - start
        assert encoder.encoder_calls == windows, "the second call ran the encoder"
        assert torch.equal(cold, cached)

        size_mb = sum(p.stat().st_size for p in (tmp / "cache").iterdir()) / 2**20
        speedup = cold_s / cached_s
        print(f"frame embeddings: {tuple(cold.shape)}; {windows} encoder windows; cache entry {size_mb:.1f} MiB")
        print(f"cold  (decode + mel + encoder + slicing): {cold_s * 1000:8.1f} ms")
        print(f"cached (decode + hash + read + slicing):  {cached_s * 1000:8.1f} ms")
        verdict = "meets" if speedup >= TARGET_SPEEDUP else "MISSES"
        print(f"speedup {speedup:.1f}x ({verdict} the target of >= {TARGET_SPEEDUP:g}x)")


if __name__ == "__main__":
    main()
