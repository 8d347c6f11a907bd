"""Reading files that the program did not write itself in this process.

Manifests, run records, plan files, logs and tensor files come from other
processes, other machines, or an attacker who can write a results directory.
Everything here reads them as data and bounds the work:

* only regular files are opened (a FIFO would block forever, a device such
  as ``/dev/zero`` would never end), opened non-blocking and checked with
  ``fstat`` on the open descriptor;
* a file may be a symlink only when it stays inside the directory it
  belongs to (``inside``): a link out of a results directory is refused;
* JSON has no NaN or infinities (Python's parser would take them), numbers
  are bounded, nesting is bounded, strings are cleaned of lone surrogates.

Every failure is an :class:`~matrix.errors.ArtifactError` of one line that
names the file: callers turn it into a failed cell, an ignored plan or a
cache miss, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from matrix.errors import ArtifactError

__all__ = [
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "MAX_NUMBER",
    "clean_text",
    "inside",
    "one_line",
    "open_regular",
    "read_json",
    "read_regular",
    "shown_path",
    "tail_text",
]

#: A manifest is a few hundred KB; anything far larger is not one.
MAX_JSON_BYTES = 64 << 20
#: No timing, shape or statistic a run writes comes near this.
MAX_NUMBER = 1e300
#: Integers beyond 64 bits are no count or size a run writes.
_MAX_INT = 2**63
#: A manifest nests about six levels deep; free-form ``data`` a few more.
MAX_DEPTH = 64
#: Digits of an integer literal: 2**63 has 19; more is refused before conversion
#: (Python refuses to convert more than 4300 digits, with a message about itself).
_MAX_INT_DIGITS = 20


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs folded), at most ``limit`` characters."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def shown_path(path: Path | str) -> str:
    """A path as one printable line, whatever bytes its name holds."""
    text = str(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (unencodable as UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink followed, stays under ``root`` (resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


@contextmanager
def open_regular(path: Path, *, within: Path | None = None) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading if it is a regular file (and, with ``within``,
    resolves under that directory); ArtifactError otherwise.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; ``fstat`` on the
    descriptor then refuses it, and any device, without reading a byte.
    """
    where = shown_path(path)
    if within is not None and path.is_symlink() and not inside(path, within):
        raise ArtifactError(f"{where}: a symlink out of {shown_path(within)}; refused")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot be opened ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{where}: not a regular file; refused")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_regular(path: Path, *, limit: int, within: Path | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; ArtifactError otherwise."""
    with open_regular(path, within=within) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise ArtifactError(
                f"{shown_path(path)}: {size} bytes, more than the {limit} a file like it can hold"
            )
        # Read one byte past the limit: a file that grew since fstat is still bounded.
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{shown_path(path)}: grew past {limit} bytes while read")
    return data


def tail_text(path: Path, size: int, *, within: Path | None = None) -> str:
    """The last ``size`` bytes of a text file, decoded leniently; "" when it is
    absent, not a regular file or unreadable (a log is never worth a failure)."""
    try:
        with open_regular(path, within=within) as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, end - size))
            data = fh.read(size)
    except (ArtifactError, OSError):
        return ""
    return clean_text(data.decode("utf-8", errors="replace"))


def read_json(
    path: Path,
    *,
    limit: int = MAX_JSON_BYTES,
    within: Path | None = None,
    what: str = "a JSON file",
) -> Any:
    """Parse a JSON file another process left, as untrusted data (``what`` it
    should be names it in messages: "a manifest", "a run record").

    Bounded in size, depth and numbers (no NaN, no infinities, no float
    beyond 1e300, no integer beyond 64 bits); strings and keys come back
    with lone surrogates replaced. ArtifactError (one line) otherwise.
    """
    where = shown_path(path)
    raw = read_regular(path, limit=limit, within=within)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{where}: not readable JSON: not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise ArtifactError(f"{where}: not readable JSON: nested too deeply for {what}") from None
    except ValueError as exc:  # JSONDecodeError and the number checks
        raise ArtifactError(f"{where}: not readable JSON ({one_line(str(exc))})") from None
    try:
        return _clean(data, 0)
    except _TooDeep:
        raise ArtifactError(f"{where}: nested deeper than {MAX_DEPTH} levels for {what}") from None


class _TooDeep(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"the integer {text[:20]}... ({len(text)} digits) is out of range")
    value = int(text)
    if abs(value) > _MAX_INT:
        raise ValueError(f"the integer {text} is out of range")
    return value


def _clean(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _TooDeep
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): _clean(v, depth + 1) for k, v in value.items()}
    return value  # bool, None, and numbers already bounded by the parser
