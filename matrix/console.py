"""Everything the host prints goes through here, as plain text.

Strings that are not the program's own (spec values, paths, option values,
manifest fields, build logs) are never read as console markup or emoji
codes: every line is a :class:`rich.text.Text` whose styles are applied by
span, so ``[red]`` in a cell id or ``:x:`` in a Dockerfile line prints as
written.

A long run shows its progress: on a terminal, one live status line (images
built of total, runs done of total, failed, reused, time left) under the
events; elsewhere (CI logs) one plain line per event.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console as RichConsole
from rich.live import Live
from rich.text import Text

__all__ = ["Console", "RunProgress", "build_log", "console", "output", "plain"]


def plain(text: object) -> str:
    """One printable line: newlines and control characters shown, never acted on."""
    raw = str(text)
    if raw.isprintable():
        return raw
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in raw.replace("\n", " "))


class Console:
    """Lines on stderr (or ``stream``), styled by span, never parsed for markup."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.rich = RichConsole(
            file=stream if stream is not None else sys.stderr,
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=True,
        )
        self._lock = threading.Lock()
        self._live: Live | None = None

    @property
    def is_terminal(self) -> bool:
        return bool(self.rich.is_terminal)

    def line(self, *parts: str | tuple[str, str]) -> None:
        """Print one line from parts: plain strings, or (text, style) pairs."""
        text = Text()
        for part in parts:
            if isinstance(part, tuple):
                text.append(plain(part[0]), style=part[1])
            else:
                text.append(plain(part))
        with self._lock:
            target = self._live.console if self._live is not None else self.rich
            target.print(text)

    def error(self, message: str) -> None:
        self.line(("error: ", "bold red"), _bounded(message))

    def notice(self, message: str) -> None:
        self.line(("notice: ", "yellow"), message)

    def event(self, kind: str, message: str) -> None:
        """``   kind message``: the scheduler's and the builders' events."""
        style = _STYLES.get(kind, "")
        self.line((f"{kind:>7} ", style), message)

    @contextmanager
    def live(self, render: Any) -> Iterator[None]:
        """Keep ``render()`` as a status line under the printed lines (terminal only)."""
        if not self.is_terminal:
            yield
            return
        with Live(
            get_renderable=render, console=self.rich, refresh_per_second=2, transient=True
        ) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None


#: An error is one line a reader takes in at once; values quoted in it are
#: bounded where they are quoted, and this bounds whatever is left.
_ERROR_CHARS = 2000


def _bounded(message: str) -> str:
    if len(message) <= _ERROR_CHARS:
        return message
    return f"{message[:_ERROR_CHARS]}… ({len(message) - _ERROR_CHARS} more characters)"


_STYLES = {
    "ok": "green",
    "cached": "dim",
    "failed": "red",
    "build": "cyan",
    "image": "cyan",
    "stage": "bold",
}

#: Messages, events and errors.
console = Console()
#: What the user asked for (a dry-run plan, a report's location): stdout.
output = Console(sys.stdout)


def build_log(message: str) -> None:
    """One line of an image, venv or base-image build (its output is not
    ours: pip and apt lines may hold brackets, colons, escape sequences)."""
    console.event("build", message[:300])


@dataclass(kw_only=True)
class RunProgress:
    """Counts and a time-left estimate for one ``matrix run``.

    Thread-safe: builders and cell workers report from their own threads.
    """

    out: Console
    images: int
    runs: int
    jobs: int
    images_done: int = 0
    runs_done: int = 0
    failed: int = 0
    cached: int = 0
    ran_seconds: list[float] = field(default_factory=list)
    build_seconds: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def image(self, name: str, seconds: float, *, built: bool, error: str | None = None) -> None:
        with self._lock:
            self.images_done += 1
            if built and error is None:
                self.build_seconds.append(seconds)
        if error is not None:
            self.out.event("failed", f"environment {name}: {error}")
        elif built:
            self.out.event("image", f"{name} built in {seconds:.0f} s {self._counts()}")
        else:
            self.out.event("image", f"{name} ready {self._counts()}")

    def run(self, label: str, status: str, seconds: float, reason: str | None = None) -> None:
        with self._lock:
            self.runs_done += 1
            if status == "failed":
                self.failed += 1
            elif status == "cached":
                self.cached += 1
            else:
                self.ran_seconds.append(seconds)
        head = f"[{self.runs_done}/{self.runs}] {label}"
        if status == "failed":
            self.out.event("failed", f"{head}: {reason}")
        elif status == "cached":
            self.out.event("cached", head + self._tail())
        else:
            self.out.event("ok", f"{head} {seconds:.1f}s" + self._tail())

    def _tail(self) -> str:
        # On a terminal the live line carries the counts; in a log each line does.
        return "" if self.out.is_terminal else f" {self._counts()}"

    def _counts(self) -> str:
        left = self.seconds_left()
        eta = f", ~{_duration(left)} left" if left is not None else ""
        return f"(images {self.images_done}/{self.images}, runs {self.runs_done}/{self.runs}{eta})"

    def seconds_left(self) -> float | None:
        """Runs left x mean run time / jobs, or the images left to build if longer."""
        with self._lock:
            if not self.ran_seconds:
                return None
            per_run = sum(self.ran_seconds) / len(self.ran_seconds)
            runs = (self.runs - self.runs_done) * per_run / max(1, self.jobs)
            per_build = (
                sum(self.build_seconds) / len(self.build_seconds) if self.build_seconds else 0.0
            )
            builds = (self.images - self.images_done) * per_build
            return max(runs, builds)

    def status(self) -> Text:
        text = Text()
        text.append(f"images {self.images_done}/{self.images}  ", style="cyan")
        text.append(f"runs {self.runs_done}/{self.runs}  ", style="bold")
        if self.failed:
            text.append(f"{self.failed} failed  ", style="red")
        if self.cached:
            text.append(f"{self.cached} reused  ", style="dim")
        left = self.seconds_left()
        text.append(f"~{_duration(left)} left" if left is not None else "estimating time left")
        text.append(f"  ({_duration(time.monotonic() - self.started)} so far)", style="dim")
        return text


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
