from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from matrix.environments.venvs import ensure_venv
from matrix.plan.stacks import load_catalog

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def stack_python() -> Callable[[str], Path]:
    """Return the interpreter of a real uv-provisioned venv for a stack.

    Provisioning failures fail the test: a missing framework is never a skip.
    """
    catalog = load_catalog()

    def get(name: str, target: str = "cpu") -> Path:
        return ensure_venv(catalog[name], target)

    return get
