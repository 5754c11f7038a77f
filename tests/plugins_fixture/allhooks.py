"""A plugin implementing every hook, so each hook is called by a test."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ploinkyd.backup.strategies import FullStrategy
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskContext, TaskKind
from ploinkyd.tiles.model import OperatorSpec, RunnerSpec


@dataclass
class Descriptor(FullStrategy):
    """A backup strategy (the ``BackupStrategy`` protocol) named by the test."""

    name: str
    description: str = "reads every file, under another name"


def _no_runner(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


async def _ping(request: web.Request) -> web.Response:
    return web.json_response({"pong": True})


async def _answer(ctx: TaskContext, data: Any) -> int:
    return 42


class AllHooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def ploinkyd_task_kinds(self) -> list[TaskKind]:
        return [TaskKind("answer", _answer)]

    @hookimpl
    def ploinkyd_tile_operators(self) -> list[Any]:
        return [OperatorSpec("upper")]

    @hookimpl
    def ploinkyd_tile_runners(self) -> list[Any]:
        return [RunnerSpec("inline", _no_runner, sandboxed=False)]

    @hookimpl
    def ploinkyd_storage_backends(self) -> dict[str, Any]:
        return {"mem": dict}

    @hookimpl
    def ploinkyd_backup_strategies(self) -> list[Any]:
        return [Descriptor("mirror")]

    @hookimpl
    async def ploinkyd_startup(self, daemon: Any) -> None:
        self.calls.append(("startup", daemon))

    @hookimpl
    async def ploinkyd_shutdown(self, daemon: Any) -> None:
        self.calls.append(("shutdown", daemon))

    @hookimpl
    def ploinkyd_config_reloaded(self, daemon: Any, config: Any) -> None:
        self.calls.append(("config_reloaded", config))

    @hookimpl
    def ploinkyd_api_routes(self) -> list[web.RouteDef]:
        return [web.get("/ping", _ping)]

    @hookimpl
    def ploinkyd_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(func=lambda args: f"hello {args.name}")


class WrongTypes:
    """Each hook returns something of the wrong type."""

    @hookimpl
    def ploinkyd_storage_backends(self) -> Any:
        return ["s3"]

    @hookimpl
    def ploinkyd_api_routes(self) -> Any:
        return ["/ping"]

    @hookimpl
    async def ploinkyd_config_reloaded(self, daemon: Any, config: Any) -> None:
        return None

    @hookimpl
    def ploinkyd_tile_operators(self) -> Any:
        return None


class BrokenCli:
    @hookimpl
    def ploinkyd_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        raise ValueError("cannot build the frob command")
