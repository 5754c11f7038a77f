"""Real daemon processes for tests: start ``ploinkyd run`` on scratch dirs and talk to it.

The test task kinds (``sleep``, ``fail``, ``flaky``) reach the daemon the way any third-party
plugin does: through a real distribution's ``ploinkyd`` entry point on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ploinkyd.client import Client
from ploinkyd.errors import PloinkyError

REPO = Path(__file__).resolve().parent.parent


def make_testkinds_dist(root: Path) -> Path:
    """A real installed-distribution layout exposing tests.plugins_fixture.testkinds."""
    site = root / "site"
    info = site / "ploinkyd_testkinds-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ploinkyd-testkinds\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[ploinkyd]\ntestkinds = tests.plugins_fixture.testkinds\n"
    )
    return site


class UnixHTTP(http.client.HTTPConnection):
    """Raw HTTP over a unix socket, for tests about the wire (independent of ploinkyd.client)."""

    def __init__(self, path: str | Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


def drop_task(queue: Path, task_id: str, body: Any) -> Path:
    """The producer protocol: write under tmp/, then rename(2) into tasks/."""
    tmp = queue / "tmp" / f"{task_id}.json.tmp"
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    final = queue / "tasks" / f"{task_id}.json"
    os.rename(tmp, final)
    return final


def visible_names(directory: Path) -> set[str]:
    """Entries of ``directory`` that are not dot-prefixed (the daemon's own scratch names)."""
    with os.scandir(directory) as it:
        return {e.name for e in it if not e.name.startswith(".")}


@dataclass
class DaemonProc:
    root: Path
    state: Path
    runtime: Path
    node: str
    env: dict[str, str]
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / f"daemon-{self.node}.log"

    @property
    def socket(self) -> Path:
        return self.runtime / "control.sock"

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def queue(self, name: str = "default") -> Path:
        return self.state / "queues" / name

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> DaemonProc:
        args = [sys.executable, "-m", "ploinkyd", "run", "--config", str(self.config_file)]
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            args, env=self.env, cwd=self.root, stdout=logf, stderr=subprocess.STDOUT
        )
        logf.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.read_log()}")
            with contextlib.suppress(PloinkyError):
                if self.client(timeout=2).get("/v1/ready").get("ready"):
                    return
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.read_log()}")

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ploinkyd", *args, "--config", str(self.config_file)]
        return subprocess.run(
            cmd,
            env=self.env,
            cwd=self.root,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # ---- the producer side, exactly as a user's program would do it ----------------------

    def drop(self, task_id: str, body: Any, queue: str = "default") -> Path:
        return drop_task(self.queue(queue), task_id, body)

    def records(self, queue: str = "default") -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sub in ("results", "errors"):
            d = self.queue(queue) / sub
            if not d.exists():
                continue
            for p in d.iterdir():
                if p.name.endswith(".json"):
                    out[p.name[:-5]] = json.loads(p.read_bytes())
        return out

    def wait_records(
        self, count: int, queue: str = "default", timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(queue)
            if len(recs) >= count:
                return recs
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(recs)} of {count} records after {timeout}s; log:\n{self.read_log()[-3000:]}"
                )
            time.sleep(0.05)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def new_daemon(
    root: Path,
    *,
    node: str = "n1",
    config: dict[str, Any] | None = None,
    state: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> DaemonProc:
    """Prepare (not start) a daemon whose files all live under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    state = state or root / "state"
    runtime = root / f"run-{node}"
    cfg: dict[str, Any] = {
        "daemon": {
            "node_id": node,
            "state_dir": str(state),
            "runtime_dir": str(runtime),
            "rescan_interval_s": 1.0,
            "recovery_interval_s": 1.0,
            "drain_timeout_s": 10,
        },
    }
    for section, values in (config or {}).items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    config_file = root / f"config-{node}.json"
    config_file.write_text(json.dumps(cfg))
    site = make_testkinds_dist(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOINKY_", "NOTIFY_SOCKET"))}
    env.update(
        HOME=str(root / "home"),
        PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
        XDG_STATE_HOME=str(root / "xdg-state"),
        XDG_RUNTIME_DIR=str(root / "xdg-run"),
    )
    env.update(extra_env or {})
    return DaemonProc(root, state, runtime, node, env, config_file)
