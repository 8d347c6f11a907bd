"""What one run reads besides its settings, and the runner arguments that name it.

* Stage one of a run with the user's model or module: the read-only copy of
  the user's files (:mod:`matrix.user.snapshot`), passed with the runner
  options they belong to (``--user-model``, ``--train-steps``...).
* Stage two: the stage-one ``files/`` directory of every cell of the plan
  that saved any, passed as ``--sources`` (cell id -> where the run sees it).

Each input's content digest goes into the run's cache key: a changed model
or a re-saved stage-one file re-runs what read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from matrix.execute.cache import content_digest
from matrix.execute.executors.base import Executor, ReadOnlyInput
from matrix.plan.cells import runner_args
from matrix.plan.tasks import RunPlan, Task
from matrix.user.snapshot import Snapshot
from scenarios.contract import FILES, OPTIONS

__all__ = ["RunInputs", "run_inputs", "stage_one_files"]

_FLAGS = {o.name: o.option for o in OPTIONS}


@dataclass(frozen=True, kw_only=True)
class RunInputs:
    args: list[str]  # every runner argument but --meta
    inputs: tuple[ReadOnlyInput, ...] = ()
    digests: Mapping[str, str] = field(default_factory=dict)  # input -> content digest


def stage_one_files(results: Path, plan: RunPlan) -> list[tuple[str, Path]]:
    """(cell id, files directory) of every cell of the plan whose primary
    stage-one run saved files, in plan order."""
    out = []
    for cell in plan.cells:
        files = results / cell.id / FILES
        if files.is_dir():
            out.append((cell.id, files))
    return out


def run_inputs(
    task: Task, plan: RunPlan, results: Path, executor: Executor, user: Snapshot | None
) -> RunInputs:
    if task.stage == 2:
        sources = stage_one_files(results, plan)
        inputs = tuple(
            ReadOnlyInput(name=f"source-{n:03d}", path=path) for n, (_, path) in enumerate(sources)
        )
        where = {
            cid: executor.input_path(item) for (cid, _), item in zip(sources, inputs, strict=True)
        }
        return RunInputs(
            args=[
                *runner_args(task.cell, plan.spec, plan.stage_two),
                _FLAGS["stage"],
                "2",
                _FLAGS["sources"],
                json.dumps(where, sort_keys=False),
            ],
            inputs=inputs,
            digests={f"source:{cid}": content_digest(path) for cid, path in sources},
        )
    args = runner_args(task.cell, plan.spec, plan.scenarios)
    if user is None or plan.user is None:
        return RunInputs(args=args)
    for option, item in user.inputs.items():
        args += [_FLAGS[option], executor.input_path(item)]
    for option, value in plan.user.options.items():
        args += [_FLAGS[option], value]
    return RunInputs(args=args, inputs=tuple(user.inputs.values()), digests=user.digests)
