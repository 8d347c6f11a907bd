"""Shared by the Docker tests: an engine that answers, or a skip (a failure
under CI, where the real Docker path is part of what the suite proves)."""

from __future__ import annotations

import os

import pytest

from matrix.environments import engine
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
def state(name):
    try:
        return open(f"/sys/class/net/{name}/operstate").read().strip()
    except OSError:
        return "unknown"
routes = [ln.split()[0] for ln in open("/proc/net/route").read().splitlines()[1:] if ln.strip()]
v6 = "/proc/net/if_inet6"
addresses = [ln.split()[-1] for ln in open(v6).read().splitlines()] if os.path.exists(v6) else []
print(json.dumps({
    "interfaces": {name: state(name) for name in sorted(os.listdir("/sys/class/net"))},
    "routes": routes,
    "ipv6_interfaces": sorted(set(addresses)),
    "root_writable": root_writable,
    "connected": connected,
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
}))
"""


def assert_no_network(seen: dict) -> None:  # type: ignore[type-arg]
    """No way out: loopback only. Other interfaces may exist (tunnel modules
    such as ipip or sit add a device to every namespace), but none is up, and
    no route leads anywhere."""
    assert seen["connected"] is False
    assert "lo" in seen["interfaces"]
    up = [name for name, state in seen["interfaces"].items() if name != "lo" and state == "up"]
    assert up == [], seen
    assert seen["routes"] == [], seen
    assert set(seen["ipv6_interfaces"]) <= {"lo"}, seen


def require_engine() -> engine.EngineInfo:
    try:
        return engine.check_engine()
    except EngineError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {exc.message}")
        pytest.skip(f"no Docker engine: {exc.message}")
