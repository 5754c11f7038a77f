"""A second, independent Docker engine for tests: a remote engine that can be stopped at will.

``SecondEngine`` runs its own ``dockerd`` (and, through it, its own containerd) beside the main
engine of the machine, sharing nothing with it: its own API socket, ``--data-root``,
``--exec-root`` (containerd's socket and state live under it), pid file, containerd namespaces
and daemon.json, in a network namespace of its own. It touches no network of the host: no
bridge (with ``--bridge=none`` dockerd deletes the docker0 it sees), no iptables rules, no IP
forwarding or masquerading — tile containers run with ``network_mode=none`` anyway.

Tests point ``DOCKER_HOST`` at ``engine.url`` to make it "the remote engine", stop it with
SIGTERM (dockerd then stops every running container) and start it again on the same data
root. ``close()`` removes everything it made: containers, processes (dockerd, containerd,
shims), mounts under its directories, and the directories themselves.

Images come from the main engine (``docker save | docker --host URL load``), since the
second engine has no registry to pull from either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors

from tests.daemon_harness import UnixHTTP

DOCKERD = "dockerd"
# Unix socket paths are limited to 108 bytes, and containerd puts its socket under the exec
# root: keep that root short, in /run as the main engine's is.
EXEC_ROOT_PARENT = Path("/run")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def _main_engine_env() -> dict[str, str]:
    """The environment of a docker CLI that talks to the main engine."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}


class SecondEngine:
    """One extra dockerd on its own socket; ``start``/``stop`` any number of times."""

    def __init__(self, parent: Path | None = None) -> None:
        """Nothing runs yet; its files go to a new directory under ``parent`` (default
        ``$PLOINKY_TEST_ENGINE_DIR``, else /var/tmp)."""
        self.name = f"pke-{uuid.uuid4().hex[:8]}"
        parent = parent or Path(os.environ.get("PLOINKY_TEST_ENGINE_DIR", "/var/tmp"))
        parent.mkdir(parents=True, exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=parent))
        self.exec_root = EXEC_ROOT_PARENT / self.name
        self.data_root = self.home / "data"
        self.socket = self.home / "docker.sock"
        self.pidfile = self.home / "dockerd.pid"
        self.log = self.home / "dockerd.log"
        self.config_file = self.home / "daemon.json"
        # An empty daemon.json: /etc/docker/daemon.json (hosts, bridges) is the main engine's.
        self.config_file.write_text("{}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start_s = 0.0  # how long the last start took until the API answered
        self.load_s = 0.0  # how long copying images in took, in all

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def argv(self) -> list[str]:
        # In a network namespace of its own: with --bridge=none dockerd deletes any interface
        # named docker0 it can see, and the main engine's default bridge must survive. The
        # API is a unix socket, reachable from every network namespace; tiles use no network.
        # unshare execs dockerd in place, so the pid stays the one we started.
        return [
            "unshare",
            "--net",
            DOCKERD,
            f"--config-file={self.config_file}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host={self.url}",
            f"--containerd-namespace={self.name}",
            f"--containerd-plugins-namespace={self.name}-plugins",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ]

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> float:
        """Start dockerd and wait until its API answers; the seconds that took."""
        if self.running:
            raise RuntimeError(f"engine {self.name} is already running")
        started = time.monotonic()
        with open(self.log, "ab") as logf:
            # Its own session: a Ctrl-C in the terminal of the test run must not reach it
            # before the test has had a chance to stop it in order.
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = started + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd {self.name} exited {self.proc.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dockerd {self.name} did not answer within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.start_s = time.monotonic() - started
        return self.start_s

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> float:
        """SIGTERM dockerd (it stops every running container, then its containerd) and wait
        for it to exit; the seconds that took. SIGKILL when it does not exit in time."""
        if self.proc is None:
            return 0.0
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        return time.monotonic() - started

    def answers(self) -> bool:
        """True when the API socket answers ``GET /_ping`` with OK."""
        if not self.socket.exists():
            return False
        conn = UnixHTTP(self.socket, timeout=2.0)
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            return resp.status == 200 and resp.read().strip() == b"OK"
        except OSError:
            return False
        finally:
            conn.close()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # ---- talking to it -----------------------------------------------------------------

    @contextlib.contextmanager
    def api(self, timeout: float = 60.0) -> Iterator[docker.APIClient]:
        """A client of this engine, closed on exit (warnings are errors in the test run)."""
        client = docker.APIClient(base_url=self.url, version="auto", timeout=timeout)
        try:
            yield client
        finally:
            client.close()

    def containers(self, labels: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``labels`` ("key=value")."""
        with self.api() as api:
            found: list[dict[str, Any]] = api.containers(
                all=True, filters={"label": list(labels)} if labels else None
            )
        return found

    def remove_containers(self, labels: Sequence[str] = ()) -> list[str]:
        """Force-remove the containers carrying ``labels`` (all of them when empty)."""
        removed = []
        with self.api() as api:
            for c in api.containers(all=True, filters={"label": list(labels)} if labels else None):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(c["Id"], force=True)
                removed.append(c["Id"])
        return removed

    def load_images(self, tags: Sequence[str], timeout: float = 300.0) -> float:
        """Copy ``tags`` from the main engine (``docker save | docker --host URL load``);
        the seconds that took. A tag already here is not copied again."""
        started = time.monotonic()
        with self.api() as api:
            missing = [t for t in tags if not _has_image(api, t)]
        for tag in missing:
            env = _main_engine_env()
            save = subprocess.Popen(
                ["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            assert save.stdout is not None
            try:
                load = subprocess.run(
                    ["docker", "--host", self.url, "load", "--quiet"],
                    stdin=save.stdout,
                    capture_output=True,
                    env=env,
                    timeout=timeout,
                    check=False,
                )
            finally:
                save.stdout.close()
                save_err = _drain(save.stderr)
                save.wait(timeout)
            if save.returncode != 0 or load.returncode != 0:
                raise RuntimeError(
                    f"copying image {tag} into engine {self.name} failed: "
                    f"save exit {save.returncode} ({save_err.strip()}), "
                    f"load exit {load.returncode} ({load.stderr.decode(errors='replace')})"
                )
        elapsed = time.monotonic() - started
        self.load_s += elapsed
        return elapsed

    # ---- cleanup -----------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove everything this engine made; what had to be forced, for the test to report
        (empty after a clean run)."""
        forced: list[str] = []
        if self.running and self.answers():
            with contextlib.suppress(Exception):
                self.remove_containers()
        self.stop()
        for pid in self._leftover_pids():
            forced.append(f"killed pid {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(self._leftover_pids, 10.0)
        for mount in self._mounts_below():
            forced.append(f"unmounted {mount}")
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        for path in (self.exec_root, self.home):
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                forced.append(f"could not remove {path}")
        return forced

    def _roots(self) -> tuple[str, str]:
        return str(self.exec_root), str(self.home)

    def _leftover_pids(self) -> list[int]:
        """Processes still tied to this engine: its dockerd, containerd and shims (whose
        command lines name the exec root or the data root)."""
        roots = self._roots()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            if any(root + "/" in cmdline or cmdline.endswith(root) for root in roots):
                found.append(int(entry.name))
        return found

    def _mounts_below(self) -> list[str]:
        """Mount points under the engine's directories, deepest first."""
        roots = self._roots()
        points = []
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if any(point == root or point.startswith(root + "/") for root in roots):
                    points.append(point)
        return sorted(set(points), key=len, reverse=True)


def _has_image(api: docker.APIClient, tag: str) -> bool:
    try:
        api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _drain(stream: IO[bytes] | None) -> str:
    if stream is None:
        return ""
    try:
        return stream.read().decode(errors="replace")
    finally:
        stream.close()


def _wait_gone(pids: Callable[[], list[int]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)
