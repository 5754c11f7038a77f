"""The unit files, ``ploinkyd init --system`` and ``ploinkyd reload`` (tier 0: no systemd PID 1).

The units are checked by systemd's own tools (``systemd-analyze verify`` and ``security``),
installed into a scratch file system tree by the real command, and the ``ExecReload=`` command
is run against a real daemon. ``MemoryDenyWriteExecute=`` is checked the way the kernel
enforces it: a real daemon runs a backup under ``PR_SET_MDWE``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ploinkyd.backup import ops
from ploinkyd.config import DaemonConfig
from ploinkyd.service_install import SOCKET_PATH, UNIT_EXEC, default_exec_path, render_unit
from tests.daemon_harness import REPO, DaemonProc

UNITS = REPO / "systemd"
MAX_EXPOSURE = 4.0
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


@pytest.fixture(scope="module")
def analyze() -> str:
    """``systemd-analyze``, installed by scripts/systemd-tools.sh when missing."""
    if shutil.which("systemd-analyze") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "systemd-tools.sh")], check=True)
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: run scripts/systemd-tools.sh as root"
    return found


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The shipped units with ExecStart= pointing at this venv's script, as init writes them."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in ("ploinkyd.service", "ploinkyd.socket"):
        text = render_unit((UNITS / unit).read_text(), default_exec_path())
        (out / unit).write_text(text)
    return out


def directives(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every setting line; comments and section headers left out."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not a setting: {line!r}"
            out.append((key.strip(), value.strip()))
    return out


def setting(path: Path, key: str) -> list[str]:
    return [v for k, v in directives(path) if k == key]


# ---- the unit files ---------------------------------------------------------------------


def test_verify_passes_with_empty_stderr(analyze: str, rendered: Path) -> None:
    # verify exits 0 while dropping lines it cannot parse: only an empty stderr proves both
    # files are read as written.
    done = subprocess.run(
        [analyze, "verify", "ploinkyd.socket", "ploinkyd.service"],
        cwd=rendered,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_security_exposure_within_budget(analyze: str, rendered: Path) -> None:
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", "ploinkyd.service"],
        cwd=rendered,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    m = re.search(r"Overall exposure level for ploinkyd\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert m, done.stdout
    assert float(m.group(1)) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("unit", ["ploinkyd.service", "ploinkyd.socket"])
def test_no_inline_comments(unit: str) -> None:
    # systemd keeps "# ..." after a value as part of the value.
    for key, value in directives(UNITS / unit):
        assert "#" not in value, f"{unit}: {key}={value}"


def test_service_contract() -> None:
    service = UNITS / "ploinkyd.service"
    got = dict(directives(service))
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "StateDirectory": "ploinkyd",
        "RuntimeDirectory": "ploinkyd",
        "ConfigurationDirectory": "ploinky",
        "User": "ploinkyd",
        "SupplementaryGroups": "docker",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "PrivateTmp": "no",
    }.items():
        assert got.get(key) == value, f"{key}={got.get(key)!r}"
    assert got["ExecStart"] == f"{UNIT_EXEC} run"
    assert got["ExecReload"].startswith(f"{UNIT_EXEC} reload --pid $MAINPID")
    assert "AF_UNIX" in got["RestrictAddressFamilies"].split()
    env = dict(v.split("=", 1) for v in setting(service, "Environment"))
    assert env["PLOINKY_STATE_DIR"] == "/var/lib/" + got["StateDirectory"]
    assert env["PLOINKY_RUNTIME_DIR"] == "/run/" + got["RuntimeDirectory"]
    # The stop bound leaves the daemon's drain room to finish before SIGKILL.
    assert float(got["TimeoutStopSec"].rstrip("s")) > DaemonConfig().drain_timeout_s
    assert float(got["WatchdogSec"].rstrip("s")) > 0

    # The socket lives outside RuntimeDirectory= (deleted on stop), at one path everyone uses.
    socket_unit = UNITS / "ploinkyd.socket"
    assert setting(socket_unit, "ListenStream") == [SOCKET_PATH]
    assert env["PLOINKY_API__SOCKET"] == SOCKET_PATH
    assert not SOCKET_PATH.startswith("/run/" + got["RuntimeDirectory"] + "/")
    assert dict(directives(socket_unit))["SocketMode"] == "0660"


# ---- ploinkyd init --system -------------------------------------------------------------


def fake_root(path: Path) -> Path:
    """A file system tree with the account files the shadow tools edit."""
    etc = path / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndocker:x:990:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndocker:!::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    return path


def run_init(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ploinkyd", "init", "--system", "--root", str(root), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOINKY_")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="creating accounts needs root")
def test_init_system_installs_and_is_idempotent(analyze: str, tmp_path: Path) -> None:
    root = fake_root(tmp_path / "root")
    exec_path = default_exec_path()
    first = run_init(root, "--exec", str(exec_path), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert {s["outcome"] for s in report["steps"]} <= {"created", "added"}

    passwd = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()
    }
    assert passwd["ploinkyd"][5:] == ["/var/lib/ploinkyd", "/usr/sbin/nologin"]
    assert int(passwd["ploinkyd"][2]) < 1000  # a system account
    groups = {
        ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().splitlines()
    }
    assert groups["ploinkyd"][2] == passwd["ploinkyd"][3]
    assert "ploinkyd" in groups["docker"][3].split(",")

    units = root / "etc/systemd/system"
    service = (units / "ploinkyd.service").read_text()
    assert f"ExecStart={exec_path} run\n" in service
    assert UNIT_EXEC not in service
    assert (units / "ploinkyd.socket").read_text() == (UNITS / "ploinkyd.socket").read_text()
    # What init writes is what systemd accepts.
    done = subprocess.run(
        [analyze, "verify", "ploinkyd.socket", "ploinkyd.service"],
        cwd=units,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (0, "")

    config = root / "etc/ploinky/config.toml"
    assert f'\nsocket = "{SOCKET_PATH}"\n' in config.read_text()
    from ploinkyd.config import validate_file

    validate_file(config)

    before = snapshot(root)
    again = run_init(root, "--exec", str(exec_path), "--json")
    assert again.returncode == 0, again.stderr
    outcomes = {s["outcome"] for s in json.loads(again.stdout)["steps"]}
    assert outcomes <= {"exists", "unchanged", "kept (never overwritten)"}, outcomes
    assert snapshot(root) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="creating accounts needs root")
def test_init_system_never_overwrites_a_config(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "root")
    mine = root / "etc/ploinky/config.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text("[daemon]\nlog_level = 'debug'\n")
    done = run_init(root, "--exec", str(default_exec_path()))
    assert done.returncode == 0, done.stderr
    assert f"{mine}: kept (never overwritten)" in done.stdout
    assert mine.read_text() == "[daemon]\nlog_level = 'debug'\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_init_system_refuses_without_root(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "root")
    before = snapshot(root)
    # This interpreter lives under /root, which uid 65534 cannot enter: fork, drop to
    # nobody, and run the command in the child.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            sys.stderr = os.fdopen(write_end, "w")  # pytest has replaced the real one
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            from ploinkyd.cli.main import main

            code = main(["init", "--system", "--root", str(root)])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        stderr = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 77, stderr
    assert "must run as root (uid 0), not uid 65534" in stderr
    assert snapshot(root) == before


# ---- ploinkyd reload (the unit's ExecReload=) -------------------------------------------


def queue_names(d: DaemonProc) -> set[str]:
    return {q["name"] for q in d.client().get("/v1/queues")["data"]}


def rewrite_config(d: DaemonProc, **changes: object) -> None:
    cfg = json.loads(d.config_file.read_text())
    cfg.update(changes)
    d.config_file.write_text(json.dumps(cfg))


def test_reload_waits_until_applied(daemon: DaemonProc) -> None:
    assert queue_names(daemon) == {"default"}
    rewrite_config(daemon, queues={"added": {"concurrency": 2}})
    done = daemon.cli("reload", "--json")
    assert done.returncode == 0, done.stderr + daemon.read_log()[-2000:]
    assert json.loads(done.stdout)["ok"] is True
    # No polling: the command returned only after the daemon said the reload was done.
    assert queue_names(daemon) == {"default", "added"}


def test_reload_of_a_broken_config_fails_with_the_reason(daemon: DaemonProc) -> None:
    rewrite_config(daemon, queues={"kept": {}})
    assert daemon.cli("reload").returncode == 0
    pid = daemon.client().get("/v1/status")["pid"]
    rewrite_config(daemon, queues={"kept": {}, "broken": {"concurrency": 0}})
    # The socket is named, as the unit's environment names it, so the daemon itself judges.
    done = daemon.cli("reload", "--socket", str(daemon.socket), "--pid", str(pid))
    assert done.returncode == 78, done.stderr
    assert "reload failed, the daemon keeps its running configuration" in done.stderr
    assert "queues.broken.concurrency" in done.stderr
    assert queue_names(daemon) == {"default", "kept"}
    assert daemon.client().get("/v1/ready")["ready"]


def test_reload_of_a_missing_daemon_is_unavailable(daemon: DaemonProc) -> None:
    daemon.stop()
    done = daemon.cli("reload")
    assert done.returncode == 69, done.stderr


# ---- MemoryDenyWriteExecute= ------------------------------------------------------------

MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def mdwe_supported() -> bool:
    probe = [sys.executable, "-c", MDWE_WRAPPER, sys.executable, "-c", "pass"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_daemon_works_under_memory_deny_write_execute(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    # The kernel's PR_SET_MDWE is what the unit's MemoryDenyWriteExecute=yes enforces (by
    # seccomp there): no mapping may become writable and executable.
    password = tmp_path / "password"
    password.write_text("pw\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(200_000))
    ops.init_repository(str(tmp_path / "repo"), "pw", log_n=10)
    repos = {"main": {"url": str(tmp_path / "repo"), "password_file": str(password)}}
    d = daemon_factory(
        start=False,
        config={
            "tiles": {"runner": "process"},
            "backup": {
                "repositories": repos,
                "jobs": [{"name": "data", "repository": "main", "paths": [str(data)]}],
            },
        },
    )
    cmd = [sys.executable, "-c", MDWE_WRAPPER, sys.executable, "-m", "ploinkyd", "run"]
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen(
            [*cmd, "--config", str(d.config_file)], env=d.env, cwd=d.root, stdout=log, stderr=log
        )
    d.wait_ready()

    d.drop("echo", {"kind": "echo", "input": {"x": 1}})
    d.drop("backup", {"kind": "backup", "input": {"job": "data"}})
    records = d.wait_records(2)
    assert {k: r["status"] for k, r in records.items()} == {
        "echo": "succeeded",
        "backup": "succeeded",
    }, records
    rc = d.stop()
    assert rc == 0, d.read_log()[-2000:]
