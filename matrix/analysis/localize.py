"""Localisation: which layer of a forward pass is the first to drift.

Forward phases save every layer's output as ``scenario/forward/layer_<NN>_<name>``
(NN zero-padded, in model order).  Walking them in order, the first layer
whose output leaves identical/rounding is where the difference is born; the
layers after it mostly inherit it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from matrix.analysis.compare import TensorComparison
from matrix.analysis.drift import DriftClass

__all__ = ["LayerFinding", "Localisation", "layer_of", "localize"]

_LAYER = re.compile(r"^layer_(\d+)_(.*)$")


@dataclass(frozen=True, kw_only=True)
class LayerFinding:
    index: int
    name: str
    key: str
    verdict: DriftClass
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class Localisation:
    """``first_drift``: first layer beyond rounding; ``first_change``: first not identical."""

    layers: int
    first_change: LayerFinding | None
    first_drift: LayerFinding | None


def layer_of(key: str) -> tuple[int, str] | None:
    """``(index, layer name)`` for a ``scenario/forward/layer_NN_name`` key, else None."""
    name = key.rsplit("/", 1)[-1]
    match = _LAYER.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def localize(tensors: Iterable[tuple[str, TensorComparison]]) -> Localisation | None:
    """Find the first changed and the first drifting layer among a phase's tensors.

    Returns None when the phase has no layer tensors.  Missing layers count
    as leaving rounding: a layer one side never produced is where they part.
    """
    layers = sorted(
        (found[0], found[1], key, cmp)
        for key, cmp in tensors
        if (found := layer_of(key)) is not None
    )
    if not layers:
        return None
    first_change = first_drift = None
    for index, name, key, cmp in layers:
        finding = LayerFinding(
            index=index,
            name=name,
            key=key,
            verdict=cmp.verdict,
            max_rel=cmp.max_rel,
            max_ulp=cmp.max_ulp,
        )
        if first_change is None and cmp.verdict is not DriftClass.IDENTICAL:
            first_change = finding
        if first_drift is None and cmp.verdict.rank >= DriftClass.DRIFT.rank:
            first_drift = finding
            break
    return Localisation(layers=len(layers), first_change=first_change, first_drift=first_drift)
