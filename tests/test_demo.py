from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_a_real_daemon_and_prints_the_records() -> None:
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
    assert "results/hello.json" in out and "succeeded" in out
    assert "results/later.json" in out
    assert "errors/broken.json" in out and "INVALID_JSON" in out
    assert "errors/mystery.json" in out and "UNKNOWN_KIND" in out
    assert "exit code 0" in out
