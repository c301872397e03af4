"""Writing files safely: to a temporary name beside the target, renamed into place only when complete; never
onto an input; and no temporary left for ever by a killed run.

Temporary names are `.<name>.<pid>-<hex><suffix>` beside the target (`<suffix>` keeps the extension: ".tmp",
".partial.mp4"). The writer's process id in the name lets a later run remove what a SIGKILL left
(`remove_stale_temporaries`) while never touching a file that a running process is still writing.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

TEMP_TOKEN_BYTES = 6
HASH_BLOCK_BYTES = 1 << 20  # sha256_file reads this much at a time
# `.<name>.<pid>-<hex>` then the suffix; group 1: the name, group 2: the pid.
TEMPORARY_NAME = re.compile(r"^\.(.+)\.(\d+)-[0-9a-f]{8,12}(\.partial)?(\.\w+)?$")


def temporary_name(path: str | os.PathLike, suffix: str = ".tmp", token_bytes: int = TEMP_TOKEN_BYTES) -> Path:
    """A fresh temporary path beside `path` (see the module docstring); not created."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(token_bytes)}{suffix}")


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (OSError when it cannot be read)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            h.update(block)
    return h.hexdigest()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(folder: str | os.PathLike, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Our temporary files in `folder` (of the target `name` only, when given) whose writer is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in (folder.rglob(".*") if recursive else folder.glob(".*")):
        m = TEMPORARY_NAME.match(path.name)
        if m and path.is_file() and (name is None or m.group(1) == name) and not _process_alive(int(m.group(2))):
            found.append(path)
    return found


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None, recursive: bool = False) -> int:
    """Remove what `stale_temporaries` finds; returns how many files went."""
    removed = 0
    for path in stale_temporaries(folder, name, recursive):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass  # gone already, or not ours to remove
    return removed


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name one file: the same path, a symlink to it, or a hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare the resolved paths
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwriting_inputs(output: str | os.PathLike,
                              inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """InputError (one line) when `output` is the same file as one of `inputs`, given as (role, path) pairs."""
    for role, path in inputs:
        if path is not None and same_file(output, path):
            raise InputError(f"{output}: is the same file as the {role} ({path}); writing it would destroy the "
                             f"{role}: choose another output")


def refuse_nested_folders(output_dir: str | os.PathLike, input_dir: str | os.PathLike) -> None:
    """InputError (one line) when the output folder is, contains or lies inside the input folder."""
    out, src = Path(output_dir).resolve(), Path(input_dir).resolve()
    if out == src:
        raise InputError(f"{output_dir}: the output folder is the input folder; choose another")
    if src in out.parents:
        raise InputError(f"{output_dir}: the output folder lies inside the input folder {input_dir}; choose "
                         "one outside it")
    if out in src.parents:
        raise InputError(f"{output_dir}: the output folder contains the input folder {input_dir}; choose "
                         "one beside it")


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
    remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_name(path, suffix)
    with open(tmp, "xb"):
        pass
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
