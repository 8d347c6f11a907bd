from __future__ import annotations

from pathlib import Path

import pytest

from matrix.errors import SpecError
from matrix.plan.cells import (
    AXIS_DEFAULTS,
    cell_id,
    cell_scenarios,
    expand,
    filter_cells,
    parse_shard,
    resolve_reference,
    runner_args,
    shard,
)
from matrix.plan.spec import load_spec
from matrix.plan.stacks import load_catalog

CATALOG = load_catalog()
SPECS = Path(__file__).resolve().parent.parent / "matrix"


def spec_of(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "m.toml"
    path.write_text(text)
    return load_spec(path, CATALOG)


def test_product_and_defaults(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path, "[axes]\nstack=['tf-2.15','tf-2.21']\nprecision=['float32','mixed_float16']\n"
    )
    cells = expand(spec, CATALOG)
    assert [c.id for c in cells] == [
        "tf-2.15__cpu",
        "tf-2.15__cpu__mixed_float16",
        "tf-2.21__cpu",
        "tf-2.21__cpu__mixed_float16",
    ]
    assert all(set(c.axes) == set(AXIS_DEFAULTS) for c in cells)


def test_ids_are_unique_and_leave_defaults_out() -> None:
    axes = dict(
        AXIS_DEFAULTS, stack="tf-2.21", target="cuda", device="gpu", determinism="off", threads=1
    )
    assert cell_id(axes) == "tf-2.21__gpu__det-off__threads-1"
    axes["device"] = "cpu"
    assert cell_id(axes) == "tf-2.21__cuda-cpu__det-off__threads-1"


def test_exclude_is_partial_match(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        """
[axes]
stack=['tf-2.15','tf-2.21']
precision=['float32','mixed_float16']
[[exclude]]
precision='mixed_float16'
""",
    )
    assert [c.id for c in expand(spec, CATALOG)] == ["tf-2.15__cpu", "tf-2.21__cpu"]


def test_include_extends_or_adds_like_github_actions(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        """
[axes]
stack=['tf-2.15','tf-2.21']
onednn=['default']
# threads is not an original axis: extends every tf-2.21 combination
[[include]]
stack='tf-2.21'
threads=1
# onednn is original and would be overwritten: a combination of its own
[[include]]
stack='tf-2.21'
onednn='off'
""",
    )
    ids = [c.id for c in expand(spec, CATALOG)]
    assert ids == ["tf-2.15__cpu", "tf-2.21__cpu__threads-1", "tf-2.21__cpu__onednn-off"]


def test_empty_matrix_is_an_error(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "[axes]\nstack=['tf-2.15']\n[[exclude]]\nstack='tf-2.15'\n")
    with pytest.raises(SpecError, match="the matrix is empty"):
        expand(spec, CATALOG)


def test_gpu_needs_cuda_target(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "[axes]\nstack=['tf-2.15']\ndevice=['gpu']\n")
    with pytest.raises(SpecError, match="needs target = 'cuda'"):
        expand(spec, CATALOG)


def test_stack_without_cuda_build(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, "[axes]\nstack=['tf-2.12']\ntarget=['cuda']\n")
    with pytest.raises(SpecError, match="has no cuda build"):
        expand(spec, CATALOG)


def test_reference_by_axes_id_and_default(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path,
        """
[matrix]
reference = { stack = 'tf-2.21' }
[axes]
stack=['tf-2.15','tf-2.21']
""",
    )
    cells = expand(spec, CATALOG)
    assert resolve_reference(spec, cells) == "tf-2.21__cpu"
    assert resolve_reference(spec, cells, "tf-2.15__cpu") == "tf-2.15__cpu"
    with pytest.raises(SpecError, match="not a cell of the matrix"):
        resolve_reference(spec, cells, "nope")


def test_only_filters(tmp_path: Path) -> None:
    cells = expand(load_spec(SPECS / "default.toml", CATALOG), CATALOG)
    assert {c.stack for c in filter_cells(cells, ["stack=keras-*"])} == {
        "keras-3.15-jax",
        "keras-3.15-torch",
    }
    picked = filter_cells(cells, ["stack=tf-2.21,precision=float32,isa=native"])
    assert [c.id for c in picked] == ["tf-2.21__cpu", "tf-2.21__cpu__onednn-off"]
    assert [c.id for c in filter_cells(cells, ["tf-2.15__cpu"])] == ["tf-2.15__cpu"]
    with pytest.raises(SpecError, match="not axis=value"):
        filter_cells(cells, ["colour=red"])


def test_shards_partition_the_matrix() -> None:
    cells = expand(load_spec(SPECS / "full.toml", CATALOG), CATALOG)
    parts = [shard(cells, i, 4) for i in range(1, 5)]
    assert sum(len(p) for p in parts) == len(cells)
    assert sorted(c.id for p in parts for c in p) == sorted(c.id for c in cells)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("bad", ["0/4", "5/4", "1", "a/b", "1/0"])
def test_bad_shard(bad: str) -> None:
    with pytest.raises(SpecError, match="--shard"):
        parse_shard(bad)


def test_runner_args_carry_every_setting(tmp_path: Path) -> None:
    spec = spec_of(
        tmp_path, "[axes]\nstack=['tf-2.21']\nprecision=['mixed_bfloat16']\nthreads=[1]\n"
    )
    args = runner_args(expand(spec, CATALOG)[0], spec)
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--precision"] == "mixed_bfloat16"
    assert pairs["--threads"] == "1"
    assert pairs["--device"] == "cpu"


def test_cells_off_the_default_precision_run_only_the_scenarios_that_apply_it() -> None:
    """The other scenarios run float32 whatever the cell's precision: a mixed
    cell that ran them again would repeat the float32 cell's work."""
    spec = load_spec(SPECS / "default.toml", CATALOG)
    by_id = {c.id: c for c in expand(spec, CATALOG)}
    everything = spec.scenarios
    assert cell_scenarios(by_id["tf-2.15__cpu"], everything) == tuple(everything)
    assert cell_scenarios(by_id["tf-2.15__cpu__mixed_float16"], everything) == ("precision",)
    # onednn, isa and the rest change every scenario: nothing is left out
    assert cell_scenarios(by_id["tf-2.21__cpu__onednn-off"], everything) == tuple(everything)
    assert cell_scenarios(by_id["tf-2.21__cpu__isa-avx2"], everything) == tuple(everything)
    # a list with nothing that applies the axis runs as it is
    assert cell_scenarios(by_id["tf-2.15__cpu__mixed_bfloat16"], ["seeded_mlp"]) == ("seeded_mlp",)
    args = runner_args(by_id["tf-2.15__cpu__mixed_bfloat16"], spec)
    assert args[args.index("--scenarios") + 1] == "precision"
