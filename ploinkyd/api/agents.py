"""Control-API routes of agents: list, show, start/stop/restart, logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ploinkyd.api import models
from ploinkyd.api.envelope import paginate
from ploinkyd.api.routes import Endpoints, daemon_of, query_of
from ploinkyd.api.tasks import PageQuery

if TYPE_CHECKING:
    from ploinkyd.agents.manager import AgentManager

table = Endpoints("agents")


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lines: int = Field(200, ge=0, le=10000, description="how many of the last log lines")


def _agents(request: web.Request) -> AgentManager:
    return daemon_of(request).agents


@table.get(
    "/v1/agents",
    summary="List agents and problems found loading them",
    query=PageQuery,
    response=models.AgentPage,
)
async def list_agents(request: web.Request) -> web.Response:
    manager = _agents(request)
    page = paginate(request, manager.listing())
    page["problems"] = manager.problems
    return web.json_response(page)


@table.get("/v1/agents/{name}", summary="One agent", response=models.AgentInfo)
async def show_agent(request: web.Request) -> web.Response:
    manager = _agents(request)
    return web.json_response(manager.describe(manager.get(request.match_info["name"])))


async def _act(request: web.Request, action: str) -> web.Response:
    manager = _agents(request)
    name = request.match_info["name"]
    agent = await getattr(manager, action)(name)
    return web.json_response(manager.describe(agent))


@table.post(
    "/v1/agents/{name}/start",
    summary="Start an agent",
    role="admin",
    action="agent.start",
    response=models.AgentInfo,
)
async def start_agent(request: web.Request) -> web.Response:
    return await _act(request, "start")


@table.post(
    "/v1/agents/{name}/stop",
    summary="Stop an agent",
    role="admin",
    action="agent.stop",
    response=models.AgentInfo,
)
async def stop_agent(request: web.Request) -> web.Response:
    return await _act(request, "stop")


@table.post(
    "/v1/agents/{name}/restart",
    summary="Restart an agent",
    role="admin",
    action="agent.restart",
    response=models.AgentInfo,
)
async def restart_agent(request: web.Request) -> web.Response:
    return await _act(request, "restart")


@table.get(
    "/v1/agents/{name}/logs",
    summary="An agent's recent log lines",
    query=LogsQuery,
    response=models.AgentLogs,
)
async def agent_logs(request: web.Request) -> web.Response:
    lines = query_of(request, LogsQuery).lines
    return web.json_response(await _agents(request).logs(request.match_info["name"], lines))
