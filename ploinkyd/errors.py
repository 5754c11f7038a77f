"""The one error tree of ploinkyd.

Every error carries a stable UPPER_SNAKE ``code`` (it lands in records, API envelopes and
exit codes), a ``message`` a person can act on, and JSON-able ``details``::

    PloinkyError
    ├── UserError            the operator or producer must fix something; never a traceback
    │   ├── ConfigError          bad config file, key or value            (exit 78)
    │   ├── TaskError            a task file or task input is invalid      (record code)
    │   ├── NotFoundError        unknown queue, task, plugin               (HTTP 404)
    │   ├── ConflictError        duplicate id, daemon already running     (HTTP 409)
    │   ├── UnauthorizedError    API credentials missing or not valid     (HTTP 401)
    │   ├── ForbiddenError       the caller's role may not do this         (HTTP 403)
    │   ├── RateLimitedError     too many API requests from one client    (HTTP 429)
    │   └── PluginError          a plugin failed to load, a hook raised, a source is refused
    ├── TaskFailed           a task kind's run failed; ``retryable`` decides on a retry
    │   └── TaskDeferred         a dependency is down: requeue without spending an attempt
    ├── StorageError         a backup storage backend failed; ``transient`` decides on a retry
    │   └── ObjectNotFound       the named object does not exist (never retried)
    ├── RepositoryDamaged    a backup repository object fails its checks (bytes changed)
    ├── DaemonUnavailable    the CLI cannot reach the control socket       (exit 69)
    ├── NoSpaceError         a queue's filesystem is full or over quota    (HTTP 507)
    └── InternalError        a bug in ploinkyd itself
"""

from __future__ import annotations

from typing import Any


class PloinkyError(Exception):
    """Base of every ploinkyd error."""

    code = "INTERNAL"
    http_status = 500
    exit_code = 1

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class UserError(PloinkyError):
    """Something a person must fix; reported as a clean message, never a traceback."""

    code = "INVALID_REQUEST"
    http_status = 400
    exit_code = 2


class ConfigError(UserError):
    """Invalid configuration: the message names the file, the key and what is allowed."""

    code = "INVALID_CONFIG"
    exit_code = 78  # EX_CONFIG, as sysexits.h and systemd understand it


class TaskError(UserError):
    """A task file or task input that cannot run as written."""

    code = "INVALID_TASK"


class NotFoundError(UserError):
    code = "NOT_FOUND"
    http_status = 404
    exit_code = 4


class ConflictError(UserError):
    code = "CONFLICT"
    http_status = 409
    exit_code = 5


class ForbiddenError(UserError):
    code = "FORBIDDEN"
    http_status = 403
    exit_code = 77  # EX_NOPERM


class UnauthorizedError(UserError):
    """Credentials are missing or not valid: send a (valid) bearer token."""

    code = "UNAUTHORIZED"
    http_status = 401
    exit_code = 77


class RateLimitedError(UserError):
    """Too many requests from one client; ``retry_after_s`` says when one more is allowed."""

    code = "RATE_LIMITED"
    http_status = 429
    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, details={"retry_after_s": round(retry_after_s, 3)})
        self.retry_after_s = retry_after_s


class TaskFailed(PloinkyError):
    """Raised by a task kind when its work failed.

    ``retryable=False`` makes the failure final even when attempts remain (bad input the kind
    discovered late, say); the default lets the queue retry it within ``max_attempts``.
    """

    code = "TASK_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retryable = retryable


class TaskDeferred(TaskFailed):
    """Raised when the task could not even start because something it needs is down (the
    Docker engine, say). The queue puts it back after ``retry_after_s`` without counting an
    attempt, so an outage of any length loses nothing and burns no retries."""

    code = "DEFERRED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after_s: float = 5.0,
    ) -> None:
        super().__init__(message, code=code, details=details, retryable=True)
        self.retry_after_s = retry_after_s


class PluginError(UserError):
    """A plugin or plugin repository that cannot be used as it is (bad manifest, import error,
    a raising hook, a refused source URL); the message says which plugin and what to fix."""

    code = "PLUGIN_FAILED"


class StorageError(PloinkyError):
    """A storage backend failed. ``transient=True`` (a reset connection, a 5xx, a timeout) is
    retried with backoff by :class:`ploinkyd.backup.storage.RetryingBackend`; ``False`` (bad
    credentials, a missing bucket, a full disk) fails the operation at once, and the message
    names the setting to fix."""

    code = "STORAGE_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.transient = transient


class ObjectNotFound(StorageError):
    """The object does not exist in the backend; an answer, not a failure, so never retried."""

    code = "OBJECT_NOT_FOUND"
    http_status = 404
    exit_code = 4


class RepositoryDamaged(PloinkyError):
    """A repository object does not decrypt or does not match its id: it was changed after it
    was written. ``details`` names the object and, where known, the files it affects."""

    code = "REPOSITORY_DAMAGED"
    exit_code = 3


class DaemonUnavailable(PloinkyError):
    code = "DAEMON_UNAVAILABLE"
    http_status = 503
    exit_code = 69  # EX_UNAVAILABLE


class NoSpaceError(PloinkyError):
    """A write to a queue failed for want of space (``ENOSPC``/``EDQUOT``): nothing was kept,
    and the same request succeeds once an operator frees space."""

    code = "NO_SPACE"
    http_status = 507
    exit_code = 75  # EX_TEMPFAIL


class InternalError(PloinkyError):
    code = "INTERNAL"
