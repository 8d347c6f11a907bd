"""initializers: seeded built-in initializers, and the seed-control recipe.

Phase init: every built-in initializer with a fixed seed and shape.
Phases recipe_<variant>: the tutorial MLP's initial weights after only part
of the seed-control recipe. Each variant runs twice in this process after
fresh entropy everywhere (as two unseeded processes would start), so the
data says whether the variant alone makes the init reproducible here; the
tensors let a comparison say the same across cells.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from scenarios.canonical import INIT_SEED, INITIALIZER_SHAPE
from scenarios.context import ScenarioContext
from scenarios.contract import scenario
from scenarios.models import build_mlp

__all__ = ["INITIALIZERS", "RECIPES", "run"]

# key -> (class name in keras.initializers, extra kwargs, takes a seed)
INITIALIZERS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "random_uniform": ("RandomUniform", {}, True),
    "random_normal": ("RandomNormal", {}, True),
    "truncated_normal": ("TruncatedNormal", {}, True),
    "glorot_uniform": ("GlorotUniform", {}, True),
    "glorot_normal": ("GlorotNormal", {}, True),
    "he_uniform": ("HeUniform", {}, True),
    "he_normal": ("HeNormal", {}, True),
    "lecun_uniform": ("LecunUniform", {}, True),
    "lecun_normal": ("LecunNormal", {}, True),
    "orthogonal": ("Orthogonal", {}, True),
    "variance_scaling": (
        "VarianceScaling",
        {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"},
        True,
    ),
    "constant": ("Constant", {"value": 0.5}, False),
    "zeros": ("Zeros", {}, False),
    "ones": ("Ones", {}, False),
    "identity": ("Identity", {}, False),
}


def _stats(a: np.ndarray) -> dict[str, float]:
    a64 = a.astype(np.float64)
    return {
        "mean": float(a64.mean()),
        "std": float(a64.std()),
        "min": float(a64.min()),
        "max": float(a64.max()),
    }


def _builtins(ctx: ScenarioContext) -> None:
    fw = ctx.fw
    stats: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, (cls, kwargs, seeded) in INITIALIZERS.items():
        try:
            with ctx.timed("init", "init"):
                init = fw.initializer(cls, INIT_SEED if seeded else None, **kwargs)
                value = fw.initialize(init, INITIALIZER_SHAPE)
        except Exception as exc:  # broad on purpose: one missing initializer is data
            errors[key] = f"{type(exc).__name__}: {str(exc)[:300]}"
            continue
        ctx.put("init", key, value)
        stats[key] = _stats(value)
    ctx.data["shape"] = list(INITIALIZER_SHAPE)
    ctx.data["seed"] = INIT_SEED
    ctx.data["stats"] = stats
    if errors:
        ctx.data["errors"] = errors
        ctx.note(f"initializers unavailable in this version: {', '.join(sorted(errors))}")


def _recipe_steps(ctx: ScenarioContext) -> dict[str, Callable[[], list[str]]]:
    fw = ctx.fw

    def none() -> list[str]:
        return []

    def numpy_only() -> list[str]:
        np.random.seed(INIT_SEED)
        return ["numpy.random.seed"]

    def backend_only() -> list[str]:
        return [fw.seed_backend(INIT_SEED)]

    def keras_one_call() -> list[str]:
        fw.seed_all(INIT_SEED)
        return ["keras.utils.set_random_seed"]

    def full() -> list[str]:
        # PYTHONHASHSEED acts only at interpreter start: recorded, not set.
        random.seed(INIT_SEED)
        np.random.seed(INIT_SEED)
        return ["random.seed", "numpy.random.seed", fw.seed_backend(INIT_SEED)]

    return {
        "none": none,
        "numpy": numpy_only,
        "backend": backend_only,
        "full": full,
        "keras": keras_one_call,
    }


RECIPES = ("none", "numpy", "backend", "full", "keras")


def _recipes(ctx: ScenarioContext) -> None:
    fw = ctx.fw
    results: dict[str, Any] = {}
    for variant, step in _recipe_steps(ctx).items():
        draws: list[list[tuple[str, np.ndarray]]] = []
        applied: list[str] = []
        for _ in range(2):
            fw.clear()
            fw.scramble_seeds()
            applied = step()
            model = build_mlp(ctx, f"recipe_{variant}")
            draws.append(fw.get_weights(model))
        for name, value in draws[0]:
            ctx.put(f"recipe_{variant}", name, value)
        same = all(np.array_equal(a, b) for (_, a), (_, b) in zip(draws[0], draws[1], strict=True))
        results[variant] = {"applied": applied, "reproducible_in_process": same}
    ctx.data["recipes"] = results
    ctx.data["pythonhashseed"] = {
        "env": os.environ.get("PYTHONHASHSEED"),
        "hash_randomization": bool(sys.flags.hash_randomization),
    }


@scenario(
    "initializers",
    phases=("init", "recipes", *(f"recipe_{v}" for v in RECIPES)),
    summary="seeded built-in initializers and the seed-control recipe",
)
def run(ctx: ScenarioContext) -> None:
    ctx.maybe_fail()
    with ctx.phase("init"):
        _builtins(ctx)
    with ctx.phase("recipes"):
        _recipes(ctx)
