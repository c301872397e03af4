"""Keep native libraries' one-time notices off the terminal of the `latentsync` command.

mediapipe's C++ side prints notices such as "W0000 ... Feedback manager requires a model with a single
signature inference" to the process's standard error whenever its graph (re)starts, through absl logging,
which no environment variable silences. The CLI owns its process, so it routes file descriptor 2 through a
pipe and a thread that drops exactly those lines and forwards everything else at once (progress bars
included, which rewrite a line without ending it). Libraries embedding latentsync are left alone.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

# A notice runs to the end of its line. It may start mid-line: after a progress bar's unfinished line.
NOTICE = re.compile(
    rb"(?:[WI]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "  # absl W(arning)/I(nfo); errors (E) are kept
    rb"|INFO: Created TensorFlow Lite \w+ delegate for \w+\."
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)"
)
# How notices begin, to hold back an unfinished tail that may be the start of one.
PREFIXES = (b"W0000 ", b"I0000 ", b"INFO: Created TensorFlow Lite", b"WARNING: All log messages before absl")
READ_BYTES = 4096

_installed: "_Filter | None" = None


def _filter_line(line: bytes) -> bytes:
    """A complete line without its notice (and then without its newline, which belonged to the notice)."""
    match = NOTICE.search(line)
    return line + b"\n" if match is None else line[: match.start()]


def _split_unfinished(pending: bytes) -> tuple[bytes, bytes]:
    """(what can be written now, what must wait for more bytes) of an unfinished line."""
    for start in range(len(pending)):
        tail = pending[start:]
        if any(p.startswith(tail) or tail.startswith(p) for p in PREFIXES):
            return pending[:start], tail
    return pending, b""


class _Filter:
    def __init__(self) -> None:
        sys.stderr.flush()
        self.target = os.dup(2)  # the real standard error
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.read_end = read_end
        self.thread = threading.Thread(target=self._pump, name="latentsync-stderr", daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.target, data):]

    def _pump(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.read_end, READ_BYTES)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            ready, pending = _split_unfinished(pending)
            out = b"".join(_filter_line(line) for line in lines) + ready
            if out:
                self._write(out)
        if pending:
            self._write(_filter_line(pending).rstrip(b"\n"))
        os.close(self.read_end)

    def close(self) -> None:
        try:
            sys.stderr.flush()
            _flush_c_stdio()
        finally:
            os.dup2(self.target, 2)  # closes the pipe's last write end: the pump sees the end and stops
            self.thread.join(timeout=2)
            os.close(self.target)


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc to call (not POSIX): nothing buffered there
        pass


def install() -> None:
    """Start filtering this process's standard error (idempotent; undone at exit). A no-op where file
    descriptor 2 is not available."""
    global _installed
    if _installed is not None:
        return
    try:
        _installed = _Filter()
    except (OSError, ValueError):
        return
    atexit.register(uninstall)


def uninstall() -> None:
    global _installed
    if _installed is not None:
        _installed.close()
        _installed = None
