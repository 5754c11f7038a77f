"""Several "machines" on one box: network and mount namespaces, and a file server over sshfs.

Every host gets its own network namespace, joined to the root namespace by a veth pair, and
runs its processes in a private mount namespace where the shared directory is mounted: over
sshfs from an sshd that this module starts (the file server, listening only on the root ends
of the links, with its own config, host key and authorized key), or bound in directly (the
same namespaces without a network filesystem, for machines without FUSE). Each host mounts
the share at the same path, so the hosts' configs look alike, as on real machines.

A host's mounts vanish with its mount namespace when its last process dies; what outlives the
processes (the network namespace and its links) is deleted on close. Names carry this run's
pid and a random tag, so parallel runs never meet and the leftovers of a run that was itself
killed are recognised (its pid is gone) and removed by the next run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.daemon_harness import DaemonProc

ShareKind = Literal["sshfs", "bind"]

# What a node needs so that other nodes' writes are seen at once, and why:
# - dir_cache=no: sshfs's own cache of names, attributes and symlinks (20 s by default) would
#   hide new task files, records and locks, and serve a lock's old mtime, so a live owner's
#   heartbeat would look stopped.
# - attr_timeout=0: the kernel keeps attributes for 1 s by default; a heartbeat (the lock
#   dir's mtime) and a growing task file's size must be read from the server every time.
# - entry_timeout=0, negative_timeout=0: the kernel's cache of names, positive and negative;
#   "no record yet" or "no such lock" must not be an answer remembered from earlier.
# File data is not cached across opens by default (no kernel_cache/auto_cache), which is what
# the queue needs: every open reads what the server holds now.
# reconnect plus keep-alives: a network blip heals instead of leaving a dead mount.
SSHFS_OPTIONS = (
    "dir_cache=no",
    "attr_timeout=0",
    "entry_timeout=0",
    "negative_timeout=0",
    "reconnect",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=3",
)

# Benchmarking addresses (RFC 2544): never routed on a real network, so a link made here
# cannot shadow a route the machine uses.
ADDRESS_POOL = ipaddress.IPv4Network("198.18.0.0/15")
NETNS_PREFIX = "ploinky-"
NETNS_RE = re.compile(rf"^{NETNS_PREFIX}(\d+)-[0-9a-f]{{6}}-\d+$")

# Runs inside a host, in its fresh mount namespace: mount the share, then become the program.
# sshfs stays in the foreground (a child of this process group, so killing the group kills the
# whole host), and the program starts only once the mount is in place.
MOUNT_THEN_EXEC = r"""
set -eu
kind=$1 source=$2 mnt=$3 ssh_config=$4 options=$5 sshfs_log=$6
shift 6
case $kind in
bind)
    mount --bind "$source" "$mnt"
    ;;
sshfs)
    sshfs -f -F "$ssh_config" -o "$options" "$source" "$mnt" </dev/null >>"$sshfs_log" 2>&1 &
    sshfs_pid=$!
    tries=0
    until mountpoint -q "$mnt"; do
        if ! kill -0 "$sshfs_pid" 2>/dev/null; then
            echo "host: sshfs exited before mounting $mnt:" >&2
            cat "$sshfs_log" >&2
            exit 97
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt 600 ]; then
            echo "host: sshfs did not mount $mnt within 60 s" >&2
            exit 97
        fi
        sleep 0.1
    done
    ;;
*)
    echo "host: unknown share kind $kind" >&2
    exit 2
    ;;
esac
exec "$@"
"""


def _run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def namespaces_unavailable() -> str | None:
    """Why hosts cannot be made here, or None when network and mount namespaces work."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth links and mounts)"
    for tool in ("ip", "unshare", "mountpoint"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/fault-tools.sh installs it)"
    probe = f"{NETNS_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot make a network namespace: {made.stderr.strip()}"
        private = _run(
            "ip", "netns", "exec", probe, "unshare", "--mount", "--propagation", "private",
            "true", check=False,
        )  # fmt: skip
        if private.returncode != 0:
            return f"cannot make a mount namespace: {private.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def fuse_unavailable() -> str | None:
    """Why no FUSE filesystem can be mounted here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    return None


def sshfs_tools_missing() -> list[str]:
    """The programs of the sshfs variant that are not installed (fault-tools.sh installs them)."""
    wanted = {"sshfs": "sshfs", "ssh": "ssh", "ssh-keygen": "ssh-keygen"}
    missing = [name for name, tool in wanted.items() if shutil.which(tool) is None]
    if not os.access("/usr/sbin/sshd", os.X_OK):
        missing.append("/usr/sbin/sshd")
    return missing


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_pids(netns: str) -> list[int]:
    result = _run("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def kill_pids(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def delete_netns(netns: str) -> None:
    """Kill every process of ``netns`` (by pid), then delete it and, with it, its links."""
    deadline = time.monotonic() + 15
    while pids := netns_pids(netns):
        kill_pids(pids)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of {netns} do not die")
        time.sleep(0.05)
    _run("ip", "netns", "del", netns, check=False)


def sweep_dead_runs() -> list[str]:
    """Remove the network namespaces left by runs whose process is gone."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ", 1)[0]
        m = NETNS_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            delete_netns(name)
            removed.append(name)
    return removed


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for args in (("ip", "-4", "-o", "addr", "show"), ("ip", "-4", "route", "show", "table", "all")):
        for token in _run(*args, check=False).stdout.split():
            with contextlib.suppress(ValueError):
                if "/" in token or token.count(".") == 3:
                    nets.append(ipaddress.ip_network(token, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def pick_subnet() -> ipaddress.IPv4Network:
    """A /24 of the benchmarking range that nothing on this machine uses yet."""
    used = _used_networks()
    blocks = list(ADDRESS_POOL.subnets(new_prefix=24))
    for block in random.sample(blocks, 64):
        if not any(block.overlaps(n) for n in used):
            return block
    raise RuntimeError(f"no free /24 in {ADDRESS_POOL} for the test links")


class LinkClash(RuntimeError):
    """The addresses picked for a link are routed elsewhere (a run picked them too)."""


@dataclass(frozen=True)
class Link:
    """One host's veth pair: ``host_if`` in the root namespace, ``node_if`` in ``netns``."""

    netns: str
    host_if: str
    node_if: str
    host_addr: str
    node_addr: str


class Network:
    """Network namespaces and veth links, one /30 of a private /24 per host."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.subnet = pick_subnet()
        self.links: list[Link] = []

    def add(self) -> Link:
        i = len(self.links)
        if i >= 63:
            raise ValueError("at most 63 hosts per network")
        base = self.subnet.network_address + 4 * i
        link = Link(
            netns=f"{NETNS_PREFIX}{os.getpid()}-{self.tag}-{i}",
            host_if=f"pk{self.tag}h{i}",
            node_if=f"pk{self.tag}n{i}",
            host_addr=str(base + 1),
            node_addr=str(base + 2),
        )
        self.links.append(link)  # before creating anything, so close() removes a half-made one
        ns, hif, nif = link.netns, link.host_if, link.node_if
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", hif, "type", "veth", "peer", "name", nif, "netns", ns)
        _run("ip", "addr", "add", f"{link.host_addr}/30", "dev", hif)
        _run("ip", "link", "set", hif, "up")
        _run("ip", "-n", ns, "addr", "add", f"{link.node_addr}/30", "dev", nif)
        _run("ip", "-n", ns, "link", "set", nif, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        route = _run("ip", "route", "get", link.node_addr).stdout
        if f"dev {hif} " not in route + " ":
            raise LinkClash(f"{link.node_addr} is not routed through {hif}: {route}")
        return link

    def close(self) -> None:
        errors = []
        for link in self.links:
            try:
                delete_netns(link.netns)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
            # Deleting the namespace deletes the pair; this is for a link that never got there.
            if Path(f"/sys/class/net/{link.host_if}").exists():
                _run("ip", "link", "del", link.host_if, check=False)
        self.links.clear()
        if errors:
            raise RuntimeError("; ".join(errors))


class FileServer:
    """An sshd serving one directory over SFTP, reachable only on the hosts' links."""

    def __init__(self, root: Path, export: Path) -> None:
        self.root, self.export = root, export
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "sshd.log"
        self.ssh_config = root / "ssh_config"

    def start(self, links: Sequence[Link]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            _run(
                "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(self.root / key)
            )
        (self.root / "authorized_keys").write_bytes((self.root / "client_key.pub").read_bytes())
        host_pub = (self.root / "host_key.pub").read_text().split()
        (self.root / "known_hosts").write_text(f"ploinky-file-server {host_pub[0]} {host_pub[1]}\n")
        self.port = free_port()
        listen = "".join(f"ListenAddress {link.host_addr}:{self.port}\n" for link in links)
        (self.root / "sshd_config").write_text(
            listen
            + f"HostKey {self.root / 'host_key'}\n"
            + f"AuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            + f"PidFile {self.root / 'sshd.pid'}\n"
            # The key files live in a scratch dir of the test, not in a home directory.
            + "StrictModes no\n"
            + "UsePAM no\n"
            + "AuthenticationMethods publickey\n"
            + "PasswordAuthentication no\n"
            + "KbdInteractiveAuthentication no\n"
            + "PermitRootLogin prohibit-password\n"
            + "AllowTcpForwarding no\n"
            + "X11Forwarding no\n"
            + "MaxStartups 64\n"
            + "Subsystem sftp internal-sftp\n"
            + "ForceCommand internal-sftp\n"
            + "LogLevel INFO\n"
        )
        self.ssh_config.write_text(
            "Host *\n"
            f"  User {self.user}\n"
            f"  Port {self.port}\n"
            f"  IdentityFile {self.root / 'client_key'}\n"
            "  IdentitiesOnly yes\n"
            "  HostKeyAlias ploinky-file-server\n"
            f"  UserKnownHostsFile {self.root / 'known_hosts'}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 10\n"
            "  LogLevel ERROR\n"
        )
        # sshd refuses to start without its privilege-separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.root / "sshd_config")]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(sshd, stdout=logf, stderr=subprocess.STDOUT)
        for link in links:
            self._wait_listening(link.host_addr)

    def _wait_listening(self, addr: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}:\n{self.read_log()}")
            try:
                socket.create_connection((addr, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd not listening on {addr}:{self.port}") from None
                time.sleep(0.05)

    def source(self, link: Link) -> str:
        """What a host passes to sshfs: the export as seen across its own link."""
        return f"{self.user}@{link.host_addr}:{self.export}"

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is None:
            return
        # Each connection is served by a child that has left sshd's process group: find them
        # by parent pid before the listener goes, and end them by pid.
        sessions = children_of(self.proc.pid)
        kill_pids([self.proc.pid, *sessions], signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while (alive := [p for p in sessions if is_sshd(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_pids(alive)
        self.proc = None


def is_sshd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sshd")
    except OSError:
        return False


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/<pid>/stat after the command name) of every process: state,
    ppid, pgrp, ... A process that ends meanwhile is skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after its closing ')'.
        yield int(entry), stat.rpartition(")")[2].split()


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (walks /proc)."""
    parents = {p: int(fields[1]) for p, fields in proc_stats()}
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@dataclass
class Host:
    """One "machine": its own network and mount namespaces, the share mounted at ``mountpoint``."""

    name: str
    link: Link
    cluster: Hosts
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.link.netns

    @property
    def sshfs_log(self) -> Path:
        return self.cluster.root / f"sshfs-{self.name}.log"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in this host's namespaces, after the share is mounted."""
        c = self.cluster
        source = c.server.source(self.link) if c.server is not None else str(c.export)
        return [
            "ip", "netns", "exec", self.netns,
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", MOUNT_THEN_EXEC, f"host-{self.name}",
            c.kind, source, str(c.mountpoint), str(c.ssh_config), ",".join(SSHFS_OPTIONS),
            str(self.sshfs_log), *argv,
        ]  # fmt: skip

    def spawn(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host, in a session of its own (its whole tree is one group)."""
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                self.command(argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to completion; then its sshfs is stopped, and the mount
        goes away with the mount namespace."""
        proc = subprocess.Popen(
            self.command(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree(proc)
            raise
        kill_pids(self.tree(proc), signal.SIGTERM)
        self._wait_tree_gone(proc, 10)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def tree(self, proc: subprocess.Popen[Any]) -> list[int]:
        """The live processes of ``proc``'s group (sshfs, ssh, the program) on this host.

        Only pids inside this host's own network namespace count, so a recycled process
        group id can never make us signal a stranger.
        """
        ours = set(netns_pids(self.netns))
        return [pid for pid in group_members(proc.pid) if pid in ours]

    def kill_tree(self, proc: subprocess.Popen[Any]) -> None:
        """SIGKILL a process started by ``spawn`` and everything it started, all at once."""
        if proc.poll() is None:
            # Not reaped, so its pid (the group id) cannot have been recycled.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)
        kill_pids(self.tree(proc))  # members left when the program had already exited
        self._wait_tree_gone(proc, 15)

    def stop_tree(self, proc: subprocess.Popen[Any], timeout: float = 30) -> int:
        """SIGTERM the program and wait for it, then let the rest of its group (sshfs) unmount
        and exit; SIGKILL what does not."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_tree(proc)
        kill_pids(self.tree(proc), signal.SIGTERM)
        self._wait_tree_gone(proc, 10)
        return proc.returncode

    def _wait_tree_gone(self, proc: subprocess.Popen[Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while left := self.tree(proc):
            if time.monotonic() > deadline:
                kill_pids(left)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)

    def close(self) -> None:
        """End every process of this host (by pid, from its namespace), then reap ours."""
        deadline = time.monotonic() + 15
        while (pids := netns_pids(self.netns)) and time.monotonic() < deadline:
            kill_pids(pids)
            time.sleep(0.05)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        self.procs.clear()


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (from /proc)."""
    return [p for p, fields in proc_stats() if fields[0] != "Z" and int(fields[2]) == pgid]


class Hosts:
    """A file server and the hosts sharing its ``export`` directory, torn down on exit.

    ``kind="sshfs"``: every host mounts ``export`` with sshfs across its own link;
    ``kind="bind"``: every host bind-mounts it (no network filesystem, same namespaces).
    """

    def __init__(self, root: Path, export: Path, kind: ShareKind) -> None:
        self.root, self.export, self.kind = root, export, kind
        self.tag = secrets.token_hex(3)
        self.mountpoint = root / "share"
        self.network: Network | None = None
        self.server: FileServer | None = None
        self.hosts: dict[str, Host] = {}
        self._links: list[Link] = []

    @property
    def ssh_config(self) -> Path:
        return self.server.ssh_config if self.server is not None else Path("/dev/null")

    def start(self, names: Sequence[str]) -> Hosts:
        sweep_dead_runs()
        self.root.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        self.export.mkdir(parents=True, exist_ok=True)
        links = self._make_links(len(names))
        if self.kind == "sshfs":
            self.server = FileServer(self.root / "sshd", self.export)
            self.server.start(links)
        for name, link in zip(names, links, strict=True):
            self.hosts[name] = Host(name, link, self)
        return self

    def _make_links(self, count: int, tries: int = 3) -> list[Link]:
        for attempt in range(tries):
            self.network = Network(self.tag)
            try:
                return [self.network.add() for _ in range(count)]
            except LinkClash:
                # Another run took the same addresses at the same instant: pick again.
                self.network.close()
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        steps: list[Callable[[], None]] = [h.close for h in self.hosts.values()]
        if self.server is not None:
            steps.append(self.server.close)
        if self.network is not None:
            steps.append(self.network.close)
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down; report every failure at the end
                errors.append(f"{step.__qualname__}: {exc}")
        if errors:
            raise RuntimeError("teardown of the test hosts failed: " + "; ".join(errors))

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def hosts(root: Path, export: Path, kind: ShareKind, names: Sequence[str]) -> Iterator[Hosts]:
    """``with hosts(tmp, export, "sshfs", ["a", "b"]) as h: h["a"].spawn([...], log=...)``."""
    cluster = Hosts(root, export, kind)
    try:
        yield cluster.start(names)
    finally:
        cluster.close()


# ---- ploinkyd on a host ---------------------------------------------------------------------


@dataclass
class HostDaemon:
    """A ``ploinkyd run`` (prepared by ``daemon_harness.new_daemon``) running on a host.

    Its control socket lives on the root filesystem (a unix socket by path works across
    network namespaces), so ``daemon.client()`` works from the test.
    """

    host: Host
    daemon: DaemonProc

    def start(self, timeout: float = 60) -> HostDaemon:
        d = self.daemon
        argv = [sys.executable, "-m", "ploinkyd", "run", "--config", str(d.config_file)]
        d.proc = self.host.spawn(argv, log=d.log, env=d.env)
        d.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def kill(self) -> None:
        """Lose the machine: SIGKILL the daemon, its sshfs and ssh, all at once."""
        assert self.daemon.proc is not None
        self.host.kill_tree(self.daemon.proc)

    def stop(self) -> int:
        assert self.daemon.proc is not None
        return self.host.stop_tree(self.daemon.proc)
