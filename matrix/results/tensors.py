"""Tensors of an artifact's ``tensors.npz``, read in fixed-size chunks.

A comparison reads two tensors in lockstep chunks (:class:`ChunkSource`), so
comparing two 1 GiB tensors needs a few MiB of memory: a stored ``.npz``
member is read straight from the file at its offset, a compressed one as a
stream. Small files are read whole once and kept in a bounded cache, since a
report compares each cell several times.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from matrix.errors import ArtifactError
from matrix.untrusted import one_line, shown_path

__all__ = [
    "SMALL_CACHE",
    "SMALL_NPZ",
    "ArraySource",
    "ChunkSource",
    "NpyMember",
    "NpzTensor",
    "RealView",
    "npy_header",
    "npz_index",
    "read_npz",
]

Arr = npt.NDArray[Any]


class ChunkSource(Protocol):
    """A tensor readable in consecutive flat chunks (C order).

    ``chunks(n)`` yields 1-D arrays of ``n`` elements (the last may be
    shorter).  A yielded array may be a view of a buffer the source reuses for
    the next chunk: consume it before asking for the next.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def chunks(self, n: int) -> Iterator[Arr]: ...


class ArraySource:
    """An in-memory (or memory-mapped) array as a :class:`ChunkSource`."""

    def __init__(self, array: npt.ArrayLike) -> None:
        self._array = np.asarray(array)

    @property
    def array(self) -> Arr:
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._array.dtype

    def chunks(self, n: int) -> Iterator[Arr]:
        flat = self._array.reshape(-1)  # a view for contiguous arrays
        for start in range(0, flat.size, n):
            yield flat[start : start + n]


class RealView:
    """A complex tensor as its real and imaginary parts, interleaved along a
    last axis of 2: a comparison judges both parts, never the real part alone."""

    def __init__(self, source: ChunkSource) -> None:
        self._source = source
        self._complex = np.dtype(np.complex64 if source.dtype.itemsize == 8 else np.complex128)
        self._dtype = np.dtype(np.float32 if self._complex == np.complex64 else np.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self._source.shape, 2)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    def chunks(self, n: int) -> Iterator[Arr]:
        for chunk in self._source.chunks(max(1, n // 2)):
            yield np.ascontiguousarray(chunk, dtype=self._complex).view(self._dtype)


class NpzTensor:
    """One array inside an ``.npz``, read in chunks without loading it whole.

    Stored (uncompressed) members are read with ``readinto`` from the file at
    their offset; compressed members are decompressed as a stream.  Either
    way only one chunk buffer is alive, and no file pages are pinned the way
    a memory map would pin them in the process's RSS.
    """

    def __init__(
        self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool
    ) -> None:
        self.path = path
        self.member = member
        self._shape = shape
        self._dtype = dtype
        self._fortran = fortran

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    def chunks(self, n: int) -> Iterator[npt.NDArray[Any]]:
        total = int(np.prod(self._shape, dtype=np.int64))
        if self._fortran and len(self._shape) > 1:
            # Chunks are C-order; a Fortran-order member is rare, load it whole.
            flat = np.ascontiguousarray(self.read()).reshape(-1)
            for start in range(0, total, n):
                yield flat[start : start + n]
            return
        buf = np.empty(max(1, min(n, total)), self._dtype)
        raw = memoryview(buf).cast("B")  # type: ignore[arg-type]
        with self._open_member() as fh:
            npy_header(fh)
            done = 0
            while done < total:
                count = min(buf.size, total - done)
                want = count * self._dtype.itemsize
                got = _read_exactly(fh, raw[:want])
                if got != want:
                    raise ArtifactError(f"{self.path}: array {self.member} is truncated")
                yield buf[:count]
                done += count

    def _open_member(self) -> io.RawIOBase | io.BufferedReader:
        """The member's bytes as a file positioned at its start.

        A stored (uncompressed) member, what ``np.savez`` writes, is read
        straight from the file at its offset: zipfile's reader would add a
        CRC pass and a copy per read, and the sha256 of the whole file was
        already checked when the cell was loaded.
        """
        with zipfile.ZipFile(self.path) as zf:
            info = zf.getinfo(self.member)
            if info.compress_type != zipfile.ZIP_STORED:
                return _ZipMember(self.path, self.member)
            raw = self.path.open("rb")
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raw.close()
                raise ArtifactError(f"{self.path}: bad local header for {self.member}")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            return raw

    def read(self) -> npt.NDArray[Any]:
        """The whole array (for small tensors: layers, oracles, worst elements)."""
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)


class _ZipMember(io.RawIOBase):
    """A compressed member, opened lazily, closing its archive with it."""

    def __init__(self, path: Path, member: str) -> None:
        self._zf = zipfile.ZipFile(path)
        self._fh = self._zf.open(member)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got: int = self._fh.readinto(buffer)  # type: ignore[attr-defined]
        return got

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def close(self) -> None:
        self._fh.close()
        self._zf.close()
        super().close()


def _read_exactly(fh: Any, view: memoryview) -> int:
    done = 0
    while done < len(view):
        got = fh.readinto(view[done:])
        if not got:
            break
        done += got
    return done


class _NpzCache:
    """Whole small .npz files in memory, least recently used first out.

    Bounded by bytes, not by files, so that a thousand small cells all fit
    while a few large ones cannot pile up.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.files: OrderedDict[tuple[Path, int, int], tuple[int, dict[str, npt.NDArray[Any]]]] = (
            OrderedDict()
        )

    def get(self, path: Path, mtime_ns: int, size: int) -> Mapping[str, npt.NDArray[Any]]:
        """The arrays of ``path`` as it was at (mtime_ns, size): a rewritten file is reread."""
        key = (path, mtime_ns, size)
        hit = self.files.get(key)
        if hit is not None:
            self.files.move_to_end(key)
            return hit[1]
        arrays = read_npz(path)
        nbytes = sum(a.nbytes for a in arrays.values()) + 1024
        while self.files and self.used + nbytes > self.budget:
            _, (old, _) = self.files.popitem(last=False)
            self.used -= old
        self.files[key] = (nbytes, arrays)
        self.used += nbytes
        return arrays


SMALL_NPZ = 4 << 20  # tensor files up to 4 MiB are read whole and cached
SMALL_CACHE = _NpzCache(256 << 20)


def npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype from an ``.npy`` header; ValueError when
    the header is not one (NumPy's parser raises many kinds of error on bytes
    it was never meant to see: TokenError, SyntaxError, MemoryError, ...)."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:  # untrusted bytes: whatever the parser raised, not a header
        detail = f"{type(exc).__name__}: {one_line(str(exc), 120)}"
        raise ValueError(f"not an .npy header ({detail})") from None
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    return tuple(int(s) for s in shape), bool(fortran), dtype


@dataclass(frozen=True, kw_only=True)
class NpyMember:
    """One array of an ``.npz`` as its header describes it, checked against its size."""

    key: str
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]
    nbytes: int


#: What a comparison can judge, and what the frameworks produce: booleans,
#: integers, IEEE floats up to 64 bits (bfloat16 arrives widened to float32)
#: and complex numbers. Strings, records, objects, dates and extended
#: precision are no tensor a cell writes.
NUMERIC_DTYPES = frozenset(
    {"bool", "float16", "float32", "float64", "complex64", "complex128"}
    | {f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}
)
_MAX_MEMBERS = 100_000
#: Deflate cannot compress better than about 1032:1; a member claiming more
#: is a decompression bomb or a lie about its size.
_MAX_RATIO = 1100
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def npz_index(path: Path) -> dict[str, NpyMember]:
    """Every member of an ``.npz``, its header checked before any array is read.

    Each member must be an ``.npy`` array of a numeric dtype whose header
    (shape x itemsize) accounts for exactly the bytes the member holds, and
    whose sizes fit in the file: a header claiming 10^22 elements, a
    truncated member or a pickle is refused here, with one line, instead of
    failing an allocation or unpickling later. ArtifactError otherwise.
    """
    where = shown_path(path)
    try:
        archive_size = os.stat(path).st_size
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise ArtifactError(f"{where}: {len(infos)} members; more than any cell writes")
            members: dict[str, NpyMember] = {}
            for info in infos:
                member = _check_member(zf, info, archive_size, where)
                if member.key in members:
                    raise ArtifactError(f"{where}: {member.key!r} is stored twice")
                members[member.key] = member
            return members
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, struct.error, zlib.error) as exc:
        raise ArtifactError(f"{where}: not a readable .npz ({one_line(str(exc))})") from None
    except (NotImplementedError, RuntimeError) as exc:  # zipfile: unknown method, encryption
        raise ArtifactError(f"{where}: not a readable .npz ({one_line(str(exc))})") from None


def _check_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int, where: str
) -> NpyMember:
    name = info.filename
    shown = repr(name) if len(name) <= 80 else repr(name[:77] + "...")
    if info.is_dir() or not name.endswith(".npy"):
        raise ArtifactError(f"{where}: member {shown} is not an .npy array")
    if info.compress_type not in _METHODS:
        raise ArtifactError(f"{where}: member {shown} uses compression method {info.compress_type}")
    if info.flag_bits & 0x1:
        raise ArtifactError(f"{where}: member {shown} is encrypted")
    if info.header_offset + info.compress_size > archive_size:
        raise ArtifactError(f"{where}: member {shown} claims more bytes than the file holds")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (stored and info.compress_size != info.file_size) or (
        info.file_size > max(info.compress_size, 1) * _MAX_RATIO
    ):
        raise ArtifactError(
            f"{where}: member {shown} claims {info.file_size} bytes from {info.compress_size}"
        )
    with zf.open(info) as fh:
        try:
            shape, fortran, dtype = npy_header(fh)
        except ValueError as exc:
            raise ArtifactError(f"{where}: member {shown}: {exc}") from None
        header_bytes = fh.tell()
    if dtype.name not in NUMERIC_DTYPES:
        raise ArtifactError(f"{where}: member {shown} holds {dtype.str!r}, not a numeric tensor")
    if any(s < 0 for s in shape):
        raise ArtifactError(f"{where}: member {shown} has a negative dimension {list(shape)}")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_bytes + nbytes != info.file_size:
        claimed = f"shape {list(shape)[:8]} of {dtype.name} ({nbytes} bytes)"
        raise ArtifactError(
            f"{where}: member {shown}: its header claims {claimed} "
            f"but it holds {info.file_size - header_bytes} bytes of data"
        )
    return NpyMember(
        key=name[: -len(".npy")], shape=shape, fortran=fortran, dtype=dtype, nbytes=nbytes
    )


def read_npz(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every array of an ``.npz``, after :func:`npz_index` checked them; never unpickles."""
    members = npz_index(path)
    arrays: dict[str, npt.NDArray[Any]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for key in members:
                with zf.open(key + ".npy") as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, struct.error, zlib.error) as exc:
        raise ArtifactError(
            f"{shown_path(path)}: not a readable .npz ({one_line(str(exc))})"
        ) from None
    return arrays
