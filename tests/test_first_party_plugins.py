"""The first-party plugins in ``plugins/`` keep the promises of a plugin repository: a valid
manifest, a README, tests, requirements the project installs, and they install from git."""

from __future__ import annotations

import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ploinkyd.plugin_manifest import read_manifest
from ploinkyd.plugins import PluginHost
from tests.daemon_harness import REPO, DaemonProc, wait_until

PLUGINS = sorted(p for p in (REPO / "plugins").iterdir() if (p / "ploinky-plugin.toml").exists())
STORAGE_SCHEMES = {
    "s3": {"s3"},
    "sftp": {"sftp"},
    "azure": {"azure"},
    "gcs": {"gs", "gcs"},
    "postgres": {"postgresql", "postgres"},
}


def test_every_plugin_directory_is_a_plugin() -> None:
    found = {p.name for p in (REPO / "plugins").iterdir() if p.is_dir() and p.name[0] != "."}
    assert found == {p.name for p in PLUGINS}
    assert set(STORAGE_SCHEMES) | {"textstats"} <= found


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_layout_manifest_and_requirements(plugin: Path) -> None:
    manifest = read_manifest(plugin)
    assert manifest.name == plugin.name
    manifest.check_compatible()
    assert (plugin / "README.md").read_text().strip()
    assert list((plugin / "tests").glob("test_*.py"))
    for module in manifest.modules:
        assert (plugin / module.split(".")[0]).is_dir()
    # What the plugin requires is what the project's `plugins` extra installs for its tests.
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["plugins"]
    provided = {Requirement(r).name.lower().replace("_", "-") for r in extra}
    for req in manifest.requires:
        assert Requirement(req).name.lower().replace("_", "-") in provided, req
    assert not manifest.missing_requirements()


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_loads_in_place_and_provides_what_it_says(plugin: Path) -> None:
    host = PluginHost(entry_points=False, paths=[plugin])
    host.load()
    info = next(i for i in host.report() if i.name == plugin.name)
    assert info.status == "active", info
    assert host.clashes(plugin.name) is None
    schemes = STORAGE_SCHEMES.get(plugin.name)
    if schemes is not None:
        assert schemes <= set(host.storage_backends())
    else:
        assert "textstats" in host.task_kinds()
        assert "textstats.wordfreq" in host.tile_operators()
    host.unregister(plugin.name)


def test_installs_from_the_projects_own_repository(
    daemon_factory: Callable[..., DaemonProc],
) -> None:
    """``plugin install ./plugins/NAME`` from a checkout: the directory lies inside the project's
    repository, so the repository is cloned and the plugin's subdirectory pinned."""
    inside = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--is-inside-work-tree"], capture_output=True
    )
    if inside.returncode != 0:
        pytest.skip("the source tree is not a git checkout")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    d = daemon_factory()
    res = d.cli("plugin", "install", str(REPO / "plugins" / "textstats"), timeout=300)
    assert res.returncode == 0, res.stderr
    listed = d.client().get("/v1/plugins")["data"]
    row = next(p for p in listed if p["name"] == "textstats")
    assert row["status"] == "active"
    assert row["git"]["subdirectory"] == "plugins/textstats" and row["git"]["commit"] == head
    d.drop("t1", {"kind": "textstats", "input": {"text": "to be or not to be"}})
    record = wait_until("the textstats record", lambda: d.records().get("t1"))
    assert record["status"] == "succeeded", record
    assert record["output"]["words"] == 6
