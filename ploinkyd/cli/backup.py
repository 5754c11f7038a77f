"""``ploinkyd backup init | create | list | show | restore | verify | forget | prune | diff |
unlock | key …``: the backup engine from the command line, without a daemon.

Every command goes through :mod:`ploinkyd.backup.ops`, the code path the daemon's backup task
kinds use, so the CLI and the daemon lock, write and check the repository the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from ploinkyd.backup import ops
from ploinkyd.backup.format import KEYS, Node, Snapshot
from ploinkyd.backup.locks import list_locks, unlock
from ploinkyd.backup.prune import PruneReport
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.retention import Decision, RetentionPolicy
from ploinkyd.backup.writer import parse_compression
from ploinkyd.cli import backup_keys, output, progress
from ploinkyd.cli.backup_repo import BackupCli, repo_options
from ploinkyd.errors import NotFoundError, RepositoryDamaged, UserError

EXIT_DAMAGED = RepositoryDamaged.exit_code

EXAMPLES = """\
examples:
  export PLOINKY_REPOSITORY=/srv/backup/repo PLOINKY_PASSWORD_FILE=/root/.backup-password
  ploinkyd backup init                                  create the repository
  ploinkyd backup create ~/docs --exclude '*.tmp' --tag daily
  ploinkyd backup list --tag daily
  ploinkyd backup show latest --tree /home/me/docs      a directory of a snapshot, like ls -l
  ploinkyd backup restore latest --target /tmp/r        (on any machine: URL + password only)
  ploinkyd backup diff 1a2b3c4d latest
  ploinkyd backup verify --read-data-subset 10%
  ploinkyd backup forget --keep-daily 7 --keep-weekly 4 --prune
  ploinkyd backup key add --new-password-file /root/second-password

environment:
  PLOINKY_REPOSITORY        the repository URL or path, instead of --repo
  PLOINKY_PASSWORD          the password; or PLOINKY_PASSWORD_FILE, PLOINKY_PASSWORD_COMMAND
                            (a terminal is asked when none is set)
  PLOINKY_BACKUP_KDF_LOG_N  scrypt cost (log2 N, at least 10) of new key files instead of
                            calibrating it: for tests and low-power machines only
"""


# ---- argument types ------------------------------------------------------------------------


def _compression(text: str) -> str:
    try:
        parse_compression(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def _keep_count(text: str) -> int:
    if text.strip().lower() == "unlimited":
        return -1
    try:
        count = int(text)
    except ValueError:
        count = -2
    if count < -1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of snapshots (-1 or 'unlimited': no limit)"
        )
    return count


def _share(text: str) -> float:
    try:
        share = float(text.strip().removesuffix("%"))
    except ValueError:
        share = -1.0
    if not 0 <= share <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100 (5%)")
    return share / 100


# ---- parser --------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    backup = sub.add_parser(
        "backup",
        help="backups: init, create, list, show, restore, verify, forget, prune, diff, key",
        description="Deduplicated, compressed, encrypted backups. No daemon needed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common, repo_options(suppress=False)],
    )
    parents = [common, repo_options(suppress=True)]
    bsub = backup.add_subparsers(dest="backup_command", metavar="ACTION", required=True)

    def cmd(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        p = bsub.add_parser(name, help=help_, description=help_, parents=parents)
        p.set_defaults(func=fn)
        return p

    compression: dict[str, Any] = {"metavar": "off|auto|max|N", "type": _compression}
    p = cmd("init", cmd_init, "create a repository")
    p.add_argument(
        "--compression", default="auto", help="zstd: off, auto, max or 1-22", **compression
    )

    p = cmd("create", cmd_create, "back up paths into a new snapshot")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--strategy",
        default="incremental",
        help="full, incremental (default), differential, snapshot, or one a plugin adds",
    )
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN")
    p.add_argument("--tag", action="append", default=[], metavar="TAG")
    p.add_argument("--job", default="", help="job name (the series incremental compares in)")
    p.add_argument("--host", default="", help="host name to record (default: this host)")
    p.add_argument("--compression", help="override the repository's compression", **compression)

    p = cmd("list", cmd_list, "list snapshots")
    p.add_argument("--job")
    p.add_argument("--host")
    p.add_argument(
        "--tag", action="append", default=[], help="T or T1,T2 (all of them); repeat for any"
    )

    p = cmd("show", cmd_show, "a snapshot's metadata and summary")
    p.add_argument("snapshot", help="id prefix, latest or latest:JOB")
    p.add_argument("--tree", metavar="PATH", help="list this directory of the snapshot")

    p = cmd("restore", cmd_restore, "restore a snapshot into a directory")
    p.add_argument("snapshot", help="id prefix, latest or latest:JOB")
    p.add_argument("--target", required=True, metavar="DIR")
    p.add_argument("--include", action="append", default=[], metavar="PATH")

    p = cmd("verify", cmd_verify, "check the repository (and with --read-data, every byte)")
    read = p.add_mutually_exclusive_group()
    read.add_argument("--read-data", action="store_true", help="download and check every pack")
    read.add_argument("--read-data-subset", metavar="n/t|x%|SIZE", help="check some packs")

    p = cmd("forget", cmd_forget, "remove snapshots a retention policy does not keep")
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{unit}", type=_keep_count, metavar="N")
    p.add_argument("--keep-within", metavar="DURATION", help="e.g. 7d, 1y2m (y, m, d, h)")
    p.add_argument("--keep-tag", action="append", default=[], metavar="TAG")
    p.add_argument("--job", help="only this job's snapshots")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--prune", action="store_true", help="then remove the unused data")

    p = cmd("prune", cmd_prune, "remove data no snapshot needs")
    p.add_argument("--rewrite", action="store_true", help="re-encrypt data under rotated keys")
    p.add_argument(
        "--max-unused",
        type=_share,
        default=0.05,
        metavar="PCT",
        help="repack packs with more unused space than this (default 5%%)",
    )
    p.add_argument("--dry-run", action="store_true")

    p = cmd("diff", cmd_diff, "what changed between two snapshots")
    p.add_argument("a", metavar="SNAP_A")
    p.add_argument("b", metavar="SNAP_B")

    p = cmd("unlock", cmd_unlock, "remove stale locks (of processes that are gone)")
    p.add_argument("--remove-all", action="store_true", help="remove every lock, even live ones")

    backup_keys.register(bsub, parents)


# ---- formatting ----------------------------------------------------------------------------


def warn(message: str) -> None:
    # Looked up on each call: the progress bar swaps sys.stderr while it draws.
    print(f"warning: {message}", file=sys.stderr)


def _meter(args: argparse.Namespace, meter: progress.Meter) -> progress.Meter | None:
    return meter if progress.wanted(args.json) else None


# ---- commands ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    repo = BackupCli(args).init(args.compression)
    out = {
        "id": repo.config.id,
        "url": repo.url,
        "key": repo.key_name.removeprefix(KEYS),
        "compression": repo.config.compression,
    }
    if args.json:
        output.emit_json(out)
    else:
        print(f"created repository {repo.config.id[:8]} at {repo.url}")
        print("keep the password safe: without it nothing in the repository can be restored")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    strategy = cli.strategy(args.strategy)
    repo = cli.open()
    sid, snap = progress.run(
        lambda watch: ops.create(
            repo,
            args.paths,
            strategy=strategy,
            excludes=args.exclude,
            tags=args.tag,
            job=args.job,
            host=args.host,
            compression=args.compression,
            warn=warn,
            watch=watch,
            lock_wait_s=cli.lock_wait_s,
        ),
        _meter(args, progress.CREATE),
    )
    if args.json:
        output.emit_json(snap.listing(sid))
        return 0
    s = snap.summary
    added, stored = output.human_size(s.bytes_added_raw), output.human_size(s.bytes_added_stored)
    print(
        f"snapshot {sid[:8]} saved: {s.files_new} new, {s.files_changed} changed, "
        f"{s.files_unmodified} unmodified files; {added} added ({stored} stored), "
        f"ratio {s.ratio:g}, {s.duration_s:.1f} s"
    )
    if snap.parent:
        print(f"{snap.strategy}: compared with snapshot {snap.parent[:8]}")
    if snap.status == "partial":
        print(f"partial: {s.skipped} entries not backed up (see the warnings)", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    repo = BackupCli(args).open()
    snaps = [
        (sid, s)
        for sid, s in repo.snapshots()
        if (args.job is None or s.job == args.job)
        and (args.host is None or s.host == args.host)
        and s.has_tags(args.tag)
    ]
    if args.json:
        output.emit_json({"data": [s.listing(sid) for sid, s in snaps]})
        return 0
    rows = [
        {
            "id": sid[:8],
            "time": output.when(s.time),
            "host": s.host,
            "job": s.job,
            "strategy": s.strategy,
            "tags": ",".join(s.tags),
            "paths": " ".join(s.paths),
            "size": output.human_size(s.summary.bytes_logical),
            "status": s.status,
        }
        for sid, s in snaps
    ]
    if rows:
        output.table(rows, ["id", "time", "host", "job", "strategy", "tags", "paths", "size"])
    print(f"{len(rows)} snapshot{'' if len(rows) == 1 else 's'}")
    return 0


def _entries_at(repo: Repository, sid: str, snap: Snapshot, path: str) -> list[Node]:
    """The entries of directory ``path`` in the snapshot (or the one entry, for a file)."""
    repo.load_index()
    nodes = repo.load_tree(snap.tree).nodes
    parts = [p for p in path.split("/") if p]
    for depth, part in enumerate(parts, 1):
        node = next((n for n in nodes if n.name == part), None)
        if node is None or (node.type != "dir" and depth < len(parts)):
            raise NotFoundError(
                f"{path}: not in snapshot {sid[:8]}; `ploinkyd backup show {sid[:8]}` lists "
                "its paths",
                code="PATH_NOT_IN_SNAPSHOT",
            )
        if node.type != "dir":
            return [node]
        nodes = repo.load_tree(node.subtree).nodes if node.subtree else []
    return nodes


def _ls(nodes: list[Node]) -> None:
    kinds = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "file": stat.S_IFREG}
    rows = [
        (
            stat.filemode(kinds[n.type] | n.mode),
            n.user or str(n.uid),
            n.group or str(n.gid),
            str(n.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(n.mtime_ns / 1e9)),
            n.name + (f" -> {n.target}" if n.type == "symlink" else ""),
        )
        for n in nodes
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    for mode, user, group, size, mtime, name in rows:
        print(f"{mode} {user:<{widths[1]}} {group:<{widths[2]}} {size:>{widths[3]}} {mtime} {name}")


def cmd_show(args: argparse.Namespace) -> int:
    repo = BackupCli(args).open()
    sid, snap = repo.find_snapshot(args.snapshot)
    if args.tree is not None:
        nodes = _entries_at(repo, sid, snap, args.tree)
        if args.json:
            listed = [
                {**n.model_dump(exclude={"content"}), "chunks": len(n.content or [])} for n in nodes
            ]
            output.emit_json({"id": sid, "path": args.tree, "nodes": listed})
        else:
            _ls(nodes)
        return 0
    if args.json:
        output.emit_json(snap.listing(sid))
        return 0
    s = snap.summary
    info: dict[str, Any] = {
        "id": sid,
        "time": output.when(snap.time),
        "host": snap.host,
        "user": snap.user,
        "job": snap.job,
        "strategy": snap.strategy,
        "parent": snap.parent,
        "paths": " ".join(snap.paths),
        "excludes": " ".join(snap.excludes),
        "tags": ",".join(snap.tags),
        "status": snap.status,
        "tree": snap.tree,
        "files": f"{s.files_new} new, {s.files_changed} changed, {s.files_unmodified} unmodified",
        "dirs": s.dirs,
        "skipped": s.skipped,
        "size": output.human_size(s.bytes_logical),
        "read": output.human_size(s.bytes_read),
        "added": output.human_size(s.bytes_added_raw),
        "stored": output.human_size(s.bytes_added_stored),
        "ratio": s.ratio,
        "duration": f"{s.duration_s:.1f} s",
        "version": snap.program_version,
    }
    output.mapping({k: v for k, v in info.items() if v not in (None, "")})
    for message in snap.warnings:
        print(f"warning: {message}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    repo = cli.open()
    sid, result = progress.run(
        lambda watch: ops.restore(
            repo,
            args.snapshot,
            args.target,
            include=args.include,
            warn=warn,
            watch=watch,
            lock_wait_s=cli.lock_wait_s,
        ),
        _meter(args, progress.RESTORE),
    )
    if args.json:
        target = os.path.abspath(args.target)
        output.emit_json({"id": sid, "target": target, **asdict(result)})
        return 0
    print(
        f"restored snapshot {sid[:8]} to {args.target}: {result.files} files, {result.dirs} "
        f"dirs, {result.symlinks} symlinks, {result.hardlinks} hardlinks, "
        f"{output.human_size(result.bytes)}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    repo = cli.open()
    reads = bool(args.read_data or args.read_data_subset)
    report = progress.run(
        lambda watch: ops.verify(
            repo,
            read_data=args.read_data,
            subset=args.read_data_subset,
            watch=watch,
            lock_wait_s=cli.lock_wait_s,
        ),
        _meter(args, progress.VERIFY) if reads else None,
    )
    if args.json:
        output.emit_json(report.to_dict())
        return 0 if report.ok else EXIT_DAMAGED
    for message in report.warnings:
        warn(message)
    line = f"checked {report.snapshots} snapshots, {report.trees} trees, {report.packs} packs"
    if reads:
        line += (
            f"; read {report.packs_read} packs ({output.human_size(report.bytes_read)}), "
            f"{report.blobs_read} blobs"
        )
    print(line)
    if report.ok:
        print("no errors were found")
        return 0
    for err in report.errors:
        print(f"error: {err['kind']} {err['object'][:16]}: {err['message']}")
    if report.damaged_files:
        print("damaged files:")
        for item in report.damaged_files:
            print(f"  snapshot {item['snapshot'][:8]}  {item['path']}")
    print(
        f"ploinkyd: error: the repository is damaged: {len(report.errors)} error(s)",
        file=sys.stderr,
    )
    return EXIT_DAMAGED


def _policy(args: argparse.Namespace) -> RetentionPolicy:
    fields: dict[str, Any] = {
        f"keep_{unit}": getattr(args, f"keep_{unit}")
        for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")
    }
    fields["keep_tags"] = args.keep_tag
    try:
        return RetentionPolicy(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).removesuffix("s").replace("_", "-")
        raise UserError(f"{option}: {err['msg']}", code="INVALID_POLICY") from None


def _group_label(group: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {','.join(v) if isinstance(v, list) else (v or '-')}" for k, v in group.items()
    )


def _show_decisions(decisions: list[Decision], dry_run: bool) -> None:
    groups: dict[str, list[Decision]] = {}
    for d in decisions:
        groups.setdefault(json.dumps(d.group, sort_keys=True), []).append(d)
    gone = "would remove" if dry_run else "removed"
    for members in groups.values():
        print(f"snapshots of {_group_label(members[0].group)}:")
        rows = [
            {
                "id": d.id[:8],
                "time": output.when(d.time),
                "action": "keep" if d.keep else gone,
                "reasons": ", ".join(d.reasons),
            }
            for d in members
        ]
        output.table(rows, ["id", "time", "action", "reasons"])


def _show_prune(report: PruneReport) -> None:
    would = "would " if report.dry_run else ""
    print(
        f"prune: {report.snapshots} snapshots use {report.blobs_used} blobs; {would}delete "
        f"{report.packs_deleted} and repack {report.packs_repacked} of {report.packs_before} "
        f"packs, freeing {output.human_size(report.bytes_freed)}"
    )
    if report.snapshots_rewritten or report.keys_dropped:
        print(
            f"re-encrypted {report.snapshots_rewritten} snapshots under the current key; "
            f"dropped {len(report.keys_dropped)} old data key(s)"
        )


def _prune_log(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_forget(args: argparse.Namespace) -> int:
    policy = _policy(args)
    cli = BackupCli(args)
    repo = cli.open()
    decisions = ops.forget(
        repo, policy, job=args.job, dry_run=args.dry_run, lock_wait_s=cli.lock_wait_s
    )
    removed = [d.id for d in decisions if not d.keep]
    pruned = None
    if args.prune and removed and not args.dry_run:
        pruned = ops.prune(repo, log_line=_prune_log, lock_wait_s=cli.lock_wait_s)
    if args.json:
        output.emit_json(
            {
                "dry_run": args.dry_run,
                "policy": policy.model_dump(),
                "decisions": [d.model_dump() for d in decisions],
                "removed": removed,
                "prune": pruned.to_dict() if pruned else None,
            }
        )
        return 0
    _show_decisions(decisions, args.dry_run)
    verb = "would be removed" if args.dry_run else "removed"
    print(f"{policy.describe()}: {len(decisions) - len(removed)} kept, {len(removed)} {verb}")
    if pruned is not None:
        _show_prune(pruned)
    elif removed and not args.dry_run:
        print("their data stays until `ploinkyd backup prune` (or forget --prune)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    repo = cli.open()
    report = ops.prune(
        repo,
        rewrite=args.rewrite,
        max_unused=args.max_unused,
        dry_run=args.dry_run,
        log_line=_prune_log,
        lock_wait_s=cli.lock_wait_s,
    )
    if args.json:
        output.emit_json(report.to_dict())
    else:
        _show_prune(report)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    repo = BackupCli(args).open()
    sid_a, _ = repo.find_snapshot(args.a)
    sid_b, _ = repo.find_snapshot(args.b)
    changes = ops.diff(repo, sid_a, sid_b)
    if args.json:
        rows = [{"op": c.op, "path": c.path} for c in changes]
        output.emit_json({"a": sid_a, "b": sid_b, "changes": rows})
        return 0
    print(f"comparing snapshot {sid_a[:8]} to {sid_b[:8]}:")
    for change in changes:
        print(f"{change.op}    {change.path}")
    counts = {op: sum(1 for c in changes if c.op == op) for op in "+-MUT"}
    print(
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['U']} metadata only, {counts['T']} type changed"
    )
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    repo = BackupCli(args).open()
    removed = unlock(repo, remove_all=args.remove_all)
    remaining = list_locks(repo)
    if args.json:
        live = [{"name": h.name, "stale": h.stale, **h.info.model_dump()} for h in remaining]
        output.emit_json({"removed": removed, "remaining": live})
        return 0
    print(f"removed {len(removed)} lock{'' if len(removed) == 1 else 's'}")
    for name in removed:
        print(f"  {name}")
    for held in remaining:
        i = held.info
        print(
            f"still locked: {'exclusive ' if i.exclusive else ''}{i.purpose or 'operation'} by "
            f"PID {i.pid} on {i.host} since {output.when(i.time)} (live; --remove-all removes it)"
        )
    return 0
