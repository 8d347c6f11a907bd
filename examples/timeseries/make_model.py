"""Train the example forecaster and save it the ways users do.

A Conv1D + GRU model that predicts the next value of a noisy two-tone
series from the previous 24, trained for a few epochs with TensorFlow 2.15
(Keras 2), then saved as model.keras, model.h5 and model.weights.h5, with
64 held-out windows (inputs.npz) and their next values (targets.npz).

Run it with the interpreter of the tf-2.15 environment the venv executor
provisions (``nox -s matrix -- --executor venv --only stack=tf-2.15`` makes it):

    $KRM_CACHE/venvs/tf-2.15.cpu.*/bin/python examples/timeseries/make_model.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from builder import WINDOW, build  # noqa: E402


def series(n: int, seed: int) -> np.ndarray:
    rs = np.random.RandomState(seed)
    t = np.arange(n, dtype=np.float64)
    return np.sin(t / 7.0) + 0.5 * np.sin(t / 3.1 + 1.0) + 0.1 * rs.standard_normal(n)


def windows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([values[i : i + WINDOW] for i in range(len(values) - WINDOW)])
    y = values[WINDOW:]
    return x[..., None].astype(np.float32), y[:, None].astype(np.float32)


def main() -> None:
    keras = tf.keras
    keras.utils.set_random_seed(7)
    x, y = windows(series(600, seed=1))
    x_test, y_test = windows(series(64 + WINDOW, seed=2))
    model = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    model.fit(x, y, epochs=8, batch_size=32, verbose=0, shuffle=False)
    mse = model.evaluate(x_test, y_test, verbose=0)
    print(f"TensorFlow {tf.__version__}: test mse {mse:.4f}")
    model.save(HERE / "model.keras")
    model.save(HERE / "model.h5")
    model.save_weights(HERE / "model.weights.h5")
    np.savez(HERE / "inputs.npz", series=x_test)
    np.savez(HERE / "targets.npz", next_value=y_test)


if __name__ == "__main__":
    main()
