"""Driving ``ploinkyd backup ...`` as a subprocess against an sftp:// repository, with the
plugin loaded from this directory through ``PLOINKY_PLUGINS__PATHS`` and a clean environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ploinkyd.testing import backup_cli as cli

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return cli.cli_env(home, plugins=[PLUGIN_DIR], **extra)


def backup_cli(
    env: dict[str, str], repo: str, options: dict[str, str], *args: str, timeout: float = 600
) -> Any:
    """Run ``ploinkyd backup ARGS --repo REPO -o K=V... --json``; return its JSON output."""
    return cli.backup_json(env, *args, *cli.repo_args(repo, options), timeout=timeout)
