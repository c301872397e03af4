"""Training: losses and the SyncNet / UNet training loops (spec 7); the datasets are in `latentsync.data`."""
