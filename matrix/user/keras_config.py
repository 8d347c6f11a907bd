"""What a Keras model file says about itself, read without a framework.

The host never imports Keras, yet it should refuse inputs that cannot fit a
model before any image is built. A ``.keras`` file is a zip whose
``config.json`` holds the model's config and its ``compile_config``; a
legacy ``.h5`` keeps the same JSON in the root group's ``model_config``
attribute and the compile settings in ``training_config``. HDF5 is not
parsed here: h5py stores attribute strings of this size contiguously, so the
JSON is found by its opening text and decoded from where it starts.

Best effort by design: anything unexpected gives None, and the check is left
to the cells, which record the exact error. Nothing here executes or
unpickles what it reads.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HDF5_SIGNATURE",
    "ZIP_SIGNATURE",
    "InputSpec",
    "ModelInfo",
    "file_kind",
    "loss_name",
    "read_model_info",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
#: An HDF5 superblock sits at 0 or after a user block of 512, 1024, 2048... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
#: Larger files are not scanned for their config (the cells still check).
_MAX_SCAN = 256 << 20
_MAX_CANDIDATES = 64
_MODEL_CLASSES = ("Sequential", "Functional", "Model")
#: The loss names the runner accepts (its --loss choices), by every spelling Keras saves.
_LOSS_SPELLINGS = {
    "mse": ("mse", "mean_squared_error", "MeanSquaredError"),
    "mae": ("mae", "mean_absolute_error", "MeanAbsoluteError"),
    "huber": ("huber", "huber_loss", "Huber"),
    "binary_crossentropy": ("binary_crossentropy", "BinaryCrossentropy"),
    "categorical_crossentropy": ("categorical_crossentropy", "CategoricalCrossentropy"),
    "sparse_categorical_crossentropy": (
        "sparse_categorical_crossentropy",
        "SparseCategoricalCrossentropy",
    ),
}
_LOSSES = {spelling: name for name, spellings in _LOSS_SPELLINGS.items() for spelling in spellings}


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]  # with the batch dimension (None: any)


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    class_name: str
    inputs: tuple[InputSpec, ...] | None  # None: not readable from the config
    loss: str | None  # a --loss choice, or None when the file names none we can express


def file_kind(path: Path) -> str:
    """``zip``, ``hdf5`` or ``other``, from the file's signature."""
    with open(path, "rb") as fh:
        head = fh.read(len(ZIP_SIGNATURE))
        if head == ZIP_SIGNATURE:
            return "zip"
        for offset in _HDF5_OFFSETS:
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return "hdf5"
    return "other"


def read_model_info(path: Path, kind: str) -> ModelInfo | None:
    """The model's class, inputs and loss from a ``.keras`` zip or an ``.h5`` file."""
    try:
        if kind == "zip":
            config, compile_config = _from_zip(path)
        elif kind == "hdf5":
            config, compile_config = _from_hdf5(path)
        else:
            return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, RecursionError):
        return None
    if config is None:
        return None
    loss = loss_name(compile_config.get("loss")) if compile_config else None
    return ModelInfo(class_name=str(config.get("class_name")), inputs=_inputs(config), loss=loss)


def _from_zip(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("config.json")
        if info.file_size > _MAX_SCAN:
            return None, None
        data = json.loads(zf.read(info).decode("utf-8"))
    if not _is_model(data):
        return None, None
    compile_config = data.get("compile_config")
    return data, compile_config if isinstance(compile_config, dict) else None


def _from_hdf5(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if path.stat().st_size > _MAX_SCAN:
        return None, None
    # latin-1 maps every byte to one character, so offsets agree with the file.
    text = path.read_bytes().decode("latin-1")
    config = next((d for d in _json_at(text, '{"class_name": ') if _is_model(d)), None)
    training = next((d for d in _json_at(text, '{"loss": ') if "loss" in d), None)
    return config, training


def _json_at(text: str, opening: str) -> Iterator[dict[str, Any]]:
    """Every JSON object that starts with ``opening`` and decodes from there."""
    decoder = json.JSONDecoder()
    start, tried = text.find(opening), 0
    while start >= 0 and tried < _MAX_CANDIDATES:
        tried += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                yield value
        start = text.find(opening, start + 1)


def _is_model(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("class_name") in _MODEL_CLASSES
        and isinstance(data.get("config"), dict)
    )


def _shape(config: Mapping[str, Any]) -> tuple[int | None, ...] | None:
    """An input layer's shape with the batch dimension (Keras 3 ``batch_shape``,
    Keras 2 ``batch_input_shape``)."""
    raw = config.get("batch_shape", config.get("batch_input_shape"))
    if not isinstance(raw, list) or not all(d is None or isinstance(d, int) for d in raw):
        return None
    return tuple(raw)


def _inputs(model: Mapping[str, Any]) -> tuple[InputSpec, ...] | None:
    config = model["config"]
    layers = [layer for layer in config.get("layers") or () if isinstance(layer, dict)]
    inputs = {
        str(layer.get("config", {}).get("name")): layer.get("config", {})
        for layer in layers
        if layer.get("class_name") == "InputLayer" and isinstance(layer.get("config"), dict)
    }
    if model["class_name"] == "Sequential":
        if not layers:
            return None
        first = layers[0].get("config")
        if not isinstance(first, dict):
            return None
        shape = _shape(first)
        name = str(first.get("name"))
        return (InputSpec(name=name, shape=shape),) if shape is not None else None
    names = _input_names(config.get("input_layers"))
    if names is None or any(n not in inputs for n in names):
        return None
    specs = []
    for name in names:
        shape = _shape(inputs[name])
        if shape is None:
            return None
        specs.append(InputSpec(name=name, shape=shape))
    return tuple(specs)


def _input_names(raw: Any) -> list[str] | None:
    """``input_layers``: ``[[name, 0, 0], ...]`` (Keras 2 and 3), or one
    ``[name, 0, 0]`` (Keras 3 with a single input)."""
    if not isinstance(raw, list) or not raw:
        return None
    if isinstance(raw[0], str):
        return [raw[0]]
    names = [entry[0] for entry in raw if isinstance(entry, list) and entry]
    return names if len(names) == len(raw) and all(isinstance(n, str) for n in names) else None


def loss_name(raw: Any) -> str | None:
    """A loss as the runner takes it (``--loss``), or None: a plain name or a
    serialised loss class with its default settings."""
    if isinstance(raw, str):
        return _LOSSES.get(raw)
    if isinstance(raw, dict):
        config = raw.get("config")
        if isinstance(config, dict) and config.get("from_logits"):
            return None  # a setting --loss cannot carry
        return _LOSSES.get(str(raw.get("class_name")))
    return None
