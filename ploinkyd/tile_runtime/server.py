"""The protocol loop: one JSON request per line in, one JSON response per line out.

The loop owns private copies of stdin and stdout; file descriptors 0 and 1 themselves are
pointed at ``/dev/null`` and stderr, so an operator that prints, or a child process that
writes to its inherited stdout, lands in the log instead of corrupting the protocol.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import IO, Any

from .errors import OpError
from .registry import load_from_env
from .stages import run_stages

_encode = json.JSONEncoder(separators=(",", ":")).encode


def _error(request_id: str | None, error: OpError) -> bytes:
    body = {"id": request_id, "ok": False, "error": error.to_dict()}
    try:
        return _encode(body).encode() + b"\n"
    except (TypeError, ValueError):
        # details built from user data may not be JSON; the code and message always are.
        body["error"] = {"code": error.code, "message": error.message, "details": {}}
        return _encode(body).encode() + b"\n"


def handle_line(line: bytes) -> bytes:
    """The response line (with its newline) for one request line."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return _error(None, OpError("BAD_REQUEST", f"the line is not JSON: {exc}"))
    if not isinstance(request, dict):
        return _error(
            None, OpError("BAD_REQUEST", 'a request is an object {"id", "stages", "input"}')
        )
    request_id = request.get("id")
    if not isinstance(request_id, str):
        return _error(None, OpError("BAD_REQUEST", f"'id' must be a string, got {request_id!r}"))
    try:
        stages: Any = request.get("stages")
        output = run_stages(stages, request.get("input"))
        return _encode({"id": request_id, "ok": True, "output": output}).encode() + b"\n"
    except OpError as exc:
        return _error(request_id, exc)
    except MemoryError:
        return _error(request_id, OpError("OUT_OF_MEMORY", "encoding the output ran out of memory"))
    except (TypeError, ValueError, RecursionError) as exc:
        return _error(
            request_id,
            OpError("BAD_OUTPUT", f"the output cannot be encoded as JSON: {exc}"),
        )


def _reap_orphans() -> None:
    """As a container's PID 1 the runtime inherits every orphaned process; reap the dead
    ones, or their zombies eat the pids limit. Only between requests, when no ``__exec__``
    child is waiting to be reaped by ``subprocess`` itself."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def serve(infile: IO[bytes], outfile: IO[bytes]) -> int:
    """Answer requests until EOF on ``infile``; returns the exit status."""
    readline, write, flush = infile.readline, outfile.write, outfile.flush
    init = os.getpid() == 1
    while True:
        line = readline()
        if not line:
            return 0
        try:
            write(handle_line(line))
            flush()
        except BrokenPipeError:
            return 0
        if init:
            _reap_orphans()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    if argv:
        sys.stderr.write("usage: python3 -m tile_runtime   (requests on stdin, see SPEC §6)\n")
        return 2
    infile = os.fdopen(os.dup(0), "rb")
    outfile = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # PID 1 ignores signals it has no handler for, so "docker stop" would hang until SIGKILL.
    signal.signal(signal.SIGTERM, _terminate)
    load_from_env(os.environ)
    try:
        return serve(infile, outfile)
    except KeyboardInterrupt:
        return 130
