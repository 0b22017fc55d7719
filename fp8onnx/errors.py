"""One exception hierarchy for the whole package.

``UserError`` is anything the user can fix (bad file, bad option, bad data): the CLI
prints its message as one line and exits 2. The message names the problem and the fix.
``PreconditionError`` is a pass run on a model it does not accept; ``PassError`` wraps
an unexpected failure inside a pass, naming the pass (chained with ``from e``).
"""
from __future__ import annotations

__all__ = ["Fp8OnnxError", "UserError", "PreconditionError", "PassError", "CalibrationError"]


class Fp8OnnxError(Exception):
    """Base of every error fp8onnx raises on purpose."""


class UserError(Fp8OnnxError, ValueError):
    """Bad input the user can correct; the message says what and how."""


class CalibrationError(UserError):
    """Calibration data that does not fit the model or holds unusable values."""


class PreconditionError(Fp8OnnxError):
    """A pass was given a model that does not meet what it ``requires``."""


class PassError(Fp8OnnxError):
    """A pass failed unexpectedly; ``pass_name`` says which."""

    def __init__(self, pass_name: str, message: str):
        super().__init__(f"pass {pass_name!r} failed: {message}")
        self.pass_name = pass_name
