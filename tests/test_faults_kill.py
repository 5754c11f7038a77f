"""SIGKILL storm over a mixed workload: echo tasks, tile tasks in Docker, and backups.

SPEC §3 promises that every accepted task file ends as exactly one record whatever instant the
daemon dies at; SPEC §7 that an interrupted backup leaves the repository consistent. Both are
checked literally here, against a real daemon killed (SIGKILL: no drain, no cleanup) at random
points while a producer keeps dropping tasks:

- some kills land while the daemon starts (recovery, rescan, orphan removal, the first claims),
  some are aimed into a backup or verify in progress (the repository locked), the others come
  after a random amount of work (mid-claim, mid-run, mid-tile round trip, mid-commit);
- the producer drops tasks all along, about as fast as the killed daemons get through them;
- tile tasks run on the process runner for the first kills and on the Docker runner for the
  last ones (see DOCKER_SHARE): each Docker restart finds the dead daemon's warm containers and
  removes them, then starts its own;
- each backup task backs up a directory of its own (fresh random bytes: real packs to upload)
  into one ``file`` repository, and ``backup-verify`` tasks read it all back meanwhile.

At the end: 0 lost, 0 double, 0 extra records, every output checked against its input,
nothing left in ``tasks/``, ``locks/`` or ``tmp/``, the repository verifies clean
(``ploinkyd backup verify --read-data``), every snapshot restores equal to its source, and the
dead daemons' repository locks are all judged stale. ``FAULT_SOAK`` scales tasks and kills.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.backup import ops
from ploinkyd.backup.locks import list_locks
from tests.backup_helpers import LOG_N, PASSWORD, listing, restored
from tests.conftest import Figures
from tests.daemon_harness import DaemonProc, drop_task, visible_names, wait_until
from tests.fault_figures import scaled

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TASKS = scaled(20_000)
KILLS = scaled(100)
PER_KILL = -(-TASKS // KILLS)  # tasks the producer may drop per daemon lifetime
BACKUP_EVERY = 200  # one backup task per this many tasks
VERIFY_EVERY = 10  # one backup-verify task per this many backup tasks
TILE_SHARE = 0.3  # of the tasks that are not backups; half single tiles, half pipelines
EARLY_KILL_SHARE = 0.2  # kills while the daemon is still starting
# Restart-to-ready is about the same with either tile runner (1.1 s with the process runner,
# 1.4 s with Docker, which first removes the dead daemon's containers, on a quiet 2-core machine),
# but after each restart a tile task waits for a fresh container, and on a busy machine that
# costs seconds: there the storm ran 2.5 times slower with Docker throughout. So the first kills
# restart the daemon with the process runner and the last DOCKER_SHARE with Docker (the last
# daemon then removes the containers the killed ones left).
DOCKER_SHARE = 0.4
AIMED_SHARE = 0.2  # kills aimed at a backup or verify in progress
# A daemon reads every pending file before its first claim, and a tile task waits for a fresh
# container after each restart: were the backlog let grow, a daemon killed every second would
# die reading it and never get to work. So the producer drops at most PER_KILL tasks per
# lifetime (spread over it) and never lets more than MAX_PENDING wait, and most kills wait for
# a random amount of work to be done first.
MAX_PENDING = 4 * PER_KILL
PROGRESS_WAIT_S = 15.0  # at most, for the work a kill waits for
SETTLE_S = 180.0  # generous: the last daemon finishes what the storm left
STORM_DEADLINE_S = scaled(1200)  # a storm that makes no headway fails, with its figures


# ---- the workload ----------------------------------------------------------------------------


def tile_body(i: int) -> dict[str, Any]:
    data = [i, i + 1, i + 2]
    return {"kind": "tile", "input": {"op": "map", "params": {"expr": "x * 3 + 1"}, "data": data}}


def pipeline_body(i: int) -> dict[str, Any]:
    chain = [
        {"op": "map", "params": {"expr": "x * x"}},
        {"op": "filter", "params": {"expr": "x % 2 == 1"}},
        {"op": "sort", "params": {"reverse": True}},
    ]
    return {"kind": "pipeline", "input": {"data": list(range(i % 7, i % 7 + 6)), "pipeline": chain}}


def expected_output(body: dict[str, Any]) -> Any:
    """What the record of ``body`` must say, computed here without ploinkyd."""
    kind, given = body["kind"], body["input"]
    if kind == "echo":
        return given
    if kind == "tile":
        return [x * 3 + 1 for x in given["data"]]
    if kind == "pipeline":
        return sorted((x * x for x in given["data"] if (x * x) % 2 == 1), reverse=True)
    raise AssertionError(f"no expected output for {kind}")


def write_backup_source(root: Path, rng: random.Random) -> None:
    """A small tree of fresh random bytes (new chunks: every backup uploads packs)."""
    (root / "sub").mkdir(parents=True)
    (root / "blob.bin").write_bytes(rng.randbytes(rng.randint(512, 2048) << 10))
    (root / "notes.txt").write_text(f"source {root.name}\n" * rng.randint(1, 50))
    (root / "sub" / "small.bin").write_bytes(rng.randbytes(rng.randint(1, 4096)))
    (root / "link").symlink_to("notes.txt")


class Workload:
    """Every task of the run, in drop order, and the backup sources they name."""

    def __init__(self, rng: random.Random, data: Path) -> None:
        self.rng, self.data = rng, data
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        backups = 0
        for i in range(TASKS):
            if i % BACKUP_EVERY == BACKUP_EVERY // 2:
                backups += 1
                if backups % VERIFY_EVERY == 0:
                    verify = {"repository": "main", "read_data": True}
                    self.bodies.append(
                        (f"verify-{i:06d}", {"kind": "backup-verify", "input": verify})
                    )
                    continue
                source = data / f"src-{i:06d}"
                strategy = "full" if backups % 2 else "incremental"
                task_id = f"backup-{i:06d}"
                body = {
                    "kind": "backup",
                    "input": {
                        "repository": "main",
                        "paths": [str(source)],
                        "strategy": strategy,
                        "tags": [task_id],
                    },
                }
                self.bodies.append((task_id, body))
                continue
            draw = rng.random()
            if draw < TILE_SHARE / 2:
                self.bodies.append((f"tile-{i:06d}", tile_body(i)))
            elif draw < TILE_SHARE:
                self.bodies.append((f"pipeline-{i:06d}", pipeline_body(i)))
            else:
                self.bodies.append((f"echo-{i:06d}", {"kind": "echo", "input": {"n": i}}))
        self.by_id = dict(self.bodies)
        self.submitted: list[str] = []
        self.error: list[BaseException] = []

    def kinds(self) -> Counter[str]:
        return Counter(body["kind"] for _, body in self.bodies)

    def produce(self, queue: Path, allowed: Callable[[], int], stop: threading.Event) -> None:
        """Drop the tasks in order, a few every 50 ms, up to ``allowed()`` in all and while
        fewer than ``MAX_PENDING`` wait; a backup's source is written just before its task."""
        try:
            pending = queue / "tasks"
            per_tick = max(1, PER_KILL // 30)
            while len(self.submitted) < len(self.bodies) and not stop.is_set():
                room = min(
                    allowed() - len(self.submitted), MAX_PENDING - len(visible_names(pending))
                )
                start = len(self.submitted)
                for task_id, body in self.bodies[start : start + max(0, min(per_tick, room))]:
                    if body["kind"] == "backup":
                        write_backup_source(Path(body["input"]["paths"][0]), self.rng)
                    drop_task(queue, task_id, body)
                    self.submitted.append(task_id)
                time.sleep(0.05)
        except BaseException as exc:
            self.error.append(exc)


# ---- helpers ---------------------------------------------------------------------------------


def record_ids(queue: Path, sub: str) -> set[str]:
    return {n[:-5] for n in visible_names(queue / sub) if n.endswith(".json")}


def record_count(queue: Path) -> int:
    return len(visible_names(queue / "results")) + len(visible_names(queue / "errors"))


def wait_for_records(queue: Path, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while record_count(queue) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def use_runner(d: DaemonProc, runner: str) -> None:
    """Make the daemon's next start use ``runner`` for tiles (as an operator edits config)."""
    config = json.loads(d.config_file.read_text())
    config["tiles"]["runner"] = runner
    d.config_file.write_text(json.dumps(config))


def repo_locks(repo_dir: Path) -> set[str]:
    locks = repo_dir / "locks"
    return visible_names(locks) if locks.is_dir() else set()


def wait_for_live_repo_lock(repo_dir: Path, dead: set[str], timeout: float) -> bool:
    """Wait until the live daemon holds a repository lock (one not left by the dead ones)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if repo_locks(repo_dir) - dead:
            return True
        time.sleep(0.005)
    return False


def processes_in(directory: Path) -> list[str]:
    """Processes working in ``directory`` (tile workers of killed daemons would be)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:  # not a process, gone, or not ours to look at
            continue
        if cwd.startswith(str(directory)):
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:80]!r}")
    return found


def repo_temp_files(repo_dir: Path) -> int:
    """``.tmp-*`` objects of uploads cut short: never listed, harmless, counted for the figures."""
    return sum(1 for _ in repo_dir.rglob(".tmp-*"))


# ---- the storm -------------------------------------------------------------------------------


@dataclass
class Storm:
    """Kills a daemon again and again while ``work`` is produced into its queue."""

    d: DaemonProc
    work: Workload
    repo_dir: Path
    rng: random.Random
    kills: int = 0
    early: int = 0  # kills while starting
    aimed: int = 0  # kills that found a backup or verify in progress
    paced: int = 0  # kills after the random amount of work they waited for
    docker_from: int | None = None  # the kill count at the first Docker restart
    backlogs: list[int] = field(default_factory=list)  # pending tasks at each kill
    ready_s: dict[str, list[float]] = field(default_factory=lambda: {"process": [], "docker": []})
    elapsed_s: float = 0.0

    def run(self) -> None:
        queue = self.d.queue()
        stop = threading.Event()
        producer = threading.Thread(
            target=self.work.produce,
            args=(queue, lambda: (self.kills + 1) * PER_KILL, stop),
            name="producer",
        )
        started = time.monotonic()
        producer.start()
        dead_locks: set[str] = set()  # repository locks the killed daemons left
        try:
            while self.kills < KILLS or producer.is_alive():
                if time.monotonic() - started > STORM_DEADLINE_S:
                    break
                self.wait_for_a_moment(queue, dead_locks)
                self.d.kill()  # SIGKILL: no drain, no cleanup
                self.kills += 1
                self.backlogs.append(len(visible_names(queue / "tasks")))
                dead_locks = repo_locks(self.repo_dir)  # no daemon runs: all are dead ones'
                if self.docker_from is None and self.kills >= KILLS * (1 - DOCKER_SHARE):
                    use_runner(self.d, "docker")
                    self.docker_from = self.kills
                if self.rng.random() < EARLY_KILL_SHARE:
                    # Die again while starting: mid-recovery, mid-rescan, mid-orphan-removal.
                    self.d.start(wait_ready=False)
                    time.sleep(self.rng.uniform(0.0, 1.0))
                    self.d.kill()
                    self.kills += 1
                    self.early += 1
                t0 = time.monotonic()
                self.d.start(timeout=60)
                runner = "process" if self.docker_from is None else "docker"
                self.ready_s[runner].append(time.monotonic() - t0)
        finally:
            stop.set()
            producer.join()
            self.elapsed_s = time.monotonic() - started
            if self.docker_from is None:  # cut short: the last daemon still cleans up Docker
                self.d.kill()
                use_runner(self.d, "docker")
                self.docker_from = self.kills
                self.d.start(timeout=60)

    def wait_for_a_moment(self, queue: Path, dead_locks: set[str]) -> None:
        """Wait for a random point of the daemon's work to kill it at."""
        if self.rng.random() < AIMED_SHARE:
            # Backups are a small share of the work: aim some kills into one in progress (a
            # repository lock the live daemon holds), at a random point of it.
            self.aimed += wait_for_live_repo_lock(self.repo_dir, dead_locks, timeout=3.0)
            time.sleep(self.rng.uniform(0.0, 0.1))
            return
        # Die after a random amount of work: mid-claim, mid-run, mid-commit.
        done = record_count(queue)
        outstanding = min(len(self.work.bodies), (self.kills + 1) * PER_KILL) - done
        # About PER_KILL on average, so that KILLS kills spread over TASKS tasks.
        want = self.rng.randint(PER_KILL // 2, 3 * PER_KILL // 2)
        goal = done + max(1, min(want, outstanding))
        self.paced += wait_for_records(queue, goal, PROGRESS_WAIT_S)
        time.sleep(self.rng.uniform(0.0, 0.05))

    def cut_short(self) -> bool:
        return self.kills < KILLS or len(self.work.submitted) < len(self.work.bodies)

    def summary(self) -> str:
        ready = "; ".join(
            f"{runner} median {statistics.median(v):.2f}s max {max(v):.2f}s"
            for runner, v in self.ready_s.items()
            if v
        )
        return (
            f"{self.kills} kills ({self.early} while starting, {self.aimed} into a backup or "
            f"verify, {self.paced} after a random amount of work; Docker from kill "
            f"{self.docker_from}) in {self.elapsed_s:.0f}s; pending at kills median "
            f"{statistics.median(self.backlogs or [0]):.0f} max {max(self.backlogs or [0])}; "
            f"restart-to-ready {ready}"
        )


@dataclass
class Outcome:
    """What the queue holds once the last daemon has settled."""

    expected: set[str]
    results: set[str]
    errors: set[str]
    left: dict[str, set[str]]
    failures: dict[str, Any]
    takeovers: int
    orphans_removed: int

    @classmethod
    def read(cls, d: DaemonProc, expected: set[str]) -> Outcome:
        queue = d.queue()
        errors = record_ids(queue, "errors")
        log = d.read_log()
        return cls(
            expected=expected,
            results=record_ids(queue, "results"),
            errors=errors,
            left={sub: visible_names(queue / sub) for sub in ("tasks", "locks", "tmp")},
            failures={
                i: json.loads((queue / "errors" / f"{i}.json").read_bytes()).get("error")
                for i in errors
            },
            takeovers=log.count("took over lock"),
            orphans_removed=sum(
                int(line.split("removed ")[1].split()[0])
                for line in log.splitlines()
                if "orphaned tile container" in line
            ),
        )

    @property
    def double(self) -> set[str]:
        return self.results & self.errors

    @property
    def lost(self) -> set[str]:
        return self.expected - self.results - self.errors

    @property
    def extra(self) -> set[str]:
        return (self.results | self.errors) - self.expected

    def summary(self) -> str:
        left = ", ".join(f"{len(v)} in {k}/" for k, v in self.left.items())
        return (
            f"{self.takeovers} locks of killed daemons taken over, {self.orphans_removed} "
            f"orphaned tile containers removed; {len(self.results)} results, "
            f"{len(self.errors)} errors, {len(self.lost)} lost, {len(self.double)} double, "
            f"{len(self.extra)} extra; left: {left}"
        )

    def examples(self) -> str:
        return (
            f"lost e.g. {sorted(self.lost)[:5]}, double e.g. {sorted(self.double)[:5]}, extra "
            f"e.g. {sorted(self.extra)[:5]}, left e.g. {[sorted(v)[:3] for v in self.left.values()]}"
            f", failures e.g. {list(self.failures.items())[:3]}"
        )


@pytest.fixture
def tile_node() -> Iterator[str]:
    """A node id of this test's own, so its tile containers can be found and removed."""
    from tests.docker_env import python_image, remove_node_containers

    python_image()  # built once per session; "ploinky/python" resolves to its tag
    node = f"kill-{os.urandom(4).hex()}"
    yield node
    remove_node_containers(node)


@pytest.mark.timeout(STORM_DEADLINE_S + SETTLE_S + 600)
def test_sigkill_storm_over_echo_tiles_and_backups(
    fast_dir: Path,
    tile_node: str,
    daemon_factory: Callable[..., DaemonProc],
    figures: Figures,
) -> None:
    from tests.docker_env import node_containers

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    repo_dir = fast_dir / "repo"
    password_file = fast_dir / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    ops.init_repository(str(repo_dir), PASSWORD, log_n=LOG_N)
    work = Workload(random.Random(seed), fast_dir / "data")
    d = daemon_factory(
        node=tile_node,
        state=fast_dir / "state",
        config={
            # lock_timeout only matters for locks killed between mkdir and owner.json: only a
            # silence can condemn them, so keep it short (a dead pid's are taken at once).
            # Enough slots that echo tasks flow while tile tasks wait for fresh workers.
            "queue_defaults": {"concurrency": 64, "lock_timeout": 3},
            "tiles": {"runner": "process", "pool_max": 2},
            "backup": {
                "repositories": {
                    "main": {"url": str(repo_dir), "password_file": str(password_file)}
                }
            },
        },
    )
    queue = d.queue()
    storm = Storm(d, work, repo_dir, random.Random(seed + 1))
    storm.run()
    assert not work.error, work.error
    expected = set(work.submitted)

    def settled() -> bool:
        done = record_ids(queue, "results") | record_ids(queue, "errors")
        return (
            done >= expected
            and not visible_names(queue / "tasks")
            and not visible_names(queue / "locks")
        )

    began = time.monotonic()
    settled_in_time = wait_until_quiet(settled, SETTLE_S)
    settle_s = time.monotonic() - began
    got = Outcome.read(d, expected)
    kinds = work.kinds()
    counts = (
        f"seed {seed}: {len(expected)} tasks {dict(kinds)}; {storm.summary()}; settled in "
        f"{settle_s:.0f}s; {got.summary()}"
    )
    detail = f"{counts}; {got.examples()}\n--- daemon log tail ---\n{d.read_log()[-3000:]}"
    assert not storm.cut_short(), f"the storm made no headway in {STORM_DEADLINE_S}s: {detail}"
    assert settled_in_time, f"not settled after {SETTLE_S:g}s: {detail}"
    assert not got.lost and not got.double and not got.extra and not got.failures, detail
    assert not any(got.left.values()), detail
    assert got.takeovers > 0, f"no kill landed while a task was claimed: {detail}"
    assert "Traceback" not in d.read_log(), detail
    by_runner, snapshots_recorded = check_records(queue, work, got.results, tile_node)
    assert by_runner["docker"] and by_runner["process"], f"tile tasks by runner: {by_runner}"

    assert d.stop() == 0
    assert node_containers(tile_node) == [], "tile containers left after the daemon stopped"
    assert processes_in(fast_dir) == [], "processes of killed daemons left running"
    backup = check_repository(d, repo_dir, password_file, snapshots_recorded, work, fast_dir)

    throughput = len(expected) / (storm.elapsed_s + settle_s)
    figures.report(
        f"{counts}; tile tasks by runner {dict(by_runner)}; repository: {backup['snapshots']} "
        f"snapshots of {kinds['backup']} backup tasks, verify --read-data clean "
        f"({backup['packs']} packs), {backup['restored']} snapshots restored equal, "
        f"{backup['stale_locks']} stale locks of killed daemons (0 live), "
        f"{backup['temp_files']} upload temp files; {throughput:.0f} tasks/s overall",
        seed=seed,
        tasks=len(expected),
        tasks_by_kind=dict(kinds),
        tiles_by_runner=dict(by_runner),
        kills=storm.kills,
        early_kills=storm.early,
        aimed_kills=storm.aimed,
        paced_kills=storm.paced,
        docker_from_kill=storm.docker_from,
        pending_at_kills_median=statistics.median(storm.backlogs),
        pending_at_kills_max=max(storm.backlogs),
        ready_s={k: round(statistics.median(v), 3) for k, v in storm.ready_s.items() if v},
        storm_s=round(storm.elapsed_s, 1),
        settle_s=round(settle_s, 1),
        takeovers=got.takeovers,
        orphan_containers_removed=got.orphans_removed,
        results=len(got.results),
        errors=len(got.errors),
        lost=len(got.lost),
        double=len(got.double),
        extra=len(got.extra),
        snapshots=backup["snapshots"],
        verify_ok=backup["verify_ok"],
        restored=backup["restored"],
        stale_repo_locks=backup["stale_locks"],
        repo_temp_files=backup["temp_files"],
        tasks_per_s=round(throughput, 1),
    )


def wait_until_quiet(check: Callable[[], bool], timeout: float) -> bool:
    try:
        wait_until("the queue to settle", check, timeout)
    except AssertionError:
        return False
    return True


def check_records(
    queue: Path, work: Workload, results: set[str], node: str
) -> tuple[Counter[str], dict[str, str]]:
    """Every output is right (a re-run after a kill must not have mixed anything up); the tile
    tasks by runner, and the snapshot each backup task recorded."""
    by_runner: Counter[str] = Counter()
    snapshots: dict[str, str] = {}
    wrong = []
    for task_id in sorted(results):
        rec = json.loads((queue / "results" / f"{task_id}.json").read_bytes())
        body = work.by_id[task_id]
        ok = rec["id"] == task_id and rec["status"] == "succeeded" and rec["node"] == node
        if body["kind"] == "backup":
            out = rec["output"]
            ok = ok and out["tags"] == [task_id] and out["paths"] == body["input"]["paths"]
            snapshots[out["snapshot"]] = task_id
        elif body["kind"] == "backup-verify":
            ok = ok and rec["output"]["ok"] is True
        else:
            ok = ok and rec["output"] == expected_output(body)
        if body["kind"] in ("tile", "pipeline"):
            by_runner[rec["notes"]["tiles"]["runner"]] += 1
        if not ok:
            wrong.append(rec)
    assert not wrong, f"{len(wrong)} wrong records, e.g. {wrong[:3]}"
    return by_runner, snapshots


def check_repository(
    d: DaemonProc,
    repo_dir: Path,
    password_file: Path,
    recorded: dict[str, str],
    work: Workload,
    scratch: Path,
) -> dict[str, Any]:
    """The repository after the storm: verify every byte (as an operator would, with the CLI),
    restore every snapshot, judge the locks the dead daemons left."""
    repo_args = ("--repo", str(repo_dir), "--password-file", str(password_file))
    verify = d.cli("backup", "verify", "--read-data", "--json", *repo_args, timeout=600)
    assert verify.returncode == 0, (verify.returncode, verify.stdout[-3000:], verify.stderr)
    report = json.loads(verify.stdout)
    assert report["ok"] is True and not report["errors"], report

    repo = ops.open_repository(str(repo_dir), PASSWORD)
    snapshots = repo.snapshots()
    by_id = {sid: snap for sid, snap in snapshots}
    missing = set(recorded) - set(by_id)
    assert not missing, f"recorded snapshots not in the repository: {sorted(missing)[:5]}"
    backed_up = {t for t, body in work.bodies if body["kind"] == "backup"}
    tagged = {tag for snap in by_id.values() for tag in snap.tags}
    assert tagged == backed_up, f"snapshots of unknown tasks: {sorted(tagged - backed_up)[:5]}"
    restored_count = 0
    for sid, snap in snapshots:
        # Killed runs of a task may have written a snapshot before their record: each one
        # must restore on its own, like any other.
        (source,) = snap.paths
        target = scratch / "restore" / sid[:12]
        ops.restore(repo, sid, str(target))
        got, want = listing(restored(target, Path(source))), listing(source)
        assert got == want, f"snapshot {sid[:12]} of {source} restores differently"
        restored_count += 1

    locks = list_locks(repo)
    live = [h for h in locks if not h.stale]
    assert not live, f"locks of dead daemons judged live: {[h.info for h in live][:3]}"
    unlock = d.cli("backup", "unlock", "--json", *repo_args)
    assert unlock.returncode == 0, unlock.stderr
    assert len(json.loads(unlock.stdout)["removed"]) == len(locks)
    assert list_locks(repo) == []
    return {
        "snapshots": len(snapshots),
        "verify_ok": report["ok"],
        "packs": report["packs"],
        "restored": restored_count,
        "stale_locks": len(locks),
        "temp_files": repo_temp_files(repo_dir),
    }
