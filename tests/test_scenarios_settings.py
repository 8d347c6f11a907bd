"""Settings parsing and the environment they set before any framework import."""

from __future__ import annotations

import json

import pytest

from scenarios.contract import default_scenarios, registry, setting_axes
from scenarios.settings import (
    CUBLAS_DETERMINISTIC,
    XLA_DETERMINISTIC_FLAG,
    Settings,
    SettingsError,
    apply_environment,
    parse_settings,
    resolve_scenarios,
)


def test_defaults_are_the_contracts() -> None:
    s = parse_settings(None, {})
    assert s == Settings()
    for axis in setting_axes():
        assert s[axis.name] == axis.to_runner(axis.default)
    # the framework's own default where the contract says "default"
    assert s.onednn is None and s.cudnn is None and s.jit == "default"
    assert resolve_scenarios(s, registry()).scenarios == default_scenarios(registry())


def test_flags_override_json_and_tristates_map_to_bool_or_none() -> None:
    s = parse_settings(
        json.dumps(
            {
                "determinism": "on",
                "onednn": "off",
                "threads": 4,
                "scenarios": ["initializers", "seeded_mlp"],
            }
        ),
        {"threads": 1, "onednn": None, "cudnn": "default"},
    )
    assert s.determinism is True
    assert s.onednn is False
    assert s.threads == 1  # the flag wins
    assert s.cudnn is None
    # Scenarios run in the order asked.
    assert s.scenarios == ("initializers", "seeded_mlp")


def test_scenarios_from_a_comma_list() -> None:
    assert parse_settings(None, {"scenarios": "precision, stateful_lstm"}).scenarios == (
        "precision",
        "stateful_lstm",
    )


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("{not json", {}, "not valid JSON"),
        ("[1, 2]", {}, "JSON object"),
        (None, {"precision": "float64"}, "precision"),
        (None, {"threads": -1}, "threads"),
        ('{"threads": true}', {}, "threads"),
        (None, {"scenarios": "seeded_mlp,nope"}, "unknown nope"),
        ('{"colour": "red"}', {}, "unknown setting"),
        (None, {"jit": "maybe"}, "jit"),
        (None, {"inject_failure": "nope"}, "inject_failure"),
        (None, {"scenarios": ""}, "at least one"),
        ("[" * 100000, {}, "not valid JSON"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(
    text: str | None, overrides: dict, needle: str
) -> None:
    with pytest.raises(SettingsError, match=needle):
        resolve_scenarios(parse_settings(text, overrides), registry())


def test_environment_for_determinism_on_tensorflow() -> None:
    env: dict[str, str] = {}
    changes = apply_environment(
        Settings(determinism=True, onednn=False, threads=1), "tensorflow", env
    )
    assert env["TF_DETERMINISTIC_OPS"] == "1"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # device cpu hides GPUs
    # XLA flags are not touched where TF may not know them.
    assert "XLA_FLAGS" not in env
    assert changes.set["TF_DETERMINISTIC_OPS"] == "1"


def test_environment_for_jax_merges_xla_flags_once() -> None:
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    apply_environment(Settings(determinism=True, threads=1), "jax", env)
    apply_environment(Settings(determinism=True, threads=1), "jax", env)
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_dump_to=/tmp/x"
    assert flags.count(XLA_DETERMINISTIC_FLAG) == 1
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    assert env["JAX_PLATFORMS"] == "cpu"


def test_determinism_off_removes_an_inherited_switch() -> None:
    env = {"TF_DETERMINISTIC_OPS": "1"}
    changes = apply_environment(Settings(determinism=False), "tensorflow", env)
    assert "TF_DETERMINISTIC_OPS" not in env
    assert "TF_DETERMINISTIC_OPS" in changes.removed


def test_onednn_default_leaves_the_variable_alone() -> None:
    env = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    apply_environment(Settings(onednn=None), "tensorflow", env)
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    env2: dict[str, str] = {}
    apply_environment(Settings(onednn=None), "tensorflow", env2)
    assert "TF_ENABLE_ONEDNN_OPTS" not in env2


def test_gpu_device_does_not_hide_gpus() -> None:
    env: dict[str, str] = {}
    apply_environment(Settings(device="gpu"), "torch", env)
    assert "CUDA_VISIBLE_DEVICES" not in env
