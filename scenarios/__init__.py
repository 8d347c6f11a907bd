"""The standard reproducibility experiments, run inside one environment.

Imports only the standard library, NumPy and the framework under test; the
host side (`matrix`) reads what this package writes: manifest.json,
tensors.npz and log.txt (schema: scenarios/manifest.schema.json).
"""

from __future__ import annotations

__all__ = ["SCHEMA_ID", "SCHEMA_VERSION"]

# Kept here, not imported from artifact, so `import scenarios` stays
# stdlib-only: settings must be applied before NumPy loads.
SCHEMA_ID = "keras-repro-matrix/artifact"
SCHEMA_VERSION = 1
