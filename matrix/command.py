"""Every subprocess the host starts goes through :func:`run` (as nox's
``command.run``): with a time limit, optionally an idle limit (no output for
so long: a stalled download), in a session of its own, and registered so
that :func:`terminate_all` can end it on Ctrl-C.

A session of its own means a Ctrl-C in the terminal reaches only the matrix
process, which then ends its children deliberately (killing a container
takes ``docker rm``, not a signal to the client), instead of every child
dying on its own and being recorded as a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Result", "reset", "run", "stopping", "terminate_all"]

#: Lines of output a result keeps (the tail): enough for errors and logs.
TAIL_LINES = 400


@dataclass(frozen=True, kw_only=True)
class Result:
    """How a command ended. ``returncode`` is None when it was killed by us
    (time limit, idle limit or a stop); negative for a signal, as subprocess
    reports it."""

    cmd: tuple[str, ...]
    returncode: int | None
    output: str  # the last TAIL_LINES lines of stdout and stderr together
    seconds: float
    timed_out: bool = False
    stalled: bool = False
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def last_line(self) -> str:
        return next((ln.strip() for ln in reversed(self.lines) if ln.strip()), "")


@dataclass(kw_only=True)
class _Live:
    proc: subprocess.Popen[bytes]
    on_kill: Callable[[], None] | None
    killed_by_stop: bool = False


_ENTRIES: dict[int, _Live] = {}
_LOCK = threading.Lock()
_STOPPING = threading.Event()


def terminate_all() -> None:
    """End every command still running (and stop starting new ones until
    :func:`reset`): what Ctrl-C does."""
    _STOPPING.set()
    with _LOCK:
        entries = list(_ENTRIES.values())
    for entry in entries:
        entry.killed_by_stop = True
        _kill(entry)


def stopping() -> bool:
    """Whether a stop was asked for (long waits poll this)."""
    return _STOPPING.is_set()


def reset() -> None:
    """Allow commands again (tests run several schedulers in one process)."""
    _STOPPING.clear()


def _kill(entry: _Live) -> None:
    if entry.on_kill is not None:
        with contextlib.suppress(Exception):
            entry.on_kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(entry.proc.pid, signal.SIGKILL)


def run(
    cmd: Sequence[str | Path],
    *,
    timeout: float,
    idle_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    on_line: Callable[[str], None] | None = None,
    feed: Callable[[IO[bytes]], None] | None = None,
    on_kill: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    cleanup: bool = False,
) -> Result:
    """Run ``cmd`` to its end or its limit; never raises for its exit status.

    ``feed`` writes the command's stdin (then closes it); ``on_line`` sees
    every output line as it comes; ``on_kill`` runs before the process group
    is killed (a container to remove); ``on_start`` gets the pid.
    ``cleanup`` commands (removing a container) still run after a stop, which
    refuses every other command. Raises OSError when the program cannot be
    started at all.
    """
    args = tuple(str(c) for c in cmd)
    start = time.monotonic()
    if _STOPPING.is_set() and not cleanup:
        return Result(cmd=args, returncode=None, output="", seconds=0.0, stopped=True)
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=str(cwd) if cwd is not None else None,
        start_new_session=True,
    )
    entry = _Live(proc=proc, on_kill=on_kill)
    if not cleanup:  # a stop must not kill the commands that clean up after it
        with _LOCK:
            _ENTRIES[proc.pid] = entry
    if on_start is not None:
        on_start(proc.pid)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    last_output = [time.monotonic()]

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            last_output[0] = time.monotonic()
            if on_line is not None:
                with contextlib.suppress(Exception):
                    on_line(line)

    reader = threading.Thread(target=pump, name="command-output", daemon=True)
    reader.start()
    feeder = None
    if feed is not None:
        assert proc.stdin is not None
        stdin = proc.stdin

        def write() -> None:
            try:
                feed(stdin)
            except (BrokenPipeError, OSError):
                pass
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()

        feeder = threading.Thread(target=write, name="command-input", daemon=True)
        feeder.start()
    timed_out = stalled = False
    try:
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if now - start > timeout:
                    timed_out = True
                elif idle_timeout is not None and now - last_output[0] > idle_timeout:
                    stalled = True
                if timed_out or stalled:
                    _kill(entry)
                    proc.wait()
                    break
    except BaseException:
        _kill(entry)
        proc.wait()
        raise
    finally:
        with _LOCK:
            _ENTRIES.pop(proc.pid, None)
        reader.join(timeout=10)
        if feeder is not None:
            feeder.join(timeout=10)
    killed = timed_out or stalled or entry.killed_by_stop
    return Result(
        cmd=args,
        returncode=None if killed else proc.returncode,
        output="\n".join(tail),
        seconds=time.monotonic() - start,
        timed_out=timed_out,
        stalled=stalled,
        stopped=entry.killed_by_stop,
    )
