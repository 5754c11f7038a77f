"""Running ploinkyd as a systemd service: ``ploinkyd init --system`` and ``ploinkyd reload``.

``init --system`` does what the README's "Run as a service" section does by hand: create the
``ploinkyd`` system user and group (in the ``docker`` group when there is one), write
``ploinkyd.service`` and ``ploinkyd.socket`` into ``/etc/systemd/system`` with ``ExecStart=``
pointing at this installation's ``ploinkyd`` script, install the documented default config as
``/etc/ploinky/config.toml`` unless one exists, and ``systemctl daemon-reload``. Every step is
idempotent, and ``root`` (``--root DIR``) lets image builds and tests install into another tree.

``reload`` is the unit's ``ExecReload=``: systemd 252 has no ``Type=notify-reload``, and
``kill -HUP`` returns before the daemon has re-read anything, so this sends SIGHUP and waits
for the daemon's own ``daemon.reloaded`` event, failing when the new config was refused.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ploinkyd.cli import output
from ploinkyd.cli.common import client
from ploinkyd.client import Client
from ploinkyd.errors import ConfigError, DaemonUnavailable, ForbiddenError, PloinkyError, UserError

SERVICE_USER = "ploinkyd"
STATE_DIR = "/var/lib/ploinkyd"
# The control socket of ploinkyd.socket: outside RuntimeDirectory=, which systemd deletes on
# every stop of the service.
SOCKET_PATH = "/run/ploinkyd.sock"
UNITS = ("ploinkyd.socket", "ploinkyd.service")
# The console script path written in the shipped units; replaced by this installation's.
UNIT_EXEC = "/opt/ploinkyd/bin/ploinkyd"
UNIT_DIR = Path("etc/systemd/system")
CONFIG_FILE = Path("etc/ploinky/config.toml")
# The shipped config documents the socket as a comment; a fresh install points clients and
# the daemon at the socket unit's path instead.
DEFAULT_SOCKET_LINE = '# socket = "/run/ploinkyd/control.sock"'
EXIT_RELOAD_TIMEOUT = 75

Runner = Callable[[list[str]], None]


@dataclass
class InstallReport:
    """What ``install_system`` did; each entry names a path or an account and its fate."""

    root: Path
    exec_path: Path
    steps: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def add(self, what: str, target: str, outcome: str) -> None:
        self.steps.append({"step": what, "target": target, "outcome": outcome})

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "exec": str(self.exec_path),
            "steps": self.steps,
            "warnings": self.warnings,
            "next": self.next_steps,
        }


def default_exec_path() -> Path:
    """This installation's ``ploinkyd`` script: beside the running interpreter (a venv's
    ``bin/``), else the first one on ``PATH``."""
    beside = Path(sys.executable).parent / "ploinkyd"
    if beside.is_file():
        return beside
    found = shutil.which("ploinkyd")
    if found is None:
        raise UserError(
            "cannot find the installed 'ploinkyd' script; pass --exec /path/to/bin/ploinkyd"
        )
    return Path(found).absolute()


def default_source_dir() -> Path:
    """Where ``systemd/`` and ``config/`` are: the checkout holding this package, else the
    working directory (``pip install .`` copies the package but not the unit files)."""
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "systemd" / "ploinkyd.service").is_file():
            return candidate
    raise UserError(
        "cannot find systemd/ploinkyd.service; run from a ploinkyd checkout or pass --source DIR"
    )


def render_unit(text: str, exec_path: Path) -> str:
    """A shipped unit with ``ExecStart=``/``ExecReload=`` pointing at ``exec_path``."""
    if any(c.isspace() for c in str(exec_path)):
        raise UserError(f"the ploinkyd script path must not contain spaces: {exec_path}")
    return text.replace(UNIT_EXEC, str(exec_path))


def render_config(text: str) -> str:
    """The shipped default config, with the control socket at the socket unit's path."""
    return text.replace(DEFAULT_SOCKET_LINE, f'socket = "{SOCKET_PATH}"', 1)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(
            f"{' '.join(cmd)} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}"
        )


def _names(path: Path) -> dict[str, list[str]]:
    """``/etc/passwd``- or ``/etc/group``-style file: name → fields."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    return {ln.split(":")[0]: ln.split(":") for ln in lines if ln and not ln.startswith("#")}


def _write_if_changed(path: Path, text: str, mode: int) -> str:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return "unchanged"
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    os.replace(tmp, path)
    return "updated" if existed else "created"


def install_system(
    *,
    root: Path = Path("/"),
    exec_path: Path | None = None,
    source: Path | None = None,
    now: bool = False,
    run: Runner = _run,
) -> InstallReport:
    """Install ploinkyd as a system service under ``root``; safe to run again."""
    if os.geteuid() != 0:
        raise ForbiddenError(
            f"'ploinkyd init --system' must run as root (uid 0), not uid {os.geteuid()}: it "
            "creates the ploinkyd user and writes /etc/systemd/system and /etc/ploinky. "
            "Run it with sudo, or follow README 'Run as a service' by hand",
            code="NOT_ROOT",
        )
    root = root.absolute()
    exec_path = exec_path or default_exec_path()
    if not exec_path.is_absolute():
        raise UserError(f"--exec must be an absolute path: {exec_path}")
    source = source or default_source_dir()
    report = InstallReport(root, exec_path)
    live = root == Path("/")
    prefix = [] if live else ["--prefix", str(root)]

    _ensure_account(root, prefix, run, report)

    for unit in UNITS:
        shipped = (source / "systemd" / unit).read_text(encoding="utf-8")
        target = root / UNIT_DIR / unit
        report.add(
            "unit", str(target), _write_if_changed(target, render_unit(shipped, exec_path), 0o644)
        )

    config = root / CONFIG_FILE
    if config.exists():
        report.add("config", str(config), "kept (never overwritten)")
    else:
        shipped = (source / "config" / "ploinkyd.toml").read_text(encoding="utf-8")
        report.add("config", str(config), _write_if_changed(config, render_config(shipped), 0o644))

    installed = root / exec_path.relative_to("/")
    if not installed.is_file():
        report.warnings.append(f"{installed} does not exist yet: install ploinkyd there first")
    elif live:
        report.warnings += _reachability(exec_path)

    enable = ["systemctl", "enable", "--now", *UNITS]
    if live and Path("/run/systemd/system").is_dir():
        run(["systemctl", "daemon-reload"])
        report.add("systemd", "daemon-reload", "done")
        if now:
            run(enable)
            report.add("systemd", " ".join(enable[1:]), "done")
        else:
            report.next_steps.append(" ".join(enable))
    elif now:
        # No running systemd (an image build): enabling only creates the symlinks.
        run(["systemctl", f"--root={root}", "enable", *UNITS])
        report.add("systemd", "enable (offline)", "done")
    else:
        report.next_steps.append(f"systemctl --root={root} enable {' '.join(UNITS)}")
    return report


def _ensure_account(root: Path, prefix: list[str], run: Runner, report: InstallReport) -> None:
    groups = _names(root / "etc" / "group")
    if SERVICE_USER in groups:
        report.add("group", SERVICE_USER, "exists")
    else:
        run(["groupadd", *prefix, "--system", SERVICE_USER])
        report.add("group", SERVICE_USER, "created")
    users = _names(root / "etc" / "passwd")
    if SERVICE_USER in users:
        report.add("user", SERVICE_USER, "exists")
    else:
        run(
            [
                "useradd",
                *prefix,
                "--system",
                "--gid",
                SERVICE_USER,
                "--home-dir",
                STATE_DIR,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "ploinkyd job daemon",
                SERVICE_USER,
            ]
        )
        report.add("user", SERVICE_USER, "created")
    docker = _names(root / "etc" / "group").get("docker")
    if docker is None:
        report.warnings.append(
            "no docker group: the service (SupplementaryGroups=docker) will not start without "
            "it; install Docker and run this again, or use a drop-in with an empty "
            'SupplementaryGroups= and [tiles] runner = "process"'
        )
    elif SERVICE_USER in docker[3].split(","):
        report.add("group member", f"{SERVICE_USER} in docker", "exists")
    else:
        run(["usermod", *prefix, "--append", "--groups", "docker", SERVICE_USER])
        report.add("group member", f"{SERVICE_USER} in docker", "added")


def _reachability(exec_path: Path) -> list[str]:
    """The service runs as an unprivileged user: every directory above the script must let
    others through (a venv under /root does not)."""
    out = []
    for parent in exec_path.parents:
        if parent.stat().st_mode & 0o001 == 0:
            out.append(
                f"{parent} is not searchable by other users, so the {SERVICE_USER} user cannot "
                f"run {exec_path}; install into /opt/ploinkyd (README 'Run as a service')"
            )
    return out


# ---- reload -----------------------------------------------------------------------------

RELOAD_TYPES = "daemon.reloading,daemon.reloaded"


def reload_daemon(
    client: Client, *, pid: int | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Send SIGHUP to the daemon and wait for the outcome of that reload.

    Returns the ``daemon.reloaded`` event's data (``ok`` true). Raises ``ConfigError`` when
    the daemon refused the new config (it keeps running the old one), ``DaemonUnavailable``
    when it cannot be reached or signalled, and ``ReloadTimeout`` after ``timeout`` seconds.
    """
    if pid is None:
        pid = int(client.get("/v1/status")["pid"])
    # Events after this id are replayed to the stream below, so nothing the daemon publishes
    # between the signal and the stream's subscription is lost.
    since = int(client.get("/v1/events/recent", type=RELOAD_TYPES, per_page=1)["last_id"])
    outcome: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()

    def follow() -> None:
        try:
            outcome.put(
                _await_reloaded(client.stream("/v1/events", {"type": RELOAD_TYPES, "since": since}))
            )
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            outcome.put(exc)

    # A daemon thread: on timeout the process exits without waiting for the stream to end.
    threading.Thread(target=follow, name="reload-events", daemon=True).start()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise DaemonUnavailable(f"no daemon process with pid {pid}") from None
    except PermissionError:
        raise ForbiddenError(
            f"not allowed to signal pid {pid}: run as root or as the daemon's user"
        ) from None
    try:
        result = outcome.get(timeout=timeout)
    except queue.Empty:
        raise ReloadTimeout(
            f"the daemon (pid {pid}) did not finish reloading within {timeout:g}s"
        ) from None
    if isinstance(result, BaseException):
        raise result
    if not result.get("ok"):
        reason = result.get("message") or result.get("error") or "unknown error"
        raise ConfigError(
            f"reload failed, the daemon keeps its running configuration: {reason}",
            code="RELOAD_FAILED",
            details={"error": result.get("error")},
        )
    return result


def _await_reloaded(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The data of the first ``daemon.reloaded`` that ends a reload begun after ``since``.

    A reload already running when the signal arrived ends without a ``daemon.reloading`` in
    this stream; the daemon then runs one more for our signal, whose end is the answer.
    """
    began = False
    for event in events:
        kind = event.get("type")
        if kind == "stream.gap":
            began = True  # the ring lost events: take the next end as ours
        elif kind == "stream.lagged":
            break
        elif kind == "daemon.reloading":
            began = True
        elif kind == "daemon.reloaded" and began:
            data: dict[str, Any] = event.get("data") or {}
            return data
    raise DaemonUnavailable("the daemon's event stream ended before the reload finished")


class ReloadTimeout(PloinkyError):
    """The daemon did not report the end of a reload in time (it may still be reloading)."""

    code = "RELOAD_TIMEOUT"
    exit_code = EXIT_RELOAD_TIMEOUT


def print_report(report: InstallReport) -> None:
    """The human form of an ``InstallReport``."""
    for step in report.steps:
        print(f"{step['step']:<13} {step['target']}: {step['outcome']}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.next_steps:
        print("next:")
        for line in report.next_steps:
            print(f"  {line}")


# ---- CLI --------------------------------------------------------------------------------


def add_init_options(parser: argparse.ArgumentParser) -> None:
    """The ``--system`` options of ``ploinkyd init``."""
    g = parser.add_argument_group("system service (--system, as root)")
    g.add_argument(
        "--system",
        action="store_true",
        help="install as a systemd service: user, units, /etc/ploinky/config.toml",
    )
    g.add_argument(
        "--root", type=Path, default=Path("/"), help="install into this file system tree"
    )
    g.add_argument(
        "--exec",
        dest="exec_path",
        type=Path,
        help="the ploinkyd script the units run (default: this installation's)",
    )
    g.add_argument(
        "--source", type=Path, help="checkout holding systemd/ and config/ (default: found)"
    )
    g.add_argument("--now", action="store_true", help="also enable and start the units")


def cmd_init_system(args: argparse.Namespace) -> int:
    report = install_system(
        root=args.root, exec_path=args.exec_path, source=args.source, now=args.now
    )
    if args.json:
        output.emit_json(report.to_dict())
    else:
        print_report(report)
    return 0


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """``ploinkyd reload``."""
    help_ = "reload the daemon's config (SIGHUP) and wait until it is applied"
    p = sub.add_parser(
        "reload",
        help=help_,
        description=help_ + "; exit 0 once applied, 78 when the new config was refused",
        parents=[common],
    )
    p.add_argument("--pid", type=int, help="the daemon's pid (default: from /v1/status)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p.set_defaults(func=cmd_reload)


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        api = client(args)
    except ConfigError:
        # A broken edit is what reloads must survive: with the socket named (the unit sets
        # PLOINKY_API__SOCKET), let the daemon refuse it and say why.
        named = getattr(args, "socket", None) or os.environ.get("PLOINKY_API__SOCKET")
        if not named:
            raise
        api = Client(Path(named))
    result = reload_daemon(api, pid=args.pid, timeout=args.timeout)
    if args.json:
        output.emit_json(result)
    else:
        print("reloaded")
    return 0
