"""Drive ``ploinkyd backup`` as a real process in tests: a clean environment, a small tree of
mixed files, a check that a restore matches its source, and one full round trip.

A storage plugin's test proves its backend end to end with::

    env = cli_env(tmp_path / "home", plugins=[PLUGIN_DIR], clear=("AWS_",))
    round_trip(make_tree(tmp_path / "src"), tmp_path / "restored", env, repo_args(url, options))
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ploinkyd

PASSWORD = "correct horse battery"
# Where the ``ploinkyd`` being tested is imported from, so the subprocess runs the same code.
PLOINKYD_ROOT = Path(ploinkyd.__file__).resolve().parents[1]


def cli_env(
    home: Path,
    *,
    plugins: Iterable[Path] = (),
    clear: Iterable[str] = (),
    password: str | None = PASSWORD,
    **extra: str,
) -> dict[str, str]:
    """An environment for ``ploinkyd backup`` with its own HOME and XDG directories under
    ``home``, none of the caller's ``PLOINKY_*`` settings and none of the variables starting with
    a prefix in ``clear`` (a backend's own credentials, say), plugins loaded from ``plugins``, the
    repository password ``password`` (unset if None), and ``extra`` on top."""
    dropped = ("PLOINKY_", "NOTIFY_SOCKET", *clear)
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(PLOINKYD_ROOT),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".state"),
        XDG_RUNTIME_DIR=str(home / ".run"),
        # The lowest scrypt cost the CLI accepts: key files in seconds would slow every test.
        PLOINKY_BACKUP_KDF_LOG_N="10",
    )
    paths = [str(p) for p in plugins]
    if paths:
        env["PLOINKY_PLUGINS__PATHS"] = json.dumps(paths)
    if password is not None:
        env["PLOINKY_PASSWORD"] = password
    env.update(extra)
    return env


def repo_args(url: str, options: Mapping[str, str] | None = None) -> list[str]:
    """``--repo URL --option=KEY=VALUE ...``"""
    opts = (options or {}).items()
    return ["--repo", url, *(f"--option={key}={value}" for key, value in opts)]


def run_backup(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``ploinkyd backup ARGS`` with no terminal; raise AssertionError if it printed a
    traceback (an operator's error must be a clean message), whatever its exit code."""
    res = subprocess.run(
        [sys.executable, "-m", "ploinkyd", "backup", *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if "Traceback" in res.stderr:
        raise AssertionError(f"ploinkyd backup {' '.join(args)} printed a traceback:\n{res.stderr}")
    return res


def backup(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = 600
) -> str:
    """:func:`run_backup` that must exit 0; returns its standard output."""
    res = run_backup(env, *args, cwd=cwd, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(
            f"ploinkyd backup {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
    return res.stdout


def backup_json(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = 600
) -> Any:
    """:func:`backup` with ``--json``; returns the parsed output (None if there was none)."""
    out = backup(env, *args, "--json", cwd=cwd, timeout=timeout)
    return json.loads(out) if out.strip() else None


def make_tree(root: Path, *, big: int = 700_000, small_files: int = 0) -> Path:
    """A small tree of mixed files under ``root``: text, a 0o640 file, an empty file, ``big``
    random bytes, a symlink, a hard link and ``small_files`` small random files. Returns root.

    The default ``big`` is above the archiver's whole-file limit, so the chunker runs; a few MB
    span several packs, so restore and verify read packs in ranges."""
    rng = random.Random(7)
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\n" * 200)
    (root / "docs" / "sub" / "b.txt").write_text("beta\n")
    (root / "docs" / "sub" / "b.txt").chmod(0o640)
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(rng.randbytes(big))
    (root / "link").symlink_to("docs/a.txt")
    os.link(root / "docs" / "a.txt", root / "hard")
    for i in range(small_files):
        (root / "docs" / f"n{i}.dat").write_bytes(rng.randbytes(rng.randrange(1, 40_000)))
    return root


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must bring back, by path relative to ``root``: symlink targets, and
    the mode and mtime of every directory and file with a digest of each file's content."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with path.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return out


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Raise AssertionError naming every path whose :func:`tree_state` differs."""
    want, got = tree_state(expected), tree_state(actual)
    diffs = [
        f"{rel}: expected {want.get(rel)}, got {got.get(rel)}"
        for rel in sorted(want.keys() | got.keys())
        if want.get(rel) != got.get(rel)
    ]
    if diffs:
        raise AssertionError(f"{actual} differs from {expected}:\n" + "\n".join(diffs))


def restored(target: Path, src: Path) -> Path:
    """Where a source directory lands under a restore target (trees mirror absolute paths)."""
    return target / str(src).lstrip("/")


@dataclass
class RoundTrip:
    """The JSON each step printed, and how long each step took."""

    init: Any
    create: Any
    verify: Any
    restore: Any
    seconds: dict[str, float] = field(default_factory=dict)


def round_trip(
    src: Path,
    target: Path,
    env: Mapping[str, str],
    repo: Sequence[str],
    *,
    later_env: Mapping[str, str] | None = None,
    later_repo: Sequence[str] | None = None,
    verify: bool = True,
    timeout: float = 600,
) -> RoundTrip:
    """``init``, ``create SRC``, ``verify --read-data`` and ``restore latest --target TARGET``
    with the repository arguments ``repo`` (see :func:`repo_args`), then
    :func:`assert_same_tree` on the restored copy. Verify and restore run with ``later_env``
    and ``later_repo`` when given, as another machine would; ``verify=False`` skips verify."""
    later_env = env if later_env is None else later_env
    later_repo = repo if later_repo is None else later_repo
    steps = [
        ("init", env, ["init", *repo]),
        ("create", env, ["create", str(src), *repo]),
        ("verify", later_env, ["verify", "--read-data", *later_repo]),
        ("restore", later_env, ["restore", "latest", "--target", str(target), *later_repo]),
    ]
    out: dict[str, Any] = {"verify": None}
    seconds: dict[str, float] = {}
    for name, step_env, args in steps:
        if name == "verify" and not verify:
            continue
        started = time.perf_counter()
        out[name] = backup_json(step_env, *args, timeout=timeout)
        seconds[name] = time.perf_counter() - started
    if verify and not (out["verify"]["ok"] and out["verify"]["errors"] == []):
        raise AssertionError(f"verify --read-data found errors: {out['verify']}")
    assert_same_tree(src, restored(target, src))
    return RoundTrip(seconds=seconds, **out)
