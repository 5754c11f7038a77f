from __future__ import annotations

from tests.daemon_harness import DaemonProc


def test_echo_task_dropped_as_a_file_gets_a_result(daemon: DaemonProc) -> None:
    daemon.drop("hello", {"kind": "echo", "input": {"x": 1}})
    rec = daemon.wait_records(1)["hello"]
    assert rec["status"] == "succeeded"
    assert rec["output"] == {"x": 1}
    assert not (daemon.queue() / "tasks" / "hello.json").exists()


def test_test_kinds_load_through_a_real_entry_point(daemon: DaemonProc) -> None:
    daemon.drop("nap", {"kind": "sleep", "input": {"seconds": 0.01}})
    assert daemon.wait_records(1)["nap"]["output"] == {"slept": 0.01}
