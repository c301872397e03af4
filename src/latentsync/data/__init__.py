"""Training datasets over processed clips (what the data pipeline writes, spec 6).

- `syncnet`: `SyncNetDataset`, in-sync and off-sync (frames, mel) pairs, and the clip index both datasets
  share (`find_clips`, `load_or_skip`, `Clip`, `LRUMelCache`).
- `unet`: `UNetDataset`, the UNet's target and reference windows, mouth masks and Whisper tokens, with
  `WhisperFeatures` over the inference encoder's disk cache.
"""
