"""Host side of the Keras reproducibility matrix.

Spec -> cells -> images/venvs -> runs -> artifacts -> comparisons -> report.
Nothing here imports a deep-learning framework; that is the job of
``scenarios``, which runs inside each environment.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
