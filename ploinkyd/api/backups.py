"""Control-API routes of backups: repositories and jobs, snapshots, create, restore, verify,
prune, and the repository's keys.

Reads open the repository on one of the backup service's operation threads, with the password
configured in ``[backup.repositories.NAME]``. Every change to a repository's data is a task of
the matching kind (``backup``, ``restore``, ``backup-verify``, ``backup-prune``) submitted into
``[backup] queue`` by the code path a file drop takes (``ploinkyd.api.tasks.submit``): the
queue's retries, deferral on a locked repository, cancel and records apply to it unchanged.
The body is checked first with the kind's own input model, so a bad one is a 400 and nothing
reaches the queue.

Keys: admins list them and rotate the master key. Adding a password or changing one stays with
the local CLI (``ploinkyd backup key add|passwd``): over HTTP the new password would travel in
a request body and could end up in proxies' and clients' logs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ploinkyd.api import models
from ploinkyd.api import tasks as task_api
from ploinkyd.api.envelope import paginate
from ploinkyd.api.routes import Endpoints, body_of, daemon_of, query_of
from ploinkyd.backup import ops
from ploinkyd.backup.format import Snapshot
from ploinkyd.backup.kinds import (
    BackupInput,
    PruneInput,
    RestoreInput,
    VerifyInput,
    check_restore_target,
)
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.verify import select_subset
from ploinkyd.config import RepositorySettings
from ploinkyd.errors import NotFoundError, TaskError, TaskFailed, UserError
from ploinkyd.kinds import describe_validation, validation_details

if TYPE_CHECKING:
    from ploinkyd.backup.service import BackupService

table = Endpoints("backups")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# ---- models ----------------------------------------------------------------------------------


def _without_repository(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """A kind's input model minus ``repository``, which the URL names: the request body of a
    ``/v1/backups/{repo}/…`` call, with the kind's own fields, types and limits."""
    fields: dict[str, Any] = {
        key: (info.annotation, info)
        for key, info in model.model_fields.items()
        if key != "repository"
    }
    built: type[BaseModel] = create_model(
        name, __config__=ConfigDict(extra="forbid", strict=True), __doc__=doc, **fields
    )
    return built


RestoreRequest = _without_repository(
    RestoreInput,
    "RestoreRequest",
    "A snapshot (id prefix, latest or latest:JOB) to restore into target, optionally only the "
    "include paths. The target must lie in [backup] restore_roots or <state>/restores.",
)
VerifyRequest = _without_repository(
    VerifyInput,
    "VerifyRequest",
    "Check the repository; read_data also downloads and checks the data, subset only some of "
    "it (n/t, x% or a size such as 500M).",
)
PruneRequest = _without_repository(
    PruneInput,
    "PruneRequest",
    "Forget the snapshots no keep_* rule keeps (or those of job's retention), then remove the "
    "data no snapshot needs.",
)


class SnapshotQuery(task_api.PageQuery):
    job: str | None = Field(None, description="only this job's snapshots")
    host: str | None = Field(None, description="only snapshots taken on this host")
    tag: str | None = Field(None, description="only snapshots carrying the tag (T1,T2: all)")


class RepositoryInfo(BaseModel):
    name: str
    url: str = Field(description="the repository URL, any password in it masked")
    lock_wait: float = Field(description="seconds an operation waits for the repository's lock")


class JobInfo(BaseModel):
    name: str
    repository: str
    strategy: str
    schedule: str | None
    next_run: str | None
    last_due: str | None = None
    last_enqueued: str | None
    enqueued_at: str | None = None
    error: str | None = None
    last_result: dict[str, Any] | None


class BackupsOverview(BaseModel):
    queue: str = Field(description="the queue backup tasks are submitted to")
    restore_roots: list[str] = Field(
        description="where restore tasks may write: <state>/restores and [backup] restore_roots"
    )
    repositories: list[RepositoryInfo]
    jobs: list[JobInfo]
    running: int = Field(description="backup operations running now")


class SnapshotInfo(Snapshot):
    id: str


class SnapshotPage(BaseModel):
    data: list[SnapshotInfo]
    pagination: dict[str, int]


class KeyInfo(BaseModel):
    id: str
    current: bool = Field(description="the key the daemon's password opens")
    created: float
    host: str
    user: str
    kdf: str


class KeyPage(BaseModel):
    data: list[KeyInfo]
    pagination: dict[str, int]


class RotateResult(BaseModel):
    key: str = Field(description="the daemon's password's new key file")
    data_key: str = Field(description="the new data key new data is encrypted under")
    removed_keys: list[str] = Field(description="other passwords' key files, now removed")
    old_data_keys: list[str] = Field(
        description="keys old data stays encrypted under until a prune with rewrite"
    )


# ---- helpers ---------------------------------------------------------------------------------


def _service(request: web.Request) -> BackupService:
    return daemon_of(request).backup


def _configured(service: BackupService, ref: str) -> tuple[str, RepositorySettings]:
    """A repository the daemon has a password for, by name (or url); else a 404."""
    try:
        return service.repository(ref)
    except TaskError as exc:
        raise NotFoundError(exc.message, code=exc.code, details=exc.details) from None


def _path_repository(request: web.Request) -> tuple[str, RepositorySettings]:
    return _configured(_service(request), request.match_info["repo"])


def public_url(url: str) -> str:
    """``url`` with the password of any ``user:password@`` part masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _kind_input(model: type[M], data: dict[str, Any], kind: str) -> M:
    """``data`` as the kind will read it: a mismatch is the 400 a file drop would record."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(
            f"invalid request body for kind {kind!r}: {describe_validation(exc)}",
            code="INVALID_INPUT",
            details={"errors": validation_details(exc)},
        ) from None


def _path_input(request: web.Request, body: type[BaseModel], model: type[M], kind: str) -> M:
    """The body of a ``/v1/backups/{repo}/...`` change as ``kind``'s input for that repository."""
    name, _ = _path_repository(request)
    given = body_of(request, body).model_dump(exclude_unset=True)
    return _kind_input(model, {"repository": name, **given}, kind)


async def _submit(request: web.Request, kind: str, data: BaseModel) -> web.Response:
    """Submit ``data`` as a ``kind`` task into ``[backup] queue``, as a file drop would."""
    daemon = daemon_of(request)
    q = query_of(request, task_api.SubmitQuery)
    body = {"kind": kind, "input": data.model_dump(mode="json", exclude_unset=True)}
    task = task_api.validate_task(daemon, body)
    return await task_api.submit(daemon, daemon.backup.config.queue, task, q.id, q.wait)


async def _with_repository(request: web.Request, work: Callable[[Repository], T]) -> T:
    """Open the path's repository on an operation thread and run ``work`` there; a cancelled
    request stops it at its next storage call."""
    service = _service(request)
    _, settings = _path_repository(request)

    def run(cancel: threading.Event) -> T:
        repo = service.open(settings, cancel)
        try:
            return work(repo)
        finally:
            repo.backend.close()

    return await service.run(run)


# ---- reads -----------------------------------------------------------------------------------


@table.get(
    "/v1/backups",
    summary="Configured repositories (without passwords) and jobs with their last results",
    response=BackupsOverview,
)
async def overview(request: web.Request) -> web.Response:
    service = _service(request)
    status = service.status()
    repos = [
        {"name": name, "url": public_url(s.url), "lock_wait": s.lock_wait}
        for name, s in sorted(service.config.repositories.items())
    ]
    return web.json_response(
        {
            "queue": status["queue"],
            "restore_roots": [
                str(root)
                for root in (service.daemon.state_dir / "restores", *service.config.restore_roots)
            ],
            "repositories": repos,
            "jobs": status["jobs"],
            "running": status["running"],
        }
    )


@table.get(
    "/v1/backups/{repo}/snapshots",
    summary="A repository's snapshots, oldest first",
    query=SnapshotQuery,
    response=SnapshotPage,
)
async def list_snapshots(request: web.Request) -> web.Response:
    q = query_of(request, SnapshotQuery)
    snaps = await _with_repository(request, lambda repo: repo.snapshots())
    rows = [
        s.listing(sid)
        for sid, s in snaps
        if (q.job is None or s.job == q.job)
        and (q.host is None or s.host == q.host)
        and s.has_tags([q.tag] if q.tag else [])
    ]
    return web.json_response(paginate(request, rows))


@table.get(
    "/v1/backups/{repo}/snapshots/{id}",
    summary="One snapshot, by id prefix, latest or latest:JOB",
    response=SnapshotInfo,
)
async def get_snapshot(request: web.Request) -> web.Response:
    ref = request.match_info["id"]
    sid, snap = await _with_repository(request, lambda repo: repo.find_snapshot(ref))
    return web.json_response(snap.listing(sid))


# ---- changes, as tasks -----------------------------------------------------------------------


@table.post(
    "/v1/backups",
    summary="Back up a configured job, or ad-hoc paths to a configured repository (a backup task)",
    role="operator",
    action="backup.create",
    query=task_api.SubmitQuery,
    body=BackupInput,
    response=models.SUBMITTED,
    status=201,
)
async def create_backup(request: web.Request) -> web.Response:
    """``{"job": NAME}`` or ``{"repository", "paths", ...}``; with ``?wait=S`` the answer is
    the task's record (202 while it still runs), else its ref (201)."""
    data = body_of(request, BackupInput)
    service = _service(request)
    if data.job is not None:
        try:
            service.job(data.job)
        except TaskError as exc:
            raise NotFoundError(exc.message, code=exc.code, details=exc.details) from None
    else:
        assert data.repository is not None
        _configured(service, data.repository)
        if data.strategy is not None:
            service.strategy(data.strategy)
    return await _submit(request, "backup", data)


@table.post(
    "/v1/backups/{repo}/restore",
    summary="Restore a snapshot into an allowed directory (a restore task)",
    role="operator",
    action="backup.restore",
    query=task_api.SubmitQuery,
    body=RestoreRequest,
    response=models.SUBMITTED,
    status=201,
)
async def restore(request: web.Request) -> web.Response:
    data = _path_input(request, RestoreRequest, RestoreInput, "restore")
    try:
        check_restore_target(_service(request), data.target)
    except TaskFailed as exc:
        raise UserError(exc.message, code=exc.code, details=exc.details) from None
    return await _submit(request, "restore", data)


@table.post(
    "/v1/backups/{repo}/verify",
    summary="Check a repository (a backup-verify task)",
    role="operator",
    action="backup.verify",
    query=task_api.SubmitQuery,
    body=VerifyRequest,
    body_optional=True,
    response=models.SUBMITTED,
    status=201,
)
async def verify(request: web.Request) -> web.Response:
    data = _path_input(request, VerifyRequest, VerifyInput, "backup-verify")
    if data.subset is not None:
        try:
            select_subset([], data.subset)  # only checks the notation
        except UserError as exc:
            message = exc.message.removeprefix("--read-data-subset ")
            raise UserError(
                f"invalid request body: subset: {message}",
                code="INVALID_INPUT",
                details={"errors": [{"loc": "subset", "msg": message}]},
            ) from None
    return await _submit(request, "backup-verify", data)


@table.post(
    "/v1/backups/{repo}/prune",
    summary="Forget snapshots by keep_* rules, then remove unused data (a backup-prune task)",
    role="operator",
    action="backup.prune",
    query=task_api.SubmitQuery,
    body=PruneRequest,
    body_optional=True,
    response=models.SUBMITTED,
    status=201,
)
async def prune(request: web.Request) -> web.Response:
    data = _path_input(request, PruneRequest, PruneInput, "backup-prune")
    data.policy()  # a keep_* combination the retention model refuses is a 400 here too
    return await _submit(request, "backup-prune", data)


# ---- keys ------------------------------------------------------------------------------------


@table.get(
    "/v1/backups/{repo}/keys",
    summary="A repository's key files (one per password): ids and origins, never key material",
    role="admin",
    query=task_api.PageQuery,
    response=KeyPage,
)
async def list_keys(request: web.Request) -> web.Response:
    keys = await _with_repository(request, lambda repo: repo.key_list())
    return web.json_response(paginate(request, keys))


@table.post(
    "/v1/backups/{repo}/keys/rotate",
    summary="New master data key; removes every other password's key file",
    role="admin",
    action="backup.key.rotate",
    response=RotateResult,
)
async def rotate_key(request: web.Request) -> web.Response:
    """The daemon's configured password keeps opening the repository; every other password
    must be re-added with ``ploinkyd backup key add``. Old data stays readable under the old
    keys until a prune with ``rewrite``."""
    _, settings = _path_repository(request)
    wait = settings.lock_wait
    result = await _with_repository(request, lambda repo: ops.rotate_key(repo, lock_wait_s=wait))
    return web.json_response(result)
