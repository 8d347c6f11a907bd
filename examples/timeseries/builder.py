"""The forecaster's architecture, for ``--builder`` (with ``model.weights.h5``).

``build(keras)`` is given the Keras module of the environment it runs in
(``tf.keras`` up to TensorFlow 2.15, ``keras`` 3 after, ``tf_keras`` with
tf-keras), so the same file builds the model in every cell.
"""

WINDOW = 24


def build(keras):
    return keras.Sequential(
        [
            keras.Input(shape=(WINDOW, 1), name="series"),
            keras.layers.Conv1D(8, 3, activation="relu", name="conv"),
            keras.layers.GRU(8, name="gru"),
            keras.layers.Dense(1, name="head"),
        ],
        name="forecaster",
    )
