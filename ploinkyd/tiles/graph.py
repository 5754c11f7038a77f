"""Pipeline input (SPEC §6) and the one graph shape both of its forms normalise to.

A pipeline arrives in one of two forms::

    {"data": [3, 1, 2], "pipeline": [{"op": "sort"}, {"op": "take", "params": {"n": 2}}]}

    {"data": [3, 1, 2], "pipeline": {
        "nodes": [{"id": "evens", "op": "filter", "params": {"expr": "x % 2 == 0"},
                   "inputs": ["$data"]},
                  {"id": "both", "op": "flatten", "inputs": ["evens", "$data"]}],
        "outputs": ["both"]}}

A chain becomes nodes ``n0 … nk``, each taking the previous one (``n0`` takes ``$data``), and
its output is the last node. Either way the result is a ``Graph``.

What a node receives: with one input, that input's value; with several, the LIST of their
values in the order of ``inputs`` (a node may name the same input twice and gets it twice).
So ``{"op": "flatten", "inputs": ["a", "b"]}`` concatenates the lists ``a`` and ``b``.

Every problem found while checking a graph is reported at once, as a ``TaskError`` with code
``INVALID_PIPELINE`` whose message says what to change and whose ``details["problems"]``
lists them one by one.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ploinkyd.errors import TaskError
from ploinkyd.tiles.model import LimitRequest, OperatorSpec

DATA = "$data"
"""The input reference that means the pipeline's ``data``."""

INVALID_PIPELINE = "INVALID_PIPELINE"


class Node(BaseModel):
    """One operator application. ``inputs`` name ``$data`` or other nodes, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    op: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[str, ...]
    limits: LimitRequest | None = None


class ChainStep(BaseModel):
    """One step of the chain form; its node id is given by its position."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    limits: LimitRequest | None = None


class Graph(BaseModel):
    """A pipeline as nodes and the ids of the nodes whose values it returns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]

    def node_map(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    def consumers(self) -> dict[str, int]:
        """How many input slots read each node (a node listed twice by one consumer counts 2)."""
        count = dict.fromkeys((n.id for n in self.nodes), 0)
        for node in self.nodes:
            for ref in node.inputs:
                if ref in count:
                    count[ref] += 1
        return count

    def live(self) -> set[str]:
        """Ids of the nodes some output depends on (the outputs included)."""
        nodes = self.node_map()
        seen: set[str] = set()
        stack = [o for o in self.outputs if o in nodes]
        while stack:
            nid = stack.pop()
            if nid in seen:
                continue
            seen.add(nid)
            stack.extend(ref for ref in nodes[nid].inputs if ref in nodes)
        return seen

    def topological(self) -> list[Node]:
        """Nodes so that each comes after its inputs; ties keep the order of ``nodes``.

        Raises ``TaskError`` naming the nodes of a cycle when there is one.
        """
        index = {n.id: i for i, n in enumerate(self.nodes)}
        pending = {n.id: len({r for r in n.inputs if r in index}) for n in self.nodes}
        users: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            for ref in {r for r in node.inputs if r in index}:
                users[ref].append(node.id)
        # Smallest original position first keeps the result stable and readable.
        ready = [(i, n.id) for i, n in enumerate(self.nodes) if pending[n.id] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        nodes = self.node_map()
        while ready:
            _, nid = heapq.heappop(ready)
            order.append(nodes[nid])
            for user in users[nid]:
                pending[user] -= 1
                if pending[user] == 0:
                    heapq.heappush(ready, (index[user], user))
        if len(order) < len(self.nodes):
            cycle = _find_cycle({nid: nodes[nid] for nid, left in pending.items() if left})
            path = " → ".join([*cycle, cycle[0]])
            raise _invalid(
                [
                    _problem(
                        f"the pipeline has a cycle: {path}; a node cannot depend, directly "
                        "or through other nodes, on its own output",
                        cycle=cycle,
                    )
                ]
            )
        return order


class DagPipeline(BaseModel):
    """The DAG form of ``pipeline``."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[Node] = Field(min_length=1)
    outputs: list[str]


_CHAIN = TypeAdapter(list[ChainStep])


def chain_graph(steps: Iterable[ChainStep]) -> Graph:
    """The graph of a chain: ``n0`` takes ``$data``, each next node the previous one."""
    nodes: list[Node] = []
    for i, step in enumerate(steps):
        nodes.append(
            Node(
                id=f"n{i}",
                op=step.op,
                params=step.params,
                inputs=(DATA if i == 0 else f"n{i - 1}",),
                limits=step.limits,
            )
        )
    if not nodes:
        raise _invalid([_problem("the pipeline is empty: give it at least one step")])
    return Graph(nodes=tuple(nodes), outputs=(nodes[-1].id,))


def single_node(
    op: str, params: Mapping[str, Any] | None = None, limits: LimitRequest | None = None
) -> Graph:
    """The graph of a ``tile`` task: one node ``n0`` on ``$data``, which is the output."""
    return chain_graph([ChainStep(op=op, params=dict(params or {}), limits=limits)])


def parse_pipeline(pipeline: Any, operators: Mapping[str, OperatorSpec] | None = None) -> Graph:
    """Read the ``pipeline`` value of a task (a list of steps or ``{"nodes", "outputs"}``).

    With ``operators`` the graph is also checked (``validate_graph``); without, only its
    shape is, and ``compile_graph`` checks the rest. Raises ``TaskError(code=
    "INVALID_PIPELINE")`` listing every problem found.
    """
    # Pick the form first so that errors speak about the form a person actually wrote.
    try:
        if isinstance(pipeline, list):
            graph = chain_graph(_CHAIN.validate_python(pipeline))
        elif isinstance(pipeline, Mapping):
            dag = DagPipeline.model_validate(pipeline)
            graph = Graph(nodes=tuple(dag.nodes), outputs=tuple(dag.outputs))
        else:
            raise _invalid(
                [
                    _problem(
                        f"pipeline is a {type(pipeline).__name__}; give a list of steps "
                        '[{"op": ..., "params": {...}}, ...] or {"nodes": [...], "outputs": [...]}',
                        field="pipeline",
                    )
                ]
            )
    except ValidationError as exc:
        raise _invalid([_from_validation(err) for err in exc.errors()]) from None
    return graph if operators is None else validate_graph(graph, operators)


def validate_graph(graph: Graph, operators: Mapping[str, OperatorSpec]) -> Graph:
    """Check references, operators, params, limits and acyclicity; return ``graph`` unchanged."""
    problems: list[dict[str, Any]] = []
    ids = [n.id for n in graph.nodes]
    known = set(ids)
    seen: dict[str, int] = {}
    for pos, nid in enumerate(ids):
        if nid in seen:
            problems.append(
                _problem(
                    f"node id {nid!r} is used twice (nodes {seen[nid]} and {pos}); "
                    "give every node its own id",
                    node=nid,
                )
            )
        else:
            seen[nid] = pos
    for node in graph.nodes:
        if node.id.startswith("$"):
            problems.append(
                _problem(
                    f"node id {node.id!r} starts with '$', which is kept for \"$data\"; "
                    "rename the node",
                    node=node.id,
                )
            )
        problems.extend(_check_node(node, known, operators))
    if not graph.outputs:
        problems.append(
            _problem('"outputs" is empty: name at least one node whose value the pipeline returns')
        )
    listed: set[str] = set()
    for out in graph.outputs:
        if out in listed:
            problems.append(_problem(f"output {out!r} is listed twice; list it once", output=out))
        listed.add(out)
        if out not in known:
            problems.append(
                _problem(f"output {out!r} is not a node{_did_you_mean(out, ids)}", output=out)
            )
    if problems:
        raise _invalid(problems)
    graph.topological()  # raises on a cycle, which only makes sense once references are sound
    return graph


def _check_node(
    node: Node, known: set[str], operators: Mapping[str, OperatorSpec]
) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    if not node.inputs:
        problems.append(
            _problem(
                f'node {node.id!r} has no inputs; give it "$data" or the id of another node',
                node=node.id,
            )
        )
    for ref in node.inputs:
        if ref == node.id:
            problems.append(
                _problem(
                    f"node {node.id!r} takes its own output as input; a node cannot depend "
                    "on itself",
                    node=node.id,
                    cycle=[node.id],
                )
            )
        elif ref != DATA and ref not in known:
            hint = _did_you_mean(ref, sorted(known | {DATA}))
            problems.append(
                _problem(
                    f"node {node.id!r} takes input {ref!r}, which is not a node{hint} "
                    '(use "$data" for the pipeline\'s data)',
                    node=node.id,
                    input=ref,
                )
            )
    spec = operators.get(node.op)
    if spec is None:
        names = sorted(operators)
        problems.append(
            _problem(
                f"node {node.id!r} uses unknown operator {node.op!r}"
                f"{_did_you_mean(node.op, names)}; known operators: {', '.join(names)}",
                node=node.id,
                op=node.op,
            )
        )
        return problems
    if spec.params_model is not None:
        try:
            spec.params_model.model_validate(node.params)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "params"
                problems.append(
                    _problem(
                        f"node {node.id!r} ({node.op}): params.{where}: {err['msg']}"
                        if where != "params"
                        else f"node {node.id!r} ({node.op}): params: {err['msg']}",
                        node=node.id,
                        op=node.op,
                        field=where,
                    )
                )
    if node.limits is not None and spec.limits is not None:
        for key, value in node.limits.model_dump(exclude_none=True).items():
            ceiling = getattr(spec.limits, key)
            if value > ceiling:
                problems.append(
                    _problem(
                        f"node {node.id!r} asks for limits.{key}={value}, above the "
                        f"{node.op!r} operator's ceiling of {ceiling}; ask for at most that",
                        node=node.id,
                        field=f"limits.{key}",
                    )
                )
    return problems


def _find_cycle(stuck: Mapping[str, Node]) -> list[str]:
    """One cycle among nodes that never became ready: every one of them has a stuck input."""
    start = next(iter(stuck))
    path: list[str] = []
    on_path: dict[str, int] = {}
    nid = start
    while nid not in on_path:
        on_path[nid] = len(path)
        path.append(nid)
        nid = next(r for r in stuck[nid].inputs if r in stuck)
    return path[on_path[nid] :]


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _problem(message: str, **details: Any) -> dict[str, Any]:
    return {"message": message, **details}


def _from_validation(err: Any) -> dict[str, Any]:
    where = ".".join(str(p) for p in err["loc"])
    return _problem(f"pipeline.{where}: {err['msg']}" if where else err["msg"], field=where)


def _invalid(problems: list[dict[str, Any]]) -> TaskError:
    if len(problems) == 1:
        message = problems[0]["message"]
    else:
        message = f"the pipeline has {len(problems)} problems:\n" + "\n".join(
            f"- {p['message']}" for p in problems
        )
    return TaskError(message, code=INVALID_PIPELINE, details={"problems": problems})
