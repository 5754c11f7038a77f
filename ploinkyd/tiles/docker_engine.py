"""Reaching the Docker engine, and telling "the engine is down" apart from every other error.

Everything here blocks: callers on the event loop run it in a thread. The low-level
``docker.APIClient`` is used throughout; the high-level models add a round trip per object
(they re-inspect after create) that a warm pool does not need.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import docker
import docker.errors
import docker.utils
import requests.exceptions

from ploinkyd.errors import TaskDeferred, UserError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Short: a warm call never talks to the API, and a hung engine should surface quickly.
API_TIMEOUT_S = 60.0
ENGINE_RETRY_AFTER_S = 5.0


class EngineUnavailable(Exception):
    """The engine cannot be reached at all (socket missing, connection refused, not docker)."""

    def __init__(self, base_url: str, cause: BaseException) -> None:
        self.base_url = base_url
        self.cause = cause
        super().__init__(describe_unreachable(base_url, cause))


class ImageToolError(UserError):
    """Building or listing images failed for a reason the operator can fix."""

    code = "IMAGE_BUILD_FAILED"


def engine_url(base_url: str | None = None) -> str:
    """The address the client will use: the explicit one, else ``DOCKER_HOST``, else the
    default socket."""
    return base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def describe_unreachable(base_url: str, cause: BaseException) -> str:
    detail = str(cause).strip() or type(cause).__name__
    # docker-py nests the interesting part ("No such file or directory") deep in its message.
    if len(detail) > 300:
        detail = detail[:300] + "..."
    return (
        f"cannot reach the Docker engine at {base_url}: {detail}; "
        "start dockerd (bash scripts/docker-engine.sh) or set DOCKER_HOST"
    )


def connect(base_url: str | None = None, timeout: float = API_TIMEOUT_S) -> docker.APIClient:
    """A client that has already answered one request (``version="auto"`` asks the engine
    which API version to speak), so a returned client means a reachable engine.

    Raises ``EngineUnavailable`` when it is not.
    """
    kwargs: dict[str, Any] = docker.utils.kwargs_from_env()
    if base_url:
        kwargs["base_url"] = base_url
    url = engine_url(base_url)
    if url.startswith("unix://"):
        _probe_unix(url)
    try:
        return docker.APIClient(version="auto", timeout=timeout, **kwargs)
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(url, exc) from exc
    except requests.exceptions.RequestException as exc:
        raise EngineUnavailable(url, exc) from exc


def _probe_unix(url: str) -> None:
    """Fail fast, and without leaking a socket, when nothing listens at a unix socket.

    docker-py does not close its socket when ``connect`` fails; the garbage collector then
    closes it with a ResourceWarning on every reconnect attempt while the engine is down.
    """
    path = url.removeprefix("unix://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5.0)
        try:
            probe.connect(path)
        except OSError as exc:
            raise EngineUnavailable(url, exc) from exc


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the engine went away, as opposed to the engine answering with an
    error (``APIError``: 404, 409, 500...)."""
    if isinstance(exc, EngineUnavailable):
        return True
    if isinstance(exc, docker.errors.APIError):
        return False
    return isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | docker.errors.DockerException
        | ConnectionError
        | FileNotFoundError,
    )


def release_sockets(exc: BaseException) -> None:
    """Close the sockets a failed connection attempt left open in ``exc``'s frames.

    docker-py's unix connection opens a socket and does not close it when ``connect``
    raises; every request while the engine is down would leak one until the collector
    finds it (with a ResourceWarning). The socket is still a local of the frame that raised.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        stack += [err.__cause__, err.__context__]
        stack += [a for a in err.args if isinstance(a, BaseException)]


def deferred(base_url: str, cause: BaseException) -> TaskDeferred:
    """The queue-facing form of an unreachable engine: requeue without spending an attempt."""
    message = (
        str(cause)
        if isinstance(cause, EngineUnavailable)
        else describe_unreachable(base_url, cause)
    )
    return TaskDeferred(
        message,
        code="ENGINE_UNAVAILABLE",
        details={"engine": base_url},
        retry_after_s=ENGINE_RETRY_AFTER_S,
    )


def image_exists(api: docker.APIClient, ref: str) -> dict[str, Any] | None:
    """The image's inspect document, or None when the engine does not have it."""
    try:
        info: dict[str, Any] = api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.NotFound:
        return None
    return info
