"""Backup operations: the one code path behind ``ploinkyd backup …`` and the backup task kinds.

Each function opens nothing itself but the lock it needs: the caller opens the repository
(:func:`open_repository`), so the CLI and the daemon share every rule here — which lock an
operation takes, what it writes and in what order. All of it is blocking; the daemon runs it
in a thread.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ploinkyd.backup.archiver import Archiver, BackupRequest
from ploinkyd.backup.format import Node, Snapshot
from ploinkyd.backup.locks import RepoLock
from ploinkyd.backup.prune import Pruner, PruneReport
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.restorer import Restorer, RestoreResult
from ploinkyd.backup.retention import Decision, RetentionPolicy, apply_policy
from ploinkyd.backup.storage import BackendFactory, open_backend
from ploinkyd.backup.strategies import BackupStrategy, Quiescer, builtin_strategies
from ploinkyd.backup.verify import Verifier, VerifyReport
from ploinkyd.errors import UserError

Watch = Callable[[Any], None]


def resolve_password(
    *,
    password_file: str | Path | None = None,
    password_command: str | None = None,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[], str] | None = None,
) -> str:
    """The repository password, restic's way: ``--password-file``, then
    ``PLOINKY_PASSWORD_FILE``, ``PLOINKY_PASSWORD_COMMAND``, ``PLOINKY_PASSWORD``, then a
    prompt on a terminal."""
    env = os.environ if env is None else env
    file = password_file or env.get("PLOINKY_PASSWORD_FILE")
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read password file {file}: {exc.strerror}") from None
        return text.rstrip("\r\n")
    command = password_command or env.get("PLOINKY_PASSWORD_COMMAND")
    if command:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UserError(
                f"password command {command!r} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout.rstrip("\r\n")
    if "PLOINKY_PASSWORD" in env:
        return env["PLOINKY_PASSWORD"]
    if prompt is not None:
        return prompt()
    raise UserError(
        "no repository password: set PLOINKY_PASSWORD, PLOINKY_PASSWORD_FILE or "
        "PLOINKY_PASSWORD_COMMAND, or pass --password-file",
        code="PASSWORD_REQUIRED",
    )


def resolve_repo(url: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    repo = url or env.get("PLOINKY_REPOSITORY")
    if not repo:
        raise UserError(
            "no repository: pass --repo URL or set PLOINKY_REPOSITORY", code="REPO_REQUIRED"
        )
    return repo


def open_repository(
    url: str,
    password: str,
    *,
    schemes: Mapping[str, BackendFactory] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Repository:
    return Repository.open(open_backend(url, schemes=schemes, options=options), password)


def init_repository(
    url: str,
    password: str,
    *,
    compression: str = "auto",
    schemes: Mapping[str, BackendFactory] | None = None,
    options: Mapping[str, Any] | None = None,
    pack_size: int | None = None,
    log_n: int | None = None,
) -> Repository:
    backend = open_backend(url, schemes=schemes, options=options)
    return Repository.init(
        backend, password, compression=compression, pack_size=pack_size, log_n=log_n
    )


def strategy_named(name: str, extra: Mapping[str, BackupStrategy] | None = None) -> BackupStrategy:
    known = {s.name: s for s in builtin_strategies()}
    known.update(extra or {})
    strategy = known.get(name)
    if strategy is None:
        raise UserError(
            f"unknown backup strategy {name!r}; known: {', '.join(sorted(known))}",
            code="UNKNOWN_STRATEGY",
        )
    return strategy


def create(
    repo: Repository,
    paths: Sequence[str],
    *,
    strategy: BackupStrategy,
    excludes: Sequence[str] = (),
    tags: Sequence[str] = (),
    job: str = "",
    host: str = "",
    compression: str | None = None,
    quiescer: Quiescer | None = None,
    warn: Callable[[str], None] | None = None,
    watch: Watch | None = None,
    lock_wait_s: float = 0.0,
) -> tuple[str, Snapshot]:
    """Back up ``paths`` under a shared lock (backups run side by side)."""
    archiver = Archiver(repo, strategy, quiescer=quiescer, warn=warn)
    if watch is not None:
        watch(archiver)
    with RepoLock(repo, exclusive=False, purpose=f"backup {job or ''}".strip(), wait_s=lock_wait_s):
        return archiver.run(
            BackupRequest(
                paths=list(paths),
                excludes=list(excludes),
                tags=list(tags),
                job=job,
                host=host,
                compression=compression,
            )
        )


def restore(
    repo: Repository,
    ref: str,
    target: str,
    *,
    include: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
    watch: Watch | None = None,
    lock_wait_s: float = 0.0,
) -> tuple[str, RestoreResult]:
    with RepoLock(repo, exclusive=False, purpose="restore", wait_s=lock_wait_s):
        sid, snap = repo.find_snapshot(ref)
        restorer = Restorer(repo, warn=warn)
        # A damaged index file must not cost the data it lists: skip it and find its packs
        # (and those of an interrupted backup) by their headers, as adoption does.
        repo.load_index(on_damaged=restorer.warn)
        repo.adopt_orphans()
        if watch is not None:
            watch(restorer)
        return sid, restorer.restore(snap.tree, target, list(include))


def verify(
    repo: Repository,
    *,
    read_data: bool = False,
    subset: str | None = None,
    watch: Watch | None = None,
    lock_wait_s: float = 0.0,
) -> VerifyReport:
    with RepoLock(repo, exclusive=False, purpose="verify", wait_s=lock_wait_s):
        verifier = Verifier(repo)
        if watch is not None:
            watch(verifier)
        return verifier.run(read_data=read_data, subset=subset)


def forget(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    job: str | None = None,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
) -> list[Decision]:
    """Apply a retention policy; removes the snapshots it does not keep (not their data:
    ``prune`` does that)."""
    with RepoLock(repo, exclusive=True, purpose="forget", wait_s=lock_wait_s):
        snaps = repo.snapshots()
        if job is not None:
            snaps = [s for s in snaps if s[1].job == job]
        decisions = apply_policy(snaps, policy)
        if not dry_run:
            for d in decisions:
                if not d.keep:
                    repo.delete_snapshot(d.id)
        return decisions


def prune(
    repo: Repository,
    *,
    rewrite: bool = False,
    max_unused: float = 0.05,
    dry_run: bool = False,
    log_line: Callable[[str], None] | None = None,
    lock_wait_s: float = 0.0,
) -> PruneReport:
    with RepoLock(repo, exclusive=True, purpose="prune", wait_s=lock_wait_s):
        return Pruner(
            repo, max_unused=max_unused, rewrite=rewrite, dry_run=dry_run, log_line=log_line
        ).run()


def rotate_key(repo: Repository, *, lock_wait_s: float = 0.0) -> dict[str, Any]:
    with RepoLock(repo, exclusive=True, purpose="key rotate", wait_s=lock_wait_s):
        return repo.key_rotate()


@dataclass(frozen=True)
class Change:
    """One line of ``diff``: ``+`` added, ``-`` removed, ``M`` content changed, ``U`` only
    metadata (mode, owner, times, xattrs) changed, ``T`` type changed."""

    op: str
    path: str


def diff(repo: Repository, ref_a: str, ref_b: str) -> list[Change]:
    _, a = repo.find_snapshot(ref_a)
    _, b = repo.find_snapshot(ref_b)
    repo.load_index()
    return list(_diff_trees(repo, a.tree, b.tree, ""))


def _diff_trees(repo: Repository, a: str | None, b: str | None, path: str) -> Iterator[Change]:
    if a == b:
        return
    left = {n.name: n for n in repo.load_tree(a).nodes} if a else {}
    right = {n.name: n for n in repo.load_tree(b).nodes} if b else {}
    for name in sorted(left.keys() | right.keys()):
        child = f"{path}/{name}"
        old, new = left.get(name), right.get(name)
        if old is None or new is None:
            node = new or old
            assert node is not None
            yield Change("+" if old is None else "-", child + ("/" if node.type == "dir" else ""))
            if node.type == "dir":
                sub = (None, node.subtree) if old is None else (node.subtree, None)
                yield from _diff_trees(repo, sub[0], sub[1], child)
            continue
        if old.type != new.type:
            yield Change("T", child)
            continue
        if old.type == "dir":
            if _meta(old) != _meta(new):
                yield Change("U", child + "/")
            yield from _diff_trees(repo, old.subtree, new.subtree, child)
        elif old.content != new.content or old.target != new.target:
            yield Change("M", child)
        elif _meta(old) != _meta(new):
            yield Change("U", child)


def _meta(node: Node) -> tuple[object, ...]:
    return (node.mode, node.uid, node.gid, node.mtime_ns, node.xattrs)
