"""Real git repositories holding ploinkyd plugins, and a real git server, for the plugin tests."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import textwrap
import zipfile
from pathlib import Path

from ploinkyd.testing.servers import free_port, wait_listening

GIT_ID = ["-c", "user.email=dev@example.invalid", "-c", "user.name=dev"]

KIND_MODULE = """\
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind


async def run(ctx, data):
    return {{"greeting": "{greeting} " + str(data.get("name")), "release": {release}}}


@hookimpl
def ploinkyd_task_kinds():
    return [TaskKind("{kind}", run, description="greets")]
"""


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"git {' '.join(args)} failed: {out.stderr}"
    return out.stdout.strip()


def manifest(name: str, module: str, **extra: str | list[str]) -> str:
    lines = [f'name = "{name}"', 'version = "1.0.0"', f'modules = ["{module}"]']
    for key, value in extra.items():
        rendered = (
            "[" + ", ".join(f'"{v}"' for v in value) + "]"
            if isinstance(value, list)
            else (f'"{value}"')
        )
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


class PluginRepo:
    """A working clone that commits and pushes to a bare repository, like a plugin author."""

    def __init__(self, root: Path, name: str) -> None:
        self.bare = root / "remote" / f"{name}.git"
        self.work = root / "work" / name
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True)
        git(self.bare.parent, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(self.work, "init", "-q", "-b", "main")
        git(self.work, "remote", "add", "origin", str(self.bare))

    def write(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def commit(self, message: str, files: dict[str, str] | None = None, tag: str = "") -> str:
        if files:
            self.write(files)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        if tag:
            git(self.work, "tag", tag)
        git(self.work, "push", "-q", "--tags", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


def greet_files(
    name: str = "greet", kind: str = "greet", greeting: str = "hello", release: int = 1
) -> dict[str, str]:
    module = f"ploinky_{name.replace('-', '_')}"
    return {
        "ploinky-plugin.toml": manifest(name, module, ploinkyd=">=0.1"),
        f"{module}/__init__.py": KIND_MODULE.format(greeting=greeting, release=release, kind=kind),
    }


class GitServer:
    """``git daemon`` serving a directory of bare repositories on loopback (git://)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, repo: str) -> str:
        return f"git://127.0.0.1:{self.port}/{repo}"

    def start(self) -> GitServer:
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                f"--base-path={self.base}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, proc=self.proc, what="git daemon")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def make_wheel(directory: Path, dist: str, version: str, module: str, source: str) -> Path:
    """A minimal, valid wheel (PEP 427) for pip to install from a local ``--find-links``."""
    directory.mkdir(parents=True, exist_ok=True)
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{module}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    path = directory / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path
