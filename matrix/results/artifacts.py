"""Read one cell's artifact directory into plain data.

An artifact directory is ``manifest.json`` + ``tensors.npz`` + ``log.txt``
(``scenarios/manifest.schema.json``).  Everything that can be wrong with one
(no manifest, another schema version, a manifest the schema rejects or that
holds NaN, infinities or absurd numbers, a missing, truncated or altered
``tensors.npz``) becomes a ``problem`` of one line naming the file; the
report shows the cell as failed and goes on.  A manifest is untrusted data:
its strings are cleaned of lone surrogates, its size and depth are bounded
(:mod:`matrix.untrusted`). Only regular files are read, and a symlink may not
lead out of the cell directory.

``tensors.npz`` is checked before any array is read: every member an
``.npy`` of a numeric dtype whose header matches its size (no pickles, no
claimed 10^22 elements), every key ``scenario/phase/name``, every dtype the
manifest claims consistent with the stored one, every tensor the manifest
lists present.

Tensors are not loaded here: a :class:`CellArtifact` knows each tensor's key,
shape and dtypes from the ``.npy`` headers, and :meth:`CellArtifact.source`
streams one tensor in fixed-size chunks (:mod:`matrix.results.tensors`).
"""

from __future__ import annotations

import hashlib
import json
import re
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
from matrix.results.tensors import (
    SMALL_CACHE,
    SMALL_NPZ,
    ArraySource,
    NpyMember,
    NpzTensor,
    npz_index,
)
from matrix.untrusted import one_line, open_regular, read_json, shown_path, tail_text
from scenarios.contract import (
    LOG,
    MANIFEST,
    ORACLE_PREFIX,
    RUN_RECORD,
    SCHEMA_ID,
    SCHEMA_VERSION,
    TENSORS,
    settled_axes,
)

__all__ = [
    "MANIFEST_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "CellArtifact",
    "ErrorRecord",
    "ScenarioRecord",
    "TensorInfo",
    "load_cell",
    "load_cell_safely",
]

MANIFEST_SCHEMA_PATH = MANIFEST_SCHEMA

_LOG_TAIL_BYTES = 4096
_READ_BLOCK = 1 << 22  # hashing reads 4 MiB at a time
#: A run record is a few hundred bytes.
_MAX_RECORD_BYTES = 1 << 20
#: A key segment: printable, no separator, never "." or ".." (keys are names,
#: but nothing that reads like a path should reach a report or a file name).
_SEGMENT = re.compile(r"^(?!\.{1,2}$)[^/\x00-\x1f\x7f]{1,128}$")
#: The name of a dtype npz cannot hold, stored widened to float32 (bfloat16,
#: float8_e4m3fn, ...): a plain lower-case name, not one NumPy itself knows.
_WIDENED = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


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
        if self._small:
            return ArraySource(SMALL_CACHE.get(path, mtime, size)[key])
        member = key + ".npy"
        return NpzTensor(self.npz_path, member, info.shape, np.dtype(info.stored_dtype), False)

    @cached_property
    def _npz_stat(self) -> tuple[Path, int, int]:
        stat = self.npz_path.stat()
        return self.npz_path, stat.st_mtime_ns, stat.st_size

    @cached_property
    def _small(self) -> bool:
        """Whether the arrays, as the validated headers give their sizes, are
        small enough to read whole (the file's size says nothing of a
        compressed one's)."""
        return sum(t.size_bytes for t in self.tensors.values()) <= SMALL_NPZ

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
        return CellArtifact(cell_id=cid, directory=directory, problem=one_line(exc.message, 600))
    base = _from_manifest(cid, directory, manifest)
    try:
        tensors = _read_tensor_index(directory, manifest)
    except ArtifactError as exc:
        return _replace(base, problem=one_line(exc.message, 600))
    return _replace(base, tensors=tensors)


def _failed_run(cid: str, directory: Path) -> CellArtifact | None:
    """A run the scheduler recorded as failed: run.json without a manifest.

    Not a corrupt artifact but a cell that did not run to the end (timeout,
    out of memory, a crash before the manifest); its reason is the problem.
    """
    record_path = directory / RUN_RECORD
    if _present(directory / MANIFEST) or not _present(record_path):
        return None
    try:
        record = read_json(
            record_path, limit=_MAX_RECORD_BYTES, within=directory, what="a run record"
        )
    except ArtifactError as exc:
        # No manifest and an unreadable record: the record is what to name.
        return CellArtifact(cell_id=cid, directory=directory, problem=one_line(exc.message, 600))
    if not isinstance(record, dict) or record.get("status") != "failed":
        return None
    axes = _plain_axes(record.get("axes"))
    return CellArtifact(
        cell_id=cid,
        directory=directory,
        problem=f"{shown_path(record_path)}: the run failed: {one_line(str(record.get('reason')))}",
        run_failed=True,
        axes=settled_axes(axes) if axes else {},
        executor=_short_text(record.get("executor")),
        environment_id=_short_text(record.get("environment_id")),
        log_tail=tail_text(directory / LOG, _LOG_TAIL_BYTES, within=directory),
    )


def _present(path: Path) -> bool:
    """Whether anything (a file, a directory, a dangling link) has this name."""
    return path.exists() or path.is_symlink()


def _plain_axes(value: Any) -> dict[str, Any]:
    """The axes of a record, as the manifest schema allows them (string,
    whole number or boolean values); anything else is dropped, since every
    axis value is sorted, grouped and compared with others later."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str | int) and len(str(v)) <= 256}


def _short_text(value: Any) -> str | None:
    """A string field of a record, if it is one (a record is data, not code)."""
    return one_line(value, 200) if isinstance(value, str) and value else None


def _replace(cell: CellArtifact, **changes: Any) -> CellArtifact:
    return replace(cell, **changes)


def _read_manifest(directory: Path) -> Mapping[str, Any]:
    path = directory / MANIFEST
    where = shown_path(path)
    if not directory.is_dir():
        raise ArtifactError(f"{shown_path(directory)}: not a directory")
    if not _present(path):
        raise ArtifactError(f"{where}: no manifest.json in this cell directory")
    manifest = read_json(path, within=directory, what="a manifest")
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: expected a JSON object")
    if manifest.get("schema") != SCHEMA_ID:
        raise ArtifactError(f"{where}: schema {_show(manifest.get('schema'))} is not {SCHEMA_ID!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: schema_version {_show(version)}, this matrix reads version "
            f"{SCHEMA_VERSION}; re-run the cell or use a matching matrix version"
        )
    error = _best_error(manifest)
    if error is not None:
        raise ArtifactError(f"{where}: {error}")
    return manifest


def _best_error(manifest: Mapping[str, Any]) -> str | None:
    errors = list(_validator().iter_errors(manifest))
    if not errors:
        return None
    best = jsonschema.exceptions.best_match(errors)
    where = "/".join(str(p) for p in best.absolute_path) or "(top level)"
    return f"does not match the manifest schema at {one_line(where, 120)}: {one_line(best.message)}"


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
        axes=settled_axes(cell["axes"]),
        executor=cell["executor"],
        repeat=int(cell["repeat"]),
        environment_id=cell.get("environment_id"),
        fingerprint=manifest["fingerprint"],
        settings=manifest["settings"],
        scenarios=scenarios,
        timings=dict(manifest["timings"]),
        started_at=manifest["started_at"],
        finished_at=manifest["finished_at"],
        log_tail=tail_text(directory / LOG, _LOG_TAIL_BYTES, within=directory),
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


def _read_tensor_index(directory: Path, manifest: Mapping[str, Any]) -> dict[str, TensorInfo]:
    path = directory / TENSORS
    where = shown_path(path)
    if not _present(path):
        raise ArtifactError(f"{where}: missing (the manifest lists tensors.npz)")
    expected = manifest["tensors"]["sha256"]
    actual = _sha256(path, within=directory)
    if actual != expected:
        raise ArtifactError(
            f"{where}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}… "
            "(altered or truncated after the run)"
        )
    members = npz_index(path)
    dtypes: Mapping[str, str] = manifest["tensors"]["dtypes"]
    index: dict[str, TensorInfo] = {}
    for key, member in members.items():
        _check_key(key, where)
        if member.fortran and len(member.shape) > 1:
            raise ArtifactError(f"{where}: {key} is Fortran-ordered; expected C order")
        index[key] = TensorInfo(
            key=key,
            shape=member.shape,
            stored_dtype=member.dtype.str,
            dtype=_true_dtype(key, member, dtypes.get(key), where),
        )
    listed = sorted({k for body in manifest["scenarios"].values() for k in body["tensors"]})
    absent = [k for k in listed if k not in index]
    if absent:
        raise ArtifactError(
            f"{where}: the manifest lists {len(absent)} tensor(s) it does not hold, "
            f"e.g. {_show(absent[0])}"
        )
    if sum(t.size_bytes for t in index.values()) <= SMALL_NPZ:
        # Small: read it whole now, into the cache the comparisons use.
        stat = path.stat()
        SMALL_CACHE.get(path, stat.st_mtime_ns, stat.st_size)
    return dict(sorted(index.items()))


def _check_key(key: str, where: str) -> None:
    """A key is ``scenario/phase/name`` (``reference/`` + one, for an oracle)."""
    parts = key.split("/")
    if len(parts) < 3 or len(key) > 512 or not all(_SEGMENT.match(p) for p in parts):
        raise ArtifactError(f"{where}: tensor key {_show(key)} is not scenario/phase/name")


def _true_dtype(key: str, member: NpyMember, claimed: str | None, where: str) -> str:
    """The dtype the framework produced: the stored one, or a dtype npz cannot
    hold (bfloat16, float8_*) stored widened to float32. A manifest claiming
    anything else lies about the array, and its comparisons would be judged
    in the wrong dtype (a complex array called float32 would lose its
    imaginary part)."""
    stored = member.dtype
    if claimed is None or claimed in (stored.name, str(stored)):
        return stored.name
    if stored == np.float32 and _WIDENED.match(claimed) and claimed not in np.sctypeDict:
        return claimed
    raise ArtifactError(
        f"{where}: {_show(key)} is stored as {stored.name} but the manifest says {_show(claimed)}"
    )


def _sha256(path: Path, *, within: Path | None = None) -> str:
    digest = hashlib.sha256()
    with open_regular(path, within=within) as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
