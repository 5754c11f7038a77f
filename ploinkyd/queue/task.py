"""Task files in, records out: the two documents of the queue protocol.

Parsing never raises anything but ``TaskError``: every way a file can be wrong maps to a stable
code and a message that tells the producer what to fix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ploinkyd.errors import TaskError
from ploinkyd.kinds import describe_validation, validation_details
from ploinkyd.nesting import nesting

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
ID_RE = re.compile(ID_PATTERN)
TASK_SUFFIX = ".json"
# Arrays and objects nested deeper than this are refused (serde_json's default limit too).
# Python's json reader and writer recurse, and records, retries and the tile runtime write
# the task again further down the stack: a limit well below the interpreter's keeps every one
# of them working, instead of a RecursionError in the queue's loop.
MAX_NESTING = 128
MAX_ATTEMPTS = 100


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class TaskMeta(BaseModel):
    """Written by the daemon when it re-queues a task for a retry; producers leave it out."""

    model_config = ConfigDict(extra="forbid")

    # Never above max_attempts when the daemon wrote it; a negative count (a producer's
    # mistake) would retry the task without end.
    attempts: StrictInt = Field(0, ge=0, le=MAX_ATTEMPTS)
    # Bounded: a record writes it as a date (a producer may set it too, by mistake).
    submitted_at: float | None = Field(None, ge=0, lt=253402300800.0)  # before year 10000
    # Digest of the file as the producer wrote it, so that resubmitting those same bytes after
    # a retry rewrote the file is still recognised as the same task.
    original_sha256: str | None = None
    last_error: ErrorInfo | None = None


class Task(BaseModel):
    """A task file as a producer writes it (SPEC §3)."""

    model_config = ConfigDict(extra="forbid")

    kind: StrictStr = Field(min_length=1, max_length=128)
    input: Any = None
    priority: StrictInt = Field(5, ge=0, le=9)
    not_before: datetime | None = None
    timeout_s: float | None = Field(None, gt=0)
    max_attempts: StrictInt = Field(1, ge=1, le=MAX_ATTEMPTS)
    labels: dict[str, StrictStr] = Field(default_factory=dict)
    meta: TaskMeta | None = None

    def not_before_ts(self) -> float | None:
        if self.not_before is None:
            return None
        nb = self.not_before
        if nb.tzinfo is None:  # a naive time is taken as UTC, as the example in SPEC §3 is
            nb = nb.replace(tzinfo=UTC)
        return nb.timestamp()


class Record(BaseModel):
    """A success or error record (``results/<id>.json`` / ``errors/<id>.json``)."""

    id: str
    queue: str
    status: Literal["succeeded", "failed", "cancelled"]
    kind: str | None = None
    output: Any = None
    attempts: int = 0
    node: str
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str
    duration_ms: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    task: Any = None
    task_raw: str | None = None
    task_raw_b64: str | None = None
    task_sha256: str | None = None
    original_name: str | None = None
    preserved_as: str | None = None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def original_digest(raw: bytes, task: Task | None = None) -> str:
    """The digest of the producer's own bytes, even after retries rewrote the file."""
    if task is not None and task.meta is not None and task.meta.original_sha256:
        return task.meta.original_sha256
    return digest(raw)


def parse_task(raw: bytes) -> tuple[Task, dict[str, Any]]:
    """Parse a task file's bytes into a ``Task`` and the JSON object it came from."""
    obj = load_task_json(raw)
    if not isinstance(obj, dict):
        raise TaskError(
            f'task file must hold a JSON object like {{"kind": "echo", "input": ...}}, '
            f"got a JSON {type(obj).__name__}",
            code="INVALID_TASK",
        )
    try:
        return Task.model_validate(obj), obj
    except ValidationError as exc:
        unknown = [e["loc"][0] for e in exc.errors() if e["type"] == "extra_forbidden"]
        hint = ""
        if unknown:
            allowed = ", ".join(f for f in Task.model_fields if f != "meta")
            hint = f" (allowed top-level fields: {allowed}; put free-form data under 'input')"
        raise TaskError(
            f"invalid task: {describe_validation(exc)}{hint}",
            code="INVALID_TASK",
            details={"errors": validation_details(exc)},
        ) from None


def beyond_limits(text: str, value: Any) -> tuple[Literal["deep", "surrogate"] | None, str]:
    """What keeps ``value``, parsed from ``text``, from being accepted and written back as a
    task: ("deep", "") when it nests past ``MAX_NESTING``, ("surrogate", where) for a lone
    surrogate escape, (None, "") when nothing. Task files and API bodies share these limits:
    what the API accepts is written as a task file."""
    # Only a text with that many brackets can nest that deep: most values skip the walk.
    if (
        text.count("[") + text.count("{") > MAX_NESTING
        and nesting(value, MAX_NESTING) > MAX_NESTING
    ):
        return "deep", ""
    where = lone_surrogate(value) if SURROGATE_ESCAPE.search(text) else None
    if where is not None:
        return "surrogate", where
    return None, ""


def load_task_json(raw: bytes) -> Any:
    """The JSON value of a task file's bytes; ``TaskError`` for anything that is not UTF-8
    JSON, holds a number Python cannot read, or nests deeper than ``MAX_NESTING``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(
            f"task file is not UTF-8 text (bad byte at offset {exc.start}); "
            "write the task as a JSON object in UTF-8",
            code="INVALID_JSON",
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(
            f"task file is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="INVALID_JSON",
            details={"line": exc.lineno, "column": exc.colno},
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # an integer of more digits than int() converts (4300)
        raise TaskError(
            "task file holds a number too long to read (integers may have at most "
            f"{sys.get_int_max_str_digits()} digits); send it as a string",
            code="INVALID_TASK",
        ) from None
    problem, where = beyond_limits(text, obj)
    if problem == "deep":
        raise _too_deep()
    if problem == "surrogate":
        raise TaskError(
            f"task file holds a lone surrogate escape (such as \\ud800) at {where}: it is not a "
            "character and cannot be written back as UTF-8; send the text as UTF-8, or escape "
            "a character beyond U+FFFF as a pair",
            code="INVALID_TASK",
            details={"loc": where},
        )
    return obj


# Only a \uD800-\uDFFF escape can put a lone surrogate into text decoded as strict UTF-8.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(value: Any) -> str | None:
    """Where (a dotted path) the first string or key holding a lone surrogate is, if any."""
    stack: list[tuple[Any, str]] = [(value, "(root)")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _unencodable(item):
                return where
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, dict):
            for key, child in item.items():
                path = key if where == "(root)" else f"{where}.{key}"
                if _unencodable(key):
                    return path.encode("utf-8", "backslashreplace").decode()
                stack.append((child, path))
    return None


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_deep() -> TaskError:
    return TaskError(
        f"task file nests arrays or objects more than {MAX_NESTING} levels deep; flatten the data",
        code="INVALID_TASK",
        details={"max_nesting": MAX_NESTING},
    )


def preserved_task(raw: bytes) -> dict[str, Any]:
    """What an error record keeps of a task file that did not parse as a task: the JSON
    (``task``, and ``kind`` when it is text) when it reads as JSON, else the raw text.
    Never raises: a file nested too deep for ``json`` is kept as text too."""
    try:
        obj = load_task_json(raw)
    except TaskError:
        return raw_fields(raw)
    kind = obj.get("kind") if isinstance(obj, dict) else None
    return {"task": obj, "kind": kind if isinstance(kind, str) else None}


def raw_fields(raw: bytes) -> dict[str, str]:
    """The original bytes for an error record: text when it is UTF-8, else base64 as well."""
    try:
        return {"task_raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "task_raw": raw.decode("utf-8", errors="backslashreplace"),
            "task_raw_b64": base64.b64encode(raw).decode(),
        }


def dump_record(record: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800" in the task's JSON) has no UTF-8 form: escape it.
        return json.dumps(record, separators=(",", ":"), default=str).encode()
