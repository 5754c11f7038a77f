"""``__exec__``: run a command that does not speak the protocol, inside a warm runtime.

The stage input goes to the command's stdin (JSON-encoded, or raw text), its stdout is the
stage output. Running it from the warm runtime keeps one code path for every tile call, and
a cancelled call still kills the command: it stays in the runtime's process group, which is
what the runner kills.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from .errors import OpError, json_type
from .ops import check_params
from .registry import operator

STDERR_TAIL = 2048
KILL_GRACE_S = 1.0


def _tail(data: bytes | None, limit: int = STDERR_TAIL) -> str:
    return (data or b"")[-limit:].decode("utf-8", "replace")


def _params(params: dict[str, Any]) -> tuple[list[str], str, float | None]:
    check_params("__exec__", params, ("argv", "format", "timeout_s"))
    argv = params.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise OpError(
            "BAD_PARAMS",
            f"__exec__: param 'argv' must be a non-empty array of strings, got {argv!r}",
            {"param": "argv"},
        )
    fmt = params.get("format", "json")
    if fmt not in ("json", "text"):
        raise OpError(
            "BAD_PARAMS",
            f"__exec__: param 'format' must be 'json' or 'text', got {fmt!r}",
            {"param": "format"},
        )
    timeout = params.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise OpError(
            "BAD_PARAMS",
            f"__exec__: param 'timeout_s' must be a number > 0, got {timeout!r}",
            {"param": "timeout_s"},
        )
    return argv, fmt, None if timeout is None else float(timeout)


@operator("__exec__")
def exec_command(data: Any, params: dict[str, Any]) -> Any:
    argv, fmt, timeout = _params(params)
    if fmt == "json":
        stdin = json.dumps(data, separators=(",", ":")).encode()
    elif isinstance(data, str):
        stdin = data.encode()
    else:
        raise OpError(
            "BAD_INPUT",
            f"__exec__ with format 'text' needs a string as input, got {json_type(data)}",
            {"got": json_type(data)},
        )
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise OpError(
            "EXEC_FAILED",
            f"cannot run {argv[0]!r}: {exc.strerror or exc}",
            {"argv": argv, "exit_code": None},
        ) from None
    with proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                # A grandchild may still hold the pipes open; do not wait for it forever.
                out, err = proc.communicate(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
            raise OpError(
                "EXEC_TIMEOUT",
                f"{argv[0]!r} ran longer than {timeout:g}s and was killed",
                {"argv": argv, "timeout_s": timeout, "stderr": _tail(err)},
            ) from None
    if proc.returncode != 0:
        status = proc.returncode
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        stderr = _tail(err)
        last = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        raise OpError(
            "EXEC_FAILED",
            f"{argv[0]!r} {how}" + (f": {last[0]}" if last else ""),
            {"argv": argv, "exit_code": status, "stderr": stderr},
        )
    if fmt == "text":
        return out.decode("utf-8", "replace")
    try:
        return json.loads(out)
    except ValueError as exc:
        raise OpError(
            "BAD_OUTPUT",
            f"{argv[0]!r} did not print one JSON value on stdout ({exc}); use format 'text' "
            "for raw output",
            {"argv": argv, "stdout": _tail(out), "stderr": _tail(err)},
        ) from None
