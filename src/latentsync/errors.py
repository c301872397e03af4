"""Errors a user can cause. The CLI (and the app) report these in one line and exit with status 2;
anything else is a bug in latentsync and keeps its traceback."""

from __future__ import annotations


class LatentSyncError(Exception):
    """Base class for problems with the user's input, files or configuration."""

    exit_code = 2


class ConfigError(LatentSyncError):
    """A configuration file or value is invalid."""


class OptionError(ConfigError):
    """One setting of a job is unusable: `option` is its name (`InferenceOptions`' field), `reason` what is wrong.
    The CLI reports it under the option's flag (`--crf`), the Python API under the field's name."""

    def __init__(self, option: str, reason: str):
        super().__init__(f"{option}: {reason}")
        self.option, self.reason = option, reason


class CheckpointError(LatentSyncError):
    """A weight file is missing, unreadable, or does not match the model it is loaded into."""


class InputError(LatentSyncError):
    """A video or audio input cannot be used."""


class ResourceError(LatentSyncError):
    """The machine ran out of something a job needs (GPU or host memory)."""


class DownloadError(LatentSyncError):
    """Published weights could not be fetched."""


class DeviceError(LatentSyncError):
    """The device asked for is not one this PyTorch can use."""
