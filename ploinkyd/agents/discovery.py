"""Finding agents: every directory with an ``agent.toml`` under the search paths (SPEC §5).

A search path is either an agent directory itself or a directory of agent directories (only
its immediate subdirectories are looked at). One broken agent is reported and skipped, never
hiding the others; when two directories claim the same name, the first in search order keeps
it, as with ``$PATH``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ploinkyd.agents.manifest import MANIFEST_FILE, AgentManifest, load_agent
from ploinkyd.errors import ConfigError

log = logging.getLogger("ploinkyd.agents")


class FoundAgent(NamedTuple):
    dir: Path
    manifest: AgentManifest


@dataclass
class DiscoveryResult:
    """``agents``: name → (directory, manifest); ``problems``: directory → what is wrong."""

    agents: dict[str, FoundAgent] = field(default_factory=dict)
    problems: dict[Path, str] = field(default_factory=dict)


def default_paths(
    state_dir: Path, dev_mode: bool, cwd: Path, configured: Sequence[Path] = ()
) -> list[Path]:
    """Where to look for agents: ``configured`` (``agents.paths``; relative ones against
    ``cwd``) when given, else ``<state_dir>/agents`` plus ``<cwd>/agents`` in dev mode."""
    if configured:
        return [path if path.is_absolute() else cwd / path for path in configured]
    paths = [state_dir / "agents"]
    if dev_mode:
        paths.append(cwd / "agents")
    return paths


def discover(paths: Iterable[Path]) -> DiscoveryResult:
    """Load every agent found under ``paths``.

    A missing path is skipped (logged at debug level: ``<state>/agents`` need not exist); a
    path that is not a directory, an unreadable directory, a manifest that does not load and a
    name already taken each become an entry in ``problems``. The same directory reached twice
    (a path listed twice, a symbolic link) counts once.
    """
    result = DiscoveryResult()
    seen: set[Path] = set()
    for agent_dir in _candidates(paths, result):
        real = agent_dir.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            manifest = load_agent(agent_dir)
        except ConfigError as exc:
            result.problems[agent_dir] = exc.message
            continue
        except OSError as exc:
            result.problems[agent_dir] = f"{agent_dir}: cannot read the agent: {exc}"
            continue
        taken = result.agents.get(manifest.name)
        if taken is not None:
            result.problems[agent_dir] = (
                f"{agent_dir / MANIFEST_FILE}: name: agent name {manifest.name!r} is already "
                f"used by {taken.dir}; the agent in {taken.dir} keeps it. Rename one of them "
                '(name = "..." in its agent.toml)'
            )
            continue
        result.agents[manifest.name] = FoundAgent(agent_dir, manifest)
    for agent_dir, message in result.problems.items():
        log.warning("agent in %s skipped: %s", agent_dir, message)
    return result


def _candidates(paths: Iterable[Path], result: DiscoveryResult) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if _has_manifest(path):
            # The path is an agent; its subdirectories are its own data and code.
            found.append(path)
            continue
        try:
            with os.scandir(path) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith("."))
        except FileNotFoundError:
            log.debug("agent path %s does not exist; skipped", path)
            continue
        except NotADirectoryError:
            result.problems[path] = f"{path}: agent path is not a directory"
            continue
        except OSError as exc:
            result.problems[path] = f"{path}: cannot list agent path: {exc.strerror or exc}"
            continue
        # Sorted, so which of two same-named agents wins does not depend on readdir order.
        found.extend(path / name for name in names if _has_manifest(path / name))
    return found


def _has_manifest(path: Path) -> bool:
    try:
        (path / MANIFEST_FILE).stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # unreadable: load_agent turns it into a problem someone can see
    return True
