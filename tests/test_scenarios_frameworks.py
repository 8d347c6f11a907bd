"""The runner for real, in uv-provisioned environments (no mocks).

One runner process per (stack, settings) runs at a time: the machines here
have two cores. Artifacts are cached for the session and shared by tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from matrix.plan.stacks import load_catalog
from scenarios import reference as ref
from scenarios.canonical import LSTM_SHAPE, lstm_data, mlp_data

pytestmark = pytest.mark.frameworks

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "scenarios" / "manifest.schema.json").read_text())
CATALOG = load_catalog()
# The oldest TensorFlow (Keras 2.12), the last with Keras 2, the first and the
# newest with Keras 3, tf-keras, and Keras 3 on the other two backends.
STACKS = (
    "tf-2.12",
    "tf-2.15",
    "tf-2.16",
    "tf-2.21",
    "tf-2.21-tfkeras",
    "keras-3.15-jax",
    "keras-3.15-torch",
)
DETERMINISM_STACKS = ("tf-2.15", "tf-2.21", "keras-3.15-jax", "keras-3.15-torch")

# Behaviours of these versions the scenarios found, asserted so a fix (or a
# regression elsewhere) shows up as a test failure, not as silence.
KNOWN_PHASE_FAILURES = {
    # Keras 3 + torch: fit() of a stateful LSTM fails in autograd because
    # the state variables are assigned in place during the forward pass.
    ("keras-3.15-torch", "stateful_lstm", "train"): "inplace operation",
}
PREDICT_DROPS_STATE = {"keras-3.15-jax"}  # Keras 3 JAX predict does not write states back


@dataclass(frozen=True)
class Cell:
    stack: str
    out: Path
    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray]
    seconds: float


def _load(stack: str, out: Path, seconds: float) -> Cell:
    manifest = json.loads((out / "manifest.json").read_text())
    with np.load(out / "tensors.npz") as npz:
        tensors = {k: npz[k] for k in npz.files}
    return Cell(stack=stack, out=out, manifest=manifest, tensors=tensors, seconds=seconds)


@pytest.fixture(scope="session")
def run_cell(
    stack_python: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Cell]:
    cache: dict[tuple[str, tuple[str, ...]], Cell] = {}

    def run(stack: str, *args: str, repeat: int = 0) -> Cell:
        key = (stack, (*args, f"repeat={repeat}"))
        if key in cache:
            return cache[key]
        python = stack_python(stack)
        out = tmp_path_factory.mktemp(stack.replace(".", "_")) / "cell"
        meta = {
            "id": f"{stack}-test",
            "axes": {"stack": stack},
            "executor": "venv",
            "repeat": repeat,
            "environment_id": CATALOG[stack].lock_hash("cpu"),
        }
        env = {**os.environ, **CATALOG[stack].env, "PYTHONPATH": str(ROOT)}
        import time

        start = time.perf_counter()
        proc = subprocess.run(
            [str(python), "-m", "scenarios", "--out", str(out), "--meta", json.dumps(meta), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=600,
        )
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr[-3000:]
        cache[key] = _load(stack, out, seconds)
        return cache[key]

    return run


DETERMINISTIC = ("--determinism", "on")
#: Where a result depends on the CPU, it must hold with the native dispatch
#: and with the libraries capped to AVX2 (what an AVX2-only machine runs), so
#: both branches are exercised on whichever machine the suite runs.
ISAS = ("native", "avx2")


def _primary(run_cell: Callable[..., Cell], stack: str, isa: str = "native") -> Cell:
    return run_cell(stack, *DETERMINISTIC, *(("--isa", isa) if isa != "native" else ()))


# ---- the artifact ----------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_manifest_is_valid_and_says_what_ran(run_cell: Callable[..., Cell], stack: str) -> None:
    cell = _primary(run_cell, stack)
    m = cell.manifest
    jsonschema.validate(m, SCHEMA)
    fp = m["fingerprint"]
    want = CATALOG[stack]
    assert fp["keras_major"] == int(want.keras)
    assert fp["backend"] == want.backend
    assert fp["device"]["kind"] == "cpu"
    assert m["settings"]["applied"]["determinism"] is True
    assert fp["environment_id"] == want.lock_hash("cpu")
    for name, entry in m["scenarios"].items():
        failed = {p for p, body in entry["phases"].items() if body["status"] != "ok"}
        expected = {p for (s, sc, p) in KNOWN_PHASE_FAILURES if s == stack and sc == name}
        assert failed == expected, (name, entry["error"])
        for phase in failed:
            assert (
                KNOWN_PHASE_FAILURES[(stack, name, phase)]
                in entry["phases"][phase]["error"]["message"]
            )
        assert entry["status"] == ("failed" if expected else "ok")
        assert set(entry["tensors"]) <= set(cell.tensors)
    # Timings per part, so the report can show speed drift too.
    assert m["timings"]["import"] > 0
    assert any(k.endswith(".fit") for k in m["scenarios"]["seeded_mlp"]["timings"])


@pytest.mark.parametrize("stack", STACKS)
def test_tensor_file_matches_the_manifest(run_cell: Callable[..., Cell], stack: str) -> None:
    cell = _primary(run_cell, stack)
    digest = hashlib.sha256((cell.out / "tensors.npz").read_bytes()).hexdigest()
    assert cell.manifest["tensors"]["sha256"] == digest
    assert set(cell.manifest["tensors"]["dtypes"]) == set(cell.tensors)
    listed = {k for e in cell.manifest["scenarios"].values() for k in e["tensors"]}
    assert listed == set(cell.tensors)
    # Every oracle tensor has the cell tensor it is an oracle for.
    for key in cell.tensors:
        if key.startswith("reference/"):
            assert key.removeprefix("reference/") in cell.tensors, key
    # Forward phases save every layer's output, zero-padded, in model order.
    assert "seeded_mlp/forward/layer_00_dense_a" in cell.tensors
    assert "seeded_mlp/forward/layer_01_dense_b" in cell.tensors


def test_canonical_tensors_are_identical_across_environments_and_numpy_versions(
    run_cell: Callable[..., Cell],
) -> None:
    cells = [_primary(run_cell, s) for s in STACKS]
    numpys = {c.manifest["fingerprint"]["numpy"] for c in cells}
    assert len({v.split(".")[0] for v in numpys}) >= 2, f"need NumPy 1.x and 2.x, got {numpys}"
    host = {f"seeded_mlp/canonical/{k}": v for k, v in mlp_data().tensors().items()}
    host |= {f"stateful_lstm/canonical/{k}": v for k, v in lstm_data().tensors().items()}
    for cell in cells:
        canonical = {k: v for k, v in cell.tensors.items() if "/canonical/" in k}
        assert canonical.keys() == host.keys()
        for key, value in canonical.items():
            assert value.dtype == np.float32
            assert value.tobytes() == host[key].tobytes(), (cell.stack, key)


# ---- agreement with the float64 oracle ---------------------------------------


def _assert_within(
    cell: Cell, key: str, bound: np.ndarray, oracle: np.ndarray | None = None
) -> None:
    got = cell.tensors[key].astype(np.float64)
    want = cell.tensors[f"reference/{key}"] if oracle is None else oracle
    err = np.abs(got - want.reshape(got.shape))
    worst = float(np.max(err / bound.reshape(got.shape)))
    assert np.all(err <= bound.reshape(got.shape)), (
        f"{cell.stack} {key}: error {worst:.2f}x the float32 bound"
    )


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("stack", STACKS)
def test_mlp_forward_is_within_float32_rounding_of_the_oracle(
    run_cell: Callable[..., Cell], stack: str, isa: str
) -> None:
    cell = _primary(run_cell, stack, isa)
    data = mlp_data()
    bounds = ref.mlp_forward_bound(data.weights, data.forward_x)
    for scenario in ("seeded_mlp", "precision"):  # precision runs float32 in this cell
        _assert_within(cell, f"{scenario}/forward/layer_00_dense_a", bounds[0])
        _assert_within(cell, f"{scenario}/forward/layer_01_dense_b", bounds[1])
        _assert_within(cell, f"{scenario}/forward/output", bounds[1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("stack", STACKS)
def test_lstm_forward_is_within_float32_rounding_of_the_oracle(
    run_cell: Callable[..., Cell], stack: str, isa: str
) -> None:
    cell = _primary(run_cell, stack, isa)
    data, bs = lstm_data(), LSTM_SHAPE.batch_size
    stateless = ref.lstm_forward_bound(data.weights, data.x, batch_size=bs, stateful=False)
    _assert_within(cell, "stateful_lstm/stateless/output", stateless.output)
    _assert_within(cell, "precision/lstm_forward/layer_00_lstm", stateless.lstm)
    _assert_within(cell, "precision/lstm_forward/output", stateless.output)

    data_flags = cell.manifest["scenarios"]["stateful_lstm"]["data"]
    stateful = ref.lstm_forward_bound(data.weights, data.x, batch_size=bs, stateful=True)
    if stack in PREDICT_DROPS_STATE:
        # The finding, asserted: predict ran every batch from zero state.
        assert data_flags["predict_carries_state"] is False
        oracle = ref.lstm_forward(data.weights, data.x, batch_size=bs, stateful=False)
        _assert_within(cell, "stateful_lstm/forward/output", stateless.output, oracle.output)
        return
    assert data_flags["predict_carries_state"] is True
    _assert_within(cell, "stateful_lstm/forward/layer_00_lstm", stateful.lstm)
    _assert_within(cell, "stateful_lstm/forward/output", stateful.output)
    # predict() after a reset against the layer-by-layer pass: bitwise on some
    # CPUs, not on others. What holds everywhere: each is within the float32
    # bound of the oracle, so they are within twice it of each other; and
    # the manifest says which case this machine is.
    layered = cell.tensors["stateful_lstm/forward/layer_01_dense"].astype(np.float64)
    again = cell.tensors["stateful_lstm/forward/output"].astype(np.float64)
    gap = np.abs(again - layered)
    assert np.all(gap <= 2 * stateful.output.reshape(gap.shape))
    recorded = data_flags["reset_output"]
    assert recorded["bitwise_equal"] == bool(np.array_equal(again, layered))
    assert recorded["max_abs_diff"] == float(gap.max())
    _assert_within(cell, "stateful_lstm/forward/state_h", stateful.state_h)
    _assert_within(cell, "stateful_lstm/forward/state_c", stateful.state_c)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("stack", STACKS)
def test_mlp_training_follows_the_keras_adam_oracle(
    run_cell: Callable[..., Cell], stack: str, isa: str
) -> None:
    """Training is not bounded by one rounding analysis (100 coupled steps),
    so the tolerance is justified differently: it must be tight enough to
    reject a plausible wrong Adam (no bias correction), computed here."""
    cell = _primary(run_cell, stack, isa)
    data = mlp_data()
    got = cell.tensors["seeded_mlp/train/loss"]
    oracle = cell.tensors["reference/seeded_mlp/train/loss"]
    rtol = 1e-4
    np.testing.assert_allclose(got, oracle, rtol=rtol)
    wrong = ref.mlp_train(
        data.weights, data.x, data.y, epochs=len(got), cfg=ref.AdamConfig(beta_1=0.0, beta_2=0.0)
    )
    assert np.max(np.abs(wrong.losses - oracle) / oracle) > 100 * rtol
    np.testing.assert_allclose(
        cell.tensors["seeded_mlp/train/dense_a_kernel"],
        cell.tensors["reference/seeded_mlp/train/dense_a_kernel"],
        rtol=rtol,
        atol=1e-6,
    )


# ---- determinism -------------------------------------------------------------


def _random_by_design(cell: Cell) -> set[str]:
    """Tensors meant to differ between runs: partial seed recipes."""
    recipes = cell.manifest["scenarios"]["initializers"]["data"]["recipes"]
    return {
        f"initializers/recipe_{v}/" for v, r in recipes.items() if not r["reproducible_in_process"]
    }


@pytest.mark.parametrize("stack", DETERMINISM_STACKS)
def test_two_fresh_runs_with_determinism_on_are_bitwise_identical(
    run_cell: Callable[..., Cell], stack: str
) -> None:
    first = _primary(run_cell, stack)
    second = run_cell(stack, *DETERMINISTIC, repeat=1)
    assert first.tensors.keys() == second.tensors.keys()
    skip = _random_by_design(first)
    assert "initializers/recipe_none/" in skip  # else the unseeded baseline proves nothing
    compared = 0
    for key, value in first.tensors.items():
        if key.startswith(tuple(skip)):
            continue
        assert value.tobytes() == second.tensors[key].tobytes(), (stack, key)
        compared += 1
    assert compared > 50


# ---- failures and precision --------------------------------------------------


def test_a_failing_scenario_is_recorded_and_the_others_still_run(
    run_cell: Callable[..., Cell],
) -> None:
    cell = run_cell(
        "keras-3.15-jax",
        "--quick",
        "--scenarios",
        "seeded_mlp,stateful_lstm,initializers",
        "--inject-failure",
        "stateful_lstm",
    )
    jsonschema.validate(cell.manifest, SCHEMA)
    entries = cell.manifest["scenarios"]
    assert entries["stateful_lstm"]["status"] == "failed"
    err = entries["stateful_lstm"]["error"]
    assert err["type"] == "InjectedFailure" and "stateful_lstm" in err["message"]
    assert "Traceback" in err["traceback"]
    assert entries["seeded_mlp"]["status"] == "ok" and entries["initializers"]["status"] == "ok"
    assert "seeded_mlp/train/dense_a_kernel" in cell.tensors
    assert cell.manifest["settings"]["applied"]["inject_failure"] == "stateful_lstm"


def test_mixed_bfloat16_is_recorded_and_within_bfloat16_rounding(
    run_cell: Callable[..., Cell],
) -> None:
    cell = run_cell(
        "keras-3.15-jax",
        "--precision",
        "mixed_bfloat16",
        "--scenarios",
        "precision",
        "--threads",
        "1",
    )
    jsonschema.validate(cell.manifest, SCHEMA)
    entry = cell.manifest["scenarios"]["precision"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["data"]["policy"] == "mixed_bfloat16"
    assert entry["data"]["mlp_layers"]["dense_a"] == {"variable": "float32", "compute": "bfloat16"}
    dtypes = cell.manifest["tensors"]["dtypes"]
    assert dtypes["precision/forward/output"] == "bfloat16"
    assert cell.tensors["precision/forward/output"].dtype == np.float32  # widened for npz
    # Derived bound at bfloat16's unit roundoff 2**-8: the input and the
    # weights are rounded to bfloat16 first (one more rounding per product).
    data, u = mlp_data(), 2.0**-8
    h = data.forward_x.astype(np.float64)
    err = u * np.abs(h)
    for kernel, bias in zip(data.weights[0::2], data.weights[1::2], strict=True):
        k, b = np.abs(kernel.astype(np.float64)), np.abs(bias.astype(np.float64))
        err = err @ k + ref.gamma(k.shape[0] + 2, u) * (np.abs(h) @ k + b)
        h = h @ kernel.astype(np.float64) + bias
    _assert_within(cell, "precision/forward/output", err)


def test_mixed_float16_on_keras2_wraps_the_optimizer_for_loss_scaling(
    run_cell: Callable[..., Cell],
) -> None:
    cell = run_cell(
        "tf-2.15",
        "--precision",
        "mixed_float16",
        "--scenarios",
        "precision",
        "--onednn",
        "off",
        "--threads",
        "1",
    )
    entry = cell.manifest["scenarios"]["precision"]
    assert entry["status"] == "ok", entry["error"]
    scaling = entry["data"]["loss_scaling"]
    assert scaling["wrapped"] is True and scaling["loss_scale"] > 1
    assert entry["data"]["lstm_layers"]["lstm"]["compute"] == "float16"
    assert cell.manifest["tensors"]["dtypes"]["precision/forward/output"] == "float16"


def test_onednn_and_threads_are_recorded_as_applied_not_as_asked(
    run_cell: Callable[..., Cell],
) -> None:
    """The same cells as above, read for their settings: TensorFlow's own
    oneDNN probe and thread count, XLA's flags for JAX."""
    tf_cell = run_cell(
        "tf-2.15",
        "--precision",
        "mixed_float16",
        "--scenarios",
        "precision",
        "--onednn",
        "off",
        "--threads",
        "1",
    )
    applied = tf_cell.manifest["settings"]["applied"]
    assert applied["onednn"] is False and tf_cell.manifest["fingerprint"]["onednn"] is False
    assert applied["threads"] == 1
    assert tf_cell.manifest["fingerprint"]["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    # TensorFlow turns oneDNN on by default only on x86 CPUs with AVX512_VNNI,
    # AVX512_BF16, AVX_VNNI or AMX (its IsMKLEnabled): derived here from the
    # CPU flags the manifest recorded, so the test holds on either kind of
    # machine; the manifest must say what TF chose and why.
    for isa in ISAS:
        default = _primary(run_cell, "tf-2.15", isa)
        flags = set(default.manifest["fingerprint"]["cpu"]["flags"])
        features = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
        expected = bool(flags & features)
        assert default.manifest["settings"]["applied"]["onednn"] is expected
        chosen = default.manifest["fingerprint"]["defaults"]["onednn"]
        assert chosen["value"] is expected and chosen["cpu_default"] is expected
        assert chosen["chosen_by"] == "tensorflow"
        for feature in flags & features:
            assert feature in chosen["reason"]
    assert tf_cell.manifest["fingerprint"]["defaults"]["onednn"]["chosen_by"] == (
        "TF_ENABLE_ONEDNN_OPTS"
    )

    jax_cell = run_cell(
        "keras-3.15-jax",
        "--precision",
        "mixed_bfloat16",
        "--scenarios",
        "precision",
        "--threads",
        "1",
    )
    assert jax_cell.manifest["settings"]["applied"]["threads"] == 1
    assert jax_cell.manifest["settings"]["applied"]["onednn"] is None  # not a JAX switch
    assert (
        "--xla_cpu_multi_thread_eigen=false" in jax_cell.manifest["fingerprint"]["env"]["XLA_FLAGS"]
    )


# ---- instruction-set caps -------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_an_avx2_cap_is_applied_and_each_library_reports_what_it_did(
    run_cell: Callable[..., Cell], stack: str
) -> None:
    """The cap reaches each library through its own control, and the manifest
    records what each one then dispatched to, or that it cannot be capped."""
    cell = _primary(run_cell, stack, "avx2")
    fp = cell.manifest["fingerprint"]
    isa = fp["isa"]
    assert cell.manifest["settings"]["applied"]["isa"] == "avx2"
    assert isa["requested"] == "avx2" and isa["cpu_supports"] is True
    env = fp["env"]
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["OPENBLAS_CORETYPE"] == "Haswell"
    libs = isa["libraries"]
    # NumPy's OpenBLAS names the kernel set it loaded, read from the library.
    assert libs["openblas"]["dispatched"] == "Haswell" and libs["openblas"]["honoured"] is True
    backend = fp["backend"]
    if backend == "torch":
        assert env["ATEN_CPU_CAPABILITY"] == "avx2"
        assert libs["aten"]["dispatched"].upper() == "AVX2" and libs["aten"]["honoured"] is True
    onednn = libs["onednn"]
    if onednn["dispatched"] is not None:
        # oneDNN's own words for what it dispatched to, from its verbose line.
        assert "AVX2" in onednn["dispatched"] and "512" not in onednn["dispatched"]
        assert onednn["honoured"] is True
    elif backend == "tensorflow" and fp["onednn"]:
        # TensorFlow 2.12's oneDNN 2.x has no create-only verbose mode: said, not guessed.
        assert any("cannot report its dispatch" in n for n in cell.manifest["notes"])
    if backend in ("tensorflow", "jax"):
        capped = "--xla_cpu_max_isa=AVX2" in env.get("XLA_FLAGS", "")
        assert capped is bool(libs["xla"]["supported"])
        if not capped:
            assert any("no instruction-set cap" in n for n in cell.manifest["notes"])
    if backend == "tensorflow":
        assert "eigen" in isa["fixed"]  # compiled in: said to be uncapped, not claimed


def test_tf32_asked_on_a_cpu_cell_is_unsupported_and_its_default_recorded(
    run_cell: Callable[..., Cell],
) -> None:
    cell = run_cell("tf-2.21", "--tf32", "on", "--scenarios", "initializers", "--quick")
    jsonschema.validate(cell.manifest, SCHEMA)
    for entry in cell.manifest["scenarios"].values():
        assert entry["status"] == "unsupported"
        assert "tf32" in entry["error"]["message"]
    assert cell.tensors == {} or all(not k.startswith("initializers/") for k in cell.tensors)
    # TensorFlow's own switch, as it reports it, in the settings and the defaults
    applied = cell.manifest["settings"]["applied"]["tf32"]
    assert isinstance(applied, bool)
    default = _primary(run_cell, "tf-2.21")
    assert (
        default.manifest["fingerprint"]["defaults"]["tf32"]["value"]
        == (default.manifest["settings"]["applied"]["tf32"])
    )


def test_an_avx512_cap_runs_where_the_cpu_has_it_and_is_unsupported_where_not(
    run_cell: Callable[..., Cell],
) -> None:
    """Holds on either kind of machine: the manifest's CPU flags decide which."""
    cell = run_cell("tf-2.21", "--isa", "avx512", "--scenarios", "initializers", "--quick")
    flags = set(cell.manifest["fingerprint"]["cpu"]["flags"])
    isa = cell.manifest["fingerprint"]["isa"]
    can = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert isa["cpu_supports"] is can
    status = cell.manifest["scenarios"]["initializers"]["status"]
    if can:
        assert status == "ok" and cell.manifest["fingerprint"]["env"]["ONEDNN_MAX_CPU_ISA"] == (
            "AVX512_CORE"
        )
    else:
        assert status == "unsupported" and "avx512" in isa["missing"][0]
        assert "ONEDNN_MAX_CPU_ISA" not in cell.manifest["fingerprint"]["env"]  # never a silent cap
