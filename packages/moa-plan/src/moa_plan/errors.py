"""Error types shared by every moa package.

Every error a user can cause (a bad file, a wrong option, a plan for another model) is a
`MoaError`: its message is one sentence that names the file or field and what was expected.
The `moa` command turns it into exit code 2 without a traceback.
"""

from __future__ import annotations

__all__ = ["ModelSourceError", "MoaError", "PlanError", "ProfileError", "RecordsError"]


class MoaError(Exception):
    """Base class of errors caused by user input; the message is one sentence.

    Whitespace in the message (including newlines from file contents or third-party errors) is
    collapsed, so the message is always one line.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


class PlanError(MoaError):
    """A plan file or plan object is malformed or does not fit the model."""


class ProfileError(MoaError):
    """A profile file is malformed or does not fit the model or plan."""


class RecordsError(MoaError):
    """A dataset records file is malformed."""


class ModelSourceError(MoaError):
    """A ``--model`` path is neither a usable model directory nor a whole GGUF file."""
