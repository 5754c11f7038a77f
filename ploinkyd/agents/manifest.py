"""``agent.toml``: what an agent serves, how much it may use and what it sees (SPEC §5).

An agent directory looks like::

    csv-report/
        agent.toml          this manifest
        report.py           operator code, imported by the tile runtime
        .ploinky/queue/     the agent's own queue (created by the daemon)

Inside a tile container the whole directory is mounted read-only at
``/opt/ploinky/agents/<name>``, and that path is on the runtime's module path, so ``module =
"report"`` imports ``report.py``. Operators are known to the daemon as ``<agent>.<op>``; the
bare ``<op>`` works inside the agent's own tasks.

``load_agent`` raises ``ConfigError`` naming ``<dir>/agent.toml``, the key, and what is allowed,
in the same words as the daemon's own configuration errors.
"""

from __future__ import annotations

import keyword
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ploinkyd.config import (
    Duration,
    LimitsConfig,
    QueueConfig,
    QueueSettings,
    _dotted,
    _error,
    _read_file,
    explain_error,
)
from ploinkyd.errors import ConfigError
from ploinkyd.tile_runtime import OpError
from ploinkyd.tile_runtime.registry import BUILTIN, lookup
from ploinkyd.tiles.model import LimitRequest, Limits, Mount, OperatorSpec

MANIFEST_FILE = "agent.toml"
AGENTS_MOUNT_ROOT = "/opt/ploinky/agents"
AGENT_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
OPERATOR_NAME_PATTERN = r"[a-z][a-z0-9_]{0,62}"

# /opt/ploinky holds the tile runtime and the agent directories; the others belong to the
# container engine, and a bind mount over them breaks the container or the sandbox.
_RESERVED_TARGETS = ("/opt/ploinky", "/proc", "/sys", "/dev")
# The daemon's own state inside an agent directory (the queue): a container must not see
# other tasks' records through a declared mount, nor write records of its own.
_PRIVATE_DIR = ".ploinky"
_AGENT_NAME = re.compile(AGENT_NAME_PATTERN, re.ASCII)
_OPERATOR_NAME = re.compile(OPERATOR_NAME_PATTERN, re.ASCII)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _check_agent_name(name: str) -> str:
    if not _AGENT_NAME.fullmatch(name):
        raise ValueError(
            f"agent name {name!r} is not allowed: it must match {AGENT_NAME_PATTERN} "
            "(lowercase letters, digits, '_' and '-', starting with a letter or digit; "
            "at most 63)"
        )
    return name


def is_builtin_operator(name: str) -> bool:
    """Whether the tile runtime itself provides operator ``name`` (``map``, ``sort``, ...)."""
    try:
        return lookup(name).module == BUILTIN
    except OpError:
        return False


def _check_operator_name(name: str) -> str:
    if not _OPERATOR_NAME.fullmatch(name):
        raise ValueError(
            f"operator name {name!r} is not allowed: it must match {OPERATOR_NAME_PATTERN} "
            "(lowercase letters, digits and '_', starting with a letter; at most 63)"
        )
    if is_builtin_operator(name):
        # User and built-in operators share one registry inside the container.
        raise ValueError(f"operator name {name!r} is a built-in operator; choose another name")
    return name


def _check_module(name: str) -> str:
    parts = name.split(".")
    if not all(_IDENTIFIER.fullmatch(p) and not keyword.iskeyword(p) for p in parts):
        raise ValueError(
            f"module {name!r} is not a Python module name: write the file name without "
            "'.py', e.g. 'report' for report.py or 'pkg.report' for pkg/report.py"
        )
    if parts[0] == "tile_runtime":
        raise ValueError("module 'tile_runtime' is reserved: it would hide the tile runtime")
    return name


def _check_image(name: str) -> str:
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"must be an image reference such as 'ploinky/python', got {name!r}")
    return name


def _version_text(value: object) -> object:
    # `version = 2` in TOML is as natural as `version = "2"`; both mean the same operator.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


AgentName = Annotated[str, AfterValidator(_check_agent_name)]
OperatorName = Annotated[str, AfterValidator(_check_operator_name)]
ModuleName = Annotated[str, AfterValidator(_check_module)]
Version = Annotated[str, BeforeValidator(_version_text), Field(min_length=1, max_length=64)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class OperatorDecl(_Table):
    """``[[operators]]``: one ``@operator`` function in a module of the agent directory."""

    name: OperatorName
    module: ModuleName
    version: Version = "1"
    fusable: bool = True
    description: str = ""


class CommandDecl(_Table):
    """``[command]``: a program that reads the input on stdin and prints the output."""

    argv: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    format: Literal["text", "json"] = "text"


class MountDecl(_Table):
    """``[[mounts]]``: a directory or file of the agent bind-mounted into its containers."""

    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    writable: bool = False

    @field_validator("source")
    @classmethod
    def _relative_source(cls, value: str) -> str:
        # Whoever can write agent.toml must not be able to hand a container /etc or $HOME.
        if os.path.isabs(value):
            raise ValueError(
                f"must be a path relative to the agent directory, got {value!r}; "
                "copy or link what the agent needs into its directory"
            )
        if ".." in Path(value).parts:
            raise ValueError(f"must stay inside the agent directory, got {value!r}")
        return value

    @field_validator("target")
    @classmethod
    def _container_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must be an absolute path inside the container, got {value!r}")
        if ".." in value.split("/"):
            raise ValueError(f"must not contain '..', got {value!r}")
        target = posixpath.normpath(value)
        if target.startswith("//"):  # normpath keeps a leading "//"; it still means "/"
            target = "/" + target.lstrip("/")
        if target == "/":
            raise ValueError("must not be '/': mount into a directory such as '/data'")
        for reserved in _RESERVED_TARGETS:
            if target == reserved or target.startswith(reserved + "/"):
                raise ValueError(
                    f"{target!r} is reserved ({reserved} belongs to ploinkyd or the container "
                    "engine); choose another directory such as '/data'"
                )
        return target


class AgentQueueSettings(_Table):
    """``[queue]``: the agent queue's tunables; a key left out keeps the daemon's default."""

    retention: Duration | None = Field(None, ge=0)
    max_task_bytes: int | None = Field(None, ge=1)
    lock_timeout: Duration | None = Field(None, gt=0)


class AgentManifest(_Table):
    """A validated ``agent.toml``. ``load_agent`` also checks it against the directory."""

    name: AgentName
    description: str = ""
    image: Annotated[str, AfterValidator(_check_image)] | None = None
    concurrency: int = Field(1, ge=1, le=64)
    resources: LimitRequest = Field(default_factory=LimitRequest)
    operators: list[OperatorDecl] = Field(default_factory=list)
    command: CommandDecl | None = None
    mounts: list[MountDecl] = Field(default_factory=list)
    queue: AgentQueueSettings = Field(default_factory=AgentQueueSettings)

    @field_validator("command")
    @classmethod
    def _command_name_free(
        cls, value: CommandDecl | None, info: ValidationInfo
    ) -> CommandDecl | None:
        name = info.data.get("name")
        if value is not None and isinstance(name, str) and is_builtin_operator(name):
            raise ValueError(
                f"a command agent serves the operator named after the agent, and {name!r} is "
                "a built-in operator; rename the agent"
            )
        return value

    @field_validator("operators")
    @classmethod
    def _unique_operators(cls, value: list[OperatorDecl]) -> list[OperatorDecl]:
        _refuse_duplicates([op.name for op in value], "operator name", "operators")
        return value

    @field_validator("mounts")
    @classmethod
    def _unique_targets(cls, value: list[MountDecl]) -> list[MountDecl]:
        _refuse_duplicates([m.target for m in value], "mount target", "mounts")
        return value

    @model_validator(mode="after")
    def _serves_something(self) -> AgentManifest:
        if not self.operators and self.command is None:
            raise ValueError(
                "declares neither [[operators]] nor [command]; an agent must serve at least "
                "one operator or run a command"
            )
        if self.command is not None and self.name in {op.name for op in self.operators}:
            # Inside the agent's tasks both would answer to the bare name.
            raise ValueError(
                f"operator {self.name!r} has the agent's name, which its [command] already "
                "uses; rename the operator"
            )
        return self

    @property
    def mount_target(self) -> str:
        """Where the agent directory appears inside its containers."""
        return f"{AGENTS_MOUNT_ROOT}/{self.name}"

    @property
    def owner(self) -> str:
        """The ``OperatorSpec.owner`` of this agent's operators (also a natural pool name)."""
        return f"agent:{self.name}"

    def operator_names(self) -> dict[str, str]:
        """Bare name → registered name: what a task of this agent may write as ``op``."""
        names = {op.name: f"{self.name}.{op.name}" for op in self.operators}
        if self.command is not None:
            names[self.name] = self.name
        return names

    def mounts_for(self, agent_dir: Path) -> tuple[Mount, ...]:
        """The agent directory (read-only, on the module path) plus the declared mounts, with
        absolute host sources as the container engine needs them."""
        root = agent_dir.resolve()
        # Its queue lives in .ploinky/: tasks and records of other producers stay hidden.
        own = Mount(source=root, target=self.mount_target, writable=False, hide=(_PRIVATE_DIR,))
        declared = (Mount((root / m.source).resolve(), m.target, m.writable) for m in self.mounts)
        return (own, *declared)

    def operator_specs(
        self, agent_dir: Path, default_image: str, *, limits: Limits | None = None
    ) -> list[OperatorSpec]:
        """One ``OperatorSpec`` per ``[[operators]]`` entry (``<agent>.<op>``, run by the
        runtime as ``<op>``) and one for ``[command]`` (named ``<agent>``, exec mode, never
        fused). ``default_image`` is the daemon's ``tiles.image``; ``limits`` (usually what
        ``limits()`` returned) becomes each spec's ceiling, None leaving the config's."""
        image = self.image or default_image
        mounts = self.mounts_for(agent_dir)
        specs = [
            OperatorSpec(
                name=f"{self.name}.{op.name}",
                version=op.version,
                image=image,
                runtime=op.name,
                fusable=op.fusable,
                modules=(op.module,),
                mounts=mounts,
                limits=limits,
                description=op.description or self.description,
                owner=self.owner,
            )
            for op in self.operators
        ]
        if self.command is not None:
            specs.append(
                OperatorSpec(
                    name=self.name,
                    image=image,
                    exec=tuple(self.command.argv),
                    exec_format=self.command.format,
                    fusable=False,
                    mounts=mounts,
                    limits=limits,
                    description=self.description,
                    owner=self.owner,
                )
            )
        return specs

    def queue_dir(self, agent_dir: Path) -> Path:
        """``<agent dir>/.ploinky/queue``."""
        return agent_dir / _PRIVATE_DIR / "queue"

    def queue_config(self, agent_dir: Path, defaults: QueueSettings) -> QueueConfig:
        """The agent queue's settings: ``defaults`` (the daemon's ``[queue_defaults]``)
        overlaid with ``concurrency`` and the keys ``[queue]`` sets, at ``queue_dir``."""
        own = self.queue.model_dump(exclude_none=True)
        merged = defaults.model_dump() | own | {"concurrency": self.concurrency}
        return QueueConfig.model_validate({**merged, "path": self.queue_dir(agent_dir)})

    def limits(self, agent_dir: Path, defaults: LimitsConfig, ceilings: LimitsConfig) -> Limits:
        """``[resources]`` filled in from ``defaults`` (``tiles.limits``); raises
        ``ConfigError`` naming the manifest when a request is above ``ceilings``."""
        values: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for key in ("memory_mb", "cpus", "pids"):
            asked = getattr(self.resources, key)
            ceiling = getattr(ceilings, key)
            if asked is not None and asked > ceiling:
                problems.append(
                    (
                        f"resources.{key}",
                        f"asks for {asked:g} but the daemon allows at most {ceiling:g} "
                        f"(tiles.ceilings.{key}); lower the request or raise the ceiling",
                    )
                )
            values[key] = asked if asked is not None else getattr(defaults, key)
        if problems:
            raise _problems_error(str(agent_dir / MANIFEST_FILE), problems)
        return Limits(**values)


def _refuse_duplicates(values: list[str], what: str, key: str) -> None:
    seen: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            raise ValueError(
                f"{what} {value!r} appears twice ({key}[{seen[value]}] and {key}[{index}]); "
                "each must be unique"
            )
        seen[value] = index


def load_agent(agent_dir: Path) -> AgentManifest:
    """Read and check ``<agent_dir>/agent.toml``.

    Beyond the schema, the directory must match the manifest: every operator's module file
    exists inside it, and every mount source exists and stays inside it (symbolic links
    included). ``name`` defaults to the directory's name. Raises ``ConfigError`` whose message
    names the file, the key and what is allowed; TOML syntax errors give line and column.
    """
    path = agent_dir / MANIFEST_FILE
    source = str(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise _error(source, "", f"{what}; an agent directory needs an agent.toml")
    raw = _read_file(path, missing_ok=False) or {}
    if "name" not in raw:
        dir_name = Path(os.path.abspath(agent_dir)).name
        if not _AGENT_NAME.fullmatch(dir_name):
            raise _error(
                source,
                "name",
                f"is not set, and the directory name {dir_name!r} is not a valid agent name; "
                f'add name = "..." matching {AGENT_NAME_PATTERN}',
            )
        raw = {**raw, "name": dir_name}
    try:
        manifest = AgentManifest.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, source) from None
    problems = list(_directory_problems(manifest, agent_dir))
    if problems:
        raise _problems_error(source, problems)
    return manifest


def _directory_problems(manifest: AgentManifest, agent_dir: Path) -> Iterator[tuple[str, str]]:
    root = agent_dir.resolve()
    private = root / _PRIVATE_DIR
    for index, op in enumerate(manifest.operators):
        key = f"operators[{index}].module"
        rel = Path(*op.module.split("."))
        candidates = [agent_dir / rel.with_suffix(".py"), agent_dir / rel / "__init__.py"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            shown = " or ".join(str(c.relative_to(agent_dir)) for c in candidates)
            yield key, f"module {op.module!r} not found: expected {shown} in {agent_dir}"
        elif not found.resolve().is_relative_to(root):
            # Only the agent directory is mounted; a link out of it dangles in the container.
            yield key, f"{found} links outside the agent directory; copy the file in instead"
    for index, mount in enumerate(manifest.mounts):
        key = f"mounts[{index}].source"
        host = (agent_dir / mount.source).resolve()
        if not host.is_relative_to(root):
            yield key, f"{mount.source!r} leads outside the agent directory (to {host})"
        elif not host.exists():
            yield key, f"{mount.source!r} does not exist in {agent_dir}"
        elif host == private or host.is_relative_to(private):
            yield key, f"{mount.source!r} is inside {_PRIVATE_DIR}/, which only ploinkyd may use"
        elif mount.writable and private.is_relative_to(host):
            yield (
                f"mounts[{index}].writable",
                f"a writable mount of {mount.source!r} would let the container write into "
                f"{_PRIVATE_DIR}/ (its queue); mount a subdirectory instead",
            )


def _problems_error(source: str, problems: list[tuple[str, str]]) -> ConfigError:
    if len(problems) == 1:
        return _error(source, *problems[0])
    details = [{"source": source, "key": k, "message": m} for k, m in problems]
    lines = [f"{source}: {k}: {m}" for k, m in problems]
    return ConfigError(
        "invalid agent manifest:\n  " + "\n  ".join(lines), details={"errors": details}
    )


def _validation_error(exc: ValidationError, source: str) -> ConfigError:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        problems.append((_dotted(loc) or "(top level)", explain_error(err, loc, AgentManifest)))
    return _problems_error(source, problems)
