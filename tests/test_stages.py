"""Planning and scheduling of the user's model and of two-stage scenarios,
with a stand-in executor: which runs happen, in which order, what each reads
(read-only), and what the cache reuses. No framework, no Docker."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from matrix.errors import SpecError
from matrix.execute.executors.base import CellRun, Environment, Prepared, ReadOnlyInput
from matrix.execute.executors.docker import CONTAINER_INPUTS, cell_spec
from matrix.execute.scheduler import execute, run_dir
from matrix.plan.spec import load_spec
from matrix.plan.stacks import load_catalog
from matrix.plan.tasks import RunPlan, make_plan
from matrix.user.check import check_user
from scenarios import contract
from scenarios.contract import FILES, STAGE_TWO, default_scenarios, registry
from scenarios.settings import SettingsError, parse_settings, resolve_scenarios

CATALOG = load_catalog()
TWO_STACKS = "[matrix]\nrepeats=1\n[axes]\nstack=['tf-2.15','tf-2.21']\n"


def spec_plan(tmp_path: Path, text: str, **kwargs: Any) -> RunPlan:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return make_plan(load_spec(path, CATALOG), CATALOG, **kwargs)


class Recorder:
    """Writes a tiny artifact per run; stage one also saves a file, as the
    portability scenario does. Records every run's arguments and inputs."""

    name = "venv"

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def prepare(self, env: Environment) -> Prepared:
        return Prepared(id=f"fake:{env.name}", built=False)

    def terminate_all(self) -> None:
        return None

    def reap(self, staging: Path) -> None:
        return None

    def input_path(self, item: ReadOnlyInput) -> str:
        return f"/seen/{item.name}"

    def run_cell(
        self,
        env: Environment,
        environment_id: str,
        runner_args: list[str],
        out_dir: Path,
        *,
        timeout: float,
        memory: str,
        gpu: bool,
        extra_env: dict[str, str],
        inputs: Sequence[ReadOnlyInput] = (),
    ) -> CellRun:
        meta = json.loads(runner_args[runner_args.index("--meta") + 1])
        stage = (
            int(runner_args[runner_args.index("--stage") + 1]) if "--stage" in runner_args else 1
        )
        with self.lock:
            self.runs.append(
                {"id": meta["id"], "stage": stage, "args": runner_args, "inputs": list(inputs)}
            )
        out_dir.mkdir()
        if stage == 1:
            saved = out_dir / FILES / "portability" / "keras"
            saved.mkdir(parents=True)
            (saved / "mlp.keras").write_text(f"saved in {meta['id']}")
        (out_dir / "tensors.npz").write_bytes(b"npz")
        (out_dir / "log.txt").write_text("log")
        (out_dir / "manifest.json").write_text(json.dumps({"cell": meta}))
        return CellRun(returncode=0, seconds=0.01)


# ---- planning ------------------------------------------------------------------------


def test_a_two_stage_scenario_gives_one_stage_two_run_per_cell(tmp_path: Path) -> None:
    plan = spec_plan(tmp_path, TWO_STACKS + "[runner]\nscenarios=['portability']\n")
    assert plan.stage_two == ("portability",)
    assert [(t.cell.id, t.stage) for t in plan.stage_two_tasks] == [(c.id, 2) for c in plan.cells]


def test_built_in_scenarios_have_no_second_stage(tmp_path: Path) -> None:
    plan = spec_plan(tmp_path, TWO_STACKS)
    assert plan.stage_two == () and plan.stage_two_tasks == []
    assert "portability" not in plan.scenarios and "user_model" not in plan.scenarios


def test_a_spec_cannot_name_the_user_model(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"runner\.scenarios"):
        spec_plan(tmp_path, TWO_STACKS + "[runner]\nscenarios=['user_model']\n")


def user_files(tmp_path: Path) -> tuple[Path, Path]:
    """A SavedModel directory (its content is all the host looks at) and inputs."""
    model = tmp_path / "export"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"graph v1")
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.zeros((4, 3), np.float32))
    return model, inputs


def test_the_user_model_replaces_the_spec_scenarios(tmp_path: Path) -> None:
    model, inputs = user_files(tmp_path)
    user = check_user(model=model, inputs=inputs)
    plan = spec_plan(tmp_path, TWO_STACKS, user=user)
    assert plan.scenarios == ("user_model",) and plan.stage_two == ()


# ---- running ---------------------------------------------------------------------------


def test_stage_two_runs_after_every_stage_one_and_reads_every_cells_files(
    tmp_path: Path,
) -> None:
    plan = spec_plan(tmp_path, TWO_STACKS + "[runner]\nscenarios=['portability']\n")
    results = tmp_path / "results"
    fake = Recorder()
    summary = execute(plan, fake, CATALOG, results, jobs=2)
    assert summary.count("ok") == 4 and not summary.failed
    stages = [r["stage"] for r in fake.runs]
    assert stages == sorted(stages), "a stage-two run started before a stage-one run"
    ids = [c.id for c in plan.cells]
    for run in (r for r in fake.runs if r["stage"] == 2):
        args = run["args"]
        sources = json.loads(args[args.index("--sources") + 1])
        assert list(sources) == ids  # every cell, itself included, in plan order
        assert sorted(sources.values()) == sorted(f"/seen/{i.name}" for i in run["inputs"])
        assert {i.path for i in run["inputs"]} == {results / c / FILES for c in ids}
        assert args[args.index("--scenarios") + 1] == "portability"
    for cell in ids:
        assert (run_dir(results, cell, 0, 2) / "manifest.json").is_file()
        assert run_dir(results, cell, 0, 2) == results / cell / STAGE_TWO
        # stage one's saved files moved into the artifact with it
        assert (results / cell / FILES / "portability" / "keras" / "mlp.keras").is_file()


def test_stage_two_is_cached_until_a_file_it_read_changes(tmp_path: Path) -> None:
    plan = spec_plan(tmp_path, TWO_STACKS + "[runner]\nscenarios=['portability']\n")
    results = tmp_path / "results"
    execute(plan, Recorder(), CATALOG, results, jobs=1)
    again = Recorder()
    summary = execute(plan, again, CATALOG, results, jobs=1)
    assert summary.count("cached") == 4 and again.runs == []
    # A stage-one file that changes (a re-save) re-runs every stage two that read it.
    saved = results / plan.cells[0].id / FILES / "portability" / "keras" / "mlp.keras"
    saved.write_text("saved again")
    third = Recorder()
    summary = execute(plan, third, CATALOG, results, jobs=1)
    assert [(r["id"], r["stage"]) for r in third.runs] == [(c.id, 2) for c in plan.cells]


def test_the_user_model_is_read_only_and_cached_by_content(tmp_path: Path) -> None:
    model, inputs = user_files(tmp_path)
    before = {p: p.read_bytes() for p in (model / "saved_model.pb", inputs)}
    user = check_user(model=model, inputs=inputs, batch_size=4)
    plan = spec_plan(tmp_path, TWO_STACKS, user=user, repeats=1)
    results = tmp_path / "results"
    fake = Recorder()
    execute(plan, fake, CATALOG, results, jobs=2)
    assert len(fake.runs) == 2
    for run in fake.runs:
        args = run["args"]
        assert args[args.index("--scenarios") + 1] == "user_model"
        assert args[args.index("--user-model") + 1] == "/seen/model"
        assert args[args.index("--user-inputs") + 1] == "/seen/inputs.npz"
        assert args[args.index("--batch-size") + 1] == "4"
        copies = {i.name: i.path for i in run["inputs"]}
        assert set(copies) == {"model", "inputs.npz"}
        # The copy the cells read: not the user's file, and not writable.
        assert copies["inputs.npz"] != inputs
        assert not copies["inputs.npz"].stat().st_mode & (
            stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        )
        assert copies["inputs.npz"].read_bytes() == before[inputs]
    assert {p: p.read_bytes() for p in before} == before

    unchanged = Recorder()
    execute(plan, unchanged, CATALOG, results, jobs=2)
    assert unchanged.runs == []
    (model / "saved_model.pb").write_bytes(b"graph v2")  # the same path, new content
    changed = Recorder()
    execute(plan, changed, CATALOG, results, jobs=2)
    assert len(changed.runs) == 2


def test_docker_mounts_every_input_read_only(tmp_path: Path) -> None:
    model = ReadOnlyInput(name="model.keras", path=tmp_path / "model.keras")
    spec = cell_spec(
        image="img",
        name="krm-x",
        runner_args=[],
        out_name="artifact",
        staging=tmp_path,
        scenarios=tmp_path,
        env={},
        memory="1g",
        gpu=False,
        user="10001:10001",
        inputs=[model],
    )
    mounts = {m.target: m for m in spec.mounts}
    assert mounts[f"{CONTAINER_INPUTS}/model.keras"].read_only
    assert mounts[f"{CONTAINER_INPUTS}/model.keras"].source == model.path
    writable = [m.target for m in spec.mounts if not m.read_only]
    assert writable == ["/out"]


# ---- the contract: stages, opt-in scenarios, user modules ------------------------------


def test_the_portability_scenario_has_two_stages_and_is_opt_in() -> None:
    known = registry()
    assert known["portability"].stages == (1, 2)
    assert not known["portability"].default
    assert known["user_model"].needs == "user_model" and not known["user_model"].default
    assert set(default_scenarios(known)) == {
        name for name, s in known.items() if s.default and s.needs is None
    }
    assert "portability" not in default_scenarios(known)


def test_a_second_stage_needs_a_first() -> None:
    def later(ctx: object) -> None:
        return None

    later.__module__ = "tests.nowhere"
    with pytest.raises(ValueError, match="before stage 1"):
        contract.scenario("no_first_stage", phases=("loaded",), summary="x", stage=2)(later)


def test_the_runner_refuses_what_a_scenario_cannot_run() -> None:
    known = registry()
    with pytest.raises(SettingsError, match="needs --user-model"):
        resolve_scenarios(parse_settings(None, {"scenarios": "user_model"}), known)
    with pytest.raises(SettingsError, match="no second stage"):
        resolve_scenarios(parse_settings(None, {"scenarios": "seeded_mlp", "stage": 2}), known)
    two = resolve_scenarios(parse_settings(None, {"scenarios": "portability", "stage": 2}), known)
    assert two.scenarios == ("portability",)
    with pytest.raises(SettingsError, match="sources"):
        parse_settings(None, {"sources": "[1, 2]"})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('broken on purpose')\n", "could not be imported: RuntimeError"),
        ("x = 1\n", "defines nothing usable: LookupError"),
    ],
)
def test_a_user_module_that_fails_fails_its_scenario(
    tmp_path: Path, source: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registry of this test's own: the process's stays as it was.
    monkeypatch.setattr(contract, "_REGISTRY", dict(contract._REGISTRY))
    module = tmp_path / "mine.py"
    module.write_text(source)
    name = "user_probe"
    contract.register_module(str(module), [name])
    broken = registry()[name]
    with pytest.raises(ImportError, match=message):
        broken.run(None)
