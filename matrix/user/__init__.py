"""Your own model across the matrix: the host's checks of your files
(``check``), what a Keras file says without a framework (``keras_config``)
and the read-only copy every cell reads (``snapshot``)."""
