"""The shared vocabulary of tiles: wire messages, limits, operator and runner descriptors.

The wire protocol (SPEC §6) is one JSON object per line each way between the daemon and a
long-lived tile process::

    → {"id": "r1", "stages": [{"op": "map", "params": {"expr": "x * 2"}}], "input": [1, 2]}
    ← {"id": "r1", "ok": true, "output": [2, 4]}
    ← {"id": "r1", "ok": false, "error": {"code": "OP_FAILED", "message": "..."}}

``stages`` run in order inside one process, each stage's output feeding the next: that is how
the compiler fuses a chain into one round trip. The tile runtime (``ploinkyd.tile_runtime``)
mirrors these shapes with the standard library only, since it runs inside minimal images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class Stage(BaseModel):
    """One operator application inside a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)


class TileErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class TileRequest(BaseModel):
    id: str
    stages: list[Stage]
    input: Any = None


class TileResponse(BaseModel):
    id: str
    ok: bool
    output: Any = None
    error: TileErrorBody | None = None


class Limits(BaseModel):
    """Resources of one container (or process). Hashable: part of a warm pool's key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(256, ge=16, le=1 << 20)
    cpus: float = Field(1.0, gt=0, le=1024)
    pids: int = Field(64, ge=8, le=1 << 16)

    def merge(self, other: Limits) -> Limits:
        """The larger of each resource: what a fused group of two nodes needs."""
        return Limits(
            memory_mb=max(self.memory_mb, other.memory_mb),
            cpus=max(self.cpus, other.cpus),
            pids=max(self.pids, other.pids),
        )


class LimitRequest(BaseModel):
    """What a task may ask for; each value must stay within the configured ceilings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int | None = Field(None, ge=16)
    cpus: float | None = Field(None, gt=0)
    pids: int | None = Field(None, ge=8)


@dataclass(frozen=True)
class Mount:
    """A bind mount into the container (read-only unless ``writable``). ``hide`` names
    subdirectories of ``source`` that the container must not see (an empty read-only tmpfs
    is mounted over each): an agent's ``.ploinky/`` holds its queue."""

    source: Path
    target: str
    writable: bool = False
    hide: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostHints:
    """What the compiler assumes about an operator when it explains a plan."""

    cpu_us_per_item: float = 1.0
    memory_mb: float = 16.0
    size_ratio: float = 1.0  # output bytes / input bytes


@dataclass(frozen=True)
class OperatorSpec:
    """A tile operator, as returned by ``ploinkyd_tile_operators``.

    ``image`` None means the configured default tile image. ``runtime`` is the operator's
    name inside the tile runtime (defaults to ``name``); ``exec`` instead names a command that
    does not speak the protocol: it gets the input on stdin and prints the output on stdout
    (``exec_format`` says whether those are JSON values or raw text), one process per call,
    never fused. ``modules`` are extra Python modules the runtime imports (user operators
    registered with ``@operator``), with ``python_path`` entries mounted read-only.
    """

    name: str
    version: str = "1"
    params_model: type[BaseModel] | None = None
    image: str | None = None
    runtime: str | None = None
    exec: tuple[str, ...] | None = None
    exec_format: Literal["json", "text"] = "json"
    fusable: bool = True
    cost: CostHints = field(default_factory=CostHints)
    modules: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    limits: Limits | None = None  # ceilings for this operator; None = the config's
    description: str = ""
    owner: str = "builtin"  # the plugin or agent that contributed it

    @property
    def runtime_name(self) -> str:
        return self.runtime or self.name


@dataclass(frozen=True)
class TileCall:
    """One round trip: ``stages`` applied in order to ``input`` in one container.

    The pool key of a call is (image, limits, modules, mounts, pool): calls that share it share
    warm containers. ``pool`` separates owners that must not share a container (an agent).
    """

    image: str
    stages: tuple[Stage, ...]
    input: Any
    limits: Limits = field(default_factory=Limits)
    modules: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    exec: tuple[str, ...] | None = None
    exec_format: Literal["json", "text"] = "json"
    pool: str = "shared"
    max_output_bytes: int = 16 * 1024 * 1024

    def pool_key(self) -> tuple[Any, ...]:
        return (self.image, self.limits, self.modules, self.mounts, self.pool)


@runtime_checkable
class TileRunner(Protocol):
    """Executes tile calls somewhere. Contract shared by every runner (tests/test_runner_contract).

    ``call`` returns the output of the last stage, or raises ``TaskFailed`` with one of these
    codes (``retryable`` as given):

    - an operator's own error, e.g. ``OP_FAILED``, ``BAD_PARAMS``, ``UNKNOWN_OP`` — not
      retryable: the same input fails the same way;
    - ``OUTPUT_TOO_LARGE`` — the response passed ``max_output_bytes``; not retryable;
    - ``CONTAINER_OOM`` / ``CONTAINER_FAILED`` — the worker died mid-call (killed by the memory
      limit / crashed); retryable; the worker is replaced;
    - ``IMAGE_NOT_FOUND`` — not retryable; the message says how to build or pull the image;
    - ``TaskDeferred`` with ``ENGINE_UNAVAILABLE`` — the engine cannot be reached; the queue
      puts the task back without spending an attempt.

    Cancelling ``call`` (the task's timeout or a cancel) kills the worker that ran it, so no
    late answer can reach the next caller, and a fresh one replaces it.
    """

    name: str
    sandboxed: bool

    async def start(self) -> None:
        """Prepare (connect, clean orphans); must not fail when the backend is down."""

    async def call(self, call: TileCall) -> Any:
        """Run one round trip; see the class docstring for errors."""

    async def close(self) -> None:
        """Stop every worker this runner started."""

    def status(self) -> dict[str, Any]:
        """JSON-able: ``{"name", "sandboxed", "ready", "reason", "pools": [...]}``."""


RunnerFactory = Callable[..., TileRunner]


@dataclass(frozen=True)
class RunnerSpec:
    """A runner, as returned by ``ploinkyd_tile_runners``: the daemon builds it with
    ``factory(tiles_config, state_dir, node=node_id)`` (``TilesConfig``, ``Path``, ``str``)."""

    name: str
    factory: RunnerFactory
    sandboxed: bool
    description: str = ""
