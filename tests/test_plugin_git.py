"""Plugins installed from real git repositories into a real daemon: install, use, update, work
from the cache while the remote is down, remove; and every kind of bad plugin refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProc, wait_until
from tests.plugin_repos_helpers import (
    GitServer,
    PluginRepo,
    git,
    greet_files,
    make_wheel,
    manifest,
)

pytestmark = pytest.mark.slow


def run_task(d: DaemonProc, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
    d.drop(task_id, body)
    return wait_until(f"a record of {task_id}", lambda: d.records().get(task_id), timeout=30)


def greet(d: DaemonProc, task_id: str) -> dict[str, Any]:
    record = run_task(d, task_id, {"kind": "greet", "input": {"name": task_id}})
    assert record["status"] == "succeeded", json.dumps(record, indent=1)
    result: dict[str, Any] = record["output"]
    return result


def cli_ok(d: DaemonProc, *args: str) -> str:
    res = d.cli(*args, timeout=300)
    assert res.returncode == 0, f"{args}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def lock(d: DaemonProc) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((d.state / "plugins" / "plugins.lock").read_text())
    return data["plugins"]


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    server = GitServer(tmp_path / "remote")
    (tmp_path / "remote").mkdir(exist_ok=True)
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["bare-repo-on-disk", "git-daemon-on-loopback"])
def test_install_use_update_cache_remove(
    transport: str,
    tmp_path: Path,
    daemon_factory: Callable[..., DaemonProc],
    git_server: GitServer,
) -> None:
    repo = PluginRepo(tmp_path, "greet")
    v1 = repo.commit("v1", greet_files(release=1))
    if transport == "bare-repo-on-disk":
        url = str(repo.bare)
        config: dict[str, Any] = {}
    else:
        git_server.start()
        url = git_server.url("greet.git")
        config = {"plugins": {"allow": ["git://127.0.0.1:*"]}}
    d = daemon_factory(config=config)

    out = cli_ok(d, "plugin", "install", f"{url}@main")
    assert "loaded into the running daemon" in out
    pinned = lock(d)["greet"]
    assert pinned["commit"] == v1 and pinned["ref"] == "main" and pinned["url"] == url
    checkout = d.state / "plugins" / "repos" / pinned["dir"]
    assert checkout.name.startswith("greet-") and len(checkout.name) == len("greet-") + 8
    assert git(checkout, "rev-parse", "HEAD") == v1
    # A task file dropped after the install is served without a restart.
    assert greet(d, "t1") == {"greeting": "hello t1", "release": 1}

    v2 = repo.commit("v2", greet_files(greeting="good day", release=2))
    assert greet(d, "t2")["release"] == 1  # the pin holds until update
    out = cli_ok(d, "plugin", "update", "greet")
    assert "updated greet" in out
    assert lock(d)["greet"]["commit"] == v2
    assert git(checkout, "rev-parse", "HEAD") == v2
    assert greet(d, "t3") == {"greeting": "good day t3", "release": 2}

    # The remote goes away; a restarted daemon serves the plugin from its cached checkout.
    if transport == "bare-repo-on-disk":
        repo.bare.rename(repo.bare.with_name("moved.git"))
    else:
        git_server.stop()
    assert d.stop() == 0
    d.start()
    assert greet(d, "t4")["release"] == 2
    listed = json.loads(cli_ok(d, "plugin", "list", "--json"))
    greet_info = next(p for p in listed["data"] if p["name"] == "greet")
    assert greet_info["status"] == "active" and greet_info["git"]["commit"] == v2
    failed = d.cli("plugin", "update", "greet", timeout=120)
    assert failed.returncode != 0
    assert "cannot fetch" in failed.stderr and "cached checkout" in failed.stderr, failed.stderr
    assert greet(d, "t5")["release"] == 2

    out = cli_ok(d, "plugin", "remove", "greet")
    assert "removed greet" in out
    assert lock(d) == {}
    assert not checkout.exists()
    gone = run_task(d, "t6", {"kind": "greet", "input": {}})
    assert gone["status"] == "failed" and "greet" in gone["error"]["message"]
    assert d.client().get("/v1/health")


def test_ref_pins_a_tag_or_commit_and_update_moves_it(tmp_path: Path) -> None:
    """Without a daemon the CLI installs into the state directory; the pin follows the REF."""
    from ploinkyd.plugin_repos import PluginRepos

    repo = PluginRepo(tmp_path, "greet")
    v1 = repo.commit("v1", greet_files(release=1), tag="v1.0")
    v2 = repo.commit("v2", greet_files(release=2))
    state = tmp_path / "state"
    env = {**os.environ, "PLOINKY_STATE_DIR": str(state), "HOME": str(tmp_path / "home")}
    env = {k: v for k, v in env.items() if k != "PLOINKY_CONFIG"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ploinkyd", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    res = cli("plugin", "install", f"{repo.bare}@v1.0")
    assert res.returncode == 0, res.stderr
    assert "no daemon is running" in res.stdout
    repos = PluginRepos(state)
    assert repos.entry("greet").commit == v1
    res = cli("plugin", "update", "greet")
    assert res.returncode == 0 and "already at" in res.stdout, res.stdout + res.stderr
    assert repos.entry("greet").commit == v1  # a tag does not move
    res = cli("plugin", "update", "greet", "--ref", v2[:10])
    assert res.returncode == 0, res.stderr
    assert repos.entry("greet").commit == v2
    res = cli("plugin", "list", "--json")
    row = next(p for p in json.loads(res.stdout)["data"] if p["name"] == "greet")
    assert row["status"] == "active" and row["source"] == f"git:{repo.bare}@{v2[:12]}"
    res = cli("plugin", "install", f"{repo.bare}@no-such-branch")
    assert res.returncode != 0 and "no branch, tag or commit 'no-such-branch'" in res.stderr


# ---- bad plugins ------------------------------------------------------------------------

RAISING_HOOK = """\
from ploinkyd.hookspecs import hookimpl


@hookimpl
def ploinkyd_task_kinds():
    raise RuntimeError("the plugin's database is not configured")
"""

MISSPELLED_HOOK = """\
from ploinkyd.hookspecs import hookimpl


@hookimpl
def ploinkyd_task_kind():
    return []
"""

USES_REQUIREMENT = """\
import ploinky_testdep
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind


async def run(ctx, data):
    return {"answer": ploinky_testdep.ANSWER}


@hookimpl
def ploinkyd_task_kinds():
    return [TaskKind("answer", run)]
"""

BAD_PLUGINS: dict[str, tuple[dict[str, str], str]] = {
    "missing-manifest": (
        {"ploinky_nomanifest/__init__.py": ""},
        "has no ploinky-plugin.toml",
    ),
    "invalid-manifest": (
        {"ploinky-plugin.toml": 'name = "Bad Name"\nversion = "one"\ncolour = "red"\n'},
        "ploinky-plugin.toml is invalid: name: must be lower-case",
    ),
    "not-toml": (
        {"ploinky-plugin.toml": "name = \n"},
        "ploinky-plugin.toml is not valid TOML",
    ),
    "import-error": (
        {
            "ploinky-plugin.toml": manifest("importerr", "ploinky_importerr"),
            "ploinky_importerr/__init__.py": "import ploinky_no_such_dependency\n",
        },
        "importing ploinky_importerr from",
    ),
    "raising-hook": (
        {
            "ploinky-plugin.toml": manifest("raiser", "ploinky_raiser"),
            "ploinky_raiser/__init__.py": RAISING_HOOK,
        },
        "(hook ploinkyd_task_kinds): the plugin's database is not configured",
    ),
    "misspelled-hook": (
        {
            "ploinky-plugin.toml": manifest("typo", "ploinky_typo"),
            "ploinky_typo/__init__.py": MISSPELLED_HOOK,
        },
        "unknown hook 'ploinkyd_task_kind'; did you mean 'ploinkyd_task_kinds'?",
    ),
    "clash-with-builtin-kind": (
        greet_files(name="fake-echo", kind="echo"),
        "provides the task kind 'echo', which plugin 'ploinkyd.builtin.echo' already provides",
    ),
    "needs-newer-ploinkyd": (
        {
            "ploinky-plugin.toml": manifest("future", "ploinky_future", ploinkyd=">=99.0"),
            "ploinky_future/__init__.py": "",
        },
        "needs ploinkyd >=99.0; this is ploinkyd",
    ),
    "missing-requirement": (
        {
            "ploinky-plugin.toml": manifest(
                "needsdep", "ploinky_needsdep", requires=["ploinky-testdep==1.0"]
            ),
            "ploinky_needsdep/__init__.py": USES_REQUIREMENT,
        },
        "requires ploinky-testdep==1.0, which is not installed; install it with `ploinkyd "
        "plugin install --with-requires`",
    ),
    "module-name-taken": (
        {
            "ploinky-plugin.toml": manifest("jsonish", "json"),
            "json/__init__.py": "",
        },
        "module name 'json' is already used by",
    ),
}


@pytest.fixture
def running_with_good_plugin(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> tuple[DaemonProc, PluginRepo]:
    good = PluginRepo(tmp_path, "greet")
    good.commit("v1", greet_files())
    d = daemon_factory()
    cli_ok(d, "plugin", "install", str(good.bare))
    return d, good


def test_bad_plugins_are_refused_and_nothing_else_is_disturbed(
    tmp_path: Path, running_with_good_plugin: tuple[DaemonProc, PluginRepo]
) -> None:
    d, good = running_with_good_plugin
    for case, (files, expected) in BAD_PLUGINS.items():
        repo = PluginRepo(tmp_path / "bad", case)
        repo.commit(case, files)
        res = d.cli("plugin", "install", str(repo.bare), timeout=120)
        assert res.returncode != 0, f"{case} was accepted: {res.stdout}"
        assert expected in res.stderr, f"{case}: {res.stderr}"
        assert "Traceback" not in res.stderr, f"{case}: {res.stderr}"
        # Nothing of it stays behind, and what ran before keeps running.
        assert set(lock(d)) == {"greet"}, case
        left = sorted(p.name for p in (d.state / "plugins" / "repos").iterdir())
        assert len(left) == 1 and left[0].startswith("greet-"), (case, left)
        assert greet(d, f"after-{case}")["greeting"] == f"hello after-{case}"
    names = {p["name"]: p["status"] for p in d.client().get("/v1/plugins")["data"]}
    assert names["greet"] == "active" and "ploinkyd.builtin.echo" in names
    assert not {"importerr", "raiser", "typo", "fake-echo", "future", "needsdep"} & set(names)

    # The same plugin twice, and the same name from another repository: a conflict.
    res = d.cli("plugin", "install", str(good.bare))
    assert res.returncode == 5 and "already installed" in res.stderr, res.stderr
    again = PluginRepo(tmp_path / "again", "greet")
    again.commit("other", greet_files(kind="greet2"))
    res = d.cli("plugin", "install", str(again.bare))
    assert res.returncode == 5 and "'greet' is already installed" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ext::sh -c touch% {marker}", "transport helpers (ext::, fd::)"),
        ("fd::3", "transport helpers (ext::, fd::)"),
        ("--upload-pack=touch {marker}", "option-like URLs"),
        ("-u touch {marker}", "option-like URLs"),
        ("ftp://127.0.0.1/repo.git", "uses the ftp:// transport"),
        ("git://127.0.0.1:1/repo.git", "is not allowed by plugins.allow"),
        ("ssh://git@127.0.0.1/repo.git", "is not allowed by plugins.allow"),
        ("git@127.0.0.1:repo.git", "is not allowed by plugins.allow"),
        ("http://127.0.0.1:1/repo.git", "is not allowed by plugins.allow"),
        ("no-such-dir/repo", "neither a URL (https://...) nor a local directory"),
    ],
)
def test_forbidden_sources_are_refused_before_git_runs(
    url: str, expected: str, tmp_path: Path
) -> None:
    from ploinkyd.errors import PluginError
    from ploinkyd.plugin_repos import PluginRepos

    marker = tmp_path / "pwned"
    repos = PluginRepos(tmp_path / "state")
    with pytest.raises(PluginError) as caught:
        repos.fetch_new(url.format(marker=marker))
    assert expected in caught.value.message
    assert not marker.exists()
    assert not (tmp_path / "state" / "plugins" / "repos").exists() or not any(
        (tmp_path / "state" / "plugins" / "repos").iterdir()
    )


def test_submodules_are_not_fetched(tmp_path: Path) -> None:
    from ploinkyd.plugin_repos import PluginRepos

    inner = PluginRepo(tmp_path / "inner", "inner")
    inner.commit("inner", {"secret.txt": "from a submodule\n"})
    repo = PluginRepo(tmp_path, "greet")
    repo.write(greet_files())
    git(
        repo.work,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        str(inner.bare),
        "vendored",
    )
    repo.commit("with a submodule")
    repos = PluginRepos(tmp_path / "state")
    entry = repos.fetch_new(str(repo.bare))
    checkout = repos.checkout_dir(entry)
    assert (checkout / ".gitmodules").exists()
    assert not (checkout / "vendored" / "secret.txt").exists()


def test_with_requires_installs_into_the_plugins_own_directory(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "ploinky-testdep", "1.0", "ploinky_testdep", "ANSWER = 42\n")
    repo = PluginRepo(tmp_path, "needsdep")
    repo.commit("v1", BAD_PLUGINS["missing-requirement"][0])
    # pip reads its options from the environment: a local wheel directory, no index.
    d = daemon_factory(extra_env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)})
    refused = d.cli("plugin", "install", str(repo.bare))
    assert refused.returncode != 0 and "--with-requires" in refused.stderr
    cli_ok(d, "plugin", "install", "--with-requires", str(repo.bare))
    entry = lock(d)["needsdep"]
    assert entry["requires_installed"] is True
    site = d.state / "plugins" / "site" / entry["dir"]
    assert (site / "ploinky_testdep.py").exists()
    record = run_task(d, "a1", {"kind": "answer", "input": {}})
    assert record["status"] == "succeeded" and record["output"] == {"answer": 42}, record
    # The requirement stays the plugin's: the daemon's own environment has no such package.
    probe = subprocess.run(
        [sys.executable, "-c", "import ploinky_testdep"], capture_output=True, env=d.env
    )
    assert probe.returncode != 0
    # Restarted, the daemon puts the plugin's directory on its path again.
    assert d.stop() == 0
    d.start()
    assert run_task(d, "a2", {"kind": "answer", "input": {}})["output"] == {"answer": 42}
    cli_ok(d, "plugin", "remove", "needsdep")
    assert not site.exists()


def test_a_lost_checkout_with_no_remote_is_reported_and_the_rest_runs(
    tmp_path: Path, daemon_factory: Callable[..., DaemonProc]
) -> None:
    repo = PluginRepo(tmp_path, "greet")
    repo.commit("v1", greet_files())
    d = daemon_factory()
    cli_ok(d, "plugin", "install", str(repo.bare))
    assert d.stop() == 0
    # Someone cleaned the state directory's cache, and the remote is gone too.
    shutil.rmtree(d.state / "plugins" / "repos")
    shutil.rmtree(repo.bare)
    d.start()
    listed = d.client().get("/v1/plugins")
    row = next(p for p in listed["data"] if p["name"] == "greet")
    assert row["status"] == "quarantined"
    assert "checkout of plugin 'greet' is missing" in row["error"]["message"]
    assert "greet" in listed["problems"]
    echo = run_task(d, "e1", {"kind": "echo", "input": {"x": 1}})
    assert echo["status"] == "succeeded"
    # With the remote back, a restart restores the checkout at the pinned commit.
    repo2 = PluginRepo(tmp_path / "back", "greet")
    git(repo2.work, "pull", "-q", str(repo.work), "main")
    shutil.copytree(repo2.work / ".git", repo.bare)
    git(repo.bare, "config", "core.bare", "true")
    assert d.stop() == 0
    d.start()
    assert greet(d, "g1")["greeting"] == "hello g1"


def test_source_parsing() -> None:
    from ploinkyd.plugin_repos import parse_source

    cases = {
        "https://example.org/a/b.git": ("https://example.org/a/b.git", None, ""),
        "https://example.org/a/b.git@v1.2": ("https://example.org/a/b.git", "v1.2", ""),
        "https://user@example.org/a/b.git@main": ("https://user@example.org/a/b.git", "main", ""),
        "git@example.org:a/b.git": ("git@example.org:a/b.git", None, ""),
        "git@example.org:a/b.git@feature": ("git@example.org:a/b.git", "feature", ""),
        "/srv/git/p.git@abc1234": ("/srv/git/p.git", "abc1234", ""),
        "https://example.org/mono.git@v2#subdirectory=plugins/s3": (
            "https://example.org/mono.git",
            "v2",
            "plugins/s3",
        ),
    }
    for spec, (url, ref, sub) in cases.items():
        got = parse_source(spec)
        assert (got.url, got.ref, got.subdirectory) == (url, ref, sub), spec


def test_a_local_directory_inside_a_repository_installs_that_subdirectory(tmp_path: Path) -> None:
    from ploinkyd.plugin_repos import PluginRepos, check_source, parse_source

    mono = PluginRepo(tmp_path, "mono")
    files = {f"plugins/greet/{k}": v for k, v in greet_files().items()}
    mono.commit("mono", files)
    source = check_source(parse_source(str(mono.work / "plugins" / "greet")), ["/*"])
    assert source.url == str(mono.work.resolve()) and source.subdirectory == "plugins/greet"
    repos = PluginRepos(tmp_path / "state")
    entry = repos.fetch_new(str(mono.work / "plugins" / "greet"))
    assert entry.name == "greet" and entry.subdirectory == "plugins/greet"
    assert (repos.plugin_dir(entry) / "ploinky-plugin.toml").exists()


def test_only_admins_may_change_plugins(tmp_path: Path, daemon: DaemonProc) -> None:
    """Another local user who can reach the socket may list plugins, not install them."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    repo = PluginRepo(tmp_path, "greet")
    repo.commit("v1", greet_files())
    # pytest's base temp directory is private to root; let the other user through.
    for path in [*tmp_path.parents[:3], tmp_path, daemon.runtime, repo.bare.parent, repo.bare]:
        if path != Path("/tmp"):
            path.chmod(path.stat().st_mode | 0o711)
    daemon.socket.chmod(0o666)
    script = (
        "import json, sys\n"
        "from ploinkyd.client import Client, ApiError\n"
        f"c = Client({str(daemon.socket)!r})\n"
        "print(len(c.get('/v1/plugins')['data']))\n"
        "try:\n"
        f"    c.request('POST', '/v1/plugins', body={{'url': {str(repo.bare)!r}}})\n"
        "except ApiError as exc:\n"
        "    print(exc.http_status, exc.message)\n"
    )
    res = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        env={**daemon.env, "HOME": "/"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    count, denied = res.stdout.splitlines()
    assert int(count) >= 4
    assert denied.startswith("403 ") and "needs the admin role; uid:65534" in denied, denied
    assert not (daemon.state / "plugins" / "plugins.lock").exists()


def test_without_the_git_program_the_cli_runs_and_install_says_what_is_missing(
    tmp_path: Path,
) -> None:
    repo = PluginRepo(tmp_path, "greet")
    repo.commit("v1", greet_files(release=1))
    bin_dir = tmp_path / "bin"  # a PATH with the usual tools but no git
    bin_dir.mkdir()
    for tool in ("sh", "env", "id"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLOINKY_", "GIT_"))}
    env.update(PATH=str(bin_dir), PLOINKY_STATE_DIR=str(tmp_path / "state"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ploinkyd", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listing = cli("plugin", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    refused = cli("plugin", "install", str(repo.bare))
    assert refused.returncode == 2, refused.stderr
    assert "git program" in refused.stderr and "apt-get install git" in refused.stderr
    assert not (tmp_path / "state" / "plugins" / "plugins.lock").exists()
