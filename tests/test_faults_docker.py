"""Docker faults under a real daemon, on a remote engine (issue #8: SPEC §6 and §11).

Every daemon here runs ``[tiles] runner = "docker"`` with ``DOCKER_HOST`` pointing at a second
dockerd the module starts on its own socket (``tests/engine_env.py``), so the engine can be
stopped and started without disturbing anyone else's tests on the main engine. The faults:

- tiles on the remote engine give the outputs they give on the main engine, and their
  containers live on the remote engine only;
- the engine stopped (SIGTERM: it kills the warm containers) and started again under a stream
  of tile tasks: tasks wait without spending attempts, ``/v1/ready`` says why, the pool heals;
- a tile container OOM-killed or crashing mid-task: a clear record, retries per
  ``max_attempts``, the container replaced; a tile that never answers ends with ``TIMEOUT``;
- ``ploinkyd`` SIGKILLed while tiles run: the next daemon removes the orphan containers and
  every task ends as exactly one record.

The misbehaving operators (``tests/tile_ops/docker_ops.py``) reach the daemon the way a user's
would: as an agent directory (``faulty``) whose module is that file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.client import ApiError
from ploinkyd.errors import PloinkyError
from ploinkyd.tiles.docker_containers import LABEL_DAEMON, LABEL_NODE
from tests import docker_env
from tests.conftest import Figures
from tests.daemon_harness import DaemonProc, drop_task, visible_names, wait_until
from tests.engine_env import SecondEngine
from tests.fault_figures import scaled

pytestmark = pytest.mark.faults

AGENT = "faulty"
START_TIMEOUT_S = 90.0
AGENT_TOML = """\
name = "faulty"
description = "Tile operators that misbehave on purpose: crash, run out of memory, hang"
concurrency = 2

[resources]
memory_mb = 64

[[mounts]]
source = "scratch"
target = "/scratch"
writable = true

[[operators]]
name = "dk_token"
module = "docker_ops"

[[operators]]
name = "dk_exit"
module = "docker_ops"

[[operators]]
name = "dk_alloc"
module = "docker_ops"

[[operators]]
name = "dk_nap"
module = "docker_ops"

[[operators]]
name = "dk_fault_once"
module = "docker_ops"
"""


# ---- the remote engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[SecondEngine]:
    """The second engine, with the tile image copied in; removed without a trace at the end."""
    docker_env.ensure_engine()
    tag = docker_env.python_image()
    eng = SecondEngine()
    try:
        eng.start()
        eng.load_images([tag])
        yield eng
    finally:
        forced = eng.close()
    # Everything should have gone the ordinary way (dockerd stopped its own containers).
    assert not forced, f"the second engine needed forcing at cleanup: {forced}"
    assert not eng.home.exists() and not eng.exec_root.exists()


# ---- daemons ------------------------------------------------------------------------------


@dataclass
class Rig:
    """Daemons of one test and what they leave on both engines (removed at teardown)."""

    tmp_path: Path
    factory: Callable[..., DaemonProc]
    engine: SecondEngine
    daemons: list[DaemonProc] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)

    @property
    def agents(self) -> Path:
        return self.tmp_path / "agents"

    @property
    def scratch(self) -> Path:
        return self.agents / AGENT / "scratch"

    def add_agent(self) -> None:
        agent_dir = self.agents / AGENT
        if agent_dir.exists():
            return
        agent_dir.mkdir(parents=True)
        (agent_dir / "agent.toml").write_text(AGENT_TOML)
        shutil.copy(docker_env.TILE_OPS / "docker_ops.py", agent_dir / "docker_ops.py")
        # The containers run as nobody: they must be able to leave markers here.
        self.scratch.mkdir()
        self.scratch.chmod(0o777)

    def daemon(
        self,
        *,
        remote: bool = True,
        node: str | None = None,
        state: Path | None = None,
        start: bool = True,
        **tiles: Any,
    ) -> DaemonProc:
        """A ``ploinkyd run`` with the docker runner, on the second engine when ``remote``,
        serving the ``faulty`` agent. Each gets a node id of its own, so its containers are
        told apart from everyone else's on either engine."""
        self.add_agent()
        node = node or f"{'remote' if remote else 'local'}-{uuid.uuid4().hex[:8]}"
        self.nodes.add(node)
        env = {"DOCKER_HOST": self.engine.url} if remote else {}
        d = self.factory(
            node=node,
            state=state or self.tmp_path / f"state-{node}",
            config={
                "tiles": {"runner": "docker", **tiles},
                "agents": {"paths": [str(self.agents)]},
            },
            extra_env=env,
            start=False,
        )
        self.daemons.append(d)
        # Generous: the machine is shared, and others' tests load it too.
        return d.start(timeout=START_TIMEOUT_S) if start else d

    def remote_containers(self, node: str, *labels: str) -> list[dict[str, Any]]:
        return self.engine.containers([f"{LABEL_NODE}={node}", *labels])

    def close(self) -> None:
        for d in self.daemons:
            try:
                d.stop(timeout=30)
            except subprocess.TimeoutExpired:
                d.kill()
        for node in self.nodes:
            if self.engine.running:
                self.engine.remove_containers([f"{LABEL_NODE}={node}"])
            docker_env.remove_node_containers(node)


@pytest.fixture
def rig(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc], engine: SecondEngine
) -> Iterator[Rig]:
    if not engine.running:  # a failed test may have left it stopped
        engine.start()
    r = Rig(tmp_path, daemon_factory, engine)
    yield r
    r.close()


# ---- tasks and records --------------------------------------------------------------------


def tile_task(i: int) -> tuple[dict[str, Any], Any]:
    """Task ``i`` of a stream, alternately one operator and a fused chain, with the output it
    must give. ``cache: false``: every task is a real round trip to a container."""
    if i % 2 == 0:
        data = [i, i + 1, i + 2]
        body = {"op": "map", "params": {"expr": "x * 3 + 1"}, "data": data, "cache": False}
        return {"kind": "tile", "input": body}, [x * 3 + 1 for x in data]
    data = list(range(i, i + 12))
    chain = [
        {"op": "map", "params": {"expr": "x * 3"}},
        {"op": "filter", "params": {"expr": "x % 2 == 0"}},
        {"op": "sort", "params": {"reverse": True}},
        {"op": "take", "params": {"n": 3}},
    ]
    expected = sorted((x * 3 for x in data if (x * 3) % 2 == 0), reverse=True)[:3]
    return {
        "kind": "pipeline",
        "input": {"data": data, "pipeline": chain, "cache": False},
    }, expected


def faulty(op: str, params: dict[str, Any], data: Any = None, **task: Any) -> dict[str, Any]:
    """A tile task calling one of the agent's operators from the default queue."""
    return {
        "kind": "tile",
        "input": {"op": f"{AGENT}.{op}", "params": params, "data": data},
        **task,
    }


def settle(d: DaemonProc, ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until each of ``ids`` has a record and none is left in tasks/ or locks/; check that
    each ended as exactly one record (never in both results/ and errors/, no duplicate)."""
    queue = d.queue()
    names = {f"{i}.json" for i in ids}

    def done() -> bool:
        recorded = visible_names(queue / "results") | visible_names(queue / "errors")
        return names <= recorded and not names & visible_names(queue / "tasks")

    try:
        wait_until(f"{len(ids)} records", done, timeout)
        wait_until("their locks to go", lambda: not ids & visible_names(queue / "locks"), 15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{d.read_log()[-4000:]}") from None
    results = {n[:-5] for n in visible_names(queue / "results") if n.endswith(".json")}
    errors = {n[:-5] for n in visible_names(queue / "errors") if n.endswith(".json")}
    assert not results & errors, f"recorded twice: {sorted(results & errors)}"
    assert ids <= results | errors
    assert not [n for n in errors if ".dup-" in n], "a task was recorded as a duplicate"
    return d.records()


def ready_state(d: DaemonProc) -> tuple[int, str]:
    """``/v1/ready`` as (HTTP status, reason)."""
    try:
        d.client(timeout=5).get("/v1/ready")
    except ApiError as exc:
        return exc.http_status, exc.message
    return 200, ""


def runner_status(d: DaemonProc) -> dict[str, Any]:
    status: dict[str, Any] = d.client().get("/v1/tiles")["runner"]
    return status


def busy(d: DaemonProc, owner: str) -> int:
    """How many containers of ``owner``'s pools are serving a call."""
    return sum(p["busy"] for p in runner_status(d)["pools"] if p["pool"] == owner)


def shared_pool(d: DaemonProc) -> dict[str, Any] | None:
    pools = [p for p in runner_status(d)["pools"] if p["pool"] == "shared"]
    return pools[0] if pools else None


def tile_containers(d: DaemonProc) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = d.client().get("/v1/tiles/containers")["data"]
    return found


# ---- tests --------------------------------------------------------------------------------


def test_tiles_on_a_remote_engine_match_the_main_engine(rig: Rig, figures: Figures) -> None:
    local = rig.daemon(remote=False)
    remote = rig.daemon(remote=True)
    ids = [f"t{i:02d}" for i in range(8)]
    for i, task_id in enumerate(ids):
        body, _ = tile_task(i)
        local.drop(task_id, body)
        remote.drop(task_id, body)
    on_main = settle(local, set(ids), 90)
    on_remote = settle(remote, set(ids), 90)
    for i, task_id in enumerate(ids):
        _, expected = tile_task(i)
        a, b = on_main[task_id], on_remote[task_id]
        assert a["status"] == b["status"] == "succeeded", (a, b)
        assert a["output"] == b["output"] == expected
        assert a["notes"]["tiles"]["calls"] == b["notes"]["tiles"]["calls"] == 1
    # A chain is fused into one round trip on either engine.
    assert {on_remote[t]["notes"]["tiles"]["groups"] for t in ids} == {1}

    tiles = runner_status(remote)
    assert tiles["engine_url"] == rig.engine.url
    node_r, node_l = remote.node, local.node
    mine = rig.remote_containers(node_r)
    assert mine, "the remote daemon's containers are not on the second engine"
    served = {c["container_id"] for c in tile_containers(remote) if c["state"] == "running"}
    assert served <= {c["Id"] for c in mine}
    assert docker_env.node_containers(node_r) == [], "remote tiles ran on the main engine"
    assert docker_env.node_containers(node_l), "the local daemon's containers are missing"
    assert rig.remote_containers(node_l) == []
    start_s, load_s = rig.engine.start_s, rig.engine.load_s
    figures.report(
        f"{len(ids)} tile tasks (single op + fused chain) on a second dockerd: same outputs as "
        f"on the main engine; {len(mine)} container(s) on the second engine, 0 on the main one; "
        f"engine answered {start_s:.2f}s after start, tile image copied in {load_s:.1f}s",
        tasks=len(ids),
        engine_start_s=round(start_s, 3),
        image_load_s=round(load_s, 2),
        remote_containers=len(mine),
        main_engine_containers=0,
    )


@dataclass
class Sample:
    """What the daemon said at one instant: ``/v1/ready`` and its shared pool."""

    at: float
    status: int
    reason: str
    warm: int  # running containers of the shared pool


def sample(d: DaemonProc) -> Sample:
    status, reason = ready_state(d)
    pool = shared_pool(d)
    warm = pool["states"].get("running", 0) if pool is not None else 0
    return Sample(time.monotonic(), status, reason, warm)


@pytest.mark.slow
def test_engine_stopped_and_started_mid_run(rig: Rig, figures: Figures) -> None:
    total = scaled(200)
    down_s = 3.0
    pool_min = 2
    # idle_timeout sets the housekeeping ping (a quarter of it): the daemon notices an outage
    # even between calls.
    d = rig.daemon(pool_min=pool_min, pool_max=4, idle_timeout=4)
    queue = d.queue()
    expected = {f"s{i:04d}": tile_task(i) for i in range(total)}
    naps = {"nap0", "nap1"}
    produce_for = 16.0 * max(1, total // 200)

    def produce() -> None:
        per_tick = max(1, total // int(produce_for / 0.1))
        items = list(expected.items())
        for start in range(0, total, per_tick):
            for task_id, (body, _) in items[start : start + per_tick]:
                drop_task(queue, task_id, body)
            time.sleep(0.1)

    samples: list[Sample] = []
    polling = threading.Event()

    def poll() -> None:
        while not polling.is_set():
            with contextlib.suppress(PloinkyError, OSError):
                samples.append(sample(d))
            time.sleep(0.1)

    producer = threading.Thread(target=produce, name="producer")
    poller = threading.Thread(target=poll, name="poller")
    producer.start()
    poller.start()
    try:
        wait_until("a quarter of the records", lambda: len(d.records()) >= total // 4, 90)
        # Two calls that are surely in flight when the engine kills their containers.
        for task_id in naps:
            d.drop(task_id, faulty("dk_nap", {"seconds": 2}, task_id))
        wait_until("both naps to be running", lambda: busy(d, f"agent:{AGENT}") >= 2, 30)
        before = {c["Id"] for c in rig.remote_containers(d.node)}
        done_at_stop = len(d.records())
        t_stop, wall_stop = time.monotonic(), time.time()
        stop_s = rig.engine.stop()
        time.sleep(down_s)
        rig.engine.start()
        t_up = time.monotonic()
        producer.join(120)
        records = settle(d, set(expected) | naps, 180 + produce_for)
        t_done = time.monotonic()
        wait_until("ready again", lambda: ready_state(d)[0] == 200, 60)
    finally:
        polling.set()
        poller.join(30)
        producer.join(30)

    failed = {k: r for k, r in records.items() if r["status"] != "succeeded"}
    assert not failed, json.dumps(next(iter(failed.values())), indent=1)
    expected.update({k: ({}, k) for k in naps})
    wrong = [k for k, r in records.items() if r["output"] != expected[k][1]]
    assert not wrong, f"wrong outputs: {wrong[:5]}"
    spent = {k: r["attempts"] for k, r in records.items() if r["attempts"] != 1}
    assert not spent, f"tasks that spent attempts on the outage: {spent}"
    # The naps were cut short by the engine and ran again from the start once it was back.
    for k in naps:
        started = datetime.fromisoformat(records[k]["started_at"].replace("Z", "+00:00"))
        assert started.timestamp() > wall_stop, records[k]
    deferrals = d.client().get("/v1/queues/default")["deferrals"]
    assert deferrals >= 1, "no task met the outage: the test did not test it"

    down = [s for s in samples if t_stop <= s.at <= t_up and s.status == 503]
    assert down, "/v1/ready never said 503 while the engine was down"
    assert all(rig.engine.url in s.reason for s in down), down[:3]
    back = next((s for s in samples if s.at > t_up and s.status == 200), None)
    assert back is not None, "/v1/ready did not say 200 once the engine was back"
    warm_again = next(
        (s for s in samples if s.at > t_up and s.status == 200 and s.warm >= pool_min), None
    )
    # The containers the outage killed are removed from the engine, once it answers again.
    wait_until(
        "the containers killed by the outage to be removed",
        lambda: not before & {c["Id"] for c in rig.remote_containers(d.node)},
        60,
    )

    # A second outage while nothing runs: the pool must heal without a task asking for it.
    def warm_ids() -> set[str]:
        return {
            c["container_id"]
            for c in tile_containers(d)
            if c["state"] == "running" and c["pool"] == "shared"
        }

    wait_until("the pool to settle at pool_min", lambda: len(warm_ids()) == pool_min, 60)
    idle_before = warm_ids()
    rig.engine.stop()
    wait_until("the daemon to notice", lambda: ready_state(d)[0] == 503, 30)
    assert sample(d).warm == 0, "dead containers are still reported as running"
    rig.engine.start()
    t_idle_up = time.monotonic()
    wait_until("the idle pool to heal", lambda: len(warm_ids()) >= pool_min, 60)
    idle_heal_s = time.monotonic() - t_idle_up
    assert not warm_ids() & idle_before
    running = {c["Id"] for c in rig.remote_containers(d.node) if c["State"] == "running"}
    assert warm_ids() <= running
    wait_until(
        "the idle pool's dead containers to be removed",
        lambda: not idle_before & {c["Id"] for c in rig.remote_containers(d.node)},
        60,
    )
    outage = t_up - t_stop
    ready_s = back.at - t_up
    warm_s = warm_again.at - t_up if warm_again is not None else float("nan")
    figures.report(
        f"{total} tile tasks at concurrency 4; engine SIGTERMed after {done_at_stop} records "
        f"(it stopped in {stop_s:.1f}s) and up again {outage:.1f}s later: {len(records)} "
        f"records, 0 lost, 0 double, 0 failed, {deferrals} deferrals, 0 attempts spent; "
        f"/v1/ready 503 in {len(down)} polls, 200 {ready_s:.1f}s after the engine, "
        f"{pool_min} warm {warm_s:.1f}s after, all done {t_done - t_up:.1f}s after; idle pool "
        f"healed {idle_heal_s:.1f}s after a second outage",
        tasks=total,
        lost=0,
        double=0,
        failed=0,
        deferrals=deferrals,
        outage_s=round(outage, 2),
        engine_stop_s=round(stop_s, 2),
        ready_again_s=round(ready_s, 2),
        warm_again_s=round(warm_s, 2),
        drained_s=round(t_done - t_up, 2),
        idle_pool_heal_s=round(idle_heal_s, 2),
    )


def test_container_oom_killed_or_crashing_mid_task(rig: Rig, figures: Figures) -> None:
    d = rig.daemon(pool_max=4)
    alloc = {"mb": 256}  # the agent's containers have 64 MB
    d.drop("oom", faulty("dk_alloc", alloc, max_attempts=2))
    d.drop("crash", faulty("dk_exit", {"status": 3, "say": "tile gave up"}, max_attempts=2))
    once = {"dir": "/scratch", **alloc}
    d.drop(
        "oom-once",
        faulty("dk_fault_once", {**once, "fault": "alloc", "key": "oom"}, "kept", max_attempts=2),
    )
    d.drop(
        "crash-once",
        faulty(
            "dk_fault_once",
            {**once, "fault": "exit", "status": 5, "key": "crash"},
            "kept",
            max_attempts=2,
        ),
    )
    records = settle(d, {"oom", "crash", "oom-once", "crash-once"}, 120)

    oom = records["oom"]
    assert oom["status"] == "failed" and oom["attempts"] == 2, oom
    assert oom["error"]["code"] == "CONTAINER_OOM", oom["error"]
    assert "memory limit" in oom["error"]["message"]
    assert "memory_mb" in oom["error"]["message"]  # what to change
    assert oom["task"]["meta"]["last_error"]["code"] == "CONTAINER_OOM"

    crash = records["crash"]
    assert crash["status"] == "failed" and crash["attempts"] == 2, crash
    assert crash["error"]["code"] == "CONTAINER_FAILED", crash["error"]
    assert "exited with code 3" in crash["error"]["message"]
    assert "tile gave up" in crash["error"]["message"]  # its last stderr line
    assert crash["error"]["details"]["exit_code"] == 3

    for key in ("oom-once", "crash-once"):
        r = records[key]
        assert r["status"] == "succeeded" and r["attempts"] == 2 and r["output"] == "kept", r
    assert sorted(p.name for p in rig.scratch.iterdir()) == ["crash", "oom"]

    # Each dead container is replaced and removed; the next tasks run in the agent's pool.
    def died() -> set[str]:
        return {
            c["container_id"]
            for c in tile_containers(d)
            if c.get("removed_because") == "exited mid-call"
        }

    # 2 + 2 failed attempts, 1 + 1 first tries (removed in the background: wait for them).
    wait_until("six dead containers replaced", lambda: len(died()) >= 6, 30)
    dead = died()
    after = {f"next{i}" for i in range(8)}
    for task_id in after:
        d.drop(task_id, faulty("dk_token", {}))
    records = settle(d, after | set(records), 60)
    assert all(records[t]["status"] == "succeeded" for t in after)
    wait_until(
        "the dead containers to be removed from the engine",
        lambda: not dead & {c["Id"] for c in rig.remote_containers(d.node)},
        30,
    )
    exited = [c for c in rig.remote_containers(d.node) if c["State"] != "running"]
    assert exited == [], exited
    tokens = {records[t]["output"] for t in after}
    figures.report(
        "OOM-killed tile: CONTAINER_OOM after 2 of 2 attempts; crashed tile: CONTAINER_FAILED "
        "(exit code and stderr in the message) after 2 of 2; once-only OOM and crash succeeded "
        f"on attempt 2; {len(dead)} dead containers replaced and removed, next 8 tasks "
        f"succeeded on {len(tokens)} container(s)",
        oom_code=oom["error"]["code"],
        crash_code=crash["error"]["code"],
        dead_containers=len(dead),
        next_tasks_ok=len(after),
    )


def test_tile_that_never_answers_times_out_and_others_flow(rig: Rig, figures: Figures) -> None:
    d = rig.daemon(pool_max=4)
    # Four containers warm first, so the tasks that flow past the hang need no cold start.
    warm = {f"w{i}" for i in range(4)}
    for task_id in warm:
        d.drop(task_id, faulty("dk_nap", {"seconds": 0.5}, task_id))
    settle(d, warm, 60)
    timeout_s = 12
    d.drop(
        "hang",
        faulty("dk_nap", {"seconds": 3600}, "late", timeout_s=timeout_s, max_attempts=1),
    )
    wait_until("the hanging task to be claimed", lambda: (d.queue() / "locks" / "hang").exists())
    t_hang = time.monotonic()
    quick = {f"q{i:02d}" for i in range(12)}
    for task_id in sorted(quick):
        d.drop(task_id, faulty("dk_token", {}))
    records = settle(d, quick, 60)
    flowed_in = time.monotonic() - t_hang
    # They all finished while the hanging one still held its container (long timeout_s).
    assert "hang" not in d.records(), "the hang ended before the other tasks could flow"
    assert all(records[t]["status"] == "succeeded" for t in quick)
    records = settle(d, warm | quick | {"hang"}, 60)
    hang = records["hang"]
    assert hang["status"] == "failed" and hang["attempts"] == 1, hang
    assert hang["error"]["code"] == "TIMEOUT", hang["error"]
    assert f"timeout_s={timeout_s}" in hang["error"]["message"]

    def killed() -> list[dict[str, Any]]:
        return [c for c in tile_containers(d) if c.get("removed_because") == "call cancelled"]

    wait_until("the runner to kill the hung container", killed, 30)
    assert len(killed()) == 1, json.dumps(tile_containers(d), indent=1)
    cid = killed()[0]["container_id"]
    wait_until(
        "the hung container to be removed from the engine",
        lambda: cid not in {c["Id"] for c in rig.remote_containers(d.node)},
        30,
    )
    more = {f"m{i}" for i in range(4)}
    for task_id in more:
        d.drop(task_id, faulty("dk_token", {}))
    records = settle(d, warm | quick | more | {"hang"}, 60)
    assert all(records[t]["status"] == "succeeded" for t in more)
    figures.report(
        f"a tile that never answers: TIMEOUT after timeout_s={timeout_s}, its container killed "
        f"and removed; {len(quick)} other tasks finished {flowed_in:.1f}s after it started, "
        f"{len(more)} more after",
        timeout_code=hang["error"]["code"],
        others_ok=len(quick) + len(more),
    )


def test_sigkilled_daemon_leaves_no_orphans_and_one_record_each(rig: Rig, figures: Figures) -> None:
    node = f"killed-{uuid.uuid4().hex[:8]}"
    state = rig.tmp_path / "state-killed"
    d = rig.daemon(node=node, state=state, pool_min=2, pool_max=4)
    total = scaled(120)
    ids = set()
    for i in range(total):
        task_id = f"k{i:04d}"
        body = faulty("dk_nap", {"seconds": 0.3}, i) if i % 4 == 0 else tile_task(i)[0]
        d.drop(task_id, body)
        ids.add(task_id)
    wait_until("a quarter of the records", lambda: len(d.records()) >= total // 4, 90)
    old = runner_status(d)["daemon_id"]
    d.kill()  # SIGKILL, mid-run
    at_kill = len(d.records())
    held = visible_names(d.queue() / "locks")  # claimed by the dead daemon
    orphans = rig.remote_containers(node, f"{LABEL_DAEMON}={old}")
    assert orphans, "the killed daemon left no container: the test did not kill it mid-run"

    d.start(timeout=START_TIMEOUT_S)
    new = runner_status(d)["daemon_id"]
    assert new != old
    records = settle(d, ids, 180)
    failed = {k: r for k, r in records.items() if r["status"] != "succeeded"}
    assert not failed, json.dumps(next(iter(failed.values())), indent=1)
    wait_until(
        "the killed daemon's containers to be removed",
        lambda: rig.remote_containers(node, f"{LABEL_DAEMON}={old}") == [],
        60,
    )
    figures.report(
        f"ploinkyd SIGKILLed with {at_kill} of {total} tile tasks done, {len(held)} claimed "
        f"and {len(orphans)} containers on the engine: after restart all {len(orphans)} "
        f"orphans removed, {len(ids)} tasks, {len(ids)} records, 0 lost, 0 double",
        tasks=total,
        lost=0,
        double=0,
        orphans=len(orphans),
        claimed_at_kill=len(held),
    )
