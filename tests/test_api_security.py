"""The control API's security end to end (SPEC §8): tokens, roles, limits, TLS and the audit log.

Real daemon processes with a TCP listener, raw HTTP on real sockets, and another local user
(uid 65534, through ``setpriv``) for the roles the unix socket gives by uid. Most checks share
one daemon; those that change roles or limits reload its config (SIGHUP) and put it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.testing.servers import free_port
from tests.daemon_harness import DaemonProc, UnixHTTP, new_daemon, wait_until

NOBODY = 65534
ROLES = ("viewer", "operator", "admin")
BASE_API: dict[str, Any] = {
    "socket_mode": "0666",  # so that uid 65534 can connect at all
    "max_body_bytes": 4096,
    "audit_max_bytes": 4096,
    "audit_backups": 200,
}
ME = f"uid:{os.geteuid()}({pwd.getpwuid(os.geteuid()).pw_name})"  # as the API names us
SUBMIT = "/v1/queues/default/tasks"
ECHO = {"kind": "echo", "input": {"hello": 1}}
LONG = {"kind": "sleep", "input": {"seconds": 120}}


# ---- raw HTTP -----------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, else text

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Resp:
    payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if payload is not None else {}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=payload, headers={**hdrs, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    parsed: Any = data.decode()
    if "json" in (resp.getheader("Content-Type") or "") and data:
        parsed = json.loads(data)
    return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed)


def assert_envelope(r: Resp, status: int, code: str) -> dict[str, Any]:
    assert r.status == status, r
    assert r.headers["content-type"].startswith("application/json"), r
    body = r.body
    assert set(body) == {"error", "request_id", "timestamp"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    assert body["request_id"] == r.request_id, (body, r.headers)
    return body


def assert_needs(r: Resp, role: str) -> None:
    body = assert_envelope(r, 403, "FORBIDDEN")
    assert f"needs the {role} role" in body["error"]["message"], body
    assert body["error"]["details"]["needed"] == role, body


# ---- the shared daemon --------------------------------------------------------------------


@dataclass
class Secured:
    d: DaemonProc
    port: int
    expired: str  # a token whose expiry has passed
    tokens: dict[str, str] = field(default_factory=dict)  # role -> a token of that role

    def tcp(self, method: str, path: str, **kw: Any) -> Resp:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            return exchange(conn, method, path, **kw)
        finally:
            conn.close()

    def unix(self, method: str, path: str, **kw: Any) -> Resp:
        conn = UnixHTTP(self.d.socket, 30)
        try:
            return exchange(conn, method, path, **kw)
        finally:
            conn.close()

    def root_get(self, path: str) -> Any:
        """GET as root over the socket, waiting out a rate limit a test has set."""

        def attempt() -> Any:
            r = self.unix("GET", path)
            if r.status == 429:
                return None
            assert r.status == 200, r
            return r.body

        return wait_until(f"GET {path}", attempt)

    def reconfigure(self, **api: Any) -> None:
        """Rewrite ``[api]`` as ``BASE_API`` plus ``api``, reload, and wait for the reload."""
        cfg = json.loads(self.d.config_file.read_text())
        cfg["api"] = {**BASE_API, **api}
        self.d.config_file.write_text(json.dumps(cfg))
        last = self.root_get("/v1/events/recent?type=daemon.reloaded&per_page=1")["last_id"]
        self.d.signal(signal.SIGHUP)
        done = wait_until(
            "the daemon to reload its config",
            lambda: self.root_get(f"/v1/events/recent?type=daemon.reloaded&since={last}")["data"],
        )
        assert done[0]["data"]["ok"], self.d.read_log()[-3000:]

    @contextlib.contextmanager
    def reconfigured(self, **api: Any) -> Iterator[None]:
        self.reconfigure(**api)
        try:
            yield
        finally:
            self.reconfigure()


def write_expired_token(path: Path) -> str:
    """A token file as a daemon leaves it, holding one token that expired long ago."""
    token = "pkd_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, mode=0o700)
    entry = {
        "name": "expired",
        "role": "admin",
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "hint": token[:8],
        "created_at": "2001-01-01T00:00:00Z",
        "created_by": ME,
        "expires_at": "2001-01-02T00:00:00Z",
    }
    path.write_text(json.dumps({"version": 1, "tokens": [entry]}))
    path.chmod(0o600)
    return token


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("security")
    # The socket's directory must let uid 65534 through; pytest's base temp dir does not.
    rundir = Path(tempfile.mkdtemp(prefix="ploinkyd-sec-"))
    rundir.chmod(0o755)
    port = free_port()
    d = new_daemon(
        root,
        config={
            "daemon": {"runtime_dir": str(rundir)},
            "api": BASE_API,
            "tiles": {"runner": "process"},
        },
        extra_env={"PLOINKY_API_TCP": f"127.0.0.1:{port}"},
    )
    d.runtime = rundir
    expired = write_expired_token(d.state / "api" / "tokens.json")
    try:
        d.start()
        s = Secured(d, port, expired)
        for role in ROLES:
            made = s.unix("POST", "/v1/tokens", body={"name": role, "role": role})
            assert made.status == 201, made
            s.tokens[role] = made.body["token"]
        yield s
    finally:
        d.kill()
        shutil.rmtree(rundir, ignore_errors=True)


# ---- audit files --------------------------------------------------------------------------


def audit_files(d: DaemonProc) -> list[Path]:
    """The audit log's files, oldest first."""
    directory = d.state / "audit"
    rotated = sorted(
        (p for p in directory.glob("audit.jsonl.*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, directory / "audit.jsonl"]


def audit_entries(d: DaemonProc) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in audit_files(d):
        with contextlib.suppress(FileNotFoundError):  # rotated away while we looked
            out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def audited(d: DaemonProc, request_id: str) -> list[dict[str, Any]]:
    """The audit lines of one request, once there is at least one (lines are written by a
    thread, shortly after the response)."""
    return wait_until(
        f"the audit line of request {request_id}",
        lambda: [e for e in audit_entries(d) if e["request_id"] == request_id],
    )


# ---- authentication -----------------------------------------------------------------------


def test_tcp_needs_a_valid_bearer_token(sec: Secured) -> None:
    bare = sec.tcp("GET", "/v1/status")
    body = assert_envelope(bare, 401, "UNAUTHORIZED")
    assert bare.headers["www-authenticate"].startswith("Bearer"), bare.headers
    assert "token" in body["error"]["message"]
    assert body["request_id"]

    wrong = "pkd_" + secrets.token_urlsafe(32)
    for token in (wrong, sec.expired):
        r = sec.tcp("GET", "/v1/status", token=token)
        assert_envelope(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"].startswith("Bearer")
    basic = sec.tcp("GET", "/v1/status", headers={"Authorization": "Basic cm9vdDpyb290"})
    assert_envelope(basic, 401, "UNAUTHORIZED")

    made = sec.unix("POST", "/v1/tokens", body={"name": "short-lived", "role": "viewer"})
    assert made.status == 201, made
    token = made.body["token"]
    assert sec.tcp("GET", "/v1/status", token=token).status == 200
    assert sec.unix("DELETE", "/v1/tokens/short-lived").status == 200
    assert_envelope(sec.tcp("GET", "/v1/status", token=token), 401, "UNAUTHORIZED")

    health = sec.tcp("GET", "/v1/health")
    assert (health.status, health.body) == (200, {"status": "ok"})
    ready = sec.tcp("GET", "/v1/ready")
    assert (ready.status, ready.body) == (200, {"ready": True})


def test_roles_over_tcp(sec: Secured, tmp_path: Path) -> None:
    t = sec.tokens
    for role in ROLES:
        for path in ("/v1/status", "/v1/queues", "/v1/queues/default/tasks", "/v1/tiles/cache"):
            r = sec.tcp("GET", path, token=t[role])
            assert r.status == 200, (role, path, r)

    # viewers read only
    assert_needs(sec.tcp("POST", SUBMIT, token=t["viewer"], body=ECHO), "operator")
    assert_needs(sec.tcp("DELETE", "/v1/tasks/default/t-any", token=t["viewer"]), "operator")
    assert_needs(sec.tcp("DELETE", "/v1/tiles/cache", token=t["viewer"]), "operator")

    # operators and admins submit, cancel and clear the tile cache
    for role in ("operator", "admin"):
        sub = sec.tcp("POST", SUBMIT, token=t[role], body=LONG)
        assert sub.status == 201, (role, sub)
        cancel = sec.tcp("DELETE", f"/v1/tasks/default/{sub.body['id']}", token=t[role])
        assert cancel.status == 202 and cancel.body["cancel_requested"] is True, (role, cancel)
        cleared = sec.tcp("DELETE", "/v1/tiles/cache", token=t[role])
        assert cleared.status == 200 and "cleared" in cleared.body, (role, cleared)

    admin_only: list[tuple[str, str, Any]] = [
        ("POST", "/v1/plugins", {"url": str(tmp_path / "no-such-plugin")}),
        ("POST", "/v1/agents/no-such-agent/start", None),
        ("POST", "/v1/agents/no-such-agent/stop", None),
        ("POST", "/v1/tokens", {"name": "made-by-admin", "role": "viewer"}),
        ("GET", "/v1/tokens", None),
        ("GET", "/v1/audit", None),
    ]
    for role in ("viewer", "operator"):
        for method, path, body in admin_only:
            assert_needs(sec.tcp(method, path, token=t[role], body=body), "admin")

    got = {
        f"{method} {path}": sec.tcp(method, path, token=t["admin"], body=body)
        for method, path, body in admin_only
    }
    plugin = got["POST /v1/plugins"]
    assert plugin.status == 400, plugin  # refused for its source, not for its caller
    assert got["POST /v1/agents/no-such-agent/start"].status == 404
    assert got["POST /v1/agents/no-such-agent/stop"].status == 404
    created = got["POST /v1/tokens"]
    assert created.status == 201 and created.body["created_by"] == "token:admin", created
    assert got["GET /v1/tokens"].status == 200
    assert got["GET /v1/audit"].status == 200 and isinstance(
        got["GET /v1/audit"].body["data"], list
    )
    listed = sec.tcp("GET", "/v1/tokens", token=t["admin"]).body["data"]
    assert {"admin", "operator", "viewer", "made-by-admin"} <= {x["name"] for x in listed}


# ---- the unix socket: roles by uid --------------------------------------------------------

NOBODY_CLIENT = r"""
import http.client, json, socket, sys

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(sys.argv[1])

out = []
for method, path, body in json.loads(sys.argv[2]):
    conn = Conn("localhost", timeout=30)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    parsed = json.loads(raw) if "json" in (resp.getheader("Content-Type") or "") else {}
    out.append([resp.status, parsed.get("error") if isinstance(parsed, dict) else None])
print(json.dumps(out))
"""


def as_nobody(sec: Secured, calls: list[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
    """Run ``calls`` over the control socket as uid/gid 65534; their statuses and errors."""
    res = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-I",
            "-c",
            NOBODY_CLIENT,
            str(sec.d.socket),
            json.dumps(calls),
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
        cwd="/",
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return [(status, error) for status, error in json.loads(res.stdout)]


def test_unix_socket_roles_come_from_the_callers_uid(sec: Secured) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    # root is an admin on the socket
    assert sec.unix("GET", "/v1/tokens").status == 200

    # anyone else who can reach the socket gets unix_role (operator by default)
    status, submit, plugin, tokens = as_nobody(
        sec,
        [
            ("GET", "/v1/status", None),
            ("POST", SUBMIT, ECHO),
            ("POST", "/v1/plugins", {"url": "/nonexistent"}),
            ("GET", "/v1/tokens", None),
        ],
    )
    assert status[0] == 200 and submit[0] == 201, (status, submit)
    for code, error in (plugin, tokens):
        assert code == 403 and error["details"]["needed"] == "admin", error
        assert f"uid:{NOBODY}" in error["message"], error

    with sec.reconfigured(uid_roles={str(NOBODY): "viewer"}):
        status, submit = as_nobody(sec, [("GET", "/v1/status", None), ("POST", SUBMIT, ECHO)])
        assert status[0] == 200
        assert submit[0] == 403 and submit[1]["details"] == {
            "needed": "operator",
            "role": "viewer",
            "who": f"uid:{NOBODY}({pwd.getpwuid(NOBODY).pw_name})",
        }, submit

    with sec.reconfigured(unix_role="none"):
        status, queues, health, ready = as_nobody(
            sec,
            [
                ("GET", "/v1/status", None),
                ("GET", "/v1/queues", None),
                ("GET", "/v1/health", None),
                ("GET", "/v1/ready", None),
            ],
        )
        assert status[0] == 403 and queues[0] == 403, (status, queues)
        assert "no role" in status[1]["message"], status
        assert health[0] == 200 and ready[0] == 200
        assert sec.unix("GET", "/v1/status").status == 200  # root is still an admin


# ---- limits -------------------------------------------------------------------------------


def test_rate_limit_is_per_client(sec: Secured) -> None:
    with sec.reconfigured(rate_limit=5, rate_burst=5):
        conn = http.client.HTTPConnection("127.0.0.1", sec.port, timeout=30)
        try:
            for _ in range(500):
                r = exchange(conn, "GET", "/v1/status", token=sec.tokens["viewer"])
                if r.status != 200:
                    break
            else:
                pytest.fail("500 requests in a row were not rate limited")
        finally:
            conn.close()
        body = assert_envelope(r, 429, "RATE_LIMITED")
        assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
        assert body["error"]["details"]["retry_after_s"] > 0
        # another client has its own bucket
        assert sec.tcp("GET", "/v1/status", token=sec.tokens["operator"]).status == 200

        [line] = audited(sec.d, r.request_id)
        assert (line["who"], line["role"], line["outcome"], line["status"]) == (
            "token:viewer",
            "viewer",
            "rate_limited",
            429,
        )
        assert line["action"] == "GET /v1/status" and line["request_id"] == r.request_id


def test_a_body_over_max_body_bytes_is_413_and_never_queued(sec: Secured) -> None:
    big = {"kind": "echo", "input": {"pad": "x" * 10_000}}
    for r in (
        sec.unix("POST", f"{SUBMIT}?id=too-big-1", body=big),
        sec.tcp("POST", f"{SUBMIT}?id=too-big-2", body=big, token=sec.tokens["operator"]),
    ):
        body = assert_envelope(r, 413, "TOO_LARGE")
        assert body["error"]["message"]
    for task_id in ("too-big-1", "too-big-2"):
        assert_envelope(sec.unix("GET", f"/v1/tasks/default/{task_id}"), 404, "NOT_FOUND")
        assert not [p for p in sec.d.queue().rglob(f"*{task_id}*")]


def test_a_slow_request_is_stopped_at_request_timeout(sec: Secured) -> None:
    with sec.reconfigured(request_timeout=1):
        r = sec.unix("GET", "/v1/x/testkinds/slow?s=30")
        body = assert_envelope(r, 504, "TIMEOUT")
        assert "request_timeout" in body["error"]["message"]
        fast = sec.unix("GET", "/v1/x/testkinds/slow?s=0")
        assert (fast.status, fast.body) == (200, {"slept": 0.0})


def test_aiohttp_404_and_405_come_in_the_envelope(sec: Secured) -> None:
    assert_envelope(sec.unix("GET", "/v1/no-such-thing"), 404, "NOT_FOUND")
    assert_envelope(
        sec.tcp("GET", "/v1/no-such-thing", token=sec.tokens["viewer"]), 404, "NOT_FOUND"
    )
    r = sec.unix("PUT", "/v1/status")
    assert_envelope(r, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in r.headers["allow"], r.headers


# ---- the audit log ------------------------------------------------------------------------


def test_a_plugin_route_change_needs_operator_and_is_audited(sec: Secured) -> None:
    poked = sec.tcp("POST", "/v1/x/testkinds/poke", token=sec.tokens["operator"])
    assert poked.status == 200, poked.body
    refused = sec.tcp("POST", "/v1/x/testkinds/poke", token=sec.tokens["viewer"])
    assert_envelope(refused, 403, "FORBIDDEN")
    read = sec.tcp("GET", "/v1/x/testkinds/slow?s=0", token=sec.tokens["viewer"])
    assert read.status == 200
    for r, outcome in ((poked, "ok"), (refused, "denied")):
        (line,) = audited(sec.d, r.request_id)
        assert line["action"] == "POST /v1/x/testkinds/poke" and line["outcome"] == outcome
    assert read.request_id not in {e["request_id"] for e in audit_entries(sec.d)}


def test_audit_lines_for_mutations_and_refusals(sec: Secured) -> None:
    op = sec.tokens["operator"]
    sub = sec.tcp("POST", SUBMIT, token=op, body=LONG)
    assert sub.status == 201
    task_id = sub.body["id"]
    cancel = sec.tcp("DELETE", f"/v1/tasks/default/{task_id}", token=op)
    assert cancel.status == 202
    created = sec.unix(
        "POST", "/v1/tokens", body={"name": "audited", "role": "viewer", "expires": "1h"}
    )
    assert created.status == 201 and created.body["expires_at"]
    secret = created.body["token"]
    revoked = sec.unix("DELETE", "/v1/tokens/audited")
    assert revoked.status == 200 and revoked.body["name"] == "audited"
    denied = sec.tcp("POST", "/v1/tokens", token=op, body={"name": "nope", "role": "admin"})
    assert denied.status == 403
    unauthenticated = sec.tcp("DELETE", "/v1/tiles/cache")
    assert unauthenticated.status == 401
    reads = [sec.tcp("GET", "/v1/status", token=op), sec.unix("GET", "/v1/tokens")]
    last = sec.unix("POST", SUBMIT, body=ECHO)
    assert last.status == 201

    audited(sec.d, last.request_id)  # lines are written in order: the rest are there too
    entries = audit_entries(sec.d)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_id.setdefault(e["request_id"], []).append(e)
    expected = {
        sub.request_id: (
            "token:operator",
            "operator",
            "tcp",
            "task.submit",
            f"default/{task_id}",
            "ok",
            201,
        ),
        cancel.request_id: (
            "token:operator",
            "operator",
            "tcp",
            "task.cancel",
            f"default/{task_id}",
            "ok",
            202,
        ),
        created.request_id: (ME, "admin", "unix", "token.create", "audited", "ok", 201),
        revoked.request_id: (ME, "admin", "unix", "token.revoke", "audited", "ok", 200),
        denied.request_id: (
            "token:operator",
            "operator",
            "tcp",
            "token.create",
            None,
            "denied",
            403,
        ),
        unauthenticated.request_id: (
            "anonymous@127.0.0.1",
            None,
            "tcp",
            "tiles.cache.clear",
            None,
            "denied",
            401,
        ),
    }
    keys = ("who", "role", "transport", "action", "target", "outcome", "status")
    for request_id, want in expected.items():
        lines = by_id.get(request_id, [])
        assert len(lines) == 1, (request_id, lines)
        assert tuple(lines[0][k] for k in keys) == want, lines[0]
        assert lines[0]["ts"] and lines[0]["duration_ms"] >= 0
    for r in reads:
        assert r.status == 200 and r.request_id not in by_id

    # a token's value is shown once, in the response; the files keep only its hash
    tokens_file = sec.d.state / "api" / "tokens.json"
    stored = tokens_file.read_text()
    assert hashlib.sha256(sec.tokens["viewer"].encode()).hexdigest() in stored
    for value in (secret, *sec.tokens.values()):
        assert value not in stored
        assert value[len("pkd_") + 4 :] not in sec.d.read_log()
        for path in audit_files(sec.d):
            with contextlib.suppress(FileNotFoundError):
                assert value not in path.read_text()
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    for path in audit_files(sec.d):
        with contextlib.suppress(FileNotFoundError):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_audit_log_rotates_and_the_cli_reads_across_files(sec: Secured) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sec.port, timeout=30)
    try:
        denied_ids = [exchange(conn, "GET", "/v1/queues").request_id for _ in range(40)]
    finally:
        conn.close()
    audited(sec.d, denied_ids[-1])
    directory = sec.d.state / "audit"
    assert (directory / "audit.jsonl.1").exists()  # 40 lines are far more than 4096 bytes
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    res = sec.d.cli("audit", "--json", "--limit", "1000")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["data"]
    in_current = len((directory / "audit.jsonl").read_text().splitlines())
    assert len(data) > in_current
    stamps = [e["ts"] for e in data]
    assert stamps == sorted(stamps, reverse=True)
    positions = {e["request_id"]: i for i, e in enumerate(data)}
    assert [positions[r] for r in reversed(denied_ids)] == sorted(positions[r] for r in denied_ids)

    res = sec.d.cli("audit", "--outcome", "denied", "--json", "--limit", "1000")
    assert res.returncode == 0, res.stderr
    denied = json.loads(res.stdout)["data"]
    assert denied and {e["outcome"] for e in denied} == {"denied"}
    assert set(denied_ids) <= {e["request_id"] for e in denied}

    res = sec.d.cli("audit", "--action", "GET /v1/queues", "--limit", "3")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split() == [
        "TS",
        "WHO",
        "ROLE",
        "ACTION",
        "TARGET",
        "OUTCOME",
        "STATUS",
        "REQUEST_ID",
    ]
    assert len(rows) == 3 and denied_ids[-1] in rows[0], res.stdout


# ---- ploinkyd token -----------------------------------------------------------------------


def test_token_cli(sec: Secured) -> None:
    made = sec.d.cli("token", "create", "--role", "operator", "--name", "cli-op")
    assert made.returncode == 0, made.stderr
    first, note = made.stdout.splitlines()
    token = first.strip()
    assert token.startswith("pkd_") and made.stdout.count(token) == 1
    assert "only" in note and "once" in note
    assert sec.tcp("POST", SUBMIT, token=token, body=ECHO).status == 201

    dup = sec.d.cli("token", "create", "--role", "viewer", "--name", "cli-op")
    assert dup.returncode == 5 and "cli-op" in dup.stderr, dup
    bad = sec.d.cli("token", "create", "--role", "viewer", "--name", "no spaces")
    assert bad.returncode == 2 and "not allowed" in bad.stderr, bad

    listing = sec.d.cli("token", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    page = json.loads(listing.stdout)
    mine = [t for t in page["data"] if t["name"] == "cli-op"]
    assert mine and mine[0]["role"] == "operator" and mine[0]["created_by"] == ME
    assert all(
        set(t) == {"name", "role", "hint", "created_at", "created_by", "expires_at"}
        for t in page["data"]
    )
    assert token not in listing.stdout
    assert hashlib.sha256(token.encode()).hexdigest() not in listing.stdout

    revoked = sec.d.cli("token", "revoke", "cli-op")
    assert revoked.returncode == 0 and "cli-op" in revoked.stdout, revoked
    assert_envelope(sec.tcp("GET", "/v1/status", token=token), 401, "UNAUTHORIZED")


# ---- listeners: the network needs TLS -----------------------------------------------------


def test_a_non_loopback_listener_without_tls_is_a_config_error(tmp_path: Path) -> None:
    d = new_daemon(tmp_path, extra_env={"PLOINKY_API_TCP": f"0.0.0.0:{free_port()}"})
    res = subprocess.run(
        [sys.executable, "-m", "ploinkyd", "run", "--config", str(d.config_file)],
        env=d.env,
        cwd=d.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 78, res
    assert "listen_tcp" in res.stderr and "tls_cert" in res.stderr, res.stderr


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (CN and SAN) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def cli(d: DaemonProc, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ploinkyd", *args, "--config", str(d.config_file)],
        env=env,
        cwd=d.root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tls_with_a_token_made_before_the_daemon_and_audit_without_it(tmp_path: Path) -> None:
    port = free_port()
    cert, key = self_signed(tmp_path)
    d = new_daemon(
        tmp_path,
        config={
            "api": {"listen_tcp": f"127.0.0.1:{port}", "tls_cert": str(cert), "tls_key": str(key)},
            "tiles": {"runner": "process"},
        },
    )
    # No daemon yet: the CLI writes the token store itself.
    made = d.cli("token", "create", "--role", "viewer", "--name", "offline", "--json")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["created_by"] == ME and info["role"] == "viewer"
    token = info["token"]

    url = f"https://127.0.0.1:{port}"
    trusted = {**d.env, "PLOINKY_TOKEN": token, "PLOINKY_API_CACERT": str(cert)}
    try:
        d.start()
        ok = cli(d, trusted, "--url", url, "status", "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["state"] == "ready"

        untrusted = cli(d, {**d.env, "PLOINKY_TOKEN": token}, "--url", url, "status")
        assert untrusted.returncode == 69, untrusted
        assert "certificate verify failed" in untrusted.stderr, untrusted.stderr
        assert "PLOINKY_API_CACERT" in untrusted.stderr

        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=30, context=ssl.create_default_context(cafile=str(cert))
        )
        try:
            wrong = exchange(conn, "GET", "/v1/status", token="pkd_wrong")
        finally:
            conn.close()
        assert_envelope(wrong, 401, "UNAUTHORIZED")
    finally:
        stopped = d.stop()
    assert stopped == 0, d.read_log()[-3000:]

    # No daemon again: the audit log is read from the state dir.
    res = d.cli("audit", "--outcome", "denied", "--json")
    assert res.returncode == 0, res.stderr
    [entry] = json.loads(res.stdout)["data"]
    assert (entry["who"], entry["transport"], entry["status"]) == (
        "anonymous@127.0.0.1",
        "tcp",
        401,
    )
    assert entry["request_id"] == wrong.request_id
