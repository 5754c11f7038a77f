"""The daemon's side of systemd, against real sockets: sd_notify messages on a NOTIFY_SOCKET,
the watchdog, socket activation (LISTEN_FDS) and the journal's native protocol.

A real daemon process talks to sockets this test binds where systemd would (the notify
socket, the control socket, journald's socket); what arrives is parsed as systemd parses it.
"""

from __future__ import annotations

import array
import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ploinkyd.logs import JournalHandler, bind_fields, field_name
from ploinkyd.systemd import Notifier, listen_fds
from tests.daemon_harness import DaemonProc, wait_until

# Runs the daemon the way systemd does: the passed sockets moved to fds 3, 4, ... and the
# variables that must name the daemon's own pid (LISTEN_PID, WATCHDOG_PID) set right before
# exec, which keeps the pid.
WRAPPER = r"""
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
for name in (n for n in sys.argv[2].split(",") if n):
    os.environ[name] = str(os.getpid())
if fds:
    os.environ["LISTEN_FDS"] = str(len(fds))
os.execv(sys.argv[3], sys.argv[3:])
"""


class Datagrams:
    """A bound AF_UNIX datagram socket read by a thread: what systemd or journald would see."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.items: list[bytes] = []
        self.via_fd = 0  # datagrams whose content came in a passed memfd
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd_space = socket.CMSG_SPACE(array.array("i", [0]).itemsize)
        buf = bytearray(16 << 20)
        while not self._stop.is_set():
            try:
                size, anc, flags, _ = self.sock.recvmsg_into([buf], fd_space)
            except TimeoutError:
                continue
            except OSError:
                return
            assert not flags & socket.MSG_TRUNC
            data = bytes(buf[:size])
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    # journald's large-message path: the datagram's content is in a memfd
                    fd = array.array("i", payload[: array.array("i").itemsize])[0]
                    with os.fdopen(fd, "rb") as f:
                        f.seek(0)  # the sender's writes moved the shared offset
                        data = f.read()
                    self.via_fd += 1
            with self._lock:
                self.items.append(data)

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.items)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def notify_messages(raw: list[bytes]) -> list[dict[str, str]]:
    """sd_notify datagrams as systemd reads them: newline-separated ``KEY=value``."""
    out = []
    for data in raw:
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        out.append(fields)
    return out


def journal_entries(raw: list[bytes]) -> list[dict[str, str]]:
    """Datagrams in journald's native protocol: ``KEY=value\\n``, or ``KEY\\n`` + a 64-bit
    little-endian length + the value + ``\\n`` for values that hold newlines."""
    entries = []
    for data in raw:
        fields: dict[str, str] = {}
        i = 0
        while i < len(data):
            nl = data.index(b"\n", i)
            line = data[i:nl]
            if b"=" in line:
                key, value = line.split(b"=", 1)
                i = nl + 1
            else:
                key = line
                (size,) = struct.unpack_from("<Q", data, nl + 1)
                start = nl + 9
                value = data[start : start + size]
                assert data[start + size : start + size + 1] == b"\n"
                i = start + size + 1
            fields[key.decode()] = value.decode()
        entries.append(fields)
    return entries


def index_of(
    msgs: list[dict[str, str]], pred: Callable[[dict[str, str]], bool], start: int = 0
) -> int:
    for i in range(start, len(msgs)):
        if pred(msgs[i]):
            return i
    return -1


def start_as_systemd(
    d: DaemonProc, *, fds: tuple[int, ...] = (), pid_vars: tuple[str, ...] = ()
) -> None:
    """Start ``d`` through WRAPPER, passing ``fds`` as sd_listen_fds(3) sockets."""
    cmd = [sys.executable, "-m", "ploinkyd", "run", "--config", str(d.config_file)]
    args = [sys.executable, "-c", WRAPPER, ",".join(map(str, fds)), ",".join(pid_vars), *cmd]
    logf = open(d.log, "ab")  # noqa: SIM115 - owned by the child
    d.proc = subprocess.Popen(
        args, env=d.env, cwd=d.root, stdout=logf, stderr=subprocess.STDOUT, pass_fds=fds
    )
    logf.close()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for socket files (sun_path holds 108 bytes; tmp_path can be longer)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pk-sd-"))
    yield path
    for p in path.iterdir():
        p.unlink()
    path.rmdir()


@pytest.fixture
def notify(sockdir: Path) -> Iterator[Datagrams]:
    dg = Datagrams(sockdir / "notify")
    yield dg
    dg.close()


# ---- sd_notify ------------------------------------------------------------------------------


def test_ready_status_reload_and_stopping(
    daemon_factory: Callable[..., DaemonProc], notify: Datagrams
) -> None:
    d = daemon_factory(start=False, extra_env={"NOTIFY_SOCKET": str(notify.path)})
    d.start(wait_ready=False)

    wait_until("READY=1", lambda: any("READY" in m for m in notify_messages(notify.snapshot())))
    # READY=1 comes after the API listens and the queues are watched: both hold at once.
    assert d.client(timeout=5).get("/v1/status")["ready"] is True
    assert (d.queue() / "tasks").is_dir()
    msgs = notify_messages(notify.snapshot())
    ready = msgs[index_of(msgs, lambda m: m.get("READY") == "1")]
    assert ": 1 queue, 0 pending, 0 running, 0 done" in ready["STATUS"]

    # STATUS= follows the live counts.
    d.drop("t1", {"kind": "sleep", "input": {"seconds": 0}})
    d.wait_records(1)
    wait_until(
        "a STATUS= line counting the finished task",
        lambda: any(" 1 done" in m.get("STATUS", "") for m in notify_messages(notify.snapshot())),
    )

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    seen = len(notify.snapshot())
    d.signal(signal.SIGHUP)

    def reloaded() -> bool:
        m = notify_messages(notify.snapshot()[seen:])
        r = index_of(m, lambda x: x.get("RELOADING") == "1")
        return r >= 0 and index_of(m, lambda x: x.get("READY") == "1", r + 1) > r

    wait_until("RELOADING=1 then READY=1", reloaded)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msgs = notify_messages(notify.snapshot()[seen:])
    reloading = msgs[index_of(msgs, lambda x: x.get("RELOADING") == "1")]
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after

    seen = len(notify.snapshot())
    assert d.stop() == 0
    msgs = notify_messages(notify.snapshot()[seen:])
    stopping = msgs[index_of(msgs, lambda x: x.get("STOPPING") == "1")]
    assert stopping["STATUS"].startswith("draining")
    # drain_timeout_s is 10 in the harness: systemd is asked for the drain plus 30 s.
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) == 40_000_000
    assert all("READY" not in m for m in msgs)


def test_watchdog_pings_come_from_the_event_loop(
    daemon_factory: Callable[..., DaemonProc], notify: Datagrams
) -> None:
    d = daemon_factory(
        start=False, extra_env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}
    )
    start_as_systemd(d, pid_vars=("WATCHDOG_PID",))
    d.wait_ready()

    def pings(msgs: list[dict[str, str]]) -> int:
        return sum(m.get("WATCHDOG") == "1" for m in msgs)

    wait_until("3 watchdog pings", lambda: pings(notify_messages(notify.snapshot())) >= 3)

    # Hang the loop for many watchdog intervals: no ping may leave while it is blocked.
    assert d.client().get("/v1/x/testkinds/block", s=2, mark=1) == {"blocked": 2.0}

    def resumed() -> bool:
        msgs = notify_messages(notify.snapshot())
        end = index_of(msgs, lambda m: m.get("X_PLOINKY_BLOCK") == "end")
        return end >= 0 and pings(msgs[end:]) > 0

    wait_until("pings to resume after the block", resumed)
    msgs = notify_messages(notify.snapshot())
    begin = index_of(msgs, lambda m: m.get("X_PLOINKY_BLOCK") == "begin")
    end = index_of(msgs, lambda m: m.get("X_PLOINKY_BLOCK") == "end")
    assert 0 <= begin < end
    assert pings(msgs[begin:end]) == 0
    assert pings(msgs[:begin]) >= 3
    assert d.stop() == 0


def test_notifier_against_a_real_socket(sockdir: Path) -> None:
    dg = Datagrams(sockdir / "n")
    try:
        n = Notifier({"NOTIFY_SOCKET": str(dg.path)})
        n.ready("ready: x")
        n.status("ready: y")
        n.reloading()
        n.stopping("draining 0 tasks", extend_s=1.5)
        n.watchdog()
        n.close()
        wait_until("5 messages", lambda: len(dg.snapshot()) >= 5)
        msgs = notify_messages(dg.snapshot())
        assert [sorted(m) for m in msgs] == [
            ["READY", "STATUS"],
            ["STATUS"],
            ["MONOTONIC_USEC", "RELOADING", "STATUS"],
            ["EXTEND_TIMEOUT_USEC", "STATUS", "STOPPING"],
            ["WATCHDOG"],
        ]
        assert msgs[3]["EXTEND_TIMEOUT_USEC"] == "1500000"
    finally:
        dg.close()

    # No NOTIFY_SOCKET: every call is a no-op.
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("x")


def test_notifier_abstract_socket() -> None:
    name = f"ploinkyd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("up")
        n.close()
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()


def test_watchdog_applies_only_to_the_named_pid() -> None:
    me = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "600000", "WATCHDOG_PID": me}).watchdog_interval == 0.6
    assert Notifier({"WATCHDOG_USEC": "600000"}).watchdog_interval == 0.6
    assert Notifier({"WATCHDOG_USEC": "600000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None


# ---- socket activation ----------------------------------------------------------------------


def test_socket_activation_serves_the_passed_sockets(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    d = daemon_factory(start=False)
    d.runtime.mkdir(parents=True)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(d.socket))
    unix.listen(16)
    inode = os.stat(d.socket).st_ino
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    port = tcp.getsockname()[1]
    try:
        for _ in range(2):  # a restart gets the same sockets again, as from systemd
            start_as_systemd(d, fds=(unix.fileno(), tcp.fileno()), pid_vars=("LISTEN_PID",))
            d.wait_ready()
            out = d.cli("status", "--json")
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["socket"] == str(d.socket)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v1/health")
            assert conn.getresponse().status == 200
            conn.close()
            assert os.stat(d.socket).st_ino == inode  # served as passed, never rebound
            assert d.stop() == 0
            # The socket file is systemd's: still there, still the one listening.
            assert os.stat(d.socket).st_ino == inode
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(str(d.socket))  # queued in the backlog for the next start
            probe.close()
        assert "passed by systemd" in d.read_log()
    finally:
        unix.close()
        tcp.close()


def test_listen_fds_ignores_other_pids_and_unsets_the_variables() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "control"}
    assert listen_fds(env) == []
    assert env == {}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert listen_fds(env) == []
    assert env == {}
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_fds(env, unset=False) == []
    assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}


# ---- journald -------------------------------------------------------------------------------


def journal_env(d: DaemonProc, socket_path: Path) -> dict[str, str]:
    """What systemd sets for a service whose stderr is the journal: here stderr is the log
    file the harness opens, so JOURNAL_STREAM names that file's device and inode."""
    d.log.touch()
    st = os.stat(d.log)
    return {
        "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
        "PLOINKY_JOURNAL_SOCKET": str(socket_path),
    }


def test_logs_go_to_the_journal_with_fields(
    daemon_factory: Callable[..., DaemonProc], sockdir: Path
) -> None:
    journal = Datagrams(sockdir / "journal")
    try:
        d = daemon_factory(start=False)
        d.env.update(journal_env(d, journal.path))
        d.start()
        d.drop("bad1", {"kind": "fail", "input": {"code": "NOPE", "retryable": False}})
        d.wait_records(1)

        def failed_entry() -> dict[str, str] | None:
            for e in journal_entries(journal.snapshot()):
                if e.get("PLOINKY_TASK_ID") == "bad1":
                    return e
            return None

        entry = wait_until("the failed task's journal entry", failed_entry)
        assert d.stop() == 0
        entries = journal_entries(journal.snapshot())
    finally:
        journal.close()

    assert entry["PRIORITY"] == "4"
    assert entry["PLOINKY_QUEUE"] == "default"
    assert entry["PLOINKY_KIND"] == "fail"
    assert entry["PLOINKY_ERROR_CODE"] == "NOPE"
    assert "bad1" in entry["MESSAGE"]

    ready = next(e for e in entries if " ready: node n1" in e["MESSAGE"])
    assert ready["PRIORITY"] == "6"
    assert ready["SYSLOG_IDENTIFIER"] == "ploinkyd"
    assert ready["LOGGER"] == "ploinkyd"
    assert ready["CODE_FILE"].endswith(os.path.join("ploinkyd", "daemon.py"))
    assert ready["CODE_LINE"].isdigit()
    assert ready["CODE_FUNC"] == "_start"
    assert all(e.get("PLOINKY_NODE") == "n1" for e in entries if e["LOGGER"] != "ploinkyd.cli")
    queue = next(e for e in entries if e["MESSAGE"].startswith("queue default at "))
    assert queue["PLOINKY_QUEUE"] == "default"
    # Everything went to the journal socket; none of it to stderr.
    assert " ready: node n1" not in d.read_log()


def test_without_journal_socket_stderr_lines_carry_priorities(
    daemon_factory: Callable[..., DaemonProc], sockdir: Path
) -> None:
    d = daemon_factory(start=False)
    d.env.update(journal_env(d, sockdir / "missing"))
    d.start()
    assert d.stop() == 0
    lines = d.read_log().splitlines()
    assert any(line.startswith("<6>ploinkyd: ploinkyd ") and " ready: " in line for line in lines)
    # Timestamps are journald's business.
    assert not any(line[:4].isdigit() for line in lines)


def test_journal_handler_encodes_newlines_and_large_messages(sockdir: Path) -> None:
    journal = Datagrams(sockdir / "journal")
    handler = JournalHandler(str(journal.path))
    logger = logging.getLogger("ploinkyd.test.journal")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    bind_fields(node="n9")
    try:
        logger.error("two\nlines", extra={"fields": {"queue": "q1", "task_id": "a=b\nc"}})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with traceback")
        big = "x" * (12 * 1024 * 1024)  # more than any datagram may carry
        logger.debug(big)
        wait_until("3 entries", lambda: len(journal.snapshot()) >= 3)
        first, second, third = journal_entries(journal.snapshot())
    finally:
        bind_fields(node=None)
        logger.removeHandler(handler)
        handler.close()
        journal.close()
    assert first["MESSAGE"] == "two\nlines"
    assert first["PRIORITY"] == "3"
    assert first["PLOINKY_QUEUE"] == "q1"
    assert first["PLOINKY_TASK_ID"] == "a=b\nc"
    assert first["PLOINKY_NODE"] == "n9"
    assert first["LOGGER"] == "ploinkyd.test.journal"
    assert second["MESSAGE"].startswith("with traceback\nTraceback")
    assert "ValueError: boom" in second["MESSAGE"]
    assert third["MESSAGE"] == big
    assert journal.via_fd == 1
    assert third["PRIORITY"] == "7"


def test_field_names() -> None:
    assert field_name("task_id") == "PLOINKY_TASK_ID"
    assert field_name("PLOINKY_QUEUE") == "PLOINKY_QUEUE"
    assert field_name("error-code") == "PLOINKY_ERROR_CODE"
    assert field_name("__") is None
