"""Writing files safely: to a temporary name beside the target, renamed into place only when complete."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_TOKEN_BYTES = 6


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder to write to; when the block ends normally the file is flushed
    to disk and renamed onto `path`, otherwise it is removed and `path` is left as it was.

    The temporary file is created like any new file (mode 0666 minus the umask), so the result has the
    permissions a user expects, unlike `tempfile.mkstemp`'s private 0600. `suffix` lets libraries that choose
    a format by extension (safetensors, PyAV) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(TEMP_TOKEN_BYTES)}{suffix}")
    with open(tmp, "xb"):
        pass
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
