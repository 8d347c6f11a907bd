"""The standard reproducibility experiments, run inside one environment.

Imports only the standard library, NumPy and the framework under test; the
host side (`matrix`) reads what this package writes: manifest.json,
tensors.npz and log.txt (schema: scenarios/manifest.schema.json). What both
sides agree on (axes, scenarios, file names) is in `scenarios.contract`.
"""
