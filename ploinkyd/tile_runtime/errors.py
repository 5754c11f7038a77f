"""The one error type of the tile runtime and the codes it uses.

Every failure inside a request becomes ``OpError(code, message, details)`` and then one
``{"ok": false, "error": {...}}`` line. Codes (stable, upper snake case)::

    BAD_REQUEST           the line is not a valid request (the loop keeps going)
    UNKNOWN_OP            no operator of that name; details.known lists the ones there are
    MODULE_IMPORT_FAILED  the op is unknown and a user module failed to import
    BAD_PARAMS            a parameter is missing, of the wrong type or not a valid expression
    BAD_INPUT             the stage's input has the wrong shape (map over an object, ...)
    PATH_NOT_FOUND        select/json_path: the path is not in the input and no default given
    OP_FAILED             an expression or operator raised; details.exception names the type
    EXEC_FAILED           __exec__: the command could not start or exited non-zero
    EXEC_TIMEOUT          __exec__: the command ran longer than timeout_s
    BAD_OUTPUT            the output cannot be encoded as JSON
    OUT_OF_MEMORY         MemoryError while running a stage

Stage errors carry ``details.stage`` (index) and ``details.op``.
"""

from __future__ import annotations

from typing import Any


class OpError(Exception):
    """A request failed; ``code`` is stable, ``message`` says what to change."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details if details is not None else {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"OpError({self.code!r}, {self.message!r}, {self.details!r})"


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages a producer of JSON understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
