"""Response models of the control API: what each endpoint answers, for ``/v1/openapi.json``.

Handlers build plain dicts (the daemon's own ``status()``, ``queue_info()``, the agent
manager's ``describe()``...); these models describe them. ``Fixed`` models are exact — a field
added to one of those dicts must be added here too, or the schemathesis test fails — while
``Open`` models leave room where the content legitimately varies (a tile runner or a backup
strategy from a plugin adds its own keys).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ploinkyd.plugin_repos import LockEntry
from ploinkyd.plugins import PluginInfo, PluginStatus
from ploinkyd.queue.locks import Owner
from ploinkyd.queue.task import Record
from ploinkyd.tiles.compiler import Plan
from ploinkyd.tiles.model import Limits

T = TypeVar("T")


class Fixed(BaseModel):
    """A shape the daemon fully controls: unknown keys are a documentation bug."""

    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """A shape with known keys and room for more (from plugins or runners)."""

    model_config = ConfigDict(extra="allow")


# ---- envelopes ------------------------------------------------------------------------------


class ErrorBody(Fixed):
    code: str = Field(description="stable, machine-readable error code, such as NOT_FOUND")
    message: str = Field(description="what went wrong and what to do about it")
    details: dict[str, Any] = Field(description="structured context; may be empty")


class ErrorEnvelope(Fixed):
    """Every error response: 4xx and 5xx alike."""

    error: ErrorBody
    request_id: str = Field(description="also in the X-Request-Id response header")
    timestamp: datetime


class Pagination(Fixed):
    page: int = Field(ge=1)
    per_page: int = Field(ge=1)
    total: int = Field(ge=0, description="items over all pages")
    pages: int = Field(ge=0)


class Page(Fixed, Generic[T]):
    """A list response: one page of ``data``, selected with ``page`` and ``per_page``."""

    data: list[T]
    pagination: Pagination


# ---- system ---------------------------------------------------------------------------------


class Health(Fixed):
    status: Literal["ok"]


class Ready(Fixed):
    """Only ever true: a daemon that is not ready answers 503 with the reason."""

    ready: Literal[True]


class QueueCounts(Fixed):
    """A queue runner's live counts (pending/running and the states of pending tasks) and
    counters since the daemon started."""

    pending: int = Field(ge=0)
    running: int = Field(ge=0)
    wait: int = Field(ge=0, description="pending tasks still settling or being inspected")
    queued: int = Field(ge=0, description="pending tasks ready to be claimed")
    delayed: int = Field(ge=0, description="pending tasks waiting for not_before or a retry")
    elsewhere: int = Field(ge=0, description="pending tasks locked by another node")
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    cancelled: int = Field(ge=0)
    retries: int = Field(ge=0)
    deferrals: int = Field(ge=0)


class QueueInfo(QueueCounts):
    name: str
    path: str
    watch: Literal["inotify", "polling"]
    concurrency: int
    lock_timeout: float
    max_task_bytes: int
    retention: float
    alerts: list[str] = Field(
        description="what an operator must act on now, one sentence each, such as a full disk "
        "(claims paused, records waiting to be written); empty when all is well"
    )


class QueueDetail(QueueInfo):
    by_kind: dict[str, int] = Field(description="tasks succeeded, by kind")
    by_error: dict[str, int] = Field(description="tasks failed, by error code")
    lock_takeovers: int
    rescans: int
    record_write_failures: int = Field(
        description="failed attempts to write a record or a retried task; each is retried"
    )
    disk_full: bool = Field(
        description="the queue's filesystem has no space left: claims are paused until it has"
    )
    records_waiting: int = Field(
        ge=0, description="records and retried tasks held in memory until they can be written"
    )


class QueuePage(Page[QueueInfo]):
    pass


class PluginBrief(Fixed):
    name: str
    status: PluginStatus


class CacheStats(Fixed):
    hits: int
    misses: int
    evictions: int
    expirations: int
    oversize: int
    bytes: int
    entries: int
    max_bytes: int
    ttl_s: float
    persistent: bool
    disk_hits: int
    disk_entries: int
    disk_bytes: int
    disk_evictions: int
    disk_errors: int


class CacheCleared(CacheStats):
    cleared: int = Field(description="entries in memory before the clear")


class RunnerStatus(Open):
    """The tile runner's own status; each runner adds its keys (the docker runner its
    engine, the process runner a warning that it does not sandbox)."""

    name: str
    sandboxed: bool
    ready: bool
    reason: str | None
    pools: list[dict[str, Any]]


class TilesStatus(Fixed):
    runner: RunnerStatus
    sandboxed: bool
    image: str = Field(description="the default tile image")
    calls: int
    call_errors: dict[str, int]
    cache: CacheStats
    operators: int
    agents: list[str]


class BackupJobStatus(Open):
    name: str
    repository: str
    strategy: str
    schedule: str | None = None
    next_run: str | None = None
    last_enqueued: str | None = None
    last_result: dict[str, Any] | None = None


class BackupStatus(Open):
    queue: str
    repositories: list[str]
    jobs: list[BackupJobStatus]
    running: int


class DaemonStatus(Fixed):
    version: str
    node: str
    pid: int
    state: Literal["ready", "starting", "draining"]
    ready: bool
    reason: str | None = Field(description="why the daemon is not (fully) ready")
    uptime_s: float
    state_dir: str
    socket: str
    summary: str = Field(description="the one-line status systemd shows")
    inotify_overflows: int
    queues: dict[str, QueueInfo]
    plugins: list[PluginBrief]
    tiles: TilesStatus | None
    kinds: list[str]
    backup: BackupStatus


# ---- tasks ----------------------------------------------------------------------------------

FinishedState = Literal["succeeded", "failed", "cancelled"]


class TaskRef(Fixed):
    """A task just queued; ``location`` is where to look it up."""

    id: str
    queue: str
    state: Literal["pending"]
    location: str


class PendingTask(Fixed):
    id: str
    queue: str
    state: Literal["pending"]
    task: Any = Field(description="the task file as written (null if it is not valid JSON)")


class RunningTask(Fixed):
    id: str
    queue: str
    state: Literal["running"]
    task: Any
    owner: Owner = Field(description="the lock holder: node, process and claim time")


class FinishedTask(Fixed):
    id: str
    queue: str
    state: FinishedState
    record: Record


TaskInfo = Annotated[PendingTask | RunningTask | FinishedTask, Field(discriminator="state")]


class TaskItem(Fixed):
    id: str
    queue: str
    state: Literal["pending", "running", "succeeded", "failed", "cancelled"]


class TaskPage(Page[TaskItem]):
    pass


class CancelRequested(Fixed):
    id: str
    queue: str
    cancel_requested: Literal[True]


# ---- agents ---------------------------------------------------------------------------------


class ContainerInfo(Open):
    """A warm tile container (or worker process); runners add their own keys."""

    id: str
    pool: str
    state: str
    busy: bool
    image: str


class ContainerPage(Page[ContainerInfo]):
    pass


class AgentInfo(Fixed):
    name: str
    dir: str
    description: str
    state: Literal["running", "stopped", "failing"]
    reason: str | None
    quiesced: bool = Field(description="held quiet by a snapshot backup")
    queue: str
    queue_dir: str
    image: str | None
    operators: list[str]
    limits: Limits
    restarts: int
    started_at: float
    pool: str
    containers: list[ContainerInfo]
    tasks: QueueCounts | None


class AgentPage(Page[AgentInfo]):
    problems: dict[str, str] = Field(description="agent directory → why it did not load")


class AgentLogs(Fixed):
    agent: str
    lines: list[str]
    note: str | None = Field(None, description="why there are no lines, when the runner keeps none")


# ---- plugins --------------------------------------------------------------------------------


class PluginRow(PluginInfo):
    git: LockEntry | None = Field(None, description="the pin of a plugin installed from git")


class PluginPage(Page[PluginRow]):
    problems: dict[str, str] = Field(description="plugin (or plugins.lock) → what is wrong")


# ---- tiles ----------------------------------------------------------------------------------


class OperatorInfo(Fixed):
    name: str
    version: str
    owner: str = Field(description="builtin, the plugin or agent:NAME that contributed it")
    image: str
    mode: Literal["exec", "runtime"]
    fusable: bool
    description: str


class OperatorPage(Page[OperatorInfo]):
    pass


class ExplainRequest(Open):
    """A pipeline task, its ``input`` object, or a tile task (a one-stage pipeline)."""

    kind: str | None = None
    input: Any = None
    pipeline: list[Any] | dict[str, Any] | None = None
    op: str | None = None
    params: dict[str, Any] | None = None


class Explained(Plan):
    text: str = Field(description="the plan as ``ploinkyd tiles explain`` prints it")


# What a submit answers: the queued task (201), or with ?wait= its record (200) or, when the
# wait ran out, its current state (202). Backup, restore, verify and prune are submits too.
SUBMITTED: dict[int, Any] = {201: TaskRef, 200: TaskInfo, 202: TaskInfo}
