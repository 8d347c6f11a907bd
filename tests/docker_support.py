"""Shared by the Docker tests: an engine that answers, or a skip (a failure
under CI, where the real Docker path is part of what the suite proves)."""

from __future__ import annotations

import os

import pytest

from matrix import engine
from matrix.errors import EngineError

# What a hardened container sees of itself: interfaces, root writability,
# identity and capabilities. stdlib only, so the bare base image runs it.
PROBE = r"""
import json, os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    open("/etc/krm-probe", "w")
    root_writable = True
except OSError:
    root_writable = False
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3)
    connected = True
except OSError:
    connected = False
open("/tmp/scratch", "w").write("ok")
print(json.dumps({
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "root_writable": root_writable,
    "connected": connected,
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
}))
"""


def require_engine() -> engine.EngineInfo:
    try:
        return engine.check_engine()
    except EngineError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {exc.message}")
        pytest.skip(f"no Docker engine: {exc.message}")
