"""Executors: docker (default), venv (uv) and host (this interpreter)."""

from __future__ import annotations

from matrix.execute.executors.base import CellRun, Environment, Executor

__all__ = ["CellRun", "Environment", "Executor"]
