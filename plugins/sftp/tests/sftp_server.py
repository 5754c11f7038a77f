"""A real OpenSSH server for the sftp plugin's tests and benchmark.

``/usr/sbin/sshd -D -e`` with its own config, host key, client key and authorized_keys in a
temporary directory, on 127.0.0.1 and a free port, logging in as root (CI runs as root) with
the ``internal-sftp`` subsystem. Install it with ``bash plugins/sftp/ci/setup.sh``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ploinkyd.testing.servers import free_port

SSHD = "/usr/sbin/sshd"  # sshd refuses to start unless run by its absolute path


class SshdMissing(RuntimeError):
    pass


def write_key(path: Path) -> str:
    """Write a new ed25519 private key in OpenSSH format; return its public-key line."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


class SftpServer:
    """One sshd; ``start``/``stop`` may be called repeatedly and keep the port and keys."""

    def __init__(self, user: str = "root") -> None:
        if not os.access(SSHD, os.X_OK):
            raise SshdMissing(
                f"{SSHD} not found: install OpenSSH's server with `bash plugins/sftp/ci/setup.sh`"
            )
        self.user = user
        # Readable by every user, so sshd can read authorized_keys as a non-root login too.
        self.dir = Path(tempfile.mkdtemp(prefix="ploinky-sftp-"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.data.mkdir(mode=0o755)
        self.data.chmod(0o755)
        self.port = free_port()
        self.key_file = self.dir / "client_ed25519"
        self.host_key = self.dir / "host_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.authorized_keys.write_text(write_key(self.key_file) + "\n")
        self.authorized_keys.chmod(0o644)
        host_public = write_key(self.host_key)
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public}\n")
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "UseDNS no\n"
            "MaxStartups 64\n"
            "MaxSessions 64\n"
            "Subsystem sftp internal-sftp\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str | Path) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{path}"

    def options(self, **extra: str) -> dict[str, str]:
        """The backend options that make a connection work (strings, as ``-o`` gives them)."""
        return {
            "key_file": str(self.key_file),
            "known_hosts": str(self.known_hosts),
            "connect_timeout": "5",
            "io_timeout": "10",
            **extra,
        }

    def new_dir(self, prefix: str = "repo-") -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.data))
        path.chmod(0o755)
        return path

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privsep directory
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}:\n{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(8).startswith(b"SSH-"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on port {self.port}:\n{self.log_text()}")

    def sessions(self) -> list[int]:
        """Pids of the per-connection sshd processes (descendants of the listener)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found: list[int] = []
        todo = [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def drop_connections(self) -> None:
        """Kill every open connection's sshd process; the listener keeps accepting."""
        for pid in self.sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server and every connection it holds, like a crash of the host."""
        if self.proc is None:
            return
        pids = self.sessions()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None

    def pause(self) -> list[int]:
        """Freeze the listener and the connections (a hung host); returns what to resume."""
        pids = [self.proc.pid, *self.sessions()] if self.proc else []
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def resume(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
