"""The pipeline compiler: a checked ``Graph`` in, a ``Plan`` of container round trips out.

Three passes, each small enough to trust:

1. **Dead nodes.** Only nodes some requested output depends on are kept; the rest are listed
   in ``Plan.removed`` and never run.
2. **Fusion.** A link ``u → v`` is fused when ``v``'s only input is ``u``, nothing else reads
   ``u``, ``u`` is not a requested output, both operators are fusable (and not ``exec``), and
   they run in the same image with the same modules and mounts. Fused links form maximal
   chains; each chain is one ``Group``: one round trip whose stages run in order in one tile
   process, with the larger of every resource its nodes ask for. Because of those rules the
   only node of a group anyone else needs is its last one, so a group is named after it: group
   ids are node ids, and a group's ``inputs`` are exactly its first node's inputs.
3. **Levels.** A group's level is one more than the deepest group it reads; groups of one
   level are independent and run in parallel.

Estimates are deliberately rough (they only feed ``explain`` and scheduling): a node that
receives ``i`` items costs ``cpu_us_per_item * i`` µs and passes on ``i * size_ratio`` items;
``$data`` counts as ``input_items`` (``len(data)`` for a list, else 1, or a nominal 1000 when
the caller does not know); a node with several inputs receives the sum. A group's memory is
the largest of its nodes' (its stages run one after another) and the plan's peak is the
largest sum over one level.

Compiling is idempotent: ``compile_graph(plan.graph(), ...)`` returns ``plan`` again, except
that ``removed`` is then empty, since ``plan.graph()`` holds only the nodes that run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ploinkyd.errors import InternalError, TaskError
from ploinkyd.tiles.graph import DATA, INVALID_PIPELINE, Graph, Node, validate_graph
from ploinkyd.tiles.model import LimitRequest, Limits, Mount, OperatorSpec, Stage

DEFAULT_INPUT_ITEMS = 1000

PlanMode = Literal["compiled", "unfused", "naive"]


class PlanNode(BaseModel):
    """A node as it runs: its operator resolved, with its share of the estimate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    op: str
    version: str
    runtime: str  # the operator's name inside the tile runtime: what the stage sends
    params: dict[str, Any]
    limits: LimitRequest | None = None
    items_in: float
    cpu_us: float
    memory_mb: float


class Group(BaseModel):
    """One round trip: ``nodes`` applied in order to the value(s) of ``inputs``.

    ``inputs`` name ``$data`` or other groups (a group's id is its last node's id). With one
    input the group receives that value, with several the list of their values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    nodes: tuple[PlanNode, ...]
    inputs: tuple[str, ...]
    image: str
    limits: Limits
    modules: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    exec: tuple[str, ...] | None = None
    exec_format: Literal["json", "text"] = "json"
    cpu_us: float
    memory_mb: float

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(Stage(op=n.runtime, params=n.params) for n in self.nodes)

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.nodes)

    @property
    def chain(self) -> str:
        """The ops of the group as ``map → filter → take``."""
        return " → ".join(n.op for n in self.nodes)


class Estimate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_items: int
    cpu_us: float  # every group's work added up
    critical_path_us: float  # the slowest group of each level, added up
    peak_memory_mb: float  # the largest sum of group memory over one level
    round_trips: int
    max_parallel: int
    nodes: int


class Plan(BaseModel):
    """What runs, in which order. JSON-able: ``plan.model_dump(mode="json")``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: PlanMode
    groups: tuple[Group, ...]
    levels: tuple[tuple[str, ...], ...]  # group ids, level by level
    outputs: tuple[str, ...]  # node ids, as requested
    removed: tuple[str, ...]  # dead nodes: no output depends on them
    estimate: Estimate

    def group(self, gid: str) -> Group:
        for group in self.groups:
            if group.id == gid:
                return group
        raise KeyError(gid)

    def graph(self) -> Graph:
        """The graph this plan computes: the nodes that run, in plan order."""
        nodes: list[Node] = []
        for group in self.groups:
            for i, pn in enumerate(group.nodes):
                inputs = group.inputs if i == 0 else (group.nodes[i - 1].id,)
                nodes.append(
                    Node(id=pn.id, op=pn.op, params=pn.params, inputs=inputs, limits=pn.limits)
                )
        return Graph(nodes=tuple(nodes), outputs=self.outputs)


def compile_graph(
    graph: Graph,
    operators: Mapping[str, OperatorSpec],
    default_image: str,
    *,
    fuse: bool = True,
    default_limits: Limits | None = None,
    input_items: int = DEFAULT_INPUT_ITEMS,
) -> Plan:
    """Remove dead nodes, fuse chains (unless ``fuse=False``) and order groups into levels.

    ``default_limits`` is what a node gets unless it asks for more or less (the config's
    ``[tiles.limits]``); checking requests against ceilings is the caller's business.
    Raises ``TaskError(code="INVALID_PIPELINE")`` for a graph that does not validate.
    """
    validate_graph(graph, operators)
    live = graph.live()
    order = [n for n in graph.topological() if n.id in live]
    removed = tuple(n.id for n in graph.nodes if n.id not in live)
    consumers = Graph(nodes=tuple(order), outputs=graph.outputs).consumers()
    requested = set(graph.outputs)

    def image_of(spec: OperatorSpec) -> str:
        return spec.image or default_image

    def fusable(u: Node, v: Node) -> bool:
        su, sv = operators[u.op], operators[v.op]
        return (
            v.inputs == (u.id,)
            and consumers[u.id] == 1
            and u.id not in requested
            and su.fusable
            and sv.fusable
            and su.exec is None
            and sv.exec is None
            and image_of(su) == image_of(sv)
            and su.modules == sv.modules
            and su.mounts == sv.mounts
        )

    nodes = {n.id: n for n in order}
    chains: list[list[Node]] = []
    chain_of: dict[str, list[Node]] = {}
    for node in order:  # topological, so a node's predecessor already has its chain
        pred = nodes.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if fuse and pred is not None and fusable(pred, node):
            chain = chain_of[pred.id]
            chain.append(node)
        else:
            chain = [node]
            chains.append(chain)
        chain_of[node.id] = chain
    mode: PlanMode = "compiled" if fuse else "unfused"
    return _plan(mode, chains, graph, operators, image_of, removed, default_limits, input_items)


def naive_plan(
    graph: Graph,
    operators: Mapping[str, OperatorSpec],
    default_image: str,
    *,
    default_limits: Limits | None = None,
    input_items: int = DEFAULT_INPUT_ITEMS,
) -> Plan:
    """Every node, dead or alive, in its own group, one group at a time.

    The reference that compiled plans are tested against, and what ``--no-optimize`` runs.
    """
    validate_graph(graph, operators)
    chains = [[n] for n in graph.topological()]

    def image_of(spec: OperatorSpec) -> str:
        return spec.image or default_image

    plan = _plan("naive", chains, graph, operators, image_of, (), default_limits, input_items)
    by_id = {g.id: g for g in plan.groups}
    groups = tuple(by_id[chain[0].id] for chain in chains)  # topological, not by level
    sequential = tuple((g.id,) for g in groups)
    estimate = plan.estimate.model_copy(
        update={
            "critical_path_us": round(sum(g.cpu_us for g in plan.groups), 3),
            "peak_memory_mb": max(g.memory_mb for g in plan.groups),
            "max_parallel": 1,
        }
    )
    return plan.model_copy(update={"groups": groups, "levels": sequential, "estimate": estimate})


def _plan(
    mode: PlanMode,
    chains: Sequence[list[Node]],
    graph: Graph,
    operators: Mapping[str, OperatorSpec],
    image_of: Callable[[OperatorSpec], str],
    removed: tuple[str, ...],
    default_limits: Limits | None,
    input_items: int,
) -> Plan:
    base = default_limits or Limits()
    items_out: dict[str, float] = {DATA: float(input_items)}
    groups: list[Group] = []
    for chain in chains:
        planned: list[PlanNode] = []
        limits: Limits | None = None
        for node in chain:
            spec = operators[node.op]
            items_in = sum(items_out[ref] for ref in node.inputs)
            items_out[node.id] = items_in * spec.cost.size_ratio
            asked = _effective_limits(node, base)
            limits = asked if limits is None else limits.merge(asked)
            planned.append(
                PlanNode(
                    id=node.id,
                    op=node.op,
                    version=spec.version,
                    runtime=spec.runtime_name,
                    params=node.params,
                    limits=node.limits,
                    items_in=round(items_in, 3),
                    cpu_us=round(spec.cost.cpu_us_per_item * items_in, 3),
                    memory_mb=spec.cost.memory_mb,
                )
            )
        head = operators[chain[0].op]
        assert limits is not None  # a chain is never empty
        groups.append(
            Group(
                id=chain[-1].id,
                nodes=tuple(planned),
                inputs=chain[0].inputs,
                image=image_of(head),
                limits=limits,
                modules=head.modules,
                mounts=head.mounts,
                exec=head.exec,
                exec_format=head.exec_format,
                cpu_us=round(sum(p.cpu_us for p in planned), 3),
                memory_mb=max(p.memory_mb for p in planned),
            )
        )
    levels = _levels(groups, {n.id: i for i, n in enumerate(graph.nodes)})
    by_id = {g.id: g for g in groups}
    ordered = tuple(by_id[gid] for level in levels for gid in level)
    estimate = Estimate(
        input_items=input_items,
        cpu_us=round(sum(g.cpu_us for g in ordered), 3),
        critical_path_us=round(sum(max(by_id[g].cpu_us for g in lvl) for lvl in levels), 3),
        peak_memory_mb=max(sum(by_id[g].memory_mb for g in lvl) for lvl in levels),
        round_trips=len(ordered),
        max_parallel=max(len(lvl) for lvl in levels),
        nodes=sum(len(g.nodes) for g in ordered),
    )
    return Plan(
        mode=mode,
        groups=ordered,
        levels=levels,
        outputs=graph.outputs,
        removed=removed,
        estimate=estimate,
    )


def _levels(groups: Sequence[Group], position: Mapping[str, int]) -> tuple[tuple[str, ...], ...]:
    level: dict[str, int] = {}
    for group in groups:  # chains come in topological order of their heads
        deps = [ref for ref in group.inputs if ref != DATA]
        for ref in deps:
            if ref not in level:
                raise InternalError(f"group {group.id!r} reads {ref!r}, which ends no group")
        level[group.id] = 1 + max((level[ref] for ref in deps), default=-1)
    depth = 1 + max(level.values(), default=-1)
    # Within a level, keep the order in which the nodes were written: stable across recompiles.
    first = {g.id: position[g.nodes[0].id] for g in groups}
    return tuple(
        tuple(sorted((gid for gid, lv in level.items() if lv == d), key=first.__getitem__))
        for d in range(depth)
    )


def _effective_limits(node: Node, default: Limits) -> Limits:
    if node.limits is None:
        return default
    asked = node.limits.model_dump(exclude_none=True)
    if not asked:
        return default
    try:
        return Limits(**{**default.model_dump(), **asked})
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TaskError(
            f"node {node.id!r} asks for limits no container can have: {msgs}",
            code=INVALID_PIPELINE,
            details={"problems": [{"message": msgs, "node": node.id, "field": "limits"}]},
        ) from None


def _fmt_us(us: float) -> str:
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.1f} ms"
    return f"{us / 1_000_000:.2f} s"


def _fmt_limits(limits: Limits) -> str:
    return f"{limits.memory_mb} MiB, {limits.cpus:g} cpu, {limits.pids} pids"


def explain(plan: Plan) -> str:
    """A plan as text a person can read: groups, fused chains, levels, estimates."""
    est = plan.estimate
    lines = [
        f"{plan.mode} plan: {est.nodes} node(s) in {est.round_trips} group(s) over "
        f"{len(plan.levels)} level(s); outputs: {', '.join(plan.outputs)}"
    ]
    if plan.removed:
        lines.append(
            f"removed {len(plan.removed)} dead node(s) no output depends on: "
            + ", ".join(plan.removed)
        )
    by_id = {g.id: g for g in plan.groups}
    for depth, level in enumerate(plan.levels):
        together = f" — {len(level)} groups in parallel" if len(level) > 1 else ""
        lines.append(f"level {depth}{together}")
        for gid in level:
            group = by_id[gid]
            fused = f"  (fused: {', '.join(group.node_ids)})" if len(group.nodes) > 1 else ""
            lines.append(f"  [{gid}] {group.chain}{fused}")
            runs = f"exec {' '.join(group.exec)}" if group.exec else f"image {group.image}"
            lines.append(
                f"      inputs {', '.join(group.inputs)} · {runs} · {_fmt_limits(group.limits)}"
                f" · ~{_fmt_us(group.cpu_us)}, ~{group.memory_mb:g} MiB"
            )
    lines.append(
        f"estimate for {est.input_items} input item(s): ~{_fmt_us(est.cpu_us)} of work, "
        f"~{_fmt_us(est.critical_path_us)} on the critical path, peak ~{est.peak_memory_mb:g} "
        f"MiB, {est.round_trips} round trip(s) for {est.nodes} node(s), "
        f"up to {est.max_parallel} in parallel"
    )
    return "\n".join(lines)
