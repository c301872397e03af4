"""Training: datasets over processed clips, losses, and the SyncNet / UNet training loops (spec 7)."""
