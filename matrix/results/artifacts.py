"""Read one cell's artifact directory into plain data.

An artifact directory is ``manifest.json`` + ``tensors.npz`` + ``log.txt``
(``scenarios/manifest.schema.json``).  Everything that can be wrong with one
(no manifest, another schema version, a manifest the schema rejects or that
holds NaN, infinities or absurd numbers, a missing, truncated or altered
``tensors.npz``) becomes a ``problem`` of one line naming the file; the
report shows the cell as failed and goes on.  A manifest is untrusted data:
its strings are cleaned of lone surrogates, its size and depth are bounded.

Tensors are not loaded here: a :class:`CellArtifact` knows each tensor's key,
shape and dtypes from the ``.npy`` headers, and :meth:`CellArtifact.source`
streams one tensor in fixed-size chunks (:mod:`matrix.results.tensors`).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from matrix.errors import ArtifactError
from matrix.paths import MANIFEST_SCHEMA
from matrix.results.tensors import SMALL_CACHE, SMALL_NPZ, ArraySource, NpzTensor, npy_header
from scenarios.contract import (
    LOG,
    MANIFEST,
    ORACLE_PREFIX,
    RUN_RECORD,
    SCHEMA_ID,
    SCHEMA_VERSION,
    TENSORS,
)

__all__ = [
    "MANIFEST_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "CellArtifact",
    "ErrorRecord",
    "ScenarioRecord",
    "TensorInfo",
    "clean_text",
    "load_cell",
    "load_cell_safely",
    "read_json",
]

MANIFEST_SCHEMA_PATH = MANIFEST_SCHEMA

_LOG_TAIL_BYTES = 4096
_READ_BLOCK = 1 << 22  # hashing reads 4 MiB at a time
#: A manifest is a few hundred KB; anything far larger is not one.
_MAX_JSON_BYTES = 64 << 20
#: Numbers beyond this are no timing, shape or statistic a run produces.
_MAX_NUMBER = 1e300


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
        return self.directory / TENSORS

    def source(self, key: str) -> NpzTensor | ArraySource:
        """A chunked reader of one tensor.

        Small tensor files are read whole once and kept in a bounded cache
        (a report compares each cell several times: against the reference,
        the oracle, its neighbours on every axis); large ones are streamed.
        """
        info = self.tensors[key]
        path, mtime, size = self._npz_stat
        if size <= SMALL_NPZ:
            return ArraySource(SMALL_CACHE.get(path, mtime, size)[key])
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
        return CellArtifact(cell_id=cid, directory=directory, problem=_one_line(exc.message, 600))
    base = _from_manifest(cid, directory, manifest)
    try:
        tensors = _read_tensor_index(directory, manifest)
    except ArtifactError as exc:
        return _replace(base, problem=_one_line(exc.message, 600))
    return _replace(base, tensors=tensors)


def _failed_run(cid: str, directory: Path) -> CellArtifact | None:
    """A run the scheduler recorded as failed: run.json without a manifest.

    Not a corrupt artifact but a cell that did not run to the end (timeout,
    out of memory, a crash before the manifest); its reason is the problem.
    """
    record_path = directory / RUN_RECORD
    if (directory / MANIFEST).exists() or not record_path.is_file():
        return None
    try:
        record = read_json(record_path)
    except ArtifactError:
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
        log_tail=_log_tail(directory / LOG),
    )


def _replace(cell: CellArtifact, **changes: Any) -> CellArtifact:
    return replace(cell, **changes)


def _read_manifest(directory: Path) -> Mapping[str, Any]:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a directory")
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest.json in this cell directory")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if manifest.get("schema") != SCHEMA_ID:
        raise ArtifactError(f"{path}: schema {_show(manifest.get('schema'))} is not {SCHEMA_ID!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema_version {_show(version)}, this matrix reads version {SCHEMA_VERSION}; "
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
        log_tail=_log_tail(directory / LOG),
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
            return clean_text(fh.read().decode("utf-8", errors="replace"))
    except OSError:
        return ""


def _read_tensor_index(directory: Path, manifest: Mapping[str, Any]) -> dict[str, TensorInfo]:
    path = directory / TENSORS
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
        if stat.st_size <= SMALL_NPZ:
            # small: read it whole now (it lands in the cache the comparisons use)
            for key, arr in SMALL_CACHE.get(path, stat.st_mtime_ns, stat.st_size).items():
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
                    shape, fortran, dtype = npy_header(fh)
                if fortran and len(shape) > 1:
                    raise ArtifactError(f"{path}: {key} is Fortran-ordered; expected C order")
                index[key] = TensorInfo(
                    key=key, shape=shape, stored_dtype=dtype.str, dtype=dtypes.get(key, dtype.name)
                )
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, struct.error, zlib.error) as exc:
        raise ArtifactError(f"{path}: not a readable .npz ({_one_line(str(exc))})") from None
    return dict(sorted(index.items()))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


# --------------------------------------------------------------------------
# Untrusted JSON


def read_json(path: Path) -> Any:
    """Parse a JSON file a run left: bounded in size and depth, no NaN or
    infinities (JSON has neither; Python's parser would take them), no
    absurd numbers, strings free of lone surrogates. ArtifactError otherwise."""
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise ArtifactError(f"{path}: larger than {_MAX_JSON_BYTES >> 20} MiB; not a manifest")
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ArtifactError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({_one_line(str(exc))})") from None
    try:
        return _clean(data)
    except _BadNumber as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except RecursionError:
        raise ArtifactError(f"{path}: nested too deeply to be a manifest") from None


class _BadNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or abs(value) > _MAX_NUMBER:
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (unencodable as UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        if abs(value) > 2**63:
            raise _BadNumber(f"the integer {str(value)[:20]}... is out of range")
        return value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return {clean_text(k): _clean(v) for k, v in value.items()}
