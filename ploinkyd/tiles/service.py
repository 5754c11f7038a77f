"""The tile service: what ``tile`` and ``pipeline`` tasks run through.

It owns the chosen runner, the operator registry (built-ins, plugins, agents), the two-tier
limits and the cache. One path for both kinds: validate → compile → run the plan group by group
(cache first) → output, plus notes for the record saying which runner made it and whether it
was sandboxed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ploinkyd.config import Config
from ploinkyd.errors import ConfigError, TaskDeferred, TaskError
from ploinkyd.kinds import TaskContext
from ploinkyd.tiles.cache import TileCache
from ploinkyd.tiles.compiler import Group, Plan, compile_graph
from ploinkyd.tiles.execute import execute_plan
from ploinkyd.tiles.graph import ChainStep, Graph, chain_graph, parse_pipeline, validate_graph
from ploinkyd.tiles.kinds import PipelineInput, TileInput
from ploinkyd.tiles.model import (
    LimitRequest,
    Limits,
    OperatorSpec,
    RunnerSpec,
    TileCall,
    TileRunner,
)

log = logging.getLogger("ploinkyd.tiles")

AGENT_QUEUE_PREFIX = "agent."
_IMAGE_ID_TTL_S = 30.0


def agent_of_queue(queue: str) -> str | None:
    """The agent whose queue this is, or None for an ordinary queue."""
    return queue[len(AGENT_QUEUE_PREFIX) :] if queue.startswith(AGENT_QUEUE_PREFIX) else None


class TileService:
    def __init__(
        self,
        config: Config,
        state_dir: Path,
        runners: Mapping[str, RunnerSpec],
        operators: Mapping[str, OperatorSpec],
        *,
        node: str,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.node = node
        self.runner_specs = dict(runners)
        self.operators = dict(operators)
        self.agent_operators: dict[str, dict[str, OperatorSpec]] = {}
        # Agents stopped by a person: calls of their operators wait (from any queue).
        self.stopped_agents: set[str] = set()
        spec = self.runner_specs.get(config.tiles.runner)
        if spec is None:
            known = ", ".join(sorted(self.runner_specs)) or "none"
            raise ConfigError(
                f"tiles.runner = {config.tiles.runner!r} is not an installed tile runner "
                f"(installed: {known})"
            )
        self.spec = spec
        self.runner: TileRunner = spec.factory(config.tiles, state_dir, node=node)
        c = config.tiles.cache
        self.cache = TileCache(
            max_bytes=c.max_bytes if c.enabled else 0,
            ttl_s=c.ttl,
            persist_dir=state_dir / "tiles" / "cache" if c.persist and c.enabled else None,
        )
        self.calls = 0
        self.call_errors: dict[str, int] = {}
        self._image_ids: dict[str, tuple[float, str]] = {}

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.spec.sandboxed:
            log.warning(
                "tiles run with the %r runner: local processes WITHOUT a sandbox "
                "(no container, no network or filesystem isolation)",
                self.spec.name,
            )
        await self.runner.start()

    async def close(self) -> None:
        await self.runner.close()

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config; the runner itself changes only on restart."""
        if config.tiles.runner != self.config.tiles.runner:
            log.warning(
                "tiles.runner changed to %r; it takes effect when the daemon restarts",
                config.tiles.runner,
            )
        self.config = config
        c = config.tiles.cache
        self.cache.resize(c.max_bytes if c.enabled else 0, c.ttl)

    # ---- operators ----------------------------------------------------------------------

    def set_agent_operators(self, agent: str, specs: Iterable[OperatorSpec]) -> None:
        self.agent_operators[agent] = {s.name: s for s in specs}

    @staticmethod
    def _bare(spec: OperatorSpec) -> str:
        # "<agent>.<op>" runs as "<op>"; a command agent's operator is the agent's name.
        return spec.runtime or spec.name

    def remove_agent(self, agent: str) -> None:
        self.agent_operators.pop(agent, None)

    def operators_for(self, queue: str | None) -> dict[str, OperatorSpec]:
        """What a task in ``queue`` may use: every operator, agents' as ``<agent>.<op>``, and
        inside an agent's own queue its operators by their bare names as well."""
        ops = dict(self.operators)
        for specs in self.agent_operators.values():
            ops.update(specs)  # already named "<agent>.<op>" (a command: "<agent>")
        own = self.agent_operators.get(agent_of_queue(queue or "") or "", {})
        ops.update({self._bare(spec): spec for spec in own.values()})
        return ops

    # ---- running ------------------------------------------------------------------------

    async def run_tile(self, ctx: TaskContext, data: TileInput) -> Any:
        ops = self.operators_for(ctx.queue)
        graph = validate_graph(chain_graph([ChainStep(op=data.op, params=data.params)]), ops)
        return await self._run(ctx, ops, graph, data.data, data.limits, data.cache)

    async def run_pipeline(self, ctx: TaskContext, data: PipelineInput) -> Any:
        ops = self.operators_for(ctx.queue)
        graph = parse_pipeline(data.pipeline, ops)
        return await self._run(ctx, ops, graph, data.data, data.limits, data.cache)

    def plan(self, pipeline: list[Any] | dict[str, Any], queue: str | None = None) -> Plan:
        """The compiled plan of a pipeline, for ``explain``."""
        ops = self.operators_for(queue)
        graph = parse_pipeline(pipeline, ops)
        plan = compile_graph(graph, ops, self.default_image(), default_limits=self._limits(None))
        return self._agent_resources(plan, ops, None)

    def default_image(self) -> str:
        return self.config.tiles.image

    async def _run(
        self,
        ctx: TaskContext,
        ops: Mapping[str, OperatorSpec],
        graph: Graph,
        data: Any,
        requested: LimitRequest | None,
        use_cache: bool,
    ) -> Any:
        plan = compile_graph(
            graph, ops, self.default_image(), default_limits=self._limits(requested)
        )
        plan = self._agent_resources(plan, ops, requested)
        for group in plan.groups:
            self.check_ceilings(group, ops)
        counts = {"calls": 0}

        async def call_group(group: Group, value: Any) -> Any:
            counts["calls"] += 1
            return await self._call(group, value, ops)

        cache = self.cache if use_cache and self.config.tiles.cache.enabled else None
        image_ids = await self._image_ids_for(plan) if cache is not None else None
        output = await execute_plan(plan, data, call_group, cache=cache, image_ids=image_ids)
        ctx.notes["tiles"] = {
            "runner": self.spec.name,
            "sandboxed": self.spec.sandboxed,
            "groups": len(plan.groups),
            "calls": counts["calls"],
            # Every group either went to the runner or came from the cache.
            "cache_hits": len(plan.groups) - counts["calls"],
        }
        return output

    async def _call(self, group: Group, value: Any, ops: Mapping[str, OperatorSpec]) -> Any:
        owner = ops[group.nodes[0].op].owner
        agent = owner.removeprefix("agent:")
        if owner.startswith("agent:") and agent in self.stopped_agents:
            raise TaskDeferred(
                f"agent {agent} is stopped; the task waits for 'ploinkyd agent start {agent}'",
                code="AGENT_STOPPED",
            )
        call = TileCall(
            image=group.image,
            stages=group.stages,
            input=value,
            limits=group.limits,
            modules=group.modules,
            mounts=group.mounts,
            exec=group.exec,
            exec_format=group.exec_format,
            # An agent's operators run in the agent's own warm containers.
            pool=owner if owner.startswith("agent:") else "shared",
            max_output_bytes=self.config.tiles.max_output_bytes,
        )
        self.calls += 1
        try:
            return await self.runner.call(call)
        except TaskError:
            raise
        except Exception as exc:
            code = getattr(exc, "code", type(exc).__name__)
            self.call_errors[code] = self.call_errors.get(code, 0) + 1
            raise

    def _limits(self, requested: LimitRequest | None) -> Limits:
        """The config's ``[tiles.limits]`` with what the task asked for on top."""
        base = self.config.tiles.limits.model_dump()
        if requested is not None:
            base.update(requested.model_dump(exclude_none=True))
        try:
            return Limits(**base)
        except ValueError as exc:
            raise TaskError(f"limits: {exc}", code="INVALID_INPUT") from None

    @staticmethod
    def _agent_resources(
        plan: Plan, ops: Mapping[str, OperatorSpec], requested: LimitRequest | None
    ) -> Plan:
        """An agent's operators run with its ``[resources]`` (the size of its warm containers)
        unless the task or the node asks for other values; the config's ``[tiles.limits]``
        would often be above what the agent allows."""
        groups: list[Group] = []
        for group in plan.groups:
            spec = ops[group.nodes[0].op]
            if spec.limits is None or not spec.owner.startswith("agent:"):
                groups.append(group)
                continue
            base = spec.limits.model_dump()
            if requested is not None:
                base.update(requested.model_dump(exclude_none=True))
            limits: Limits | None = None
            for node in group.nodes:
                asked = dict(base)
                if node.limits is not None:
                    asked.update(node.limits.model_dump(exclude_none=True))
                limits = Limits(**asked) if limits is None else limits.merge(Limits(**asked))
            groups.append(group.model_copy(update={"limits": limits}))
        return plan.model_copy(update={"groups": tuple(groups)})

    def check_ceilings(self, group: Group, ops: Mapping[str, OperatorSpec]) -> None:
        """Two tiers: whatever a task (or a node) asks for must stay within the ceilings of
        the config and of every operator in the group."""
        t = self.config.tiles
        ceilings: list[tuple[str, Any]] = [("tiles.ceilings", t.ceilings)]
        for node in group.nodes:
            if node.op in t.operator_ceilings:
                ceilings.append(
                    (f"tiles.operator_ceilings.{node.op}", t.operator_ceilings[node.op])
                )
            spec = ops.get(node.op)
            if spec is not None and spec.limits is not None:
                ceilings.append((f"the resources of {spec.owner}", spec.limits))
        for key in ("memory_mb", "cpus", "pids"):
            asked = getattr(group.limits, key)
            for where, ceiling in ceilings:
                most = getattr(ceiling, key)
                if most is not None and asked > most:
                    raise TaskError(
                        f"limits.{key} = {asked:g} is above {where}.{key} = "
                        f"{getattr(ceiling, key):g}; ask for less or raise the ceiling",
                        code="INVALID_INPUT",
                        details={"key": key, "requested": asked, "ceiling": where},
                    )

    async def _image_ids_for(self, plan: Plan) -> dict[str, str]:
        out: dict[str, str] = {}
        for group in plan.groups:
            out[group.image] = await self._image_id(group.image)
        return out

    async def _image_id(self, image: str) -> str:
        now = time.monotonic()
        cached = self._image_ids.get(image)
        if cached is not None and now - cached[0] < _IMAGE_ID_TTL_S:
            return cached[1]
        # Imported here: it pulls in the docker SDK, which a process-runner daemon never needs.
        from ploinkyd.tiles import images

        probe = getattr(self.runner, "image_id", None)
        ident = images.resolve(image)
        if probe is not None:
            try:
                ident = await probe(image) or ident
            except Exception:  # the engine may be down; the call itself will say so
                log.debug("no image id for %s", image, exc_info=True)
        self._image_ids[image] = (now, ident)
        return ident

    # ---- reporting ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        runner = self.runner.status()
        return {
            "runner": runner,
            "sandboxed": self.spec.sandboxed,
            "image": self.default_image(),
            "calls": self.calls,
            "call_errors": dict(self.call_errors),
            "cache": self.cache.stats(),
            "operators": len(self.operators),
            "agents": sorted(self.agent_operators),
        }

    def not_ready_reason(self) -> str | None:
        runner = self.runner.status()
        if runner.get("ready", True):
            return None
        return f"tile runner {self.spec.name}: {runner.get('reason') or 'not ready'}"

    def metrics(self) -> Iterable[Metric]:
        stats = self.cache.stats()
        counters = (
            ("hits", "Tile cache hits"),
            ("misses", "Tile cache misses"),
            ("evictions", "Tile cache entries evicted by the size cap"),
            ("expirations", "Tile cache entries dropped by the TTL"),
        )
        for key, text in counters:
            c = CounterMetricFamily(f"ploinkyd_tile_cache_{key}", text)
            c.add_metric([], stats.get(key, 0))
            yield c
        size = GaugeMetricFamily("ploinkyd_tile_cache_bytes", "Bytes held by the tile cache")
        size.add_metric([], stats.get("bytes", 0))
        yield size
        calls = CounterMetricFamily(
            "ploinkyd_tile_calls", "Tile round trips sent to the runner", labels=["runner"]
        )
        calls.add_metric([self.spec.name], self.calls)
        yield calls
        errors = CounterMetricFamily(
            "ploinkyd_tile_call_errors", "Tile round trips that failed", labels=["code"]
        )
        for code, n in sorted(self.call_errors.items()):
            errors.add_metric([code], n)
        yield errors
        up = GaugeMetricFamily("ploinkyd_tile_runner_ready", "1 when the tile runner is ready")
        up.add_metric([], 1 if self.not_ready_reason() is None else 0)
        yield up
