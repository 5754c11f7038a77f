"""A real systemd as PID 1 in a Docker container, with ploinkyd installed as a service.

The image is a ``debootstrap --variant=minbase`` Debian root filesystem with systemd, dbus and
the shared libraries the pyenv CPython and the project's venv load, built from the apt mirror
this machine already uses and imported with ``docker import``. It is tagged
``ploinky/systemd-test:<sha256(recipe)[:12]>`` like the tile images, so an unchanged recipe is
never rebuilt (``python -m tests.systemd_env`` builds it ahead of the tests).

ploinkyd is not installed into the image: the checkout (with its ``.venv``) and the pyenv
interpreter it links to are bind-mounted read-only at their host paths, so the container always
runs the code under test. The host's Docker socket is mounted too. ``SystemdContainer`` boots
the image with ``/sbin/init`` and runs commands in it with ``docker exec``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ploinkyd.tiles import images
from ploinkyd.tiles.docker_engine import ImageToolError, image_exists

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
# The prefix of the interpreter the venv links to (bin/python3.X, lib/python3.X).
PYENV = Path(os.path.realpath(VENV / "bin" / "python")).parents[1]
IMAGE_REPO = "ploinky/systemd-test"
# Part of the recipe hash: bump it whenever _customize below changes what it produces.
CUSTOMIZE_VERSION = "1"
SUITE = "bookworm"

# systemd and what a booted system needs, then the run-time libraries of the pyenv CPython
# and of the binary wheels in .venv (found with ldd on their .so files).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "procps",
    "passwd",
    # GitPython (plugin repositories) refuses to import without a git executable.
    "git",
    "libssl3",
    "libffi8",
    "zlib1g",
    "libsqlite3-0",
    "libbz2-1.0",
    "liblzma5",
    "libreadline8",
    "libncursesw6",
    "libtinfo6",
    "libuuid1",
    "libgdbm6",
    "libexpat1",
    "libtirpc3",
    "libnsl2",
    "libcrypt1",
    "libstdc++6",
    "libgcc-s1",
    "libbsd0",
    "libcom-err2",
    "libkrb5-3",
    "libgssapi-krb5-2",
)

# Units that drive hardware, consoles or kernel settings a container does not own; left
# enabled they fail and the system boots "degraded", or wait for devices that never appear.
MASKED_UNITS = (
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "systemd-sysctl.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "systemd-random-seed.service",
    "systemd-timesyncd.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
)

CHANGES = (
    f"ENV {images.PATH_ENV}",
    "ENV container=docker",
    'CMD ["/sbin/init"]',
)


def _say(msg: str) -> None:
    print(f"systemd_env: {msg}", file=sys.stderr, flush=True)


def recipe() -> images.Recipe:
    return images.Recipe(
        name=IMAGE_REPO,
        kind="debootstrap",
        description="Debian with systemd as PID 1, for the ploinkyd service tests",
        suite=SUITE,
        variant="minbase",
        packages=PACKAGES,
        changes=CHANGES,
    )


def image_tag() -> str:
    body = {
        "base": json.loads(recipe().text()),
        "masked": MASKED_UNITS,
        "customize_version": CUSTOMIZE_VERSION,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return f"{IMAGE_REPO}:{digest}"


@dataclass
class ImageResult:
    tag: str
    built: bool
    seconds: float
    size_bytes: int


def ensure_image(api: docker.APIClient) -> ImageResult:
    """The image's content tag, built when the engine does not have it (a few minutes, once)."""
    started = time.monotonic()
    tag = image_tag()
    info = image_exists(api, tag)
    built = info is None
    if info is None:
        _build(api, tag)
        info = image_exists(api, tag)
        if info is None:
            raise ImageToolError(f"{tag}: the engine accepted the import but has no such image")
        _remove_older(api, tag)
    return ImageResult(tag, built, round(time.monotonic() - started, 1), int(info.get("Size") or 0))


def _remove_older(api: docker.APIClient, keep: str) -> None:
    """Earlier recipes' images: nothing asks for them again."""
    for image in api.images(name=IMAGE_REPO):
        if keep in (image.get("RepoTags") or []):
            continue
        try:
            api.remove_image(image["Id"])
        except docker.errors.APIError:
            pass  # a container still uses it


def _build(api: docker.APIClient, tag: str) -> None:
    repo, _, digest = tag.partition(":")
    with tempfile.TemporaryDirectory(prefix="ploinkyd-systemd-image-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        images._debootstrap_rootfs(recipe(), rootfs, Path(tmp), _say)
        _customize(rootfs)
        _say(f"importing {tag}")
        images._import(api, rootfs, repo, digest, CHANGES)


def _customize(root: Path) -> None:
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Generated at boot; an empty file tells systemd this is a first boot of a fresh machine.
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    (root / "etc/hostname").write_text("ploinky-systemd\n", encoding="utf-8")
    # /root/.pyenv is bind-mounted here and the venv's interpreter lives under it: the
    # service user must be able to pass through /root (not read it).
    os.chmod(root / "root", 0o711)
    # No /var/log/journal: journald keeps the journal in /run, which dies with the container.
    shutil.rmtree(root / "var/log/journal", ignore_errors=True)


RUN_FLAGS = (
    "--cap-add",
    "SYS_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp",
    "--stop-signal",
    "SIGRTMIN+3",
)


def cgroup_flags() -> tuple[str, ...]:
    """How the container sees the cgroup tree, by the host's cgroup version.

    v1/hybrid (a tmpfs at /sys/fs/cgroup): the host tree read-only; Docker's bind mount keeps
    the hierarchies mounted below it writable, and systemd works in its container's subtree.
    v2 (unified): systemd must create its own subtree in the container's cgroup, which needs
    the host's cgroup namespace and a writable mount.
    """
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return ("--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw")
    return ("-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro")


class SystemdContainer:
    """One booted container: ``boot()`` it, ``sh``/``run`` commands in it, ``remove()`` it.

    ``data_dir`` is bind-mounted read-write at its host path, so the host side of a test reads
    and writes the same files as the service inside.
    """

    def __init__(self, tag: str, data_dir: Path, *, cgroup: Sequence[str] | None = None) -> None:
        self.tag = tag
        self.data_dir = data_dir
        self.name = f"ploinkyd-systemd-{uuid.uuid4().hex[:10]}"
        self.cgroup_flags = tuple(cgroup) if cgroup is not None else cgroup_flags()
        self.booted = False

    def run_argv(self) -> list[str]:
        mounts = [
            "/var/run/docker.sock:/var/run/docker.sock",
            f"{PYENV}:{PYENV}:ro",
            f"{ROOT}:{ROOT}:ro",
            f"{self.data_dir}:{self.data_dir}",
        ]
        argv = ["docker", "run", "-d", "--name", self.name, "--hostname", "ploinky-systemd"]
        argv += [*RUN_FLAGS, *self.cgroup_flags]
        for m in mounts:
            argv += ["-v", m]
        return [*argv, self.tag, "/sbin/init"]

    def boot(self, timeout: float = 60.0) -> float:
        """Start the container and wait for ``is-system-running``; the seconds it took."""
        started = time.monotonic()
        _docker(self.run_argv(), "docker run")
        deadline = started + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = self.run(["systemctl", "is-system-running"], check=False)
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                self.booted = True
                return round(time.monotonic() - started, 2)
            if not self.alive():
                break
            time.sleep(0.1)
        raise AssertionError(
            f"systemd in {self.name} did not boot (last state {state!r}):\n{self.logs()}"
        )

    def alive(self) -> bool:
        proc = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout.strip() == "true"

    def logs(self) -> str:
        proc = subprocess.run(
            ["docker", "logs", "--tail", "60", self.name], capture_output=True, text=True
        )
        return proc.stdout + proc.stderr

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """``docker exec`` as root in the container."""
        cmd = ["docker", "exec", *(["-i"] if input is not None else []), self.name, *argv]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode} in {self.name}:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    def sh(self, script: str, *, check: bool = True, timeout: float = 120.0) -> str:
        return self.run(["sh", "-euc", script], check=check, timeout=timeout).stdout

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run(["sh", "-euc", f'cat > "$0" && chmod {mode} "$0"', path], input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, check=False)


SOCKET = "/run/ploinkyd.sock"
UNIT = "ploinkyd.service"
DROPIN_DIR = f"/etc/systemd/system/{UNIT}.d"
CLIENT_SNIPPET = (
    "import json, sys\n"
    "from ploinkyd.client import Client\n"
    "query = json.loads(sys.argv[3])\n"
    "print(json.dumps(Client(sys.argv[1], timeout=float(sys.argv[4])).get(sys.argv[2], **query)))\n"
)


def install_service(box: SystemdContainer, environment: dict[str, str]) -> dict[str, Any]:
    """Install the checkout as the ploinkyd service with ``ploinkyd init --system``.

    A ``docker`` group with the host socket's gid comes first, so that init puts the service
    user in it. ``environment`` goes into a drop-in (``10-test.conf``), with the data dir as a
    ``ReadWritePaths=`` (``ProtectSystem=strict`` leaves everything else read-only). Returns
    init's JSON report.
    """
    gid = os.stat("/var/run/docker.sock").st_gid
    box.run(["groupadd", "--non-unique", "--gid", str(gid), "docker"])
    report: dict[str, Any] = json.loads(
        box.run([str(VENV / "bin" / "ploinkyd"), "init", "--system", "--json"]).stdout
    )
    lines = ["[Service]", *(f"Environment={k}={v}" for k, v in environment.items())]
    lines.append(f"ReadWritePaths={box.data_dir}")
    write_dropin(box, "10-test.conf", "\n".join(lines) + "\n")
    return report


def write_dropin(box: SystemdContainer, name: str, text: str | None) -> None:
    """Write (``text``) or remove (None) a drop-in of ploinkyd.service, then daemon-reload."""
    path = f"{DROPIN_DIR}/{name}"
    if text is None:
        box.run(["rm", "-f", path])
    else:
        box.run(["mkdir", "-p", DROPIN_DIR])
        box.write(path, text)
    box.run(["systemctl", "daemon-reload"])


def account_ids(box: SystemdContainer, user: str) -> tuple[int, int]:
    uid, gid = box.run(["sh", "-c", f"id -u {user} && id -g {user}"]).stdout.split()
    return int(uid), int(gid)


def api_get(box: SystemdContainer, path: str, *, timeout: float = 10.0, **query: Any) -> Any:
    """``GET path`` on the control socket, from inside the container, as root."""
    argv = [str(VENV / "bin" / "python"), "-c", CLIENT_SNIPPET, SOCKET, path]
    out = box.run([*argv, json.dumps(query), str(timeout)], timeout=timeout + 30).stdout
    return json.loads(out)


def journal(box: SystemdContainer, *match: str) -> list[dict[str, Any]]:
    """``journalctl -o json`` entries of ploinkyd.service (plus ``match`` terms)."""
    out = box.run(["journalctl", "--no-pager", "-o", "json", "-u", UNIT, *match]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def journal_text(box: SystemdContainer, lines: int = 80) -> str:
    proc = box.run(
        ["journalctl", "--no-pager", "-o", "short-monotonic", "-u", UNIT, "-n", str(lines)],
        check=False,
    )
    return proc.stdout + proc.stderr


def _docker(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def main() -> None:
    from ploinkyd.tiles.docker_engine import connect

    result = ensure_image(connect())
    state = "built" if result.built else "up to date"
    print(f"{result.tag}: {state} in {result.seconds}s, {result.size_bytes / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
