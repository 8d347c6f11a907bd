"""Fingerprint parts that need no framework: CPU flags and environment."""

from __future__ import annotations

from scenarios.fingerprint import cpu_info, relevant_env

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 ssse3 sse4_2 avx f16c fma avx2 avx512f avx512_bf16 avx512_vnni \
amx_bf16 amx_tile amx_int8 aes
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse
"""


def test_cpu_model_and_only_numerics_flags_from_the_first_cpu() -> None:
    info = cpu_info(CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["flags"] == sorted(
        [
            "sse4_2",
            "avx",
            "f16c",
            "fma",
            "avx2",
            "avx512f",
            "avx512_bf16",
            "avx512_vnni",
            "amx_bf16",
            "amx_tile",
            "amx_int8",
        ]
    )
    assert "aes" not in info["flags"] and "fpu" not in info["flags"]


def test_arm_features_line_is_read() -> None:
    info = cpu_info("processor\t: 0\nFeatures\t: fp asimd\n")
    assert info["flags"] == []  # no x86 numerics flags; the line is parsed, not crashed on


def test_relevant_env_keeps_the_switches_that_change_numbers() -> None:
    env = {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--x",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "HOME": "/root",
        "PATH": "/bin",
        "OMP_NUM_THREADS": "1",
    }
    got = relevant_env(env)
    assert set(got) == {
        "TF_ENABLE_ONEDNN_OPTS",
        "KERAS_BACKEND",
        "XLA_FLAGS",
        "PYTHONHASHSEED",
        "CUDA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
    }
