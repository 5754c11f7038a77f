"""Driving ``ploinkyd backup ...`` as a subprocess against an sftp:// repository, with the
plugin loaded from this directory through ``PLOINKY_PLUGINS__PATHS`` and a clean environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PLUGIN_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PLUGIN_DIR.parents[1]
PASSWORD = "correct horse battery"


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOINKY_", "NOTIFY_SOCKET"))}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(REPO_ROOT),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".state"),
        XDG_RUNTIME_DIR=str(home / ".run"),
        PLOINKY_PLUGINS__PATHS=json.dumps([str(PLUGIN_DIR)]),
        PLOINKY_PASSWORD=PASSWORD,
        # The lowest scrypt cost the CLI accepts: a slow key derivation would only add time.
        PLOINKY_BACKUP_KDF_LOG_N="10",
    )
    env.update(extra)
    return env


def backup_cli(
    env: dict[str, str], repo: str, options: dict[str, str], *args: str, timeout: float = 600
) -> Any:
    """Run ``ploinkyd backup ARGS --repo REPO -o K=V... --json``; return its JSON output."""
    opts = [f"--option={key}={value}" for key, value in options.items()]
    argv = [sys.executable, "-m", "ploinkyd", "backup", *args, "--repo", repo, *opts, "--json"]
    res = subprocess.run(
        argv,
        env=env,
        cwd=env["HOME"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0 or "Traceback" in res.stderr:
        raise AssertionError(
            f"ploinkyd backup {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
    return json.loads(res.stdout) if res.stdout.strip() else None
