"""The host and the runner read one contract: the same axes, values,
defaults, options and scenarios on both sides, proven by driving each side
with what the other produces."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from matrix.errors import SpecError
from matrix.plan.cells import AXIS_DEFAULTS, cell_id, expand, runner_args
from matrix.plan.spec import load_spec
from matrix.plan.stacks import load_catalog
from scenarios import contract, settings
from scenarios.cli import build_parser
from scenarios.contract import AXES, OPTIONS, PHASES, phase_rank, registry, setting_axes

CATALOG = load_catalog()


def _choices(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...] | None]:
    out: dict[str, tuple[str, ...] | None] = {}
    for action in parser._actions:
        if action.option_strings:
            out[action.option_strings[0]] = tuple(action.choices) if action.choices else None
    return out


def test_every_setting_axis_is_a_runner_flag_with_the_same_choices() -> None:
    flags = _choices(build_parser())
    for axis in setting_axes():
        assert axis.option in flags, axis.name
        assert flags[axis.option] == (axis.choices or None), axis.name
    for option in OPTIONS:
        assert option.option in flags, option.name


def test_environment_axes_are_never_runner_flags() -> None:
    flags = _choices(build_parser())
    for axis in contract.environment_axes():
        assert axis.option not in flags


def test_runner_defaults_are_the_contract_defaults() -> None:
    for axis in setting_axes():
        assert settings.DEFAULTS[axis.name] == axis.to_runner(axis.default)
    for option in OPTIONS:
        assert settings.DEFAULTS[option.name] == option.default


def test_every_setting_axis_has_a_runtime_step() -> None:
    # The code that applies an axis is registered against its name; an axis
    # without one would be accepted and silently ignored.
    assert set(settings._AT_RUNTIME) == {a.name for a in setting_axes()}
    assert set(settings._BEFORE_IMPORT) <= {a.name for a in setting_axes()}


def _spec_with(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return load_spec(path, CATALOG)


@pytest.mark.parametrize("axis", [a for a in setting_axes() if a.choices], ids=lambda a: a.name)
def test_the_spec_accepts_exactly_the_runners_values(tmp_path: Path, axis: contract.Axis) -> None:
    values = ", ".join(f'"{v}"' for v in axis.choices)
    target = 'target = ["cuda"]\n' if axis.name == "device" else ""  # a GPU needs a cuda build
    spec = _spec_with(tmp_path, f'[axes]\nstack = ["tf-2.15"]\n{target}{axis.name} = [{values}]\n')
    parser = build_parser()
    for cell in expand(spec, CATALOG):
        # what the host passes, the runner's own parser takes
        args = parser.parse_args(["--out", "x", *runner_args(cell, spec)])
        assert getattr(args, axis.name) == cell.axes[axis.name]
    with pytest.raises(SpecError, match="not allowed"):
        _spec_with(tmp_path, f'[axes]\nstack = ["tf-2.15"]\n{axis.name} = ["no-such-value"]\n')


def test_count_axes_pass_through_as_integers(tmp_path: Path) -> None:
    spec = _spec_with(tmp_path, '[axes]\nstack = ["tf-2.15"]\nthreads = [0, 3]\n')
    parser = build_parser()
    got = [
        parser.parse_args(["--out", "x", *runner_args(c, spec)]).threads
        for c in expand(spec, CATALOG)
    ]
    assert got == [0, 3]


def test_spec_runner_options_reach_the_runner(tmp_path: Path) -> None:
    spec = _spec_with(
        tmp_path,
        '[axes]\nstack = ["tf-2.15"]\n[runner]\nscenarios = ["precision", "seeded_mlp"]\n'
        "unseeded_repeats = 7\n",
    )
    (cell,) = expand(spec, CATALOG)
    args = build_parser().parse_args(["--out", "x", *runner_args(cell, spec)])
    assert args.scenarios == "precision,seeded_mlp"
    assert args.unseeded_repeats == 7
    # and the runner's settings read them in that order
    parsed = settings.parse_settings(None, vars(args) | {"out": None, "meta": None, "force": None})
    assert parsed.scenarios == ("precision", "seeded_mlp")


def test_the_registry_holds_the_built_in_scenarios_with_their_phases() -> None:
    known = registry()
    assert {"seeded_mlp", "stateful_lstm", "precision", "initializers"} <= set(known)
    for scenario in known.values():
        assert list(scenario.phases) == sorted(scenario.phases, key=phase_rank)
        assert scenario.summary
    assert "forward" in known["seeded_mlp"].phases
    # the spec's default scenarios are the registry's
    assert load_spec(Path("matrix/default.toml").resolve()).scenarios
    assert PHASES.index("init") < PHASES.index("forward") < PHASES.index("train")


def test_a_scenario_registered_twice_from_two_modules_is_refused() -> None:
    def run(ctx: object) -> None:
        return None

    run.__module__ = "somewhere.else"
    with pytest.raises(ValueError, match="registered twice"):
        contract.scenario("seeded_mlp", phases=("forward",), summary="x")(run)


def test_cell_ids_leave_every_default_out_and_follow_axis_order() -> None:
    assert set(AXIS_DEFAULTS) == {a.name for a in AXES}
    axes = dict(AXIS_DEFAULTS, stack="tf-2.21")
    assert cell_id(axes) == "tf-2.21__cpu"
    axes.update(precision="mixed_float16", determinism="off")
    assert cell_id(axes) == "tf-2.21__cpu__mixed_float16__det-off"


def test_the_manifest_schema_describes_every_setting_of_the_contract() -> None:
    import json

    path = Path(__file__).parent.parent / "scenarios" / "manifest.schema.json"
    schema = json.loads(path.read_text())
    described = set(schema["$defs"]["settings"]["properties"])
    assert described == {a.name for a in setting_axes()} | {o.name for o in OPTIONS}
    for axis in setting_axes():
        enum = schema["$defs"]["settings"]["properties"][axis.name].get("enum")
        if enum is not None and axis.runner == "choice":
            assert tuple(enum) == axis.choices, axis.name
