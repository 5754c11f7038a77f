"""The backup task kinds: ``backup``, ``restore``, ``backup-verify`` and ``backup-prune``.

Each one validates its input, resolves a configured repository (by name, or by its exact URL:
the daemon only holds passwords of repositories in ``[backup.repositories]``) and runs one
engine operation from ``ploinkyd.backup.ops`` on a thread of the daemon's backup service.

How engine errors become records:

==============================================  ============================================
the repository is locked (``REPOSITORY_LOCKED``)  deferred 30 s; no attempt spent
transient storage error                          failed, retried within ``max_attempts``
permanent storage error, wrong password,         failed for good (``retryable=False``) with
damaged repository, anything the operator fixes  the engine's message and code
``backup-verify`` finds errors                   ``REPOSITORY_DAMAGED``, the report in details
==============================================  ============================================

A cancelled or timed-out task stops its operation at the next storage call (see
``ploinkyd.backup.service``): the record is written at once, the repository lock is released
when the operation's thread lets go.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ploinkyd.backup import ops
from ploinkyd.backup.cancel import OperationCancelled
from ploinkyd.backup.format import Snapshot
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.retention import Decision, KeepCount, RetentionPolicy
from ploinkyd.backup.service import BackupService
from ploinkyd.backup.strategies import BackupStrategy, Quiescer
from ploinkyd.config import RepositorySettings
from ploinkyd.errors import (
    ConflictError,
    PloinkyError,
    RepositoryDamaged,
    StorageError,
    TaskDeferred,
    TaskError,
    TaskFailed,
    UserError,
)
from ploinkyd.kinds import TaskContext, TaskKind, describe_validation

log = logging.getLogger("ploinkyd.backup")

LOCKED_RETRY_S = 30.0
# OS errors worth another attempt; anything else (permissions, a file where a directory
# should be) needs a person.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY})


# ---- inputs ----------------------------------------------------------------------------------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _absolute(paths: list[str], what: str) -> list[str]:
    for path in paths:
        if not os.path.isabs(path):
            raise ValueError(f"{what} must be absolute paths, got {path!r}")
    return paths


class BackupInput(_Input):
    """``{"job": NAME}`` runs a configured job; otherwise ``repository`` and ``paths`` (and
    optionally ``strategy``, ``excludes``, ``tags``, ``compression``) describe an ad-hoc one."""

    job: str | None = Field(None, min_length=1)
    repository: str | None = Field(None, min_length=1)
    paths: list[str] | None = None
    strategy: str | None = Field(None, min_length=1)
    excludes: list[str] | None = None
    tags: list[str] | None = None
    compression: str | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> BackupInput:
        adhoc = ("repository", "paths", "strategy", "excludes", "tags", "compression")
        given = [name for name in adhoc if getattr(self, name) is not None]
        if self.job is not None:
            if given:
                raise ValueError(
                    f"with 'job' everything comes from the job's config; remove {given} "
                    "(or leave out 'job' for an ad-hoc backup)"
                )
            return self
        if self.repository is None or not self.paths:
            raise ValueError(
                "give 'job' (a [[backup.jobs]] name) or, for an ad-hoc backup, 'repository' "
                "(a configured repository's name or url) and a non-empty 'paths'"
            )
        _absolute(self.paths, "paths")
        return self


class RestoreInput(_Input):
    repository: str = Field(min_length=1)
    snapshot: str = Field("latest", min_length=1)  # an id prefix, "latest" or "latest:JOB"
    target: str = Field(min_length=1)
    include: list[str] = Field(default_factory=list)

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, value: str) -> str:
        return _absolute([value], "target")[0]


class VerifyInput(_Input):
    repository: str = Field(min_length=1)
    read_data: bool = False
    subset: str | None = Field(None, min_length=1)  # "n/t", "x%" or a size such as "500M"


class PruneInput(_Input):
    """Prune; with any ``keep_*`` (or a ``job`` that has a retention), forget first."""

    repository: str = Field(min_length=1)
    job: str | None = Field(None, min_length=1)
    rewrite: bool = False
    max_unused: float = Field(0.05, ge=0, le=1)
    keep_last: KeepCount = None
    keep_hourly: KeepCount = None
    keep_daily: KeepCount = None
    keep_weekly: KeepCount = None
    keep_monthly: KeepCount = None
    keep_yearly: KeepCount = None
    keep_within: str | None = None
    keep_tags: list[str] | None = None

    def policy(self) -> RetentionPolicy | None:
        """The ``keep_*`` fields as a policy; None when none is given."""
        given = {
            name: getattr(self, name)
            for name in RetentionPolicy.model_fields
            if getattr(self, name) is not None
        }
        if not given:
            return None
        try:
            return RetentionPolicy.model_validate(given)
        except ValidationError as exc:
            raise TaskError(
                f"input does not fit kind 'backup-prune': {describe_validation(exc)}",
                code="INVALID_INPUT",
            ) from None


# ---- errors ----------------------------------------------------------------------------------


def task_failure(exc: BaseException) -> BaseException:
    """What the queue should record for an engine error (module docstring)."""
    if isinstance(exc, TaskFailed | TaskError | OperationCancelled):
        return exc
    if isinstance(exc, ConflictError) and exc.code == "REPOSITORY_LOCKED":
        return TaskDeferred(
            exc.message, code=exc.code, details=exc.details, retry_after_s=LOCKED_RETRY_S
        )
    if isinstance(exc, StorageError):
        return TaskFailed(exc.message, code=exc.code, details=exc.details, retryable=exc.transient)
    if isinstance(exc, RepositoryDamaged | UserError):
        return TaskFailed(exc.message, code=exc.code, details=exc.details, retryable=False)
    if isinstance(exc, PloinkyError):
        return TaskFailed(exc.message, code=exc.code, details=exc.details)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return TaskFailed(
            f"{where}{exc.strerror or exc}",
            code="OS_ERROR",
            details={"errno": exc.errno},
            retryable=exc.errno in _TRANSIENT_ERRNOS,
        )
    return exc


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, OperationCancelled) or not isinstance(exc, Exception):
        return "cancelled"
    return "deferred" if isinstance(exc, TaskDeferred) else "failed"


def _service(ctx: TaskContext) -> BackupService:
    service = ctx.services.get("backup")
    if not isinstance(service, BackupService):
        raise TaskFailed(
            "backup tasks run only in the ploinkyd daemon (no backup service here)",
            code="BACKUP_UNAVAILABLE",
            retryable=False,
        )
    return service


# ---- backup ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupPlan:
    job: str  # "" for an ad-hoc backup
    repository: str
    settings: RepositorySettings
    paths: list[str]
    excludes: list[str]
    tags: list[str]
    strategy: BackupStrategy
    compression: str | None
    retention: RetentionPolicy | None
    prune: bool


def plan_backup(service: BackupService, data: BackupInput) -> BackupPlan:
    if data.job is not None:
        job = service.job(data.job)
        name, settings = service.repository(job.repository)
        try:
            strategy = service.strategy(job.strategy)
        except UserError as exc:
            raise TaskFailed(
                f"backup job {job.name!r}: {exc.message} (a plugin strategy must be installed "
                "and enabled in this daemon)",
                code=exc.code,
                retryable=False,
            ) from None
        return BackupPlan(
            job.name,
            name,
            settings,
            list(job.paths),
            list(job.excludes),
            list(job.tags),
            strategy,
            job.compression,
            job.retention,
            job.prune,
        )
    assert data.repository is not None and data.paths is not None
    name, settings = service.repository(data.repository)
    return BackupPlan(
        "",
        name,
        settings,
        list(data.paths),
        list(data.excludes or []),
        list(data.tags or []),
        service.strategy(data.strategy or "incremental"),
        data.compression,
        None,
        False,
    )


def snapshot_output(sid: str, snap: Snapshot, repository: str) -> dict[str, Any]:
    return {
        "snapshot": sid,
        "short_id": sid[:8],
        "repository": repository,
        "job": snap.job or None,
        "strategy": snap.strategy,
        "parent": snap.parent,
        "time": snap.time,
        "host": snap.host,
        "paths": snap.paths,
        "tags": snap.tags,
        "status": snap.status,
        "warnings": snap.warnings,
        "summary": snap.summary.model_dump(),
    }


def forget_output(policy: RetentionPolicy, decisions: list[Decision]) -> dict[str, Any]:
    return {
        "policy": policy.describe(),
        "kept": [d.id for d in decisions if d.keep],
        "removed": [d.id for d in decisions if not d.keep],
    }


def _after_backup(what: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Retention and prune after a backup: their failure is reported, not fatal, since the
    snapshot is written (a retried task would write another); the next run tries again."""
    try:
        return work()
    except OperationCancelled:
        raise
    except PloinkyError as exc:
        log.warning("%s after the backup failed: %s", what, exc.message)
        return {"error": exc.to_dict()}


def _run_backup(
    service: BackupService, plan: BackupPlan, quiescer: Quiescer, cancel: threading.Event
) -> dict[str, Any]:
    repo = service.open(plan.settings, cancel)
    wait = plan.settings.lock_wait
    try:
        sid, snap = ops.create(
            repo,
            plan.paths,
            strategy=plan.strategy,
            excludes=plan.excludes,
            tags=plan.tags,
            job=plan.job,
            compression=plan.compression,
            quiescer=quiescer,
            lock_wait_s=wait,
        )
        out = snapshot_output(sid, snap, plan.repository)
        policy = plan.retention
        if policy is not None:
            out["forget"] = _after_backup(
                "forget",
                lambda: forget_output(
                    policy, ops.forget(repo, policy, job=plan.job, lock_wait_s=wait)
                ),
            )
        if plan.prune:
            out["prune"] = _after_backup(
                "prune", lambda: ops.prune(repo, lock_wait_s=wait).to_dict()
            )
        return out
    finally:
        repo.backend.close()


async def run_backup(ctx: TaskContext, data: BackupInput) -> dict[str, Any]:
    service = _service(ctx)
    try:
        plan = plan_backup(service, data)
    except PloinkyError as exc:
        raise task_failure(exc) from None
    notes: dict[str, Any] = {"repository": plan.repository, "strategy": plan.strategy.name}
    ctx.notes["backup"] = notes
    quiescer = service.quiescer(ctx, notes)
    clock = service.daemon.clock
    service.started(
        plan.job,
        task=ctx.id,
        queue=ctx.queue,
        repository=plan.repository,
        strategy=plan.strategy.name,
    )
    try:
        out = await service.run(lambda cancel: _run_backup(service, plan, quiescer, cancel))
    except BaseException as exc:
        failure = task_failure(exc)
        info = failure.to_dict() if isinstance(failure, PloinkyError) else None
        service.record(
            plan.job,
            _outcome(exc),
            task=ctx.id,
            finished_at=clock.time(),
            error=info,
            queue=ctx.queue,
        )
        if failure is exc:
            raise
        raise failure from None
    outcome = "succeeded" if out["status"] == "complete" else "partial"
    service.record(
        plan.job, outcome, task=ctx.id, finished_at=clock.time(), snapshot=out, queue=ctx.queue
    )
    return out


# ---- restore, verify, prune ------------------------------------------------------------------


RepoWork = Callable[[Repository, float], dict[str, Any]]


async def _with_repository(ctx: TaskContext, repository: str, work: RepoWork) -> dict[str, Any]:
    """Open ``repository`` on an operation thread and run ``work(repo, lock_wait)`` there."""
    service = _service(ctx)
    name, settings = service.repository(repository)
    ctx.notes["backup"] = {"repository": name}

    def run(cancel: threading.Event) -> dict[str, Any]:
        repo = service.open(settings, cancel)
        try:
            return {"repository": name, **work(repo, settings.lock_wait)}
        finally:
            repo.backend.close()

    try:
        return await service.run(run)
    except BaseException as exc:
        failure = task_failure(exc)
        if failure is exc:
            raise
        raise failure from None


def check_restore_target(service: BackupService, target: str) -> None:
    roots = [service.daemon.state_dir / "restores", *service.config.restore_roots]
    # resolve(): a symlink inside an allowed root must not lead outside it.
    resolved = Path(target).resolve()
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
        raise TaskFailed(
            f"restore target {target} is outside the allowed roots ("
            + ", ".join(str(r) for r in roots)
            + "); add a root to backup.restore_roots, or restore with the CLI",
            code="RESTORE_TARGET_REFUSED",
            details={"target": target, "allowed": [str(r) for r in roots]},
            retryable=False,
        )


async def run_restore(ctx: TaskContext, data: RestoreInput) -> dict[str, Any]:
    check_restore_target(_service(ctx), data.target)

    def work(repo: Repository, wait: float) -> dict[str, Any]:
        sid, result = ops.restore(
            repo, data.snapshot, data.target, include=data.include, lock_wait_s=wait
        )
        return {
            "snapshot": sid,
            "short_id": sid[:8],
            "target": data.target,
            "files": result.files,
            "dirs": result.dirs,
            "symlinks": result.symlinks,
            "hardlinks": result.hardlinks,
            "bytes": result.bytes,
            "warnings": result.warnings,
        }

    return await _with_repository(ctx, data.repository, work)


async def run_verify(ctx: TaskContext, data: VerifyInput) -> dict[str, Any]:
    def work(repo: Repository, wait: float) -> dict[str, Any]:
        report = ops.verify(repo, read_data=data.read_data, subset=data.subset, lock_wait_s=wait)
        if not report.ok:
            first = report.errors[0].get("message", report.errors[0])
            raise TaskFailed(
                f"the repository is damaged: {len(report.errors)} error(s), first: {first}",
                code="REPOSITORY_DAMAGED",
                details=report.to_dict(),
                retryable=False,
            )
        return report.to_dict()

    return await _with_repository(ctx, data.repository, work)


async def run_prune(ctx: TaskContext, data: PruneInput) -> dict[str, Any]:
    service = _service(ctx)
    policy = data.policy()
    job = service.config.job(data.job) if data.job is not None else None
    if policy is None and job is not None:
        policy = job.retention  # a job no longer configured can still be named with keep_*

    def work(repo: Repository, wait: float) -> dict[str, Any]:
        out: dict[str, Any] = {"job": data.job, "forget": None}
        if policy is not None:
            decisions = ops.forget(repo, policy, job=data.job, lock_wait_s=wait)
            out["forget"] = forget_output(policy, decisions)
        report = ops.prune(repo, rewrite=data.rewrite, max_unused=data.max_unused, lock_wait_s=wait)
        out["prune"] = report.to_dict()
        return out

    return await _with_repository(ctx, data.repository, work)


def backup_kinds() -> list[TaskKind]:
    return [
        TaskKind(
            "backup",
            run_backup,
            BackupInput,
            "back up a configured job ({'job': NAME}) or ad-hoc paths to a configured repository",
        ),
        TaskKind("restore", run_restore, RestoreInput, "restore a snapshot into a directory"),
        TaskKind(
            "backup-verify",
            run_verify,
            VerifyInput,
            "check a repository (read_data: also download and check its data)",
        ),
        TaskKind(
            "backup-prune",
            run_prune,
            PruneInput,
            "forget snapshots by a retention policy (optional), then remove unused data",
        ),
    ]
