"""A guided tour: a real daemon on a scratch directory, tile, pipeline, agent and backup tasks
dropped as files, their records.

Run it with ``python -m ploinkyd.demo`` (``bash scripts/demo.sh`` sets up ``.venv``, the
Docker engine and the tile images first). Tiles run in sandboxed Docker containers; only when
no Docker engine answers does the demo fall back to ``--runner process`` and say so.
Exits 0 when every record is what it should be, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ploinkyd
from ploinkyd.client import Client
from ploinkyd.errors import PloinkyError

Expected = tuple[Any, str, str | None]  # the file's content, its record's status and error code
REPO = Path(__file__).resolve().parent.parent
SALES = "region,amount\neast,12.50\nwest,3\neast,7.25\nnorth,10\nwest,4.10\n"


def example_tasks(not_before: datetime) -> dict[str, Expected]:
    stamp = not_before.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "double": (
            {
                "kind": "tile",
                "input": {"op": "map", "params": {"expr": "x * 2"}, "data": [1, 2, 3]},
            },
            "succeeded",
            None,
        ),
        "top3": (
            {
                "kind": "pipeline",
                "input": {
                    "data": [5, 3, 9, 1, 7, 4],
                    "pipeline": [
                        {"op": "filter", "params": {"expr": "x > 2"}},
                        {"op": "sort", "params": {"reverse": True}},
                        {"op": "take", "params": {"n": 3}},
                    ],
                },
            },
            "succeeded",
            None,
        ),
        "teams": (
            {
                "kind": "pipeline",
                "input": {
                    "data": "name,team\nann,red\nbob,blue\ncy,red\n",
                    "pipeline": {
                        "nodes": [
                            {"id": "rows", "op": "csv_parse", "inputs": ["$data"]},
                            {
                                "id": "by_team",
                                "op": "group_by",
                                "params": {"key": "x['team']"},
                                "inputs": ["rows"],
                            },
                            {"id": "people", "op": "count", "inputs": ["rows"]},
                        ],
                        "outputs": ["by_team", "people"],
                    },
                },
            },
            "succeeded",
            None,
        ),
        "later": ({"kind": "echo", "input": [1, 2, 3], "not_before": stamp}, "succeeded", None),
        "oops": (
            {"kind": "tile", "input": {"op": "map", "params": {"expr": "1 / x"}, "data": [1, 0]}},
            "failed",
            "OP_FAILED",
        ),
        "broken": ('{"kind": "tile", "input": ', "failed", "INVALID_JSON"),
        "mystery": ({"kind": "resize", "input": {"width": 64}}, "failed", "UNKNOWN_KIND"),
        "nightly": ({"kind": "backup", "input": {"job": "agents"}}, "succeeded", None),
    }


def backup_config(root: Path, agents: Path) -> str:
    """A repository and a backup job for the demo's agents directory (restores go to
    ``restored/``). The repository is made here, as ``ploinkyd backup init`` would."""
    from ploinkyd.backup import ops

    password = root / "backup.pass"
    password.write_text("demo password\n")
    ops.init_repository(str(root / "backups"), "demo password")
    return (
        f'[backup]\nrestore_roots = ["{root / "restored"}"]\n'
        f'[backup.repositories.demo]\nurl = "{root / "backups"}"\n'
        f'password_file = "{password}"\n'
        f'[[backup.jobs]]\nname = "agents"\npaths = ["{agents}"]\nrepository = "demo"\n'
    )


def docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def drop(queue: Path, task_id: str, body: Any) -> None:
    """What any producer does: write under tmp/, then rename(2) into tasks/ (atomic)."""
    text = body if isinstance(body, str) else json.dumps(body)
    tmp = queue / "tmp" / f"{task_id}.json.part"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, queue / "tasks" / f"{task_id}.json")
    print(f"  tasks/{task_id + '.json':<13} {text}")


def wait_for_dir(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_ready(client: Client, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with code {proc.returncode}")
        with contextlib.suppress(PloinkyError):
            if client.get("/v1/ready").get("ready"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"the daemon was not ready after {timeout:.0f}s")


def wait_records(queue: Path, ids: list[str], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    records: dict[str, dict[str, Any]] = {}
    while len(records) < len(ids) and time.monotonic() < deadline:
        for task_id in ids:
            for sub in ("results", "errors"):
                path = queue / sub / f"{task_id}.json"
                if task_id not in records and path.exists():
                    records[task_id] = json.loads(path.read_bytes())
        time.sleep(0.1)
    return records


def show(task_id: str, rec: dict[str, Any]) -> str:
    where = "results" if rec["status"] == "succeeded" else "errors"
    out = rec.get("output")
    if rec.get("error"):
        what = f"{rec['error']['code']}: {rec['error']['message']}"
    elif isinstance(out, dict) and "short_id" in out and "summary" in out:
        s = out["summary"]
        what = (
            f"snapshot {out['short_id']}: {s['files_new']} new files, "
            f"{s['bytes_added_stored']} bytes stored"
        )
    elif isinstance(out, dict) and "short_id" in out:
        what = f"restored snapshot {out['short_id']}: {out['files']} files to {out['target']}"
    else:
        what = f"output {json.dumps(rec['output'])}"
    return f"  {where + '/' + task_id + '.json':<21} {rec['status']:<9} {what}"


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="ploinkyd-demo-"))
    state, runtime, log = root / "state", root / "run", root / "daemon.log"
    queue = state / "queues" / "default"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOINKY_", "NOTIFY_"))}
    # The daemon must import the very ploinkyd this demo runs from.
    paths = [str(Path(ploinkyd.__file__).resolve().parent.parent), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    agents = root / "agents"
    shutil.copytree(REPO / "agents" / "csv-report", agents / "csv-report")
    agent_queue = agents / "csv-report" / ".ploinky" / "queue"
    config = root / "config.toml"
    config.write_text(f'[agents]\npaths = ["{agents}"]\n' + backup_config(root, agents))
    runner = "docker"
    if not docker_answers():
        runner = "process"
        print(
            "WARNING: no Docker engine answers; tiles run with --runner process: local "
            "processes WITHOUT a sandbox. Run scripts/docker-engine.sh for the real thing.",
            file=sys.stderr,
        )
    cmd = [sys.executable, "-m", "ploinkyd", "run", "--node-id", "demo", "--config", str(config)]
    cmd += ["--state-dir", str(state), "--runtime-dir", str(runtime), "--runner", runner]
    print(
        f"$ ploinkyd run --state-dir {state} --runtime-dir {runtime} --runner {runner}"
        f"   (log: {log})"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    client = Client(runtime / "control.sock", timeout=5)
    ok = False
    try:
        wait_ready(client, proc)
        print(f"daemon ready; producers drop task files into {queue}/tasks/:")
        # Whole seconds, 2-3 s ahead: the record shows the task waited for its time.
        not_before = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        tasks = example_tasks(not_before)
        for task_id, (body, _, _) in tasks.items():
            drop(queue, task_id, body)
        print(f"and a task for the csv-report agent into {agent_queue}/tasks/:")
        wait_for_dir(agent_queue / "tasks")
        report = {
            "kind": "tile",
            "input": {
                "op": "csv_report",
                "params": {"group_by": "region", "sum": "amount"},
                "data": SALES,
            },
        }
        drop(agent_queue, "sales", report)
        records = wait_records(queue, list(tasks), timeout=120)
        agent_records = wait_records(agent_queue, ["sales"], timeout=120)
        print("records:")
        problems = []
        for task_id, (_, status, code) in tasks.items():
            rec = records.get(task_id)
            print(show(task_id, rec) if rec else f"  {task_id}: no record after 30s")
            if rec is None or (rec["status"], (rec.get("error") or {}).get("code")) != (
                status,
                code,
            ):
                problems.append(f"{task_id}: expected {status} {code or ''}")
        if records.get("nightly", {}).get("status") == "succeeded":
            target = root / "restored"
            print("then a restore of that snapshot:")
            drop(
                queue,
                "restore",
                {"kind": "restore", "input": {"repository": "demo", "target": str(target)}},
            )
            restored = wait_records(queue, ["restore"], timeout=60).get("restore")
            print(show("restore", restored) if restored else "  restore: no record after 60s")
            copy = target / str(agents / "csv-report" / "agent.toml").lstrip("/")
            if restored is None or restored["status"] != "succeeded" or not copy.is_file():
                problems.append("restore: expected the agents directory back")
        sales = agent_records.get("sales")
        print(show("sales", sales) if sales else "  sales: no record after 120s")
        if sales is None or sales["status"] != "succeeded":
            problems.append("sales: expected succeeded")
        started = records.get("later", {}).get("started_at")
        if started and datetime.fromisoformat(started) < not_before:
            problems.append(f"later: started at {started}, before its not_before")
        if "double" in records:
            print("the full record of double:\n" + json.dumps(records["double"], indent=2))
        st = client.get("/v1/status")
        print(f"$ ploinkyd status\nploinkyd {st['version']} on {st['node']}: {st['summary']}")
        for q in st["queues"].values():
            print(f"  queue {q['name']}: {q['succeeded']} succeeded, {q['failed']} failed")
        for problem in problems:
            print(f"unexpected: {problem}", file=sys.stderr)
        ok = not problems
    except (PloinkyError, RuntimeError, OSError, ValueError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        ok = False
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = proc.wait()
        print(f"daemon stopped with SIGTERM (exit code {exit_code})")
    ok = ok and exit_code == 0
    if ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"something went wrong; daemon log:\n{log.read_text(errors='replace')[-3000:]}")
        print(f"scratch files kept in {root}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
