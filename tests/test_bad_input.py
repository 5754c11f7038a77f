"""Bad input dropped into ``tasks/``: every object ends as one error record, the daemon lives on.

One real daemon serves the whole module; every test drops its own objects under its own names,
checks the record (stable code, actionable message, the original preserved), and then proves
the daemon still works by running a good task.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, new_daemon, wait_until

MAX_TASK_BYTES = 2048
POLL_SETTLE_S = 3.0
WRITER_PAUSE_S = 2.5


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    root = tmp_path_factory.mktemp("bad-input")
    proc = new_daemon(
        root,
        config={
            "queue_defaults": {"max_task_bytes": MAX_TASK_BYTES, "settle_s": 1.0},
            "queues": {"polled": {"watch": "polling", "settle_s": POLL_SETTLE_S}},
        },
    )
    proc.start()
    yield proc
    try:
        assert proc.stop(timeout=30) == 0, proc.read_log()[-3000:]
    finally:
        proc.kill()


def record(d: DaemonProc, record_id: str, queue: str = "default") -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for sub in ("results", "errors"):
            path = d.queue(queue) / sub / f"{record_id}.json"
            if path.exists():
                return json.loads(path.read_bytes())  # type: ignore[no-any-return]
        return None

    try:
        return wait_until(f"record {queue}/{record_id}", find)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"no record {record_id}; log:\n{d.read_log()[-3000:]}") from None


def record_for_original(d: DaemonProc, original_name: str) -> dict[str, Any]:
    """The record of a rejected object, found by the name it had in ``tasks/``."""

    def find() -> dict[str, Any] | None:
        for p in (d.queue() / "errors").glob("rejected.*.json"):
            rec = json.loads(p.read_bytes())
            if rec.get("original_name") == original_name:
                return rec  # type: ignore[no-any-return]
        return None

    return wait_until(f"a record for {original_name!r}", find)  # type: ignore[no-any-return]


def assert_alive_and_working(d: DaemonProc, tag: str) -> None:
    assert d.proc is not None and d.proc.poll() is None, d.read_log()[-3000:]
    d.drop(f"good-after-{tag}", {"kind": "echo", "input": {"after": tag}})
    rec = record(d, f"good-after-{tag}")
    assert rec["status"] == "succeeded"
    assert rec["output"] == {"after": tag}


def drop_raw(d: DaemonProc, name: str, data: bytes) -> None:
    """A well-behaved producer: write under tmp/, then rename into tasks/."""
    tmp = d.queue() / "tmp" / f"{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, d.queue() / "tasks" / name)


def assert_error(rec: dict[str, Any], code: str) -> dict[str, Any]:
    assert rec["status"] == "failed", rec
    assert rec["error"]["code"] == code, rec
    assert rec["queue"] == "default"
    assert rec["node"] == "n1"
    assert len(rec["error"]["message"]) > 20, rec  # a sentence, not just a code
    return rec["error"]  # type: ignore[no-any-return]


# ---- content that is not a runnable task --------------------------------------------------


def test_invalid_json_keeps_the_raw_text(d: DaemonProc) -> None:
    text = '{"kind": "echo", "input": {"x": 1}'
    drop_raw(d, "bad-json.json", text.encode())
    rec = record(d, "bad-json")
    err = assert_error(rec, "INVALID_JSON")
    assert "not valid JSON" in err["message"]
    assert "line 1" in err["message"]
    assert rec["task_raw"] == text
    assert "task_raw_b64" not in rec
    assert not (d.queue() / "tasks" / "bad-json.json").exists()
    assert_alive_and_working(d, "bad-json")


def test_json_that_is_not_an_object(d: DaemonProc) -> None:
    d.drop("not-object", [1, 2, 3])
    rec = record(d, "not-object")
    err = assert_error(rec, "INVALID_TASK")
    assert "JSON object" in err["message"]
    assert "list" in err["message"]
    assert rec["task"] == [1, 2, 3]
    assert_alive_and_working(d, "not-object")


def test_missing_kind(d: DaemonProc) -> None:
    d.drop("no-kind", {"input": {"x": 1}})
    rec = record(d, "no-kind")
    err = assert_error(rec, "INVALID_TASK")
    assert "kind" in err["message"]
    assert rec["task"] == {"input": {"x": 1}}
    assert_alive_and_working(d, "no-kind")


def test_unknown_kind_names_the_kinds_that_exist(d: DaemonProc) -> None:
    d.drop("odd-kind", {"kind": "no-such-kind", "input": {"x": 1}})
    rec = record(d, "odd-kind")
    err = assert_error(rec, "UNKNOWN_KIND")
    assert "no-such-kind" in err["message"]
    assert "echo" in err["message"] and "sleep" in err["message"]  # what is installed
    assert rec["task"]["kind"] == "no-such-kind"
    assert rec["task"]["input"] == {"x": 1}
    assert_alive_and_working(d, "odd-kind")


def test_unknown_top_level_field_is_named(d: DaemonProc) -> None:
    d.drop("extra-field", {"kind": "echo", "input": {}, "colour": "red"})
    rec = record(d, "extra-field")
    err = assert_error(rec, "INVALID_TASK")
    assert "colour" in err["message"]
    assert "input" in err["message"]  # the hint says where free-form data goes
    assert rec["task"]["colour"] == "red"
    assert_alive_and_working(d, "extra-field")


def test_priority_out_of_range(d: DaemonProc) -> None:
    d.drop("prio-12", {"kind": "echo", "priority": 12})
    rec = record(d, "prio-12")
    err = assert_error(rec, "INVALID_TASK")
    assert "priority" in err["message"]
    assert "9" in err["message"]
    assert rec["task"]["priority"] == 12
    assert_alive_and_working(d, "prio-12")


def test_binary_garbage_is_preserved_as_base64(d: DaemonProc) -> None:
    garbage = bytes([0xFF, 0xFE, 0x00, 0x80]) + os.urandom(64) + b"\x9f{"
    drop_raw(d, "garbage.json", garbage)
    rec = record(d, "garbage")
    err = assert_error(rec, "INVALID_JSON")
    assert "UTF-8" in err["message"]
    assert base64.b64decode(rec["task_raw_b64"]) == garbage
    assert_alive_and_working(d, "garbage")


# ---- objects that are never even read -----------------------------------------------------


def test_file_over_max_task_bytes_is_moved_aside_intact(d: DaemonProc) -> None:
    body = json.dumps({"kind": "echo", "input": {"blob": "x" * (2 * MAX_TASK_BYTES)}}).encode()
    drop_raw(d, "big.json", body)
    rec = record_for_original(d, "big.json")
    err = assert_error(rec, "TOO_LARGE")
    assert str(MAX_TASK_BYTES) in err["message"] and "max_task_bytes" in err["message"]
    assert rec["id"].startswith("rejected.")
    assert rec["preserved_as"] == f"errors/{rec['id']}.orig"
    assert (d.queue() / "errors" / f"{rec['id']}.orig").read_bytes() == body
    assert not (d.queue() / "tasks" / "big.json").exists()
    assert_alive_and_working(d, "big")


@pytest.mark.parametrize("name", ["has space.json", "noext"])
def test_bad_file_name(d: DaemonProc, name: str) -> None:
    body = json.dumps({"kind": "echo", "input": {"name": name}}).encode()
    drop_raw(d, name, body)
    rec = record_for_original(d, name)
    err = assert_error(rec, "BAD_NAME")
    assert name in err["message"] and "rename" in err["message"]
    assert err["details"]["original_name"] == name
    assert rec["id"].startswith("rejected.")
    assert (d.queue() / "errors" / f"{rec['id']}.orig").read_bytes() == body
    assert not (d.queue() / "tasks" / name).exists()
    assert_alive_and_working(d, name.replace(" ", "-"))


def test_symlink_is_not_followed_and_its_target_is_untouched(d: DaemonProc) -> None:
    target = d.root / "outside-target.json"
    body = json.dumps({"kind": "echo", "input": {"secret": 1}}).encode()
    target.write_bytes(body)
    before = target.stat()
    os.symlink(target, d.queue() / "tasks" / "link.json")
    rec = record_for_original(d, "link.json")
    err = assert_error(rec, "NOT_A_FILE")
    assert "symlink" in err["message"]
    assert target.read_bytes() == body
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    aside = d.queue() / "errors" / f"{rec['id']}.orig"
    assert aside.is_symlink() and os.readlink(aside) == str(target)
    assert not os.path.lexists(d.queue() / "tasks" / "link.json")
    assert "output" not in rec
    assert_alive_and_working(d, "symlink")


def test_directory_is_moved_aside(d: DaemonProc) -> None:
    tmp_dir = d.queue() / "tmp" / "adir.json"
    tmp_dir.mkdir()
    (tmp_dir / "inside.txt").write_text("keep me")
    os.rename(tmp_dir, d.queue() / "tasks" / "adir.json")
    rec = record_for_original(d, "adir.json")
    err = assert_error(rec, "NOT_A_FILE")
    assert "regular" in err["message"]
    aside = d.queue() / "errors" / f"{rec['id']}.orig"
    assert aside.is_dir()
    assert (aside / "inside.txt").read_text() == "keep me"
    assert not (d.queue() / "tasks" / "adir.json").exists()
    assert_alive_and_working(d, "directory")


# ---- ids ----------------------------------------------------------------------------------


def test_duplicate_id_gets_its_own_record_and_an_identical_copy_is_a_no_op(d: DaemonProc) -> None:
    first_body = {"kind": "echo", "input": {"n": 1}}
    d.drop("dup1", first_body)
    first = record(d, "dup1")
    assert first["status"] == "succeeded"
    first_path = d.queue() / "results" / "dup1.json"
    first_bytes = first_path.read_bytes()

    d.drop("dup1", {"kind": "echo", "input": {"n": 2}})
    wait_until(
        "the duplicate's record",
        lambda: list((d.queue() / "errors").glob("dup1.*.json")),
    )
    (dup_path,) = (d.queue() / "errors").glob("dup1.*.json")
    dup = json.loads(dup_path.read_bytes())
    err = assert_error(dup, "DUPLICATE_ID")
    assert dup["id"] != "dup1" and dup_path.name == f"{dup['id']}.json"
    assert "dup1" in err["message"] and "new id" in err["message"]
    assert err["details"]["original_id"] == "dup1"
    assert dup["task"]["input"] == {"n": 2}
    assert first_path.read_bytes() == first_bytes
    wait_until(
        "the duplicate's file to go", lambda: not (d.queue() / "tasks" / "dup1.json").exists()
    )

    # The very same task again (a producer retrying after a crash): done already, no new record.
    before = {p.name for p in (d.queue() / "results").iterdir()}
    before |= {p.name for p in (d.queue() / "errors").iterdir()}
    d.drop("dup1", first_body)
    wait_until("the identical copy to go", lambda: not (d.queue() / "tasks" / "dup1.json").exists())
    assert_alive_and_working(d, "dup")
    after = {p.name for p in (d.queue() / "results").iterdir()}
    after |= {p.name for p in (d.queue() / "errors").iterdir()}
    assert after - before == {"good-after-dup.json"}
    assert first_path.read_bytes() == first_bytes


def test_dotfiles_and_tmp_files_are_ignored_and_kept(d: DaemonProc) -> None:
    tasks = d.queue() / "tasks"
    body = json.dumps({"kind": "echo", "input": {}}).encode()
    ignored = [tasks / ".hidden.json", tasks / "half.json.tmp", tasks / ".x"]
    for p in ignored:
        p.write_bytes(body)
    time.sleep(2.5)  # two rescans and more than settle_s
    assert_alive_and_working(d, "dotfiles")
    for p in ignored:
        assert p.read_bytes() == body
    names = [json.loads(p.read_bytes()).get("original_name") for p in tasks.parent.glob("*/*.json")]
    assert not {p.name for p in ignored} & set(names)
    assert not list((d.queue() / "errors").glob("*hidden*"))
    assert not list((d.queue() / "errors").glob("half*"))


# ---- producers that write in place ---------------------------------------------------------


def slow_write(path: Path, body: bytes, pause: float) -> None:
    with open(path, "wb") as fh:
        fh.write(body[: len(body) // 2])
        fh.flush()
        time.sleep(pause)
        fh.write(body[len(body) // 2 :])


def test_slow_direct_writers_are_read_only_when_complete(d: DaemonProc) -> None:
    """inotify: wait for the close; polling: wait until size and mtime are stable."""
    body = json.dumps({"kind": "echo", "input": {"slow": True, "pad": "p" * 200}}).encode()
    writers = [
        threading.Thread(target=slow_write, args=(d.queue(q) / "tasks" / "slow.json", body, pause))
        for q, pause in (("default", WRITER_PAUSE_S), ("polled", WRITER_PAUSE_S))
    ]
    assert WRITER_PAUSE_S > 1.0 and POLL_SETTLE_S > WRITER_PAUSE_S
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    for queue in ("default", "polled"):
        rec = record(d, "slow", queue=queue)
        assert rec["status"] == "succeeded", rec
        assert rec["output"]["slow"] is True


# ---- and in the end, nothing is left behind ------------------------------------------------


def test_nothing_left_behind(d: DaemonProc) -> None:
    for queue in ("default", "polled"):
        q = d.queue(queue)

        def leftovers(q: Path = q) -> list[str]:
            tasks = [
                n for n in os.listdir(q / "tasks") if not (n.startswith(".") or n.endswith(".tmp"))
            ]
            locks = [n for n in os.listdir(q / "locks") if not n.startswith(".")]
            return tasks + locks

        wait_until(f"{queue}: tasks/ and locks/ to be empty", lambda: not leftovers(), timeout=10)
    assert d.proc is not None and d.proc.poll() is None
