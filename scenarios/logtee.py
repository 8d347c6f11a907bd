"""Capture everything the process prints (Python and C++ alike) for log.txt,
while still passing it through to the real stdout/stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from types import TracebackType

__all__ = ["LogTee"]


class LogTee:
    """Redirect fds 1 and 2 into a pipe; a thread copies to the original
    stderr and keeps the text. TensorFlow logs from C++ straight to fd 2, so
    replacing sys.stdout alone would miss them."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._saved: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._read_fd = -1

    def __enter__(self) -> LogTee:
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._read_fd = read_fd
        self._thread = threading.Thread(target=self._pump, name="log-tee", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        assert self._saved is not None
        passthrough = self._saved[1]
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._chunks.append(chunk)
            # A closed console must not lose the log.
            with contextlib.suppress(OSError):
                os.write(passthrough, chunk)

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = self._saved
        # Restoring fds 1 and 2 closes the pipe's last writers: the pump
        # sees end of file and stops.
        os.dup2(out, 1)
        os.dup2(err, 2)
        # Drain before closing the saved fds: the pump still writes to them.
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(out)
        os.close(err)
        self._saved = None
        os.close(self._read_fd)
