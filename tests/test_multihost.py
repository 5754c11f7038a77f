"""Several machines serving one queue (SPEC §11), each a real host as far as ploinkyd can tell.

Every node is a ``ploinkyd run`` in its own network and mount namespaces, joined to a file
server by its own veth link. The queue lives on the server; each node mounts it at the same
path, over sshfs (a real network filesystem, through an sshd started here) or, where FUSE is
missing, by a bind mount (same namespaces, no network filesystem). Tasks are judged from the
server's side: every accepted task ends as exactly one record, whichever node is lost.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Figures
from tests.daemon_harness import drop_task, new_daemon, visible_names
from tests.fault_figures import scaled
from tests.hosts_env import (
    Host,
    HostDaemon,
    Hosts,
    ShareKind,
    fuse_unavailable,
    namespaces_unavailable,
    netns_pids,
    sshfs_tools_missing,
)

pytestmark = [pytest.mark.faults]

QUEUE = "shared"

# sshfs speaks SFTP v3, whose times are whole seconds: a heartbeat can look up to 1 s older
# than it is. A bind mount keeps the server filesystem's nanoseconds.
MTIME_GRANULARITY = {"sshfs": 1.0, "bind": 0.0}


@functools.cache
def _namespaces_reason() -> str | None:
    return namespaces_unavailable()


@pytest.fixture(params=["sshfs", "bind"])
def share_kind(request: pytest.FixtureRequest) -> ShareKind:
    reason = _namespaces_reason()
    if reason is not None:
        pytest.skip(f"several hosts need network and mount namespaces: {reason}")
    kind: ShareKind = request.param
    if kind == "sshfs":
        reason = fuse_unavailable()
        if reason is not None:
            pytest.skip(f"no FUSE, so no sshfs: {reason}")
        missing = sshfs_tools_missing()
        if missing:
            pytest.fail(f"not installed: {', '.join(missing)}; run scripts/fault-tools.sh")
    return kind


@pytest.fixture
def cluster(
    share_kind: ShareKind, fast_dir: Path, tmp_path: Path
) -> Iterator[Callable[[list[str]], Hosts]]:
    """``cluster(["a", "b"])`` → hosts sharing ``<server>/export`` at ``hosts.mountpoint``."""
    made: list[Hosts] = []

    def make(names: list[str]) -> Hosts:
        h = Hosts(tmp_path / "hosts", fast_dir / "export", share_kind)
        made.append(h)
        return h.start(names)

    yield make
    for h in made:
        h.close()


def server_queue(h: Hosts) -> Path:
    """The queue as the file server holds it (what the test reads)."""
    return h.export / QUEUE


def start_node(h: Hosts, tmp_path: Path, name: str, **settings: Any) -> HostDaemon:
    daemon = new_daemon(
        tmp_path / f"node-{name}",
        node=name,
        config={
            "queues": {QUEUE: {"path": str(h.mountpoint / QUEUE), "watch": "polling", **settings}}
        },
    )
    node = HostDaemon(h[name], daemon).start()
    info = daemon.client().get(f"/v1/queues/{QUEUE}")
    assert info["watch"] == "polling", info
    return node


def tails(nodes: dict[str, HostDaemon], h: Hosts) -> str:
    out = [f"--- {n} ---\n{node.daemon.read_log()[-1500:]}" for n, node in nodes.items()]
    if h.server is not None:
        out.append(f"--- sshd ---\n{h.server.read_log()[-1000:]}")
    return "\n".join(out)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def record_names(queue: Path) -> tuple[set[str], set[str]]:
    results = {n[:-5] for n in visible_names(queue / "results") if n.endswith(".json")}
    errors = {n[:-5] for n in visible_names(queue / "errors") if n.endswith(".json")}
    return results, errors


def settle(
    queue: Path, expected: set[str], timeout: float, context: Callable[[], str]
) -> dict[str, dict[str, Any]]:
    """Wait until every task has a record and no task or lock is left; then check that each
    task has exactly one record and nothing else was recorded."""

    def done() -> bool:
        results, errors = record_names(queue)
        return expected <= results | errors and not visible_names(queue / "tasks")

    try:
        wait_until(done, timeout, f"{len(expected)} records")
        wait_until(lambda: not visible_names(queue / "locks"), 30, "the last locks to go")
    except AssertionError as exc:
        results, errors = record_names(queue)
        missing = sorted(expected - results - errors)[:20]
        raise AssertionError(f"{exc}; missing {missing}\n{context()}") from None
    results, errors = record_names(queue)
    lost = expected - results - errors
    double = results & errors
    extra = (results | errors) - expected
    summary = (
        f"{len(expected)} tasks: {len(results)} results, {len(errors)} errors, "
        f"{len(double)} double, {len(lost)} lost, {len(extra)} extra"
    )
    assert not lost and not double and not extra and not errors, summary
    return {i: json.loads((queue / "results" / f"{i}.json").read_bytes()) for i in results}


def timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def lock_owners(queue: Path) -> dict[str, str | None]:
    """Every lock dir and its owner's node (None while owner.json is missing or unreadable)."""
    owners: dict[str, str | None] = {}
    for name in visible_names(queue / "locks"):
        try:
            owners[name] = json.loads((queue / "locks" / name / "owner.json").read_bytes())["node"]
        except (OSError, ValueError, KeyError):
            owners[name] = None
    return owners


def takeovers(node: HostDaemon) -> float:
    text = node.daemon.client().get("/metrics")
    prefix = f'ploinkyd_lock_takeovers_total{{queue="{QUEUE}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"no lock takeover metric for {QUEUE}:\n{text}")


def drop_all(queue: Path, tasks: dict[str, dict[str, Any]]) -> None:
    for task_id, body in tasks.items():
        drop_task(queue, task_id, body)


# ---- 1. load spreads ------------------------------------------------------------------------


@pytest.mark.slow
def test_load_spreads_across_three_hosts(
    cluster: Callable[[list[str]], Hosts],
    share_kind: ShareKind,
    tmp_path: Path,
    figures: Figures,
) -> None:
    lock_timeout = 3.0
    h = cluster(["a", "b", "c"])
    nodes = {n: start_node(h, tmp_path, n, concurrency=4, lock_timeout=lock_timeout) for n in "abc"}
    queue = server_queue(h)
    count = scaled(240)
    # Every 40th task outlives lock_timeout: only heartbeats seen across the share keep the
    # other hosts from taking it over.
    tasks = {
        f"t{i:05d}": {
            "kind": "sleep",
            "input": {"seconds": lock_timeout * 1.5 if i % 40 == 0 else 0.1},
        }
        for i in range(count)
    }
    started = time.monotonic()
    drop_all(queue, tasks)
    records = settle(queue, set(tasks), 120 + count, lambda: tails(nodes, h))
    elapsed = time.monotonic() - started

    by_node = Counter(r["node"] for r in records.values())
    fair = count / len(nodes)
    stolen = {n: takeovers(node) for n, node in nodes.items()}
    figures.report(
        f"{share_kind}: {count} tasks over 3 hosts {dict(sorted(by_node.items()))}, "
        f"0 lost, 0 double, {count / elapsed:.0f} tasks/s, takeovers {sum(stolen.values()):.0f}",
        share=share_kind,
        tasks=count,
        per_node=dict(by_node),
        lost=0,
        double=0,
        tasks_per_s=round(count / elapsed, 1),
        takeovers=sum(stolen.values()),
    )
    assert set(by_node) == set(nodes), by_node
    assert min(by_node.values()) >= fair / 4, f"load did not spread: {dict(by_node)}"
    assert all(r["attempts"] == 1 for r in records.values())
    assert sum(stolen.values()) == 0, f"live hosts took tasks from each other: {stolen}"
    for node in nodes.values():
        assert node.stop() == 0, node.daemon.read_log()[-2000:]


# ---- 2 and 3. a host is lost mid-task --------------------------------------------------------

PRODUCER = r"""
import json, os, sys, time
queue, prefix, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
for i in range(count):
    task_id = f"{prefix}{i:05d}"
    tmp = os.path.join(queue, "tmp", task_id + ".json.tmp")
    with open(tmp, "w") as f:
        json.dump({"kind": "sleep", "input": {"seconds": 0.2}}, f)
    os.rename(tmp, os.path.join(queue, "tasks", task_id + ".json"))
    time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
print(json.dumps({"written": count, "seconds": time.monotonic() - start}))
"""


@dataclass
class Loss:
    """A host killed mid-task: when, the claims it left, and when each was freed (its lock
    gone or re-signed by another node, as seen on the file server)."""

    victim: str
    killed_at: float
    left: set[str]
    freed_at: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, queue: Path) -> None:
        def run() -> None:
            while not self._stop.is_set() and len(self.freed_at) < len(self.left):
                try:
                    owners = lock_owners(queue)
                except OSError:  # the queue is gone: the test is over
                    return
                now = time.time()
                for task_id in self.left - set(self.freed_at):
                    if owners.get(task_id, "") not in (self.victim, None):
                        self.freed_at[task_id] = now
                time.sleep(0.05)

        self._thread = threading.Thread(target=run, name="lock-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def lose_a_host_mid_task(h: Hosts, nodes: dict[str, HostDaemon], victim: str, queue: Path) -> Loss:
    """SIGKILL ``victim`` (daemon, sshfs and ssh) once it holds claims, and watch its locks."""
    wait_until(
        lambda: sum(1 for o in lock_owners(queue).values() if o == victim) >= 2,
        60,
        f"{victim} to hold claims",
    )
    nodes[victim].kill()
    loss = Loss(victim, time.time(), set())
    loss.left = {t for t, owner in lock_owners(queue).items() if owner in (victim, None)}
    loss.watch(queue)
    wait_until(lambda: not netns_pids(h[victim].netns), 15, "every process of the lost host")
    # A lock without owner.json may be a survivor's claim caught between mkdir and writing
    # it: look again once such a claim would be signed. The victim's stay as they were.
    time.sleep(1.0)
    # (No claim of the victim can be freed this soon: that takes lock_timeout.)
    now = lock_owners(queue)
    loss.left = {t for t in loss.left if t in now and now[t] in (victim, None)}
    assert loss.left, "the lost host held no claims when it died"
    return loss


def check_takeover(
    records: dict[str, dict[str, Any]], loss: Loss, lock_timeout: float, share_kind: ShareKind
) -> tuple[list[float], list[float]]:
    """The victim's claims were freed and run again by survivors, none before its heartbeat
    went stale. Returns the delays after the kill: locks freed, tasks restarted.

    The victim's last heartbeat was at most lock_timeout/3 before the kill, and on sshfs its
    mtime may read up to a second older: nothing may happen earlier than that allows.
    """
    loss.stop()
    earliest = loss.killed_at + lock_timeout * 2 / 3 - MTIME_GRANULARITY[share_kind] - 0.2
    freed, restarted = [], []
    for task_id in sorted(loss.left):
        r = records.get(task_id)
        if r is None:  # a lock caught before its task file was read: not a task
            continue
        if timestamp(r["finished_at"]) <= loss.killed_at:
            # Recorded before the kill, by the victim (its cleanup was cut short) or by another
            # node while the victim claimed it once more, too late: nothing was left to run.
            continue
        assert r["node"] != loss.victim, f"{task_id} recorded by the lost host after the kill"
        started = timestamp(r["started_at"])
        at = loss.freed_at.get(task_id, started)
        for what, when in (("freed", at), ("restarted", started)):
            assert when >= earliest, (
                f"{task_id} was {what} {when - loss.killed_at:.2f}s after the kill, "
                f"before lock_timeout={lock_timeout}s allows: {r}"
            )
        freed.append(at - loss.killed_at)
        restarted.append(started - loss.killed_at)
    assert restarted, f"no claim of {loss.victim} was taken over: {sorted(loss.left)}"
    return freed, restarted


@pytest.mark.slow
def test_claims_of_a_killed_host_are_taken_over_after_lock_timeout(
    cluster: Callable[[list[str]], Hosts],
    share_kind: ShareKind,
    tmp_path: Path,
    figures: Figures,
) -> None:
    lock_timeout = 4.0
    h = cluster(["a", "b", "c"])
    settings = {"concurrency": 2, "lock_timeout": lock_timeout}
    nodes = {n: start_node(h, tmp_path, n, **settings) for n in "abc"}
    queue = server_queue(h)
    count = scaled(24)
    tasks = {f"long{i:04d}": {"kind": "sleep", "input": {"seconds": 2.0}} for i in range(count)}
    drop_all(queue, tasks)

    loss = lose_a_host_mid_task(h, nodes, "c", queue)
    records = settle(queue, set(tasks), 120 + count, lambda: tails(nodes, h))
    freed, restarted = check_takeover(records, loss, lock_timeout, share_kind)

    survivors = {n: nodes[n] for n in "ab"}
    taken = sum(takeovers(node) for node in survivors.values())
    by_node = Counter(r["node"] for r in records.values())
    figures.report(
        f"{share_kind}: host c killed holding {len(loss.left)} claims, lock_timeout "
        f"{lock_timeout:.0f}s: freed {min(freed):.1f}-{max(freed):.1f}s after the kill, "
        f"re-run from {min(restarted):.1f}s; "
        f"{count} tasks {dict(sorted(by_node.items()))}, 0 lost, 0 double",
        share=share_kind,
        tasks=count,
        per_node=dict(by_node),
        claims_lost_with_host=len(loss.left),
        takeover_delay_s=[round(d, 2) for d in sorted(freed)],
        rerun_delay_s=[round(d, 2) for d in sorted(restarted)],
        lock_timeout_s=lock_timeout,
        lost=0,
        double=0,
    )
    assert len(restarted) <= taken <= len(loss.left), (taken, sorted(loss.left))
    for node in survivors.values():
        assert node.stop() == 0, node.daemon.read_log()[-2000:]


@pytest.mark.slow
def test_takeover_while_producers_keep_writing(
    cluster: Callable[[list[str]], Hosts],
    share_kind: ShareKind,
    tmp_path: Path,
    figures: Figures,
) -> None:
    """One producer writes through its own mount on a host of its own, another on the file
    server itself; host c is lost while both are writing."""
    lock_timeout = 4.0
    h = cluster(["a", "b", "c", "producer"])
    settings = {"concurrency": 3, "lock_timeout": lock_timeout}
    nodes = {n: start_node(h, tmp_path, n, **settings) for n in "abc"}
    queue = server_queue(h)
    remote_count, local_count = scaled(150), scaled(150)
    rate = 15.0  # tasks per second from each producer: the run spans several lock_timeouts
    remote = h["producer"].spawn(
        [
            sys.executable,
            "-c",
            PRODUCER,
            str(h.mountpoint / QUEUE),
            "p",
            str(remote_count),
            str(rate),
        ],
        log=tmp_path / "producer.log",
    )
    expected = {f"p{i:05d}" for i in range(remote_count)}
    started = time.monotonic()
    local = {f"s{i:05d}": {"kind": "sleep", "input": {"seconds": 0.2}} for i in range(local_count)}
    loss: Loss | None = None
    for i, (task_id, body) in enumerate(local.items()):
        drop_task(queue, task_id, body)
        expected.add(task_id)
        if loss is None and i >= local_count // 4:
            loss = lose_a_host_mid_task(h, nodes, "c", queue)
        time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    assert remote.wait(120 + remote_count) == 0, (tmp_path / "producer.log").read_text()
    assert loss is not None
    records = settle(queue, expected, 120 + len(expected), lambda: tails(nodes, h))
    elapsed = time.monotonic() - started
    freed, restarted = check_takeover(records, loss, lock_timeout, share_kind)

    by_node = Counter(r["node"] for r in records.values())
    figures.report(
        f"{share_kind}: 2 producers wrote {len(expected)} tasks while host c was killed "
        f"holding {len(loss.left)} claims: freed {min(freed):.1f}-{max(freed):.1f}s after the "
        f"kill (lock_timeout {lock_timeout:.0f}s); {dict(sorted(by_node.items()))}, 0 lost, "
        "0 double, "
        f"{len(expected) / elapsed:.0f} tasks/s",
        share=share_kind,
        tasks=len(expected),
        per_node=dict(by_node),
        claims_lost_with_host=len(loss.left),
        takeover_delay_s=[round(d, 2) for d in sorted(freed)],
        rerun_delay_s=[round(d, 2) for d in sorted(restarted)],
        tasks_per_s=round(len(expected) / elapsed, 1),
        lost=0,
        double=0,
    )
    assert {"a", "b"} <= set(by_node), by_node
    for n in "ab":
        assert nodes[n].stop() == 0, nodes[n].daemon.read_log()[-2000:]


# ---- what the share must do for the protocol --------------------------------------------

# Runs on a host against the share: ``mode share me work n``. Writes ``work/<mode>.<me>.ready``,
# waits for ``work/<mode>.go``, does its part, and answers in ``work/<mode>.<me>.json``.
PROBE = r"""
import errno, json, os, sys, time
mode, share, me, work, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
tag = os.path.join(work, f"{mode}.{me}")
base = os.path.join(share, mode)
os.makedirs(base, exist_ok=True)
open(tag + ".ready", "w").close()
while not os.path.exists(os.path.join(work, mode + ".go")):
    time.sleep(0.01)
answer = {"won": [], "failures": {}}

def attempt(i, action):
    try:
        action()
        answer["won"].append(i)
    except OSError as exc:
        name = errno.errorcode[exc.errno]
        answer["failures"][name] = answer["failures"].get(name, 0) + 1

if mode == "mkdir":  # claims
    for i in range(n):
        attempt(i, lambda: os.mkdir(os.path.join(base, f"r{i:04d}")))
elif mode == "link":  # records
    mine = os.path.join(base, f".rec-{me}")
    with open(mine, "w") as f:
        f.write(me)
    for i in range(n):
        attempt(i, lambda: os.link(mine, os.path.join(base, f"r{i:04d}.json")))
elif mode == "rename":  # tasks rewritten in place, by producers and retries
    for name, text in (("old", "old"), ("new", "new")):
        with open(os.path.join(base, name), "w") as f:
            f.write(text)
    os.rename(os.path.join(base, "new"), os.path.join(base, "old"))
    with open(os.path.join(base, "old")) as f:
        answer["replaced_with"] = f.read()
    os.utime(os.path.join(base, "old"))
    answer["subsecond_ns"] = os.stat(os.path.join(base, "old")).st_mtime_ns % 10**9
    from ploinkyd.queue.layout import filesystem_type, needs_polling
    answer["fstype"], answer["auto_polls"] = filesystem_type(share), needs_polling(share)
elif mode == "stat":  # heartbeats and new names written by another host
    lock = os.path.join(base, "lock")
    answer["first"] = os.stat(lock).st_mtime  # primes every cache on the way
    answer["late_seen"] = os.path.exists(os.path.join(base, "late"))
    answer["gone_seen"] = not os.path.exists(os.path.join(base, "gone"))
    assert not answer["late_seen"] and not answer["gone_seen"], answer
    open(tag + ".primed", "w").close()
    while not os.path.exists(tag + ".changed"):
        time.sleep(0.01)
    answer["second"] = os.stat(lock).st_mtime
    answer["late_seen"] = os.path.exists(os.path.join(base, "late"))
    answer["gone_seen"] = not os.path.exists(os.path.join(base, "gone"))
with open(tag + ".json", "w") as f:
    json.dump(answer, f)
"""


def probe(
    hosts: list[Host], mode: str, share: Path, work: Path, n: int = 0
) -> dict[str, dict[str, Any]]:
    """Run PROBE ``mode`` on every host at once; return each host's answer."""
    procs = {}
    for host in hosts:
        argv = [sys.executable, "-c", PROBE, mode, str(share), host.name, str(work), str(n)]
        log = work / f"{mode}.{host.name}.log"
        procs[host.name] = (host, host.spawn(argv, log=log, env=probe_env()))
    ready = [work / f"{mode}.{name}.ready" for name in procs]
    wait_until(lambda: all(p.exists() for p in ready), 60, f"{mode} probes to be ready")
    (work / f"{mode}.go").touch()
    answers = {}
    for name, (host, proc) in procs.items():
        assert proc.wait(120) == 0, (work / f"{mode}.{name}.log").read_text()
        host.stop_tree(proc)
        answers[name] = json.loads((work / f"{mode}.{name}.json").read_text())
    return answers


def probe_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def one_winner_each(answers: dict[str, dict[str, Any]], n: int) -> Counter[str]:
    wins = Counter(i for answer in answers.values() for i in answer["won"])
    assert sorted(wins) == list(range(n)), f"names nobody won: {set(range(n)) - set(wins)}"
    assert set(wins.values()) == {1}, {i: c for i, c in wins.items() if c > 1}
    failures = Counter[str]()
    for answer in answers.values():
        failures.update(answer["failures"])
    return failures


def test_share_gives_the_protocol_what_it_needs(
    cluster: Callable[[list[str]], Hosts],
    share_kind: ShareKind,
    tmp_path: Path,
    figures: Figures,
) -> None:
    """Claims (mkdir), records (link), rewrites (rename) and heartbeats (mtime) behave across
    hosts as the queue protocol needs."""
    h = cluster(["a", "b", "c"])
    work = tmp_path / "probe"
    work.mkdir()
    racers = [h["a"], h["b"], h["c"]]
    n = 300

    mkdir_losers = one_winner_each(probe(racers, "mkdir", h.mountpoint, work, n), n)
    # The claim treats only EEXIST as "another claimant has it".
    assert set(mkdir_losers) <= {"EEXIST"}, mkdir_losers

    links = probe(racers, "link", h.mountpoint, work, n)
    link_losers = one_winner_each(links, n)
    for name, answer in links.items():  # a record, once placed, is never replaced
        for i in answer["won"]:
            assert (h.export / "link" / f"r{i:04d}.json").read_text() == name
    # sshfs reports a link that loses the race on the server itself as EPERM (SFTP v3 has no
    # "exists" status); the committer then retries and finds the record: later, never doubled.
    assert set(link_losers) <= {"EEXIST", "EPERM"}, link_losers

    renamed = probe([h["a"]], "rename", h.mountpoint, work)["a"]
    assert renamed["replaced_with"] == "new"
    if share_kind == "sshfs":
        assert renamed["fstype"] == "fuse.sshfs" and renamed["auto_polls"], renamed

    # Heartbeats: a lock's new mtime, a new name and a removed one, changed elsewhere after
    # this host has looked once, are seen on the next look.
    (h.export / "stat").mkdir()
    lock = h.export / "stat" / "lock"
    lock.mkdir()
    os.utime(lock, (1_000_000_000, 1_000_000_000))
    (h.export / "stat" / "gone").touch()
    (work / "stat.go").touch()
    host_b = h["b"]
    proc = host_b.spawn(
        [sys.executable, "-c", PROBE, "stat", str(h.mountpoint), "b", str(work), "0"],
        log=work / "stat.b.log",
    )
    wait_until(lambda: (work / "stat.b.primed").exists(), 60, "the first look")
    os.utime(lock, (1_000_000_100, 1_000_000_100))
    (h.export / "stat" / "late").touch()
    (h.export / "stat" / "gone").unlink()
    (work / "stat.b.changed").touch()
    assert proc.wait(60) == 0, (work / "stat.b.log").read_text()
    host_b.stop_tree(proc)
    seen = json.loads((work / "stat.b.json").read_text())
    assert seen["first"] == 1_000_000_000, seen
    assert seen["second"] == 1_000_000_100, f"a heartbeat written elsewhere went unseen: {seen}"
    assert seen["late_seen"], "a name created elsewhere went unseen"
    assert seen["gone_seen"], "a name removed elsewhere still looks present"

    figures.report(
        f"{share_kind} ({renamed['fstype']}): mkdir race, {n} names x 3 hosts: 1 winner each "
        f"(losers {dict(mkdir_losers)}); link race: 1 winner each, none replaced "
        f"(losers {dict(link_losers)}); rename replaces; other hosts' mtimes and names seen "
        f"at once; mtime sub-second part after utime: {renamed['subsecond_ns']} ns",
        share=share_kind,
        mkdir_losers=dict(mkdir_losers),
        link_losers=dict(link_losers),
        mtime_subsecond_ns=renamed["subsecond_ns"],
    )
