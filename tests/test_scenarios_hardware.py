"""Instruction-set caps and hardware defaults, without a framework: the
pure parts of scenarios/hardware.py and the settings steps that use them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios import hardware, settings
from scenarios.settings import Settings, apply_environment

ROOT = Path(__file__).resolve().parent.parent

AVX2_ONLY = frozenset({"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_VNNI = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}


def test_cpu_flags_read_the_first_cpu_only() -> None:
    text = "processor : 0\nflags : fpu avx2 fma\n\nprocessor : 1\nflags : fpu\n"
    assert hardware.cpu_flags(text) == {"fpu", "avx2", "fma"}
    assert hardware.cpu_flags("model name : x\n") == frozenset()


@pytest.mark.parametrize(
    ("isa", "flags", "missing"),
    [
        ("avx512", AVX2_ONLY, ["avx512f", "avx512bw", "avx512vl", "avx512dq"]),
        ("avx512", AVX512_VNNI, []),
        ("avx2", AVX2_ONLY, []),
        ("avx2", frozenset({"avx", "sse4_1"}), ["avx2", "fma"]),
        ("sse41", frozenset(), ["sse4_1"]),
    ],
)
def test_a_cap_names_the_features_the_cpu_lacks(
    isa: str, flags: frozenset[str], missing: list[str]
) -> None:
    cap = hardware.isa_cap(isa)
    assert cap is not None
    assert hardware.missing_features(cap, flags) == missing


def test_native_is_no_cap_and_every_capped_value_is_an_axis_value() -> None:
    from scenarios.contract import axis

    assert hardware.isa_cap("native") is None
    assert set(hardware.ISA_LEVELS) == set(axis("isa").choices) - {"native"}
    ranks = [c.rank for c in hardware.ISA_LEVELS.values()]
    assert ranks == sorted(ranks, reverse=True)  # widest first


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        (AVX2_ONLY, "x86_64", False),
        (AVX512_VNNI, "x86_64", True),
        (AVX2_ONLY | {"avx_vnni"}, "x86_64", True),
        (frozenset({"amx_tile"}), "x86_64", True),
        (AVX512_VNNI, "aarch64", None),
    ],
)
def test_tensorflows_onednn_default_follows_the_cpu(
    flags: frozenset[str], machine: str, expected: bool | None
) -> None:
    found = hardware.onednn_default(flags, machine)
    assert found["expected"] is expected
    assert (machine in found["reason"]) is (machine != "x86_64")
    for feature in found["features"]:
        assert feature in found["reason"]


ONEDNN3_LOG = """\
some line
onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)
onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2
onednn_verbose,v1,info,cpu,isa:Intel AVX2
onednn_verbose,v1,primitive,create:cache_miss,cpu,inner_product,x64:gemm:jit,forward_training,src:f32
onednn_verbose,v1,primitive,create:cache_hit,cpu,inner_product,x64:gemm:jit,forward_training,src:f32
onednn_verbose,v1,primitive,create:cache_miss,cpu,matmul,brg:avx2,undef,src:f32
"""
ONEDNN2_LOG = """\
onednn_verbose,info,oneDNN v2.7.3 (commit N/A)
onednn_verbose,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions
onednn_verbose,create:cache_miss,cpu,convolution,jit:avx512_core,forward_training,src_f32
"""


def test_onednn_verbose_lines_give_version_dispatch_and_kernels() -> None:
    three = hardware.observe_log(ONEDNN3_LOG)
    assert three == {
        "version": "v3.7.3",
        "isa": "Intel AVX2",
        "kernels": ["inner_product:x64:gemm:jit", "matmul:brg:avx2"],
    }
    two = hardware.observe_log(ONEDNN2_LOG)
    assert two["version"] == "v2.7.3" and two["isa"].startswith("Intel AVX-512")
    assert two["kernels"] == ["convolution:jit:avx512_core"]
    assert hardware.observe_log("no onednn here\n") == {"version": None, "isa": None, "kernels": []}


def test_onednn_honours_a_cap_only_at_or_below_it() -> None:
    avx2 = hardware.isa_cap("avx2")
    assert hardware.onednn_honours(avx2, "Intel AVX2") is True
    assert hardware.onednn_honours(avx2, "Intel AVX") is True
    assert hardware.onednn_honours(avx2, "Intel AVX-512 with Intel DL Boost") is False
    assert hardware.onednn_honours(avx2, None) is None
    assert hardware.onednn_honours(None, "Intel AVX2") is None


def test_summary_says_per_library_what_was_capped_and_what_it_did() -> None:
    applied = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
    observed = {
        "onednn": {"isa": "Intel AVX-512", "version": "v3", "kernels": []},
        "openblas": "SkylakeX",
        "aten": "AVX2",
    }
    found = hardware.summarise_isa("avx2", applied, observed, flags=AVX512_VNNI)
    libs = found["libraries"]
    assert libs["onednn"]["honoured"] is False  # a library ignoring the cap is said to
    assert libs["openblas"]["honoured"] is False
    assert libs["aten"]["honoured"] is True
    assert found["cpu_supports"] is True and found["missing"] == []
    unsupported = hardware.summarise_isa("avx512", {}, {}, flags=AVX2_ONLY)
    assert unsupported["cpu_supports"] is False and "avx512f" in unsupported["missing"]


# ---- the settings steps -----------------------------------------------------------


@pytest.fixture
def no_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Libraries whose binaries know neither the XLA cap nor oneDNN 3's verbose mode."""
    monkeypatch.setattr(
        hardware, "binary_mentions", lambda package, needles: dict.fromkeys(needles, False)
    )


def test_an_isa_the_cpu_lacks_is_refused_and_nothing_is_capped(
    monkeypatch: pytest.MonkeyPatch, no_binaries: None
) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: AVX2_ONLY)
    env: dict[str, str] = {}
    changes = apply_environment(Settings(isa="avx512"), "tensorflow", env)
    assert changes.unsupported is not None and "avx512f" in changes.unsupported
    assert not any(k in env for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "XLA_FLAGS"))


@pytest.mark.parametrize("supported", [True, False])
def test_a_cap_reaches_every_library_and_xla_only_when_it_knows_the_flag(
    monkeypatch: pytest.MonkeyPatch, supported: bool
) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: AVX512_VNNI)
    monkeypatch.setattr(
        hardware,
        "binary_mentions",
        lambda package, needles: {n: supported for n in needles},
    )
    env: dict[str, str] = {"XLA_FLAGS": "--xla_other=1"}
    changes = apply_environment(Settings(isa="avx2"), "jax", env)
    assert changes.unsupported is None
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["DNNL_MAX_CPU_ISA"] == "AVX2"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["OPENBLAS_CORETYPE"] == "Haswell"
    assert ("--xla_cpu_max_isa=AVX2" in env["XLA_FLAGS"]) is supported
    assert env["XLA_FLAGS"].startswith("--xla_other=1")  # the user's flags are kept
    assert any("no instruction-set cap" in n for n in changes.notes) is (not supported)
    assert (env.get("ONEDNN_VERBOSE") == "profile_create") is supported


def test_native_sets_no_cap(no_binaries: None) -> None:
    env: dict[str, str] = {}
    changes = apply_environment(Settings(), "torch", env)
    assert changes.unsupported is None
    assert not {"ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE"} & set(env)


def test_a_users_own_onednn_verbose_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        hardware, "binary_mentions", lambda p, needles: dict.fromkeys(needles, True)
    )
    env = {"ONEDNN_VERBOSE": "all"}
    apply_environment(Settings(), "tensorflow", env)
    assert env["ONEDNN_VERBOSE"] == "all"


def test_binary_mentions_finds_strings_in_a_packages_shared_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fakelib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    blob = os.urandom(1 << 20) + b"...xla_cpu_max_isa..." + os.urandom(64)
    (package / "libfake.so.2").write_bytes(blob)
    (package / "small.so").write_bytes(b"profile_create")  # under 1 MiB: not a library
    monkeypatch.syspath_prepend(str(tmp_path))
    found = hardware.binary_mentions("fakelib", ("xla_cpu_max_isa", "profile_create"))
    assert found == {"xla_cpu_max_isa": True, "profile_create": False}
    assert hardware.binary_mentions("no_such_package_here", ("x",)) == {"x": False}


def test_the_runner_sets_its_environment_before_numpy_loads() -> None:
    """NumPy's OpenBLAS reads OPENBLAS_CORETYPE and its thread variables once,
    at load: nothing the runner does before apply_environment may import it."""
    code = (
        "import sys\n"
        "from scenarios import cli, settings\n"
        'cli.parse_meta(\'{"id": "x", "axes": {"stack": "s"}}\')\n'
        "s = settings.parse_settings(None, {'isa': 'native'})\n"
        "settings.apply_environment(s, settings.backend_hint(), {})\n"
        "print('numpy' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_every_isa_and_tf32_value_round_trips_through_the_runner_settings() -> None:
    from scenarios.contract import axis

    for value in axis("isa").choices:
        assert settings.parse_settings(None, {"isa": value}).isa == value
    assert settings.parse_settings(None, {"tf32": "on"}).tf32 is True
    assert settings.parse_settings(None, {"tf32": "default"}).tf32 is None
