"""The one family of errors a user can cause, each with its own exit code.

The entry point catches :class:`MatrixError` once and prints ``message`` as a
single line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BuildError",
    "DiskFullError",
    "DriftGateFailed",
    "EngineError",
    "MatrixError",
    "ReferenceError_",
    "ResultsError",
    "SpecError",
]


class MatrixError(Exception):
    """A failure the user can act on. ``exit_code`` is distinct per subclass."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DriftGateFailed(MatrixError):
    """``--fail-on CLASS`` matched: drift at or beyond that class was found."""

    exit_code = 1


class SpecError(MatrixError):
    """A matrix spec that is malformed, unknown or expands to nothing."""

    exit_code = 3


class EngineError(MatrixError):
    """No usable container engine (missing, not running, too old)."""

    exit_code = 4


class BuildError(MatrixError):
    """An image, base image or virtualenv could not be built."""

    exit_code = 5


class ResultsError(MatrixError):
    """A results directory that is missing or holds no cell at all."""

    exit_code = 6


class ArtifactError(MatrixError):
    """One cell's artifact is corrupt: shown as failed, the report goes on.

    Raised by the artifact loader and caught per cell; it only reaches the
    entry point's exit code through the report's summary.
    """

    exit_code = 7


class ReferenceError_(MatrixError):
    """The requested reference cell is not among the results."""

    exit_code = 8


class DiskFullError(MatrixError):
    """No space left to write an image, a venv or an artifact."""

    exit_code = 9


class CellsFailed(MatrixError):
    """The matrix finished but some cells failed or are missing."""

    exit_code = 10


class DownloadStalled(MatrixError):
    """A download (wheels, Debian packages, a base image) stalled or ran past its limit."""

    exit_code = 11


#: Ctrl-C or SIGTERM: finished cells are kept, the next run resumes.
INTERRUPTED = 130

__all__ += ["INTERRUPTED", "CellsFailed", "DownloadStalled"]


class UserInputError(MatrixError):
    """Your model, builder, inputs, targets or scenario module cannot be used
    (missing, not a model, not an .npz of numbers, shapes that do not fit):
    found on the host before any image or venv is built."""

    exit_code = 12


__all__ += ["UserInputError"]
