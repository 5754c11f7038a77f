from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_a_real_daemon_and_prints_the_records() -> None:
    from tests.docker_env import busybox_image, python_image

    python_image(), busybox_image()  # what scripts/demo.sh builds before it runs the demo
    proc = subprocess.run(
        [sys.executable, "-m", "ploinkyd.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo exited {proc.returncode}\n{out}\n{proc.stderr}"
    assert "results/double.json   succeeded output [2, 4, 6]" in out
    assert "results/top3.json     succeeded output [9, 7, 5]" in out
    assert '"runner": "docker"' in out and '"sandboxed": true' in out, "tiles ran in Docker"
    assert "results/sales.json    succeeded" in out, "the csv-report agent answered"
    assert "errors/oops.json      failed    OP_FAILED" in out
    assert "results/later.json" in out
    assert "errors/broken.json" in out and "INVALID_JSON" in out
    assert "errors/mystery.json" in out and "UNKNOWN_KIND" in out
    assert "exit code 0" in out
