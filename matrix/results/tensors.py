"""Tensors of an artifact's ``tensors.npz``, read in fixed-size chunks.

A comparison reads two tensors in lockstep chunks (:class:`ChunkSource`), so
comparing two 1 GiB tensors needs a few MiB of memory: a stored ``.npz``
member is read straight from the file at its offset, a compressed one as a
stream. Small files are read whole once and kept in a bounded cache, since a
report compares each cell several times.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from matrix.errors import ArtifactError

__all__ = [
    "SMALL_CACHE",
    "SMALL_NPZ",
    "ArraySource",
    "ChunkSource",
    "NpzTensor",
    "RealView",
    "npy_header",
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
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
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
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    return tuple(int(s) for s in shape), bool(fortran), dtype
