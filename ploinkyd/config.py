"""Configuration: the models of every section and the layered loader (SPEC §9).

Layers, later wins: built-in defaults < ``/etc/ploinky/config.toml`` < ``~/.ploinky/config.toml``
< ``./.ploinky/config.toml`` < ``PLOINKY_*`` environment < ``--config FILE`` < command-line
flags. Tables merge key by key; arrays and scalars replace. Every key remembers the layer that
set it, so ``ploinkyd config show`` can say where a value came from and a validation error can
name the file (or variable, or flag) to fix.
"""

from __future__ import annotations

import copy
import difflib
import grp
import ipaddress
import json
import math
import os
import pwd
import re
import socket
import sys
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from ploinkyd.backup.retention import RetentionPolicy
from ploinkyd.backup.schedule import CronSchedule
from ploinkyd.errors import ConfigError, NotFoundError, UserError
from ploinkyd.nesting import nesting
from ploinkyd.roles import Role

MIB = 1024 * 1024
DAY = 86400.0
QUEUE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# Backup job and repository names end up in task ids (schedule.slot_id) and metric labels.
BACKUP_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
BUILTIN_STRATEGIES = ("full", "incremental", "differential", "snapshot")
SYSTEM_CONFIG_FILE = Path("/etc/ploinky/config.toml")

# PLOINKY_* variables that belong to other parts of ploinkyd, not to the config tree; every
# other PLOINKY_* variable is read as config, so a typo surfaces as an "unknown key" error.
_OTHERS = (
    "CONFIG",
    "PASSWORD",
    "PASSWORD_FILE",
    "PASSWORD_COMMAND",
    "REPOSITORY",
    "BACKUP_KDF_LOG_N",  # ploinkyd backup's scrypt cost knob (cli/backup_repo.py)
    "TOKEN",  # the CLI's bearer token for a TCP control API
    "API_URL",  # the CLI's control API over TCP, instead of the socket
    "API_CACERT",  # the CA bundle that signs the daemon's TLS certificate
    "DEBIAN_MIRROR",  # images build
    "DOCKER_WAIT_S",  # scripts/docker-engine.sh
    "JOURNAL_SOCKET",  # logs.py: another socket in place of journald's (tests)
)
IGNORED_ENV = frozenset(f"PLOINKY_{name}" for name in _OTHERS)
ENV_SHORTCUTS: dict[str, tuple[str, ...]] = {
    "PLOINKY_STATE_DIR": ("daemon", "state_dir"),
    "PLOINKY_RUNTIME_DIR": ("daemon", "runtime_dir"),
    "PLOINKY_NODE_ID": ("daemon", "node_id"),
    "PLOINKY_LOG_LEVEL": ("daemon", "log_level"),
    "PLOINKY_LOG_FORMAT": ("daemon", "log_format"),
    "PLOINKY_API_TCP": ("api", "listen_tcp"),
    "PLOINKY_TILES_RUNNER": ("tiles", "runner"),
}

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)", re.ASCII)
_QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN, re.ASCII)
_BACKUP_NAME = re.compile(BACKUP_NAME_PATTERN, re.ASCII)
_HOST_PORT = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]+)):(\d{1,5})", re.ASCII)
_DURATION_HINT = "(seconds, or a string like '90s', '5m', '2h', '7d', '1w')"
# Real configs nest a few levels; merging and validating recurse, so a limit keeps a
# pathological file an error message instead of a RecursionError.
MAX_NESTING = 64
_TOO_DEEP = f"tables and arrays nest more than {MAX_NESTING} levels deep"
_FORM_ERRORS = frozenset(
    {"string_too_short", "string_too_long", "string_pattern_mismatch", "too_short", "too_long"}
)
_BOUNDS = {"gt": "greater than", "ge": "of at least", "le": "of at most", "lt": "less than"}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"90"``, ``"30s"``, ``"5m"``, ``"2h"``,
    ``"7d"``, ``"1w"``. Raises ``ValueError`` for anything else, including negatives."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = None
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip().lower())
        if match:
            seconds = float(match[1]) * _UNITS[match[2]]
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a non-negative duration {_DURATION_HINT}, got {value!r}")
    return seconds


def _expand_user(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # "~nosuchuser/..." must become a validation error, not a crash
        raise ValueError(f"must be a path; cannot expand {str(path)!r}: unknown user") from None


def _check_queue_name(name: str) -> str:
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"queue name {name!r} is not allowed: it must match {QUEUE_NAME_PATTERN} "
            "(start with a letter or digit; letters, digits, '.', '_', '-'; at most 64)"
        )
    if name.startswith("agent."):
        raise ValueError(
            f"queue name {name!r} is not allowed: names starting with 'agent.' belong to "
            "agents' queues; pick another name"
        )
    return name


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _check_backup_name(name: str) -> str:
    if not _BACKUP_NAME.fullmatch(name):
        raise ValueError(
            f"name {name!r} is not allowed: it must match {BACKUP_NAME_PATTERN} "
            "(start with a letter or digit; letters, digits, '.', '_', '-'; at most 64)"
        )
    return name


LogLevel = Literal["debug", "info", "warning", "error"]
Duration = Annotated[float, BeforeValidator(parse_duration)]
UserPath = Annotated[Path, AfterValidator(_expand_user)]
QueueName = Annotated[str, AfterValidator(_check_queue_name)]
BackupName = Annotated[str, AfterValidator(_check_backup_name)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DaemonConfig(_Section):
    """``[daemon]``: identity, directories, logging and loop timings of this daemon."""

    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253)
    state_dir: UserPath | None = None
    runtime_dir: UserPath | None = None
    log_level: Annotated[LogLevel, BeforeValidator(_lower)] = "info"
    log_format: Annotated[Literal["plain", "json"], BeforeValidator(_lower)] = "plain"
    drain_timeout_s: float = Field(30.0, gt=0)
    rescan_interval_s: float = Field(5.0, gt=0)
    recovery_interval_s: float = Field(30.0, gt=0)
    dev_mode: bool = False

    @field_validator("node_id", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # PLOINKY_DAEMON__NODE_ID=7 arrives JSON-decoded as 7; a node id is always text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class QueueSettings(_Section):
    """The tunables every queue has; ``[queue_defaults]`` sets them for all queues at once."""

    concurrency: int = Field(4, ge=1, le=1024)
    retention: Duration = Field(7 * DAY, ge=0)
    watch: Literal["auto", "inotify", "polling"] = "auto"
    max_task_bytes: int = Field(MIB, ge=1)
    lock_timeout: Duration = Field(60.0, gt=0)
    settle_s: float = Field(1.0, ge=0)
    retry_base_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    group_commit: int = Field(256, ge=1, le=4096)


class QueueConfig(QueueSettings):
    """``[queues.NAME]``: one queue; keys it leaves out come from ``[queue_defaults]``."""

    path: UserPath | None = None


class ApiConfig(_Section):
    """``[api]``: where the control API listens, who may do what, and its limits.

    On the unix socket the caller's uid decides its role: root and the daemon's own user are
    admins, then ``uid_roles`` (user name or uid), then ``gid_roles`` (group name or gid, the
    caller's supplementary groups too), then ``unix_role`` for anyone else who can reach the
    socket (its mode lets in its owner and group only). On TCP only bearer tokens count.
    """

    socket: UserPath | None = None
    socket_mode: str = "0660"
    listen_tcp: str | None = None
    tls_cert: UserPath | None = None
    tls_key: UserPath | None = None
    max_body_bytes: int = Field(4 * MIB, ge=1)
    unix_role: Role | Literal["none"] = "operator"
    uid_roles: dict[str, Role] = Field(default_factory=dict)
    gid_roles: dict[str, Role] = Field(default_factory=dict)
    # Per client (a token, a uid, or an address): requests per second, and the burst above it.
    rate_limit: float = Field(200.0, ge=0)
    rate_burst: int = Field(400, ge=1)
    request_timeout: Duration = Field(60.0, gt=0)
    audit_max_bytes: int = Field(16 * MIB, ge=4096)
    audit_backups: int = Field(8, ge=1, le=1000)

    @field_validator("uid_roles", mode="after")
    @classmethod
    def _known_users(cls, value: dict[str, Role]) -> dict[str, Role]:
        return {_account(name, pwd.getpwnam, "user"): role for name, role in value.items()}

    @field_validator("gid_roles", mode="after")
    @classmethod
    def _known_groups(cls, value: dict[str, Role]) -> dict[str, Role]:
        return {_account(name, grp.getgrnam, "group"): role for name, role in value.items()}

    @model_validator(mode="after")
    def _tls_for_the_network(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key (a PEM certificate and its key)")
        address = self.tcp_address()
        if address is not None and self.tls_cert is None and not _loopback(address[0]):
            # Bearer tokens in clear text on a network are as good as published.
            raise ValueError(
                f"listen_tcp = {self.listen_tcp!r} is not a loopback address, so tls_cert and "
                "tls_key must be set; or listen on 127.0.0.1 / [::1] and put a TLS proxy in front"
            )
        return self

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> str:
        text = value.strip().lower().removeprefix("0o") if isinstance(value, str) else ""
        # An int is refused: TOML's 0o660 and JSON's 660 would silently mean different modes.
        if not re.fullmatch(r"[0-7]{3,4}", text, re.ASCII):
            raise ValueError(
                f"must be an octal permission string such as '0660' or '0600', got {value!r}"
            )
        return f"{int(text, 8):04o}"

    @field_validator("listen_tcp", mode="after")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        match = _HOST_PORT.fullmatch(value) if value is not None else None
        if value is not None and (match is None or not 1 <= int(match[3]) <= 65535):
            raise ValueError(
                "must be HOST:PORT with a port from 1 to 65535, e.g. '127.0.0.1:8470' or "
                f"'[::1]:8470', got {value!r}"
            )
        return value

    @property
    def socket_mode_bits(self) -> int:
        return int(self.socket_mode, 8)

    def tcp_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of ``listen_tcp`` (IPv6 without brackets), or None when unset."""
        match = _HOST_PORT.fullmatch(self.listen_tcp) if self.listen_tcp else None
        return None if match is None else (match[1] or match[2], int(match[3]))


def _account(name: str, lookup: Any, what: str) -> str:
    """A uid/gid as a decimal string: numbers pass, names are looked up on this host."""
    if name.isdigit():
        return name
    try:
        entry = lookup(name)
    except KeyError:
        raise ValueError(
            f"no {what} named {name!r} on this host (give a name or a number)"
        ) from None
    return str(entry[2])


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


class PluginsConfig(_Section):
    """``[plugins]``: which plugins stay off, which directories load in place and where
    ``plugin install`` may clone from.

    ``allow`` holds shell-style patterns matched against the whole source URL (or the absolute
    path of a local repository); ``https://*`` and local paths by default. Transports that run
    commands (``ext::``, ``fd::``) are refused whatever the list says.
    """

    disabled: list[str] = Field(default_factory=list)
    paths: list[Path] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=lambda: ["https://*", "/*", "./*"])
    git_timeout_s: float = Field(120.0, gt=0)


class LimitsConfig(_Section):
    """Container resources: ``[tiles.limits]`` (what a call gets unless it asks) and
    ``[tiles.ceilings]`` (the most any task, operator or agent may ask for)."""

    memory_mb: int = Field(256, ge=16)
    cpus: float = Field(1.0, gt=0)
    pids: int = Field(64, ge=8)


class CeilingsOverride(_Section):
    """``[tiles.operator_ceilings.NAME]``: lower ceilings for one operator; a key left out
    keeps the global ``[tiles.ceilings]`` value."""

    memory_mb: int | None = Field(None, ge=16)
    cpus: float | None = Field(None, gt=0)
    pids: int | None = Field(None, ge=8)


class TileCacheConfig(_Section):
    """``[tiles.cache]``: memoised tile results."""

    enabled: bool = True
    max_bytes: int = Field(64 * MIB, ge=0)
    ttl: Duration = Field(3600.0, gt=0)
    persist: bool = False  # keep entries in <state>/tiles/cache across restarts


class TilesConfig(_Section):
    """``[tiles]``: where tiles run and how much they may use."""

    runner: str = Field("docker", min_length=1)
    image: str = Field("ploinky/python", min_length=1)
    pool_min: int = Field(0, ge=0, le=64)
    pool_max: int = Field(2, ge=1, le=256)
    idle_timeout: Duration = Field(300.0, gt=0)
    start_timeout: Duration = Field(30.0, gt=0)
    max_output_bytes: int = Field(16 * MIB, ge=1)
    user: str = Field("65534:65534", pattern=r"^[0-9]+(:[0-9]+)?$")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ceilings: LimitsConfig = Field(
        default_factory=lambda: LimitsConfig(memory_mb=2048, cpus=2.0, pids=512)
    )
    operator_ceilings: dict[str, CeilingsOverride] = Field(default_factory=dict)
    cache: TileCacheConfig = Field(default_factory=TileCacheConfig)

    @model_validator(mode="after")
    def _limits_within_ceilings(self) -> TilesConfig:
        for key in ("memory_mb", "cpus", "pids"):
            if getattr(self.limits, key) > getattr(self.ceilings, key):
                raise ValueError(
                    f"tiles.limits.{key} ({getattr(self.limits, key)}) is above "
                    f"tiles.ceilings.{key} ({getattr(self.ceilings, key)}); lower the first "
                    "or raise the second"
                )
        if self.pool_min > self.pool_max:
            raise ValueError(
                f"tiles.pool_min ({self.pool_min}) is above tiles.pool_max ({self.pool_max})"
            )
        return self


class AgentsConfig(_Section):
    """``[agents]``: directories searched for agent directories (each with ``agent.toml``).

    Empty means ``<state>/agents``, plus ``./agents`` when ``daemon.dev_mode`` is on."""

    paths: list[UserPath] = Field(default_factory=list)
    restart_backoff_max: Duration = Field(60.0, gt=0)


class RepositorySettings(_Section):
    """``[backup.repositories.NAME]``: a repository the daemon's backup tasks may use."""

    url: str = Field(min_length=1)
    # Neither set: PLOINKY_PASSWORD_FILE, PLOINKY_PASSWORD_COMMAND or PLOINKY_PASSWORD in the
    # daemon's environment, as for `ploinkyd backup`.
    password_file: UserPath | None = None
    password_command: str | None = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the storage backend
    lock_wait: Duration = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_password_source(self) -> RepositorySettings:
        if self.password_file is not None and self.password_command is not None:
            raise ValueError(
                "set password_file or password_command, not both: the daemon would use only "
                "the file"
            )
        return self


class BackupJob(_Section):
    """``[[backup.jobs]]``: one backup job; run by a ``backup`` task naming it."""

    name: BackupName
    paths: list[str]
    excludes: list[str] = Field(default_factory=list)
    repository: str = Field(min_length=1)
    strategy: str = Field("incremental", min_length=1)
    schedule: str | None = None
    retention: RetentionPolicy | None = None
    prune: bool = False
    tags: list[str] = Field(default_factory=list)
    compression: str | None = None

    @field_validator("paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one path to back up")
        out = []
        for raw in value:
            path = os.path.expanduser(raw)
            if not os.path.isabs(path):
                # The daemon's working directory is nobody's idea of "here".
                raise ValueError(f"paths must be absolute (or start with ~), got {raw!r}")
            out.append(os.path.normpath(path))
        return out

    @field_validator("strategy")
    @classmethod
    def _strategy_typo(cls, value: str) -> str:
        # Plugin strategies are only known once plugins load, so only a near miss of a
        # built-in name is refused here; any other name is checked when the job runs.
        if value not in BUILTIN_STRATEGIES:
            close = difflib.get_close_matches(value, BUILTIN_STRATEGIES, n=1, cutoff=0.75)
            if close:
                raise ValueError(
                    f"unknown backup strategy {value!r}; did you mean {close[0]!r}? (built in: "
                    f"{', '.join(BUILTIN_STRATEGIES)}; plugins may add more)"
                )
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return CronSchedule.parse(value).expr
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @field_validator("retention")
    @classmethod
    def _some_rule(cls, value: RetentionPolicy | None) -> RetentionPolicy | None:
        if value is not None and value.is_empty():
            raise ValueError(
                "sets no rule, so forget would remove every snapshot of the job; set at least "
                "one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, "
                "keep_yearly, keep_within, keep_tags (or leave retention out)"
            )
        return value

    @field_validator("compression", mode="before")
    @classmethod
    def _compression(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            from ploinkyd.backup.writer import parse_compression  # zstd only when asked

            try:
                parse_compression(value)
            except UserError as exc:
                raise ValueError(exc.message) from None
        return value


def _key_error(loc: tuple[str | int, ...], value: object, message: str) -> InitErrorDetails:
    """A validation error at ``loc`` with our own message (explain_error passes it on)."""
    error = PydanticCustomError("value_error", "{error}", {"error": message})
    return InitErrorDetails(type=error, loc=loc, input=value)


class BackupConfig(_Section):
    """``[backup]``: repositories the daemon may use, and the backup jobs it runs."""

    queue: QueueName = "default"  # where the scheduler enqueues the jobs' backup tasks
    # Where ``restore`` tasks may write, besides <state>/restores: anyone who can drop a task
    # file could otherwise overwrite any path the daemon (often root) can write.
    restore_roots: list[UserPath] = Field(default_factory=list)
    repositories: dict[BackupName, RepositorySettings] = Field(default_factory=dict)
    jobs: list[BackupJob] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> BackupConfig:
        problems: list[InitErrorDetails] = []
        seen: set[str] = set()
        known = ", ".join(sorted(self.repositories)) or "none yet; add [backup.repositories.NAME]"
        for nr, job in enumerate(self.jobs):
            if job.name in seen:
                problems.append(
                    _key_error(
                        ("jobs", nr, "name"),
                        job.name,
                        f"job name {job.name!r} is used twice; job names must be unique",
                    )
                )
            seen.add(job.name)
            if job.repository not in self.repositories:
                problems.append(
                    _key_error(
                        ("jobs", nr, "repository"),
                        job.repository,
                        f"unknown repository {job.repository!r}: name a table of "
                        f"[backup.repositories] (configured: {known})",
                    )
                )
        if problems:
            raise ValidationError.from_exception_data("BackupConfig", problems)
        return self

    def job(self, name: str) -> BackupJob | None:
        return next((job for job in self.jobs if job.name == name), None)


class Config(_Section):
    """The whole validated configuration. The queue ``default`` always exists."""

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    queue_defaults: QueueSettings = Field(default_factory=QueueSettings)
    queues: dict[QueueName, QueueConfig] = Field(default_factory=dict)
    api: ApiConfig = Field(default_factory=ApiConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    tiles: TilesConfig = Field(default_factory=TilesConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)

    @model_validator(mode="after")
    def _default_queue_exists(self) -> Config:
        if "default" not in self.queues:
            self.queues = {"default": QueueConfig(), **self.queues}
        if self.backup.queue not in self.queues:
            known = ", ".join(sorted(self.queues))
            message = (
                f"unknown queue {self.backup.queue!r} for scheduled backups: name a queue "
                f"declared as [queues.NAME] (configured: {known})"
            )
            error = _key_error(("backup", "queue"), self.backup.queue, message)
            raise ValidationError.from_exception_data("Config", [error])
        return self

    def queue_settings(self, name: str) -> QueueConfig:
        """Effective settings of queue ``name``: ``[queue_defaults]`` overlaid with the keys
        that ``[queues.NAME]`` itself set. Raises ``NotFoundError`` for an unknown queue."""
        own = self.queues.get(name)
        if own is None:
            raise NotFoundError(f"unknown queue {name!r}", details={"queue": name})
        # exclude_unset keeps exactly the keys present in the merged input for this queue, so
        # a queue that restates a built-in default still overrides [queue_defaults].
        merged = self.queue_defaults.model_dump() | own.model_dump(exclude_unset=True)
        return QueueConfig.model_validate(merged)

    def queue_path(self, name: str, state_dir: Path) -> Path:
        """The queue's directory: its explicit ``path`` or ``<state_dir>/queues/<name>``."""
        path = self.queue_settings(name).path
        return path if path is not None else state_dir / "queues" / name

    def resolved_state_dir(self, env: Mapping[str, str] | None = None) -> Path:
        """``daemon.state_dir`` or the SPEC §3 default for this process."""
        return self.daemon.state_dir or default_state_dir(env)

    def resolved_runtime_dir(self, env: Mapping[str, str] | None = None) -> Path:
        """``daemon.runtime_dir`` or the SPEC §3 default for this process."""
        return self.daemon.runtime_dir or default_runtime_dir(env)

    def resolved_socket(self, env: Mapping[str, str] | None = None) -> Path:
        """``api.socket`` or ``<runtime dir>/control.sock``."""
        return self.api.socket or self.resolved_runtime_dir(env) / "control.sock"

    def dump(self) -> dict[str, Any]:
        """JSON-able dump in which every queue shows its effective settings."""
        data = self.model_dump(mode="json")
        data["queues"] = {n: self.queue_settings(n).model_dump(mode="json") for n in self.queues}
        return data


def _system_wide(env: Mapping[str, str], euid: int | None) -> bool:
    euid = os.geteuid() if euid is None else euid
    return euid == 0 or bool(env.get("INVOCATION_ID") or env.get("NOTIFY_SOCKET"))


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def default_state_dir(env: Mapping[str, str] | None = None, *, euid: int | None = None) -> Path:
    """``/var/lib/ploinkyd`` for root or under systemd (``$STATE_DIRECTORY`` when systemd set
    it), else ``$XDG_STATE_HOME/ploinkyd`` (``~/.local/state/ploinkyd`` without it)."""
    env = os.environ if env is None else env
    if _system_wide(env, euid):
        given = env.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(given) if given else Path("/var/lib/ploinkyd")
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if os.path.isabs(xdg) else _home(env) / ".local" / "state"
    return base / "ploinkyd"


def default_runtime_dir(env: Mapping[str, str] | None = None, *, euid: int | None = None) -> Path:
    """``/run/ploinkyd`` for root or under systemd (``$RUNTIME_DIRECTORY`` when systemd set
    it), else ``$XDG_RUNTIME_DIR/ploinkyd`` (``/tmp/ploinkyd-<uid>`` without it)."""
    env = os.environ if env is None else env
    if _system_wide(env, euid):
        given = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return Path(given) if given else Path("/run/ploinkyd")
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "ploinkyd"
    return Path(f"/tmp/ploinkyd-{os.geteuid() if euid is None else euid}")


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus, for every leaf key, the layer it came from."""

    config: Config
    sources: dict[str, str]
    files: list[Path]
    merged: dict[str, Any]

    def show(self) -> dict[str, Any]:
        """``{"config": merged values, "sources": {dotted key: source}}``, JSON-able."""
        return {"config": copy.deepcopy(self.merged), "sources": dict(self.sources)}


Layer = tuple[Mapping[str, Any], str]
Key = tuple[str | int, ...]


def load_config(
    *,
    config_file: Path | None = None,
    flags: Mapping[str, tuple[Any, str]] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
    system_file: Path = SYSTEM_CONFIG_FILE,
) -> LoadedConfig:
    """Merge every layer and validate the result; raise ``ConfigError`` on any problem.

    ``flags`` maps a dotted key to ``(value, label)``, e.g.
    ``{"daemon.node_id": ("n1", "flag --node-id")}``; entries whose value is None are skipped
    so unset command-line options can be passed straight through. ``env`` defaults to
    ``os.environ``; ``PLOINKY_CONFIG`` is not read here, the caller turns it into
    ``config_file``. A missing ``config_file`` is an error; missing standard files are skipped.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    layers: list[Layer] = []
    files: list[Path] = []
    seen: set[Path] = set()
    for path in (system_file, home / ".ploinky" / "config.toml", cwd / ".ploinky" / "config.toml"):
        if path.resolve() in seen:  # running in $HOME: one file, one layer
            continue
        seen.add(path.resolve())
        data = _read_file(path, missing_ok=True)
        if data is not None:
            layers.append((data, str(path)))
            files.append(path)
    layers.extend(_env_layers(env))
    if config_file is not None:
        layers.append((_read_file(config_file, missing_ok=False) or {}, str(config_file)))
        files.append(config_file)
    for dotted, (value, label) in (flags or {}).items():
        if value is not None:
            layers.append((_nest(tuple(dotted.split(".")), value), label))
    return _build(layers, files)


def validate_file(path: Path) -> None:
    """Validate one config file on its own (``ploinkyd config validate FILE``)."""
    _build([(_read_file(path, missing_ok=False) or {}, str(path))], [path])


def _read_file(path: Path, *, missing_ok: bool) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        if missing_ok:
            return None
        raise _error(str(path), "", "config file not found") from None
    except OSError as exc:
        raise _error(str(path), "", f"cannot read config file: {exc.strerror}") from None
    return _parse_bytes(raw, str(path), json_format=path.suffix.lower() == ".json")


def _parse_bytes(raw: bytes, source: str, *, json_format: bool) -> dict[str, Any]:
    """The table of a config file's bytes (TOML, or JSON when ``json_format``); any problem
    is a ``ConfigError`` naming ``source`` (and the line, for a syntax error)."""
    data: object
    if json_format:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise _error(source, "", f"{where}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise _error(source, "", _TOO_DEEP) from None
        except ValueError as exc:
            raise _error(source, "", f"invalid JSON: {_number_problem(exc)}") from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _error(source, "", f"not UTF-8 text: {exc.reason}") from None
        except tomllib.TOMLDecodeError as exc:
            text = str(exc)
            at = re.search(r"\(at (?:line (\d+), column (\d+)|end of document)\)$", text)
            if at is None:
                raise _error(source, "", f"TOML syntax error: {text}") from None
            where = f"line {at[1]}, column {at[2]}" if at[1] else "end of file"
            msg = text[: at.start()].strip()
            raise _error(source, "", f"{where}: TOML syntax error: {msg}") from None
        except RecursionError:
            raise _error(source, "", _TOO_DEEP) from None
        except ValueError as exc:  # tomllib lets int()'s own error through
            raise _error(source, "", f"invalid TOML: {_number_problem(exc)}") from None
    if not isinstance(data, dict):
        raise _error(source, "", "the top level must be a table (an object)")
    if nesting(data, MAX_NESTING) > MAX_NESTING:
        raise _error(source, "", _TOO_DEEP)
    nul = _nul_at(data)
    if nul is not None:
        # No path, name, URL or command can hold one; refused here rather than at first use.
        raise _error(source, nul, "holds a NUL character (\\u0000); remove it")
    return data


def _nul_at(value: Any) -> str | None:
    """The dotted key of the first key or string holding a NUL character, if any."""
    stack: list[tuple[Any, Key]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return _dotted(loc)
        if isinstance(item, list):
            stack.extend((child, (*loc, i)) for i, child in enumerate(item))
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return _dotted((*loc, key.replace("\x00", "\\u0000")))
                stack.append((child, (*loc, key)))
    return None


def _number_problem(exc: ValueError) -> str:
    if "digits" in str(exc):
        return (
            "a number has more digits than can be read (at most "
            f"{sys.get_int_max_str_digits()}); write it as a string or a smaller number"
        )
    return str(exc)


def _parse_env_value(text: str, label: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if nesting(value, MAX_NESTING) > MAX_NESTING:
        raise _error(label, "", _TOO_DEEP)
    return value


def _env_layers(env: Mapping[str, str]) -> list[Layer]:
    generic: list[Layer] = []
    shortcuts: list[Layer] = []
    for name in sorted(env):
        value = env[name]
        # An empty variable means "unset", as most tools read it.
        if not name.startswith("PLOINKY_") or name in IGNORED_ENV or value == "":
            continue
        label = f"env {name}"
        if name in ENV_SHORTCUTS:
            shortcuts.append((_nest(ENV_SHORTCUTS[name], value), label))
            continue
        parts = tuple(name.removeprefix("PLOINKY_").lower().split("__"))
        if not all(parts):
            raise _error(
                label,
                "",
                "cannot map this name to a config key; write "
                "PLOINKY_SECTION__KEY, e.g. PLOINKY_QUEUE_DEFAULTS__CONCURRENCY",
            )
        generic.append((_nest(parts, _parse_env_value(value, label)), label))
    # Shortcuts come last so the well-known names win over a generic spelling of the same key.
    return generic + shortcuts


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for part in reversed(path[1:]):
        value = {part: value}
    return {path[0]: value}


def _merge(
    target: dict[str, Any], layer: Mapping[str, Any], source: str, nodes: dict[Key, str], at: Key
) -> None:
    for key, value in layer.items():
        path = (*at, key)
        nodes[path] = source
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value, source, nodes, path)
            continue
        for stale in [k for k in nodes if k[: len(path)] == path and len(k) > len(path)]:
            del nodes[stale]
        if isinstance(value, Mapping):
            target[key] = {}
            _merge(target[key], value, source, nodes, path)
        else:
            target[key] = copy.deepcopy(value)


def _build(layers: list[Layer], files: list[Path]) -> LoadedConfig:
    raw: dict[str, Any] = {}
    nodes: dict[Key, str] = {}
    for data, source in layers:
        _merge(raw, data, source, nodes, ())
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, nodes) from None
    merged = config.dump()
    sources: dict[str, str] = {}

    def visit(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                visit(item, (*path, key))
            return
        # A queue key the queue did not set itself comes from [queue_defaults].
        inherited = path[0] == "queues" and path[2] not in config.queues[path[1]].model_fields_set
        origin = ("queue_defaults", path[2]) if inherited else path
        sources[".".join(path)] = nodes.get(origin, "default")

    visit(merged, ())
    return LoadedConfig(config=config, sources=sources, files=list(files), merged=merged)


def _error(source: str, key: str, message: str) -> ConfigError:
    where = f"{source}: {key}" if key else source
    return ConfigError(
        f"{where}: {message}",
        details={"errors": [{"source": source, "key": key, "message": message}]},
    )


def _dotted(loc: Key) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _validation_error(exc: ValidationError, nodes: dict[Key, str]) -> ConfigError:
    problems = []
    for err in exc.errors(include_url=False):
        raw_loc = err["loc"]
        # pydantic marks a bad dict key with a trailing "[key]"; a key literally named
        # "[key]" in the file must survive.
        loc: Key = tuple(raw_loc[:-1]) if len(raw_loc) > 1 and raw_loc[-1] == "[key]" else raw_loc
        source = next((nodes[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in nodes), "")
        problems.append(
            {"source": source or "default", "key": _dotted(loc), "message": explain_error(err, loc)}
        )
    lines = [f"{p['source']}: {p['key'] or '(top level)'}: {p['message']}" for p in problems]
    text = lines[0] if len(lines) == 1 else "invalid configuration:\n  " + "\n  ".join(lines)
    return ConfigError(text, details={"errors": problems})


def explain_error(err: Any, loc: Key, root: type[BaseModel] | None = None) -> str:
    """One pydantic error as a person reads it: what the key must be and what it got.
    ``root`` is the model ``loc`` starts at (``Config`` unless given; agent.toml uses it)."""
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, _ = _type_at(loc[:-1], root)
        parent = _unwrap(parent)  # an optional table: `command: CommandDecl | None`
        allowed = list(parent.model_fields) if _is_model(parent) else []
        text = f"unknown key {loc[-1]!r} (allowed: {', '.join(allowed)})"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return text + (f"; did you mean {close[0]!r}?" if close else "")
    ann, info = _type_at(loc, root)
    allowed_text = _allowed(ann, info)
    if kind == "missing":
        return "is required" + (f"; it must be {allowed_text}" if allowed_text else "")
    cause = err.get("ctx", {}).get("error")
    if kind == "value_error" and cause is not None and not _is_duration(info):
        return str(cause)  # our own validators already say what is allowed
    if kind in _FORM_ERRORS:  # the type is right, its length or form is not: say so
        text = err["msg"][0].lower() + err["msg"][1:]  # pydantic's own words give the count
        return text if kind.startswith("too_") else f"{text}, got {_show(err.get('input'))}"
    if allowed_text is None:
        return f"{err['msg']}, got {_show(err.get('input'))}"
    return f"must be {allowed_text}, got {_show(err.get('input'))}"


def _show(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # ints beyond sys.get_int_max_str_digits()
        return "a number too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _is_duration(info: FieldInfo | None) -> bool:
    metadata = info.metadata if info is not None else []
    return any(getattr(m, "func", None) is parse_duration for m in metadata)


def _unwrap(ann: Any) -> Any:
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


def _type_at(loc: Key, root: type[BaseModel] | None = None) -> tuple[Any, FieldInfo | None]:
    """The annotation (and field, when loc ends at one) that the key path ``loc`` points at."""
    ann: Any = root or Config
    info: FieldInfo | None = None
    for part in loc:
        ann = _unwrap(ann)
        if _is_model(ann) and isinstance(part, str) and part in ann.model_fields:
            info = ann.model_fields[part]
            ann = info.annotation
        elif get_origin(ann) in (dict, list):
            ann, info = get_args(ann)[-1], None
        else:
            return None, None
    return ann, info


def _allowed(ann: Any, info: FieldInfo | None) -> str | None:
    ann = _unwrap(ann)
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(ann))
    if ann is bool:
        return "true or false"
    if ann in (int, float):
        meta = info.metadata if info else []
        bounds = {k: getattr(m, k) for m in meta for k in _BOUNDS if hasattr(m, k)}
        noun = "a duration" if _is_duration(info) else "an integer" if ann is int else "a number"
        return noun + _range(bounds) + (f" {_DURATION_HINT}" if _is_duration(info) else "")
    if ann is str:
        return "a string"
    if ann is Path:
        return "a path"
    if get_origin(ann) is list:
        return "a list of strings" if get_args(ann) == (str,) else "a list"
    if get_origin(ann) is dict:
        return "a table"
    if _is_model(ann):
        return "a table with keys " + ", ".join(ann.model_fields)
    return None


def _range(bounds: dict[str, Any]) -> str:
    if "ge" in bounds and "le" in bounds:
        return f" from {bounds['ge']:g} to {bounds['le']:g}"
    return "".join(f" {_BOUNDS[k]} {v:g}" for k, v in bounds.items())
