from __future__ import annotations

from pathlib import Path

import pytest

from matrix.errors import SpecError
from matrix.plan.spec import load_spec
from matrix.plan.stacks import load_catalog

SPECS = Path(__file__).resolve().parent.parent / "matrix"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


SHIPPED = sorted(p.stem for p in SPECS.glob("*.toml") if p.name != "stacks.toml")


def test_the_shipped_specs_are_the_documented_ones() -> None:
    assert SHIPPED == ["atlas", "default", "full", "gpu", "isa", "portability"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_load_and_expand(name: str) -> None:
    from matrix.plan.cells import expand

    catalog = load_catalog()
    spec = load_spec(SPECS / f"{name}.toml", catalog)
    assert spec.name == name
    assert spec.axes.get("stack") or spec.chains
    assert expand(spec, catalog)


def test_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, '[axes]\nstack = ["tf-2.15"]\n'))
    assert spec.repeats == 2
    assert spec.executor == "auto"
    assert spec.name == "spec"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[axes]\nstack = ['tf-9.99']\n", "unknown stack 'tf-9.99'"),
        ("[axes]\nstack = ['tf-2.15']\ncolour = ['red']\n", "unknown axis 'colour'"),
        ("[axes]\nstack = ['tf-2.15']\nprecision = ['float8']\n", "'float8' is not allowed"),
        ("[axes]\nstack = []\n", "axes.stack must be a non-empty list"),
        ("[axes]\nprecision = ['float32']\n", "the spec names no environment"),
        ("[axes]\nbackend = ['jax']\n", "the spec names no environment"),
        (
            "[axes]\nstack = ['tf-2.15']\n[matrix]\nrepeats = 0\n",
            "matrix.repeats must be a whole number from 1 to 100",
        ),
        ("[axes]\nstack = ['tf-2.15']\n[matrix]\ncolour = 1\n", "unknown key matrix.colour"),
        (
            "[axes]\nstack = ['tf-2.15']\n[tolerances.float32]\nrtol = -1\n",
            "tolerances.float32.rtol",
        ),
        (
            "[axes]\nstack = ['tf-2.15']\n[tolerances.int8]\nrtol = 1\n",
            "tolerances.int8: unknown dtype",
        ),
        ("[axes]\nstack = ['tf-2.15']\nthreads = [-1]\n", "threads must be a whole number"),
        ("[axes]\nstack = ['tf-2.15', 'tf-2.15']\n", "lists a value twice"),
        ("[axes\nstack = 1", "not valid TOML"),
        (
            "[axes]\nstack = ['tf-2.15']\n[[exclude]]\nstack = 'nope'\n",
            "exclude[0].stack: unknown stack",
        ),
        ("oops = 1\n[axes]\nstack = ['tf-2.15']\n", "unknown key oops"),
    ],
)
def test_malformed_specs_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert needle in info.value.message
    assert str(path) in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == 3


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "absent.toml")


def test_booleans_read_as_on_off(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, "[axes]\nstack = ['tf-2.15']\ndeterminism = [true, false]\n"),
        load_catalog(),
    )
    assert spec.axes["determinism"] == ("on", "off")
