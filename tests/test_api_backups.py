"""The backup endpoints of the control API (SPEC §7, §8) on a real daemon and a real ``file``
repository: snapshots listed through the daemon's password, create/restore/verify/prune as
tasks of the backup kinds (the same records a file drop gets), bodies refused before anything
reaches the queue, and roles (viewers read, operators back up, admins see keys).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.api.backups import public_url
from ploinkyd.audit import AuditQuery, read
from ploinkyd.backup import ops
from ploinkyd.backup.crypto import WrongPassword
from ploinkyd.tokens import TokenStore
from tests.backup_helpers import LOG_N, PASSWORD, init_repo
from tests.daemon_harness import DaemonProc, UnixHTTP, wait_until

WAIT = "120"


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    d: DaemonProc,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> Resp:
    conn = UnixHTTP(str(d.socket), 180.0)
    try:
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(text))
    finally:
        conn.close()


def error_of(resp: Resp, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status == status, resp
    err: dict[str, Any] = resp.body["error"]
    if code is not None:
        assert err["code"] == code, resp
    return err


class Setup:
    """Data, an initialised repository with its password file, and the daemon's config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.repo_dir = root / "repo"
        self.password_file = root / "password"
        self.restores = root / "restore"
        root.mkdir(parents=True)
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.write_data("one")
        init_repo(str(self.repo_dir))

    def write_data(self, salt: str) -> None:
        (self.data / "sub").mkdir(parents=True, exist_ok=True)
        (self.data / "a.txt").write_text(f"hello {salt}\n")
        (self.data / "sub" / "b.bin").write_bytes(os.urandom(200_000))

    def config(self) -> dict[str, Any]:
        return {
            "tiles": {"runner": "process"},
            "backup": {
                "restore_roots": [str(self.restores)],
                "repositories": {
                    "main": {"url": str(self.repo_dir), "password_file": str(self.password_file)}
                },
                "jobs": [{"name": "docs", "repository": "main", "paths": [str(self.data)]}],
            },
        }

    def snapshots(self) -> list[str]:
        return [sid for sid, _ in ops.open_repository(str(self.repo_dir), PASSWORD).snapshots()]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path / "b")


def tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else path.read_bytes()
    return out


def task_files(d: DaemonProc) -> set[str]:
    """Everything a submitted task leaves in the queue: its file or its record."""
    q = d.queue()
    return {p.name for sub in ("tasks", "results", "errors") for p in (q / sub).glob("*.json")}


def succeeded(resp: Resp) -> dict[str, Any]:
    assert resp.status == 200, resp
    assert resp.body["state"] == "succeeded", resp.body
    record: dict[str, Any] = resp.body["record"]
    return record


# ---- tests -----------------------------------------------------------------------------------


def test_create_lists_the_snapshot_and_matches_a_file_drop(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config())

    over = call(d, "GET", "/v1/backups")
    assert over.status == 200, over
    assert over.body["queue"] == "default"
    assert over.body["repositories"] == [
        {"name": "main", "url": str(setup.repo_dir), "lock_wait": 0.0}
    ]
    assert over.body["restore_roots"] == [str(d.state / "restores"), str(setup.restores)]
    assert "password" not in json.dumps(over.body)
    (job,) = over.body["jobs"]
    assert (job["name"], job["repository"], job["last_result"]) == ("docs", "main", None)

    api = succeeded(call(d, "POST", f"/v1/backups?wait={WAIT}&id=api-1", {"job": "docs"}))
    sid = api["output"]["snapshot"]
    assert setup.snapshots() == [sid]

    listed = call(d, "GET", "/v1/backups/main/snapshots")
    assert listed.status == 200, listed
    assert listed.body["pagination"] == {"page": 1, "per_page": 50, "total": 1, "pages": 1}
    (snap,) = listed.body["data"]
    assert snap["id"] == sid and snap["job"] == "docs" and snap["paths"] == [str(setup.data)]
    assert snap["summary"]["files_new"] == 2 and snap["strategy"] == "incremental"
    for ref in ("latest", "latest:docs", sid[:8]):
        one = call(d, "GET", f"/v1/backups/main/snapshots/{ref}")
        assert one.status == 200 and one.body == snap, (ref, one)
    error_of(call(d, "GET", "/v1/backups/main/snapshots/ffffffff"), 404, "SNAPSHOT_NOT_FOUND")
    assert call(d, "GET", "/v1/backups/main/snapshots?job=other").body["data"] == []
    assert call(d, "GET", "/v1/backups/main/snapshots?tag=nightly").body["data"] == []

    # The same job dropped as a file: a record of the same kind and shape.
    d.drop("dropped", {"kind": "backup", "input": {"job": "docs"}})
    dropped = wait_until("the dropped backup's record", lambda: d.records().get("dropped"))
    assert dropped["status"] == "succeeded", dropped
    assert (
        (dropped["kind"], dropped["queue"]) == (api["kind"], api["queue"]) == ("backup", "default")
    )
    assert set(dropped) == set(api)
    assert set(dropped["output"]) == set(api["output"])
    assert (
        dropped["notes"]
        == api["notes"]
        == {"backup": {"repository": "main", "strategy": "incremental"}}
    )
    assert dropped["output"]["parent"] == sid

    # Without wait: the task's ref, then its record as any task's.
    ref = call(d, "POST", "/v1/backups", {"repository": "main", "paths": [str(setup.data / "sub")]})
    assert ref.status == 201, ref
    assert ref.body["queue"] == "default" and ref.body["state"] == "pending"
    assert ref.headers["location"] == ref.body["location"] == f"/v1/tasks/default/{ref.body['id']}"
    adhoc = succeeded(call(d, "GET", f"{ref.body['location']}?wait={WAIT}"))
    assert adhoc["output"]["job"] is None and adhoc["output"]["paths"] == [str(setup.data / "sub")]
    assert len(call(d, "GET", "/v1/backups/main/snapshots?per_page=2").body["data"]) == 2

    jobs = call(d, "GET", "/v1/backups").body["jobs"]
    assert jobs[0]["last_result"]["outcome"] == "succeeded"

    actions = {e.action for e in read(d.state / "audit", AuditQuery(action="backup."))}
    assert actions == {"backup.create"}


def test_restore_verify_and_prune_run_as_tasks(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config())
    first = succeeded(call(d, "POST", f"/v1/backups?wait={WAIT}", {"job": "docs"}))["output"]
    first_tree = tree(setup.data)
    setup.write_data("two")
    second = succeeded(call(d, "POST", f"/v1/backups?wait={WAIT}", {"job": "docs"}))["output"]

    target = setup.restores / "r1"
    rec = succeeded(
        call(
            d,
            "POST",
            f"/v1/backups/main/restore?wait={WAIT}",
            {"snapshot": first["short_id"], "target": str(target)},
        )
    )
    assert rec["kind"] == "restore" and rec["output"]["snapshot"] == first["snapshot"]
    assert tree(target / str(setup.data).lstrip("/")) == first_tree

    latest = setup.restores / "r2"
    rec = succeeded(
        call(
            d,
            "POST",
            f"/v1/backups/main/restore?wait={WAIT}",
            {"target": str(latest), "include": [str(setup.data / "a.txt")]},
        )
    )
    assert rec["output"]["snapshot"] == second["snapshot"] and rec["output"]["files"] == 1
    assert (latest / str(setup.data).lstrip("/") / "a.txt").read_text() == "hello two\n"

    rec = succeeded(call(d, "POST", f"/v1/backups/main/verify?wait={WAIT}", {"read_data": True}))
    assert rec["kind"] == "backup-verify"
    assert rec["output"]["ok"] is True and rec["output"]["packs_read"] >= 1
    # No body at all: the kind's defaults.
    ref = call(d, "POST", "/v1/backups/main/verify")
    assert ref.status == 201, ref
    assert succeeded(call(d, "GET", f"{ref.body['location']}?wait={WAIT}"))["output"]["ok"]

    rec = succeeded(
        call(
            d,
            "POST",
            f"/v1/backups/main/prune?wait={WAIT}",
            {"keep_last": 1, "max_unused": 0},
        )
    )
    assert rec["kind"] == "backup-prune"
    assert rec["output"]["forget"]["removed"] == [first["snapshot"]]
    assert rec["output"]["forget"]["kept"] == [second["snapshot"]]
    listed = call(d, "GET", "/v1/backups/main/snapshots").body["data"]
    assert [s["id"] for s in listed] == [second["snapshot"]]

    actions = [e.action for e in read(d.state / "audit", AuditQuery(action="backup."))]
    assert sorted(set(actions)) == [
        "backup.create",
        "backup.prune",
        "backup.restore",
        "backup.verify",
    ]


def test_unknown_repositories_and_bad_bodies_reach_no_queue(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config())
    for method, path, body in (
        ("GET", "/v1/backups/nope/snapshots", None),
        ("GET", "/v1/backups/nope/snapshots/latest", None),
        ("POST", "/v1/backups/nope/restore", {"target": str(setup.restores)}),
        ("POST", "/v1/backups/nope/verify", {}),
        ("POST", "/v1/backups/nope/prune", {"keep_last": 1}),
        ("GET", "/v1/backups/nope/keys", None),
        ("POST", "/v1/backups", {"repository": "nope", "paths": [str(setup.data)]}),
    ):
        err = error_of(call(d, method, path, body), 404, "UNKNOWN_REPOSITORY")
        assert "'nope'" in err["message"] and "main" in err["message"], (path, err)
        assert err["details"]["configured"] == ["main"]
    err = error_of(call(d, "POST", "/v1/backups", {"job": "weekly"}), 404, "UNKNOWN_JOB")
    assert "docs" in err["message"]

    bad = (
        ("/v1/backups", {"job": "docs", "paths": ["/x"]}, "paths"),
        ("/v1/backups", {"jobb": "docs"}, "jobb"),
        ("/v1/backups", {"repository": "main", "paths": ["relative"]}, "absolute"),
        ("/v1/backups", {"job": 5}, "job"),
        ("/v1/backups", {"repository": "main", "paths": ["/x"], "strategy": "nope"}, "nope"),
        ("/v1/backups/main/restore", {"target": "relative/dir"}, "target"),
        ("/v1/backups/main/restore", {"snapshot": "latest"}, "target"),
        ("/v1/backups/main/restore", {"repository": "main", "target": "/x"}, "repository"),
        ("/v1/backups/main/restore", {"target": str(setup.root / "elsewhere")}, "restore_roots"),
        ("/v1/backups/main/verify", {"read_data": "yes"}, "read_data"),
        ("/v1/backups/main/verify", {"subset": "7/3"}, "subset"),
        ("/v1/backups/main/prune", {"keep_last": "one"}, "keep_last"),
        ("/v1/backups/main/prune", {"keep_within": "forever"}, "forever"),
        ("/v1/backups/main/prune", {"max_unused": 2}, "max_unused"),
    )
    for path, body, named in bad:
        err = error_of(call(d, "POST", path, body), 400)
        assert named in err["message"], (path, body, err)
    error_of(call(d, "POST", "/v1/backups", raw=b"{not json"), 400, "INVALID_JSON")
    error_of(call(d, "POST", "/v1/backups?wait=-1", {"job": "docs"}), 400)

    assert task_files(d) == set()
    assert call(d, "GET", "/v1/queues/default/tasks").body["pagination"]["total"] == 0
    assert not (setup.root / "elsewhere").exists()
    assert setup.snapshots() == []


def test_viewers_read_operators_back_up_admins_manage_keys(
    setup: Setup, daemon_factory: Callable[..., DaemonProc]
) -> None:
    d = daemon_factory(config=setup.config(), start=False)
    store = TokenStore(d.state / "api" / "tokens.json")
    viewer = store.create("watcher", "viewer", created_by="test").token
    operator = store.create("backupper", "operator", created_by="test").token
    d.start()

    error_of(call(d, "POST", "/v1/backups", {"job": "docs"}, token=viewer), 403, "FORBIDDEN")
    for path in ("/v1/backups/main/verify", "/v1/backups/main/prune"):
        error_of(call(d, "POST", path, {}, token=viewer), 403)
    assert task_files(d) == set()
    listed = call(d, "GET", "/v1/backups/main/snapshots", token=viewer)
    assert listed.status == 200 and listed.body["data"] == [], listed
    assert call(d, "GET", "/v1/backups", token=viewer).status == 200

    rec = succeeded(call(d, "POST", f"/v1/backups?wait={WAIT}", {"job": "docs"}, token=operator))
    listed = call(d, "GET", "/v1/backups/main/snapshots", token=viewer)
    assert [s["id"] for s in listed.body["data"]] == [rec["output"]["snapshot"]]

    # Keys are the admins'.
    for token in (viewer, operator):
        error_of(call(d, "GET", "/v1/backups/main/keys", token=token), 403)
        error_of(call(d, "POST", "/v1/backups/main/keys/rotate", token=token), 403)
    repo = ops.open_repository(str(setup.repo_dir), PASSWORD)
    second = repo.key_add("another password entirely", LOG_N)
    keys = call(d, "GET", "/v1/backups/main/keys")  # root on the unix socket: admin
    assert keys.status == 200, keys
    assert {k["id"] for k in keys.body["data"]} == {repo.key_name.removeprefix("keys/"), second}
    assert [k["current"] for k in keys.body["data"]].count(True) == 1
    for key in keys.body["data"]:
        assert set(key) == {"id", "current", "created", "host", "user", "kdf"}

    rotated = call(d, "POST", "/v1/backups/main/keys/rotate")
    assert rotated.status == 200, rotated
    assert rotated.body["removed_keys"] == [second]
    assert len(rotated.body["old_data_keys"]) == 1
    (only,) = call(d, "GET", "/v1/backups/main/keys").body["data"]
    assert only["id"] == rotated.body["key"] and only["current"]
    # The daemon's password still opens the repository; the other one no longer does.
    assert len(call(d, "GET", "/v1/backups/main/snapshots").body["data"]) == 1
    ops.open_repository(str(setup.repo_dir), PASSWORD)
    with pytest.raises(WrongPassword):
        ops.open_repository(str(setup.repo_dir), "another password entirely")

    denied = read(d.state / "audit", AuditQuery(outcome="denied"))
    assert {e.action for e in denied} >= {"backup.create", "backup.key.rotate"}
    (ok,) = read(d.state / "audit", AuditQuery(action="backup.key.rotate", outcome="ok"))
    assert ok.role == "admin" and ok.target == "main"


def test_repository_urls_are_shown_without_their_password() -> None:
    assert public_url("s3://key:secret@host:9000/bucket") == "s3://key:***@host:9000/bucket"
    assert public_url("sftp://me:pw@[::1]/srv/repo") == "sftp://me:***@[::1]/srv/repo"
    assert public_url("s3://key@host/bucket") == "s3://key@host/bucket"
    assert public_url("/srv/backup/repo") == "/srv/backup/repo"
