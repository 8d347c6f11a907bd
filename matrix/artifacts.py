"""Read cell artifact directories into plain data, and results directories into cells.

An artifact directory is ``manifest.json`` + ``tensors.npz`` + ``log.txt``
(``scenarios/manifest.schema.json``).  Everything that can be wrong with one
(no manifest, another schema version, a manifest the schema rejects, a
missing, truncated or altered ``tensors.npz``) becomes an
:class:`~matrix.errors.ArtifactError` with one line naming the file; the
report turns it into a failed cell and goes on.

Tensors are not loaded here: a :class:`CellArtifact` knows each tensor's key,
shape and dtypes from the ``.npy`` headers, and :meth:`CellArtifact.source`
streams one tensor in fixed-size chunks, so comparing two 1 GiB tensors needs
a few MiB of memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from matrix.compare import ArraySource
from matrix.errors import ArtifactError, ResultsError

__all__ = [
    "MANIFEST_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "CellArtifact",
    "CellEntry",
    "ErrorRecord",
    "NpzTensor",
    "Plan",
    "ResultsInventory",
    "ScenarioRecord",
    "TensorInfo",
    "discover_results",
    "load_cell",
    "load_cell_safely",
]

SCHEMA_ID = "keras-repro-matrix/artifact"
SCHEMA_VERSION = 1
MANIFEST_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "scenarios" / "manifest.schema.json"
ORACLE_PREFIX = "reference/"
RUN_RECORD = "run.json"  # written by the scheduler beside (or instead of) the artifact

_LOG_TAIL_BYTES = 4096
_READ_BLOCK = 1 << 22  # hashing reads 4 MiB at a time


@dataclass(frozen=True, kw_only=True)
class ErrorRecord:
    type: str
    message: str
    traceback: str


@dataclass(frozen=True, kw_only=True)
class ScenarioRecord:
    name: str
    status: str  # ok | failed | unsupported
    error: ErrorRecord | None
    seconds: float
    tensors: tuple[str, ...]
    notes: tuple[str, ...]
    data: Mapping[str, Any]
    # per phase (when the scenario reports them): phase -> (status, error)
    phases: Mapping[str, tuple[str, ErrorRecord | None]] = field(default_factory=dict)
    # phases whose tensors are meant to differ from run to run (unseeded draws)
    varying_phases: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    stored_dtype: str
    dtype: str  # the true dtype, from the manifest (bfloat16 is stored as float32)

    @property
    def size_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.stored_dtype).itemsize


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
            _npy_header(fh)
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


@dataclass(frozen=True, kw_only=True)
class CellArtifact:
    """One cell run as read from its directory.

    ``problem`` is None for a sound artifact; otherwise one line naming the
    file, and the fields the broken part would have filled are empty.
    """

    cell_id: str
    directory: Path
    problem: str | None = None
    missing: bool = False  # planned, but no directory in any results dir
    run_failed: bool = False  # the scheduler recorded a failed run (run.json) and no artifact
    axes: Mapping[str, Any] = field(default_factory=dict)
    executor: str | None = None
    repeat: int = 0
    environment_id: str | None = None
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    scenarios: Mapping[str, ScenarioRecord] = field(default_factory=dict)
    tensors: Mapping[str, TensorInfo] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def npz_path(self) -> Path:
        return self.directory / "tensors.npz"

    def source(self, key: str) -> NpzTensor | ArraySource:
        """A chunked reader of one tensor.

        Small tensor files are read whole once and kept in a bounded cache
        (a report compares each cell several times: against the reference,
        the oracle, its neighbours on every axis); large ones are streamed.
        """
        info = self.tensors[key]
        path, mtime, size = self._npz_stat
        if size <= _SMALL_NPZ:
            return ArraySource(_SMALL_CACHE.get(path, mtime, size)[key])
        member = key + ".npy"
        return NpzTensor(self.npz_path, member, info.shape, np.dtype(info.stored_dtype), False)

    @cached_property
    def _npz_stat(self) -> tuple[Path, int, int]:
        stat = self.npz_path.stat()
        return self.npz_path, stat.st_mtime_ns, stat.st_size

    @cached_property
    def phase_index(self) -> Mapping[tuple[str, str], tuple[str, ...]]:
        """(scenario, phase) -> the keys of the tensors the cell wrote for it (no oracles)."""
        out: dict[tuple[str, str], list[str]] = {}
        for key in self.tensors:
            if key.startswith(ORACLE_PREFIX):
                continue
            parts = key.split("/", 2)
            if len(parts) == 3:
                out.setdefault((parts[0], parts[1]), []).append(key)
        return {k: tuple(v) for k, v in out.items()}

    def read(self, key: str) -> npt.NDArray[Any]:
        source = self.source(key)
        if isinstance(source, ArraySource):
            return np.asarray(source.array)
        return source.read()


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


_SMALL_NPZ = 4 << 20  # tensor files up to 4 MiB are read whole and cached
_SMALL_CACHE = _NpzCache(256 << 20)


# --------------------------------------------------------------------------
# Loading one cell


@cache
def _validator() -> Any:
    schema = json.loads(MANIFEST_SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def load_cell(directory: Path, *, cell_id: str | None = None) -> CellArtifact:
    """Load and validate one artifact directory; raise ArtifactError if it is unusable."""
    cell = load_cell_safely(directory, cell_id=cell_id)
    if cell.problem is not None:
        raise ArtifactError(cell.problem)
    return cell


def load_cell_safely(directory: Path, *, cell_id: str | None = None) -> CellArtifact:
    """Load one artifact directory; a corrupt one comes back with ``problem`` set.

    As much as could be read is kept (a cell whose tensors are corrupt still
    shows its axes, fingerprint and scenario statuses).
    """
    cid = cell_id or directory.name
    failed_run = _failed_run(cid, directory)
    if failed_run is not None:
        return failed_run
    try:
        manifest = _read_manifest(directory)
    except ArtifactError as exc:
        return CellArtifact(cell_id=cid, directory=directory, problem=exc.message)
    base = _from_manifest(cid, directory, manifest)
    try:
        tensors = _read_tensor_index(directory, manifest)
    except ArtifactError as exc:
        return _replace(base, problem=exc.message)
    return _replace(base, tensors=tensors)


def _failed_run(cid: str, directory: Path) -> CellArtifact | None:
    """A run the scheduler recorded as failed: run.json without a manifest.

    Not a corrupt artifact but a cell that did not run to the end (timeout,
    out of memory, a crash before the manifest); its reason is the problem.
    """
    record_path = directory / RUN_RECORD
    if (directory / "manifest.json").exists() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("status") != "failed":
        return None
    axes = record.get("axes")
    return CellArtifact(
        cell_id=cid,
        directory=directory,
        problem=f"{record_path}: the run failed: {_one_line(str(record.get('reason')))}",
        run_failed=True,
        axes=dict(axes) if isinstance(axes, dict) else {},
        executor=str(record["executor"]) if record.get("executor") else None,
        environment_id=record.get("environment_id"),
        log_tail=_log_tail(directory / "log.txt"),
    )


def _replace(cell: CellArtifact, **changes: Any) -> CellArtifact:
    from dataclasses import replace

    return replace(cell, **changes)


def _read_manifest(directory: Path) -> Mapping[str, Any]:
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a directory")
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest.json in this cell directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({_one_line(str(exc))})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if manifest.get("schema") != SCHEMA_ID:
        raise ArtifactError(f"{path}: schema {manifest.get('schema')!r} is not {SCHEMA_ID!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema_version {version!r}, this matrix reads version {SCHEMA_VERSION}; "
            "re-run the cell or use a matching matrix version"
        )
    error = _best_error(manifest)
    if error is not None:
        raise ArtifactError(f"{path}: {error}")
    return manifest


def _best_error(manifest: Mapping[str, Any]) -> str | None:
    errors = list(_validator().iter_errors(manifest))
    if not errors:
        return None
    best = jsonschema.exceptions.best_match(errors)
    where = "/".join(str(p) for p in best.absolute_path) or "(top level)"
    return f"does not match the manifest schema at {where}: {_one_line(best.message)}"


def _from_manifest(cid: str, directory: Path, manifest: Mapping[str, Any]) -> CellArtifact:
    cell = manifest["cell"]
    scenarios = {
        name: ScenarioRecord(
            name=name,
            status=body["status"],
            error=_error(body.get("error")),
            seconds=float(body["seconds"]),
            tensors=tuple(body["tensors"]),
            notes=tuple(body["notes"]),
            data=body.get("data") or {},
            phases={
                str(ph): (str(rec.get("status", "ok")), _error(rec.get("error")))
                for ph, rec in sorted((body.get("phases") or {}).items())
                if isinstance(rec, dict)
            },
            varying_phases=_varying_phases(body),
        )
        for name, body in sorted(manifest["scenarios"].items())
    }
    return CellArtifact(
        cell_id=cid,
        directory=directory,
        axes=dict(cell["axes"]),
        executor=cell["executor"],
        repeat=int(cell["repeat"]),
        environment_id=cell.get("environment_id"),
        fingerprint=manifest["fingerprint"],
        settings=manifest["settings"],
        scenarios=scenarios,
        timings=dict(manifest["timings"]),
        started_at=manifest["started_at"],
        finished_at=manifest["finished_at"],
        log_tail=_log_tail(directory / "log.txt"),
    )


def _varying_phases(body: Mapping[str, Any]) -> frozenset[str]:
    """Phases the scenario says are not meant to reproduce (unseeded on purpose).

    Comparing two unseeded draws says nothing about an environment, so the
    report shows these phases but keeps them out of verdicts, attribution,
    determinism and the --fail-on gate.  Two ways to say so:

    * ``phases[P].reproducible: false`` (the general marker), or
    * ``data.recipes[V].reproducible_in_process: false`` for the phase
      ``recipe_V`` (how the initializers scenario reports its partial
      seed-control recipes).
    """
    out = set()
    for phase, rec in (body.get("phases") or {}).items():
        if isinstance(rec, dict) and rec.get("reproducible") is False:
            out.add(str(phase))
    recipes = (body.get("data") or {}).get("recipes")
    if isinstance(recipes, dict):
        for variant, info in recipes.items():
            if isinstance(info, dict) and info.get("reproducible_in_process") is False:
                out.add(f"recipe_{variant}")
    return frozenset(out)


def _error(body: Mapping[str, Any] | None) -> ErrorRecord | None:
    if not body:
        return None
    return ErrorRecord(
        type=str(body.get("type", "Error")),
        message=str(body.get("message", "")),
        traceback=str(body.get("traceback", "")),
    )


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _read_tensor_index(directory: Path, manifest: Mapping[str, Any]) -> dict[str, TensorInfo]:
    path = directory / "tensors.npz"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (the manifest lists tensors.npz)")
    expected = manifest["tensors"]["sha256"]
    actual = _sha256(path)
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}… "
            "(altered or truncated after the run)"
        )
    dtypes: Mapping[str, str] = manifest["tensors"]["dtypes"]
    index: dict[str, TensorInfo] = {}
    try:
        stat = path.stat()
        if stat.st_size <= _SMALL_NPZ:
            # small: read it whole now (it lands in the cache the comparisons use)
            for key, arr in _SMALL_CACHE.get(path, stat.st_mtime_ns, stat.st_size).items():
                index[key] = TensorInfo(
                    key=key,
                    shape=tuple(arr.shape),
                    stored_dtype=arr.dtype.str,
                    dtype=dtypes.get(key, arr.dtype.name),
                )
            return dict(sorted(index.items()))
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                with zf.open(info) as fh:
                    shape, fortran, dtype = _npy_header(fh)
                if fortran and len(shape) > 1:
                    raise ArtifactError(f"{path}: {key} is Fortran-ordered; expected C order")
                index[key] = TensorInfo(
                    key=key, shape=shape, stored_dtype=dtype.str, dtype=dtypes.get(key, dtype.name)
                )
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, struct.error, zlib.error) as exc:
        raise ArtifactError(f"{path}: not a readable .npz ({_one_line(str(exc))})") from None
    return dict(sorted(index.items()))


def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


# --------------------------------------------------------------------------
# Results directories (possibly several shards) -> cells


@dataclass(frozen=True, kw_only=True)
class Plan:
    """``plan.json``: the cells the spec expanded to, in spec order."""

    cells: tuple[str, ...] = ()
    reference: str | None = None
    tolerances: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    axes: tuple[str, ...] = ()
    spec: str | None = None


@dataclass(frozen=True, kw_only=True)
class CellEntry:
    """Where a cell's primary run and its repeats live (not yet loaded)."""

    cell_id: str
    directory: Path | None  # None: planned but absent from every results dir
    repeats: tuple[Path, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ResultsInventory:
    plan: Plan
    cells: tuple[CellEntry, ...]
    problems: tuple[tuple[str, str], ...]  # (kind, one line): results | warning


def discover_results(
    results_dirs: Sequence[Path], *, skip: Sequence[Path] = ()
) -> ResultsInventory:
    """Find the cells in one or more results directories (shards) and merge them.

    Cells appear in plan order, then any unplanned cells sorted by id, so the
    merge of shards lists exactly what one unsharded directory would.  A
    directory that is missing or empty is a problem, not the end: the others
    are still reported.  Raises ResultsError only when nothing at all is left.
    """
    if not results_dirs:
        raise ResultsError("no results directory given")
    problems: list[tuple[str, str]] = []
    plans: list[Plan] = []
    found: dict[str, CellEntry] = {}
    skipped = {p.resolve() for p in skip}
    for root in results_dirs:
        if not root.is_dir():
            problems.append(("results", f"{root}: results directory does not exist"))
            continue
        plan_path = root / "plan.json"
        if plan_path.is_file():
            try:
                plans.append(_read_plan(plan_path))
            except ArtifactError as exc:
                problems.append(("results", exc.message))
        cells_here = 0
        for child in sorted(root.iterdir()):
            if not child.is_dir() or child.name.startswith(".") or child.resolve() in skipped:
                continue
            if (child / "report.json").is_file() or (child / "index.html").is_file():
                continue  # an earlier report written into the results dir
            cells_here += 1
            if child.name in found:
                problems.append(
                    (
                        "warning",
                        f"{child}: cell {child.name} also in "
                        f"{found[child.name].directory}; using the first",
                    )
                )
                continue
            found[child.name] = CellEntry(
                cell_id=child.name, directory=child, repeats=_repeat_dirs(child)
            )
        if cells_here == 0:
            problems.append(("results", f"{root}: no cell directories in this results directory"))
    plan = _merge_plans(plans)
    if not found and not plan.cells:
        detail = "; ".join(msg for _, msg in problems)
        raise ResultsError(f"nothing to report: {detail}")
    ordered: list[CellEntry] = []
    for cid in plan.cells:
        entry = found.pop(cid, None)
        ordered.append(entry or CellEntry(cell_id=cid, directory=None))
    ordered.extend(found[cid] for cid in sorted(found))
    return ResultsInventory(plan=plan, cells=tuple(ordered), problems=tuple(problems))


def _repeat_dirs(cell_dir: Path) -> tuple[Path, ...]:
    root = cell_dir / "repeats"
    if not root.is_dir():
        return ()
    dirs = [p for p in root.iterdir() if p.is_dir()]
    return tuple(sorted(dirs, key=lambda p: _natural_key(p.name)))


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|\D+", text))


def _read_plan(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({_one_line(str(exc))}); ignored") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object; ignored")
    try:
        cells = tuple(str(c) for c in data.get("cells") or ())
        axes = tuple(str(a) for a in data.get("axes") or ())
        tolerances = {
            str(dt): {str(k): float(v) for k, v in vals.items()}
            for dt, vals in (data.get("tolerances") or {}).items()
        }
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: malformed ({_one_line(str(exc))}); ignored") from None
    ref = data.get("reference")
    return Plan(
        cells=cells,
        reference=str(ref) if ref is not None else None,
        tolerances=tolerances,
        axes=axes,
        spec=str(data["spec"]) if data.get("spec") is not None else None,
    )


def _merge_plans(plans: Sequence[Plan]) -> Plan:
    """Shards usually carry the same plan.json; take the union, first one leading."""
    if not plans:
        return Plan()
    first = plans[0]
    cells = list(first.cells)
    axes = list(first.axes)
    tolerances: dict[str, dict[str, float]] = {}
    for plan in reversed(plans):  # earlier plans win on conflicts
        for dt, vals in plan.tolerances.items():
            tolerances.setdefault(dt, {}).update(vals)
    for plan in plans[1:]:
        cells += [c for c in plan.cells if c not in cells]
        axes += [a for a in plan.axes if a not in axes]
    reference = next((p.reference for p in plans if p.reference), None)
    spec = next((p.spec for p in plans if p.spec), None)
    return Plan(
        cells=tuple(cells), reference=reference, tolerances=tolerances, axes=tuple(axes), spec=spec
    )
