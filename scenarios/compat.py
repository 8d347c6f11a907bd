"""Every Keras 2 / Keras 3 / backend difference, in one place.

Scenarios talk to a `Framework` object and never branch on versions
themselves. Importing this module imports nothing heavy: `load()` does,
after settings.apply_environment has set what frameworks read at import.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from scenarios.settings import backend_hint

__all__ = ["Framework", "Unsupported", "backend_hint", "load"]


class Unsupported(Exception):
    """This environment cannot do what a scenario asks at all (a file format
    its Keras cannot read, a backend without TensorFlow): the scenario, or
    the one load, is recorded as ``unsupported`` with this message, not as
    failed. Scenarios raise it through ``scenarios.context``."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass(kw_only=True)
class Framework:
    """The imported Keras, how it was reached, and its backend's module."""

    keras: Any
    module_name: str  # "tf.keras", "keras" or "tf_keras": how a user imports it
    version: str
    major: int
    backend: str
    tf: Any = None
    torch: Any = None
    jax: Any = None
    notes: list[str] = field(default_factory=list)

    # ---- models -------------------------------------------------------
    def clear(self) -> None:
        """Drop global Keras state (layer name counters, graphs)."""
        if self.major >= 3:
            # Keras 3 keeps the dtype policy in the state clear_session
            # wipes (Keras 2 does not): carry it over, or a mixed policy
            # silently becomes float32 after the first clear.
            policy = self.global_policy()
            # free_memory=False: the default gc.collect() costs ~0.2 s a
            # call with torch or JAX loaded and has nothing to do with numbers.
            # Keras 3.0-3.3 have no such argument.
            clear_session = self.keras.backend.clear_session
            if "free_memory" in inspect.signature(clear_session).parameters:
                clear_session(free_memory=False)
            else:
                clear_session()
            if self.global_policy() != policy:
                self.set_policy(policy)
                self.note(f"Keras 3 clear_session reset the dtype policy; {policy} re-applied")
        else:
            self.keras.backend.clear_session()

    def input(
        self,
        *,
        shape: Sequence[int] | None = None,
        batch_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> Any:
        # Input(batch_shape=...) is the one spelling both majors accept;
        # Keras 3 rejects the layer kwarg batch_input_shape.
        if batch_shape is not None:
            return self.keras.Input(batch_shape=tuple(batch_shape), name=name)
        return self.keras.Input(shape=tuple(shape or ()), name=name)

    def dense(self, units: int, *, name: str, dtype: Any = None) -> Any:
        kwargs: dict[str, Any] = {"name": name}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return self.keras.layers.Dense(units, **kwargs)

    def lstm(self, units: int, *, name: str, stateful: bool, cudnn: bool | None) -> Any:
        """An LSTM; cudnn None lets the framework decide, as users get it."""
        layers = self.keras.layers
        if self.major >= 3:
            if "use_cudnn" in inspect.signature(layers.LSTM.__init__).parameters:
                use = "auto" if cudnn is None else bool(cudnn)
                return layers.LSTM(units, stateful=stateful, name=name, use_cudnn=use)
            # Keras 3.0 has no switch: it picks the kernel itself.
            if cudnn is not None:
                self.note(
                    f"Keras {self.version} has no LSTM use_cudnn: cudnn="
                    f"{'on' if cudnn else 'off'} not applied, the framework chose"
                )
            return layers.LSTM(units, stateful=stateful, name=name)
        layer = layers.LSTM(units, stateful=stateful, name=name)
        if cudnn is False:
            # Keras 2 has no switch; its v2 LSTM picks the cuDNN kernel when
            # this private flag (computed in __init__) is true.
            layer._could_use_gpu_kernel = False
            self.note("cudnn=off on Keras 2: set the private LSTM._could_use_gpu_kernel=False")
        return layer

    def sequential(self, layers: Sequence[Any], *, name: str) -> Any:
        return self.keras.Sequential(list(layers), name=name)

    def layer_outputs_model(self, model: Any) -> Any:
        """A model returning every layer's output, for drift localisation."""
        outputs = [layer.output for layer in model.layers]
        return self.keras.Model(inputs=model.inputs, outputs=outputs)

    def adam(self) -> Any:
        # Default arguments on purpose: the tutorial uses optimizer="adam".
        return self.keras.optimizers.Adam()

    def compile(self, model: Any, *, jit: str) -> None:
        kwargs: dict[str, Any] = {"optimizer": self.adam(), "loss": "mse"}
        if jit != "default":
            kwargs["jit_compile"] = jit == "on"
        model.compile(**kwargs)

    def effective_jit(self, model: Any) -> bool | str | None:
        value = getattr(model, "jit_compile", None)
        if isinstance(value, (bool, str)) or value is None:
            return value
        return bool(value)

    def fit(
        self, model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int
    ) -> list[float]:
        history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
        return [float(v) for v in history.history["loss"]]

    def predict(self, model: Any, x: np.ndarray, *, batch_size: int) -> Any:
        return model.predict(x, batch_size=batch_size, verbose=0)

    def named_weights(self, model: Any) -> list[tuple[str, Any]]:
        """(layer_variable, variable) in model order, names stable across
        versions (Keras 2 names are 'dense/kernel:0', Keras 3 'kernel')."""
        named = []
        for layer in model.layers:
            for var in layer.weights:
                short = str(var.name).split("/")[-1].split(":")[0]
                named.append((f"{layer.name}_{short}", var))
        return named

    def get_weights(self, model: Any) -> list[tuple[str, np.ndarray]]:
        return [(name, self.to_numpy(var)) for name, var in self.named_weights(model)]

    def set_weights(self, model: Any, weights: Sequence[np.ndarray]) -> None:
        model.set_weights(list(weights))

    def reset_states(self, model: Any) -> None:
        if self.major >= 3:
            # Keras 3 models have no reset_states(); RNN layers reset_state().
            for layer in model.layers:
                if getattr(layer, "stateful", False):
                    layer.reset_state()
        else:
            model.reset_states()

    def states(self, layer: Any) -> list[np.ndarray]:
        states = layer.states
        if states is None:
            return []
        return [self.to_numpy(s) for s in states]

    # ---- saved models -------------------------------------------------
    # What a user of this version writes to save and load each format; the
    # portability and user_model scenarios go through these alone.

    def save(self, model: Any, fmt: str, path: Path) -> str:
        """Save ``model`` to ``path`` in ``fmt`` (keras, h5, weights_h5,
        savedmodel); return the call used. Raises Unsupported where this
        version has no way to write the format."""
        if fmt == "weights_h5":
            model.save_weights(str(path))
            return "model.save_weights"
        if fmt != "savedmodel":
            model.save(str(path))
            return "model.save"
        if self.major < 3:
            model.save(str(path), save_format="tf")
            return "model.save(save_format='tf')"
        if self.backend != "tensorflow" and self._tensorflow() is None:
            raise Unsupported(
                f"Keras {self.version} on {self.backend} exports a SavedModel through "
                "TensorFlow, which this environment does not have"
            )
        # Keras 3 refuses model.save() to a directory; export() is its SavedModel.
        model.export(str(path))
        return "model.export"

    def load_model(self, path: Path) -> Any:
        """keras.models.load_model without the optimizer: the question is
        whether the model and its weights come back, not the training state."""
        return self.keras.models.load_model(str(path), compile=False)

    def load_savedmodel(self, path: Path) -> tuple[Any, str]:
        """A SavedModel directory, loaded as this version's users do: Keras 2
        ``load_model`` (a Keras model back), Keras 3 through TensorFlow's own
        loader (what ``keras.layers.TFSMLayer`` wraps: a function, no layers).
        Returns (a Keras model or a callable on one batch, how)."""
        if self.major < 3:
            model = self.load_model(path)
            if not hasattr(model, "predict"):
                # What Keras 2 gives back for a SavedModel without Keras metadata
                # (Keras 3's model.export): a revived object with no model API.
                raise TypeError(
                    f"keras.models.load_model returned a {type(model).__name__}, not a model: "
                    "the SavedModel carries no Keras metadata"
                )
            return model, "keras.models.load_model"
        tf = self._tensorflow()
        if tf is None:
            raise Unsupported(
                f"Keras {self.version} on {self.backend} reads a SavedModel only through "
                "TensorFlow (keras.layers.TFSMLayer), which this environment does not have"
            )
        # The closures hold `loaded`: its variables die with it.
        loaded = tf.saved_model.load(str(path))
        if hasattr(loaded, "serve"):  # written by Keras 3's model.export

            def serve(batch: np.ndarray) -> Any:
                return loaded.serve(tf.constant(batch))

            return serve, "tf.saved_model.load(...).serve"
        (name,) = loaded.signatures["serving_default"].structured_input_signature[1]

        def serving_default(batch: np.ndarray) -> Any:
            (out,) = loaded.signatures["serving_default"](**{name: tf.constant(batch)}).values()
            return out

        return serving_default, "tf.saved_model.load(...).signatures['serving_default']"

    def _tensorflow(self) -> Any:
        if self.tf is not None:
            return self.tf
        try:
            return importlib.import_module("tensorflow")
        except ImportError:
            return None

    def output_layers(self, model: Any) -> list[Any]:
        """The layers whose outputs a forward pass records, in model order:
        input layers are left out, since Keras lists them in functional
        models and not in sequential ones (the keys must line up)."""
        return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]

    def outputs_model(self, model: Any, layers: Sequence[Any]) -> Any:
        """A model returning the outputs of ``layers``, for drift localisation."""
        return self.keras.Model(inputs=model.inputs, outputs=[layer.output for layer in layers])

    def fixed_batch_size(self, model: Any) -> int | None:
        """The batch size a model's inputs fix (a stateful model's batch_shape)."""
        try:
            size = model.inputs[0].shape[0]
        except (AttributeError, IndexError, TypeError, ValueError):
            return None
        return int(size) if size is not None else None

    def is_stateful(self, model: Any) -> bool:
        return any(getattr(layer, "stateful", False) for layer in model.layers)

    def train_step(self, model: Any, x: Any, y: Any) -> float:
        """One optimizer step on one batch; the batch's loss before the step."""
        out = model.train_on_batch(x, y)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = out.get("loss", next(iter(out.values())))
        return float(self.to_numpy(out))

    def sgd(self, learning_rate: float) -> Any:
        return self.keras.optimizers.SGD(learning_rate=learning_rate)

    # ---- tensors ------------------------------------------------------
    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        if self.major >= 3:
            return np.asarray(self.keras.ops.convert_to_numpy(value))
        if hasattr(value, "numpy"):
            return np.asarray(value.numpy())
        return np.asarray(value)

    # ---- precision ----------------------------------------------------
    def set_policy(self, name: str) -> None:
        if self.major >= 3:
            self.keras.config.set_dtype_policy(name)
        else:
            self.keras.mixed_precision.set_global_policy(name)

    def global_policy(self) -> str:
        if self.major >= 3:
            return str(self.keras.config.dtype_policy().name)
        return str(self.keras.mixed_precision.global_policy().name)

    def layer_dtypes(self, layer: Any) -> dict[str, str]:
        return {"variable": str(layer.variable_dtype), "compute": str(layer.compute_dtype)}

    def loss_scaling(self, model: Any) -> dict[str, Any]:
        """What loss scaling compile() applied (Keras wraps the optimizer)."""
        opt = model.optimizer
        info: dict[str, Any] = {"optimizer": type(opt).__name__}
        scale = None
        if self.major >= 3:
            var = getattr(opt, "dynamic_scale", None)
            if var is not None:
                scale = float(self.to_numpy(var))
        else:
            value = getattr(opt, "loss_scale", None)
            if value is not None:
                scale = float(self.to_numpy(value))
            if hasattr(opt, "dynamic"):
                info["dynamic"] = bool(opt.dynamic)
        info["loss_scale"] = scale
        info["wrapped"] = "LossScale" in type(opt).__name__
        return info

    # ---- seeds --------------------------------------------------------
    def seed_all(self, seed: int) -> None:
        """Keras' one-call recipe: Python, NumPy and the backend."""
        self.keras.utils.set_random_seed(seed)

    def seed_backend(self, seed: int) -> str:
        """Seed only the backend's global generator; say what that was."""
        if self.backend == "tensorflow":
            self.tf.random.set_seed(seed)
            return "tf.random.set_seed"
        if self.backend == "torch":
            self.torch.manual_seed(seed)
            return "torch.manual_seed"
        return "none: JAX has no global seed"

    def scramble_seeds(self) -> None:
        """Fresh entropy everywhere, as a new unseeded process would have."""
        entropy = int.from_bytes(os.urandom(4), "little")
        random.seed(os.urandom(16))
        np.random.seed(entropy)
        self.seed_backend(int.from_bytes(os.urandom(4), "little") % (2**31 - 1))
        if self.major < 3:
            # Keras 2's set_random_seed leaves a private random.Random behind
            # that unseeded initializers prefer over `random`; a fresh
            # process has none.
            backend = self._keras2_private_backend()
            holder = getattr(backend, "_SEED_GENERATOR", None)
            if holder is not None and getattr(holder, "generator", None) is not None:
                holder.generator = None
                self.note(
                    "Keras 2: reset the private backend._SEED_GENERATOR to mimic a fresh process"
                )

    def _keras2_private_backend(self) -> Any:
        root = self.keras.__name__.split(".")[0]  # "keras" (tf.keras <= 2.15) or "tf_keras"
        for name in (f"{root}.src.backend", f"{root}.backend"):
            try:
                return importlib.import_module(name)
            except ImportError:
                continue
        return None

    def initializer(self, class_name: str, seed: int | None, **kwargs: Any) -> Any:
        cls = getattr(self.keras.initializers, class_name)
        if seed is not None:
            kwargs["seed"] = seed
        return cls(**kwargs)

    def initialize(self, init: Any, shape: Sequence[int]) -> np.ndarray:
        return self.to_numpy(init(tuple(shape), dtype="float32"))

    # ---- runtime settings ---------------------------------------------
    def enable_determinism(self) -> dict[str, Any]:
        """Switch op determinism on by the backend's own means."""
        done: dict[str, Any] = {}
        if self.backend == "tensorflow":
            fn = getattr(self.tf.config.experimental, "enable_op_determinism", None)
            if fn is not None:
                fn()
                done["tf.config.experimental.enable_op_determinism"] = True
        elif self.backend == "torch":
            self.torch.use_deterministic_algorithms(True)
            self.torch.backends.cudnn.deterministic = True
            self.torch.backends.cudnn.benchmark = False
            done["torch.use_deterministic_algorithms"] = bool(
                self.torch.are_deterministic_algorithms_enabled()
            )
            done["torch.backends.cudnn.deterministic"] = True
            done["torch.backends.cudnn.benchmark"] = False
        elif self.backend == "jax":
            flags = os.environ.get("XLA_FLAGS", "")
            done["XLA_FLAGS"] = flags
            done["xla_gpu_deterministic_ops"] = "--xla_gpu_deterministic_ops=true" in flags
        return done

    def determinism_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"TF_DETERMINISTIC_OPS": os.environ.get("TF_DETERMINISTIC_OPS")}
        if self.backend == "tensorflow":
            probe = getattr(self.tf.config.experimental, "is_op_determinism_enabled", None)
            if probe is None:
                try:
                    from tensorflow.python.framework import config as tf_config  # type: ignore[import-not-found,unused-ignore]

                    probe = tf_config.is_op_determinism_enabled
                except (ImportError, AttributeError):
                    probe = None
            state["op_determinism_enabled"] = bool(probe()) if probe else None
        elif self.backend == "torch":
            state["deterministic_algorithms"] = bool(
                self.torch.are_deterministic_algorithms_enabled()
            )
            state["cudnn_deterministic"] = bool(self.torch.backends.cudnn.deterministic)
        elif self.backend == "jax":
            state["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
        return state

    def set_threads(self, n: int) -> int | None:
        """Apply a thread count (0: leave the default); return the count in
        effect, or None where the backend cannot tell."""
        if self.backend == "tensorflow":
            if n > 0:
                self.tf.config.threading.set_intra_op_parallelism_threads(n)
                self.tf.config.threading.set_inter_op_parallelism_threads(n)
            got = int(self.tf.config.threading.get_intra_op_parallelism_threads())
            return got if got > 0 else _cpu_count()
        if self.backend == "torch":
            if n > 0:
                self.torch.set_num_threads(n)
            return int(self.torch.get_num_threads())
        if self.backend == "jax":
            return (
                1
                if "intra_op_parallelism_threads=1" in os.environ.get("XLA_FLAGS", "")
                else _cpu_count()
            )
        return None

    def set_onednn(self, wanted: bool | None) -> None:
        # TensorFlow reads TF_ENABLE_ONEDNN_OPTS at import (settings did it);
        # torch has a runtime switch for its oneDNN (mkldnn) kernels.
        if self.backend == "torch" and wanted is not None:
            self.torch.backends.mkldnn.enabled = bool(wanted)

    def onednn_effective(self) -> bool | None:
        if self.backend == "tensorflow":
            try:
                from tensorflow.python.util import _pywrap_util_port  # type: ignore[import-not-found,unused-ignore]

                return bool(_pywrap_util_port.IsMklEnabled())
            except (ImportError, AttributeError):
                return None
        if self.backend == "torch":
            return bool(
                self.torch.backends.mkldnn.enabled and self.torch.backends.mkldnn.is_available()
            )
        return None  # XLA on CPU does not use oneDNN kernels for these ops

    def set_tf32(self, wanted: bool) -> None:
        """TensorFloat-32 for float32 matmuls and convolutions on GPU."""
        if self.backend == "tensorflow":
            self.tf.config.experimental.enable_tensor_float_32_execution(bool(wanted))
        elif self.backend == "torch":
            self.torch.backends.cuda.matmul.allow_tf32 = bool(wanted)
            self.torch.backends.cudnn.allow_tf32 = bool(wanted)
        elif self.backend == "jax":
            precision = "tensorfloat32" if wanted else "float32"
            self.jax.config.update("jax_default_matmul_precision", precision)

    def tf32_state(self) -> bool | None:
        """Whether float32 matmuls may run in TensorFloat-32 (the backend's
        own answer; None where it has none)."""
        if self.backend == "tensorflow":
            probe = getattr(self.tf.config.experimental, "tensor_float_32_execution_enabled", None)
            return bool(probe()) if probe is not None else None
        if self.backend == "torch":
            return bool(self.torch.backends.cuda.matmul.allow_tf32)
        if self.backend == "jax":
            value = self.jax.config.jax_default_matmul_precision
            # None is XLA's default: TF32 on GPUs that have it, exact float32 on CPU.
            return None if value is None else str(value) in ("tensorfloat32", "high", "bfloat16_3x")
        return None

    def cpu_capability(self) -> str | None:
        """The kernel set ATen (torch) dispatched to; None for other backends."""
        if self.backend != "torch":
            return None
        probe = getattr(getattr(self.torch.backends, "cpu", None), "get_cpu_capability", None)
        return str(probe()) if probe is not None else None

    def device_info(self) -> dict[str, Any]:
        """The device the backend computes on, with GPU library versions."""
        info: dict[str, Any] = {"kind": "cpu", "name": None}
        if self.backend == "tensorflow":
            gpus = self.tf.config.list_physical_devices("GPU")
            build = dict(self.tf.sysconfig.get_build_info())
            if gpus:
                details = self.tf.config.experimental.get_device_details(gpus[0])
                cc = details.get("compute_capability")
                info.update(
                    kind="gpu",
                    name=details.get("device_name"),
                    compute_capability=".".join(map(str, cc)) if cc else None,
                    cuda=build.get("cuda_version"),
                    cudnn=build.get("cudnn_version"),
                )
        elif self.backend == "torch":
            if self.torch.cuda.is_available():
                cc = self.torch.cuda.get_device_capability(0)
                cudnn = self.torch.backends.cudnn.version()
                info.update(
                    kind="gpu",
                    name=self.torch.cuda.get_device_name(0),
                    compute_capability=f"{cc[0]}.{cc[1]}",
                    cuda=self.torch.version.cuda,
                    cudnn=str(cudnn) if cudnn else None,
                )
        elif self.backend == "jax":
            devices = self.jax.devices()
            if devices and devices[0].platform == "gpu":
                dev = devices[0]
                info.update(
                    kind="gpu",
                    name=getattr(dev, "device_kind", None),
                    compute_capability=getattr(dev, "compute_capability", None),
                )
        if info["kind"] == "cpu":
            info["name"] = _cpu_model()
        return info

    # ---- notes ----------------------------------------------------------
    def note(self, text: str) -> None:
        """A workaround compat applied; the runner files it under the
        scenario it happened in (each scenario dedupes its own)."""
        self.notes.append(text)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def load() -> Framework:
    """Import Keras the way a user of this environment would."""
    hint = backend_hint()
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        tf = importlib.import_module("tensorflow")
        keras = importlib.import_module("tf_keras")
        return _framework(keras, "tf_keras", "tensorflow", tf=tf)
    if hint == "tensorflow":
        tf = importlib.import_module("tensorflow")
        if _version_tuple(tf.__version__) < (2, 16):
            # Up to 2.15 users write tf.keras (Keras 2, the `keras` package).
            return _framework(tf.keras, "tf.keras", "tensorflow", tf=tf)
        keras = importlib.import_module("keras")
        return _framework(keras, "keras", "tensorflow", tf=tf)
    keras = importlib.import_module("keras")
    return _framework(keras, "keras", hint)


def _framework(
    keras: Any, module_name: str, backend: str, *, tf: ModuleType | None = None
) -> Framework:
    version = str(getattr(keras, "__version__", None) or _dist_version(module_name))
    major = _version_tuple(version)[0]
    if major >= 3:
        backend = str(keras.backend.backend())
    fw = Framework(
        keras=keras, module_name=module_name, version=version, major=major, backend=backend, tf=tf
    )
    if backend == "torch":
        fw.torch = importlib.import_module("torch")
    elif backend == "jax":
        fw.jax = importlib.import_module("jax")
    return fw


def _dist_version(module_name: str) -> str:
    from importlib import metadata

    dist = {"tf.keras": "keras", "tf_keras": "tf-keras"}.get(module_name, "keras")
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0"
