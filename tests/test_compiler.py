"""The pipeline compiler and plan execution.

Groups run in-process through the real tile runtime (``run_stages``), so compiled and naive
plans are compared on what the operators really compute.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploinkyd.errors import TaskError
from ploinkyd.tile_runtime import OpError, run_stages
from ploinkyd.tiles.cache import TileCache
from ploinkyd.tiles.compiler import Group, Plan, compile_graph, explain, naive_plan
from ploinkyd.tiles.execute import execute_plan
from ploinkyd.tiles.graph import DATA, Graph, Node, parse_pipeline
from ploinkyd.tiles.model import CostHints, LimitRequest, Limits, OperatorSpec
from ploinkyd.tiles.operators import builtin_operators

IMAGE = "ploinky/python"
OPS: dict[str, OperatorSpec] = {s.name: s for s in builtin_operators()}
# Stand-ins for operators contributed elsewhere: the same runtime code, different placement.
OPS["map_gpu"] = OperatorSpec(name="map_gpu", runtime="map", image="ploinky/gpu")
OPS["sort_solo"] = OperatorSpec(name="sort_solo", runtime="sort", fusable=False)
OPS["take_mod"] = OperatorSpec(name="take_mod", runtime="take", modules=("extra_ops",))
OPS["wc"] = OperatorSpec(name="wc", exec=("wc", "-l"), exec_format="text")
OPS["big"] = OperatorSpec(
    name="big", runtime="identity", cost=CostHints(cpu_us_per_item=10, memory_mb=300)
)


async def in_process(group: Group, value: Any) -> Any:
    return run_stages(group.stages, value)


def n(nid: str, op: str, *inputs: str, limits: LimitRequest | None = None, **params: Any) -> Node:
    return Node(id=nid, op=op, params=params, inputs=inputs or (DATA,), limits=limits)


def g(*nodes: Node, outputs: tuple[str, ...]) -> Graph:
    return Graph(nodes=nodes, outputs=outputs)


def chains(plan: Plan) -> list[tuple[str, ...]]:
    return [grp.node_ids for grp in plan.groups]


def run(plan: Plan, data: Any, **kwargs: Any) -> Any:
    return asyncio.run(execute_plan(plan, data, in_process, **kwargs))


# ---- dead nodes and fusion ------------------------------------------------------------------


def test_dead_nodes_are_removed_and_reported() -> None:
    graph = g(
        n("a", "map", expr="x + 1"),
        n("unused", "count", "a"),
        n("b", "take", "a", n=2),
        n("orphan", "sort"),
        outputs=("b",),
    )
    plan = compile_graph(graph, OPS, IMAGE)
    assert plan.removed == ("unused", "orphan")
    assert chains(plan) == [("a", "b")]  # with "unused" gone, "a" has one consumer again
    assert run(plan, [3, 1, 2]) == [4, 2]
    assert naive_plan(graph, OPS, IMAGE).removed == ()


def test_linear_chain_fuses_into_one_group() -> None:
    graph = parse_pipeline(
        [
            {"op": "map", "params": {"expr": "x * 2"}},
            {"op": "filter", "params": {"expr": "x > 2"}},
            {"op": "take", "params": {"n": 2}},
        ]
    )
    plan = compile_graph(graph, OPS, IMAGE)
    (group,) = plan.groups
    assert group.id == "n2" and group.node_ids == ("n0", "n1", "n2")
    assert group.chain == "map → filter → take"
    assert [s.op for s in group.stages] == ["map", "filter", "take"]
    assert group.inputs == (DATA,)
    assert run(plan, [1, 2, 3, 4]) == [4, 6]


def test_never_fuses_across_a_requested_output() -> None:
    graph = g(n("a", "map", expr="x + 1"), n("b", "take", "a", n=1), outputs=("a", "b"))
    plan = compile_graph(graph, OPS, IMAGE)
    assert chains(plan) == [("a",), ("b",)]
    assert run(plan, [5, 6]) == {"a": [6, 7], "b": [6]}


def test_never_fuses_across_a_node_with_several_consumers() -> None:
    graph = g(
        n("a", "sort"),
        n("b", "take", "a", n=1),
        n("c", "count", "a"),
        n("d", "flatten", "b", "c"),
        outputs=("d",),
    )
    plan = compile_graph(graph, OPS, IMAGE)
    assert chains(plan) == [("a",), ("b",), ("c",), ("d",)]
    assert plan.levels == (("a",), ("b", "c"), ("d",))
    assert run(plan, [3, 1, 2]) == [1, 3]


def test_a_consumer_reading_one_node_twice_is_not_fused() -> None:
    graph = g(n("a", "sort"), n("b", "flatten", "a", "a"), outputs=("b",))
    plan = compile_graph(graph, OPS, IMAGE)
    assert chains(plan) == [("a",), ("b",)]
    assert run(plan, [2, 1]) == [1, 2, 1, 2]


def test_never_fuses_across_an_image_change() -> None:
    graph = parse_pipeline(
        [
            {"op": "map", "params": {"expr": "x + 1"}},
            {"op": "map_gpu", "params": {"expr": "x * 10"}},
            {"op": "map_gpu", "params": {"expr": "x - 1"}},
            {"op": "count"},
        ]
    )
    plan = compile_graph(graph, OPS, IMAGE)
    assert chains(plan) == [("n0",), ("n1", "n2"), ("n3",)]
    assert [grp.image for grp in plan.groups] == [IMAGE, "ploinky/gpu", IMAGE]
    # An operator that names the default image explicitly runs in the same image.
    ops = {**OPS, "map_gpu": OperatorSpec(name="map_gpu", runtime="map", image=IMAGE)}
    assert chains(compile_graph(graph, ops, IMAGE)) == [("n0", "n1", "n2", "n3")]
    assert run(plan, [1, 2]) == 2


def test_never_fuses_non_fusable_exec_or_different_module_operators() -> None:
    for middle in ("sort_solo", "take_mod", "wc"):
        graph = parse_pipeline([{"op": "identity"}, {"op": middle}, {"op": "identity"}])
        plan = compile_graph(graph, OPS, IMAGE)
        assert chains(plan) == [("n0",), ("n1",), ("n2",)], middle
    wc = compile_graph(parse_pipeline([{"op": "wc"}]), OPS, IMAGE).groups[0]
    assert wc.exec == ("wc", "-l") and wc.exec_format == "text"
    two = compile_graph(parse_pipeline([{"op": "take_mod"}] * 2), OPS, IMAGE)
    assert chains(two) == [("n0", "n1")] and two.groups[0].modules == ("extra_ops",)


def test_multi_input_node_starts_a_group_and_can_head_a_chain() -> None:
    graph = g(
        n("a", "filter", expr="x % 2 == 0"),
        n("b", "filter", expr="x % 2 == 1"),
        n("m", "flatten", "a", "b"),
        n("s", "sort", "m", reverse=True),
        n("t", "take", "s", n=3),
        outputs=("t",),
    )
    plan = compile_graph(graph, OPS, IMAGE)
    assert chains(plan) == [("a",), ("b",), ("m", "s", "t")]
    assert plan.group("t").inputs == ("a", "b")
    assert run(plan, [1, 2, 3, 4, 5]) == [5, 4, 3]


def test_fused_limits_take_the_larger_of_each_resource() -> None:
    graph = parse_pipeline(
        [
            {"op": "map", "params": {"expr": "x"}, "limits": {"memory_mb": 1024}},
            {"op": "sort", "limits": {"cpus": 2, "memory_mb": 128}},
            {"op": "take", "params": {"n": 1}},
        ]
    )
    base = Limits(memory_mb=256, cpus=0.5, pids=32)
    plan = compile_graph(graph, OPS, IMAGE, default_limits=base)
    assert plan.groups[0].limits == Limits(memory_mb=1024, cpus=2, pids=32)
    assert plan.groups[0].nodes[1].limits == LimitRequest(cpus=2, memory_mb=128)
    unfused = compile_graph(graph, OPS, IMAGE, default_limits=base, fuse=False)
    assert [grp.limits for grp in unfused.groups] == [
        Limits(memory_mb=1024, cpus=0.5, pids=32),
        Limits(memory_mb=128, cpus=2, pids=32),
        base,
    ]


def test_limits_no_container_can_have_are_an_invalid_pipeline() -> None:
    graph = parse_pipeline([{"op": "map", "params": {"expr": "x"}, "limits": {"pids": 1 << 20}}])
    with pytest.raises(TaskError, match="node 'n0' asks for limits no container can have: pids"):
        compile_graph(graph, OPS, IMAGE)


def test_compile_checks_the_graph() -> None:
    with pytest.raises(TaskError) as info:
        compile_graph(parse_pipeline([{"op": "nope"}]), OPS, IMAGE)
    assert info.value.code == "INVALID_PIPELINE"


# ---- levels, naive and unfused plans --------------------------------------------------------


DIAMOND = g(
    n("evens", "filter", expr="x % 2 == 0"),
    n("odds", "filter", expr="x % 2 == 1"),
    n("dbl", "map", "evens", expr="x * 2"),
    n("both", "flatten", "dbl", "odds"),
    n("total", "reduce", "both", expr="acc + x", initial=0),
    n("unused", "count", "odds"),
    outputs=("total", "both"),
)


def test_levels_group_independent_work() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE)
    assert chains(plan) == [("evens", "dbl"), ("odds",), ("both",), ("total",)]
    assert plan.levels == (("dbl", "odds"), ("both",), ("total",))
    assert plan.estimate.max_parallel == 2
    assert run(plan, [1, 2, 3, 4]) == {"total": 16, "both": [4, 8, 1, 3]}


def test_naive_plan_runs_everything_one_node_at_a_time() -> None:
    plan = naive_plan(DIAMOND, OPS, IMAGE)
    assert plan.mode == "naive" and plan.removed == ()
    assert chains(plan) == [("evens",), ("odds",), ("dbl",), ("both",), ("total",), ("unused",)]
    assert all(len(level) == 1 for level in plan.levels)
    assert plan.estimate.max_parallel == 1
    assert run(plan, [1, 2, 3, 4]) == run(compile_graph(DIAMOND, OPS, IMAGE), [1, 2, 3, 4])


def test_unfused_plan_removes_dead_nodes_but_keeps_one_group_per_node() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE, fuse=False)
    assert plan.mode == "unfused" and plan.removed == ("unused",)
    assert all(len(grp.nodes) == 1 for grp in plan.groups)
    assert plan.levels == (("evens", "odds"), ("dbl",), ("both",), ("total",))


async def test_independent_groups_run_concurrently() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE)
    entered = {gid: asyncio.Event() for gid in plan.levels[0]}
    events: list[tuple[str, str]] = []

    async def call(group: Group, value: Any) -> Any:
        events.append(("start", group.id))
        if group.id in entered:
            entered[group.id].set()
            # Each branch waits until the other has started: run one after the other, this
            # never happens and the wait times out.
            for other in entered.values():
                await asyncio.wait_for(other.wait(), timeout=10)
        events.append(("end", group.id))
        return run_stages(group.stages, value)

    assert await execute_plan(plan, [1, 2, 3], call) == {"total": 8, "both": [4, 1, 3]}
    first = events[:4]
    assert {e for e in first[:2]} == {("start", "dbl"), ("start", "odds")}
    assert {e for e in first[2:]} == {("end", "dbl"), ("end", "odds")}


async def test_naive_execution_never_overlaps() -> None:
    active: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    async def call(group: Group, value: Any) -> Any:
        active.append(group.id)
        if len(active) > 1:
            overlaps.append(tuple(active))
        await asyncio.sleep(0)  # give any sibling the chance to start
        active.remove(group.id)
        return run_stages(group.stages, value)

    await execute_plan(naive_plan(DIAMOND, OPS, IMAGE), [1, 2], call)
    assert overlaps == []


async def test_a_failing_group_cancels_its_siblings_and_its_error_is_raised() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE)
    other_started = asyncio.Event()
    cancelled: list[str] = []
    calls: list[str] = []

    async def call(group: Group, value: Any) -> Any:
        calls.append(group.id)
        if group.id == "odds":
            other_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(group.id)
                raise
        await other_started.wait()
        return run_stages([{"op": "map", "params": {"expr": "1 // 0"}}], value)

    with pytest.raises(OpError) as info:
        await execute_plan(plan, [1, 2], call)
    assert info.value.code == "OP_FAILED"
    assert cancelled == ["odds"]
    assert calls == ["dbl", "odds"]  # the next level never started


async def test_cache_hits_skip_the_round_trip() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE)
    cache = TileCache(max_bytes=1 << 20, ttl_s=60)
    calls: list[str] = []

    async def call(group: Group, value: Any) -> Any:
        calls.append(group.id)
        return run_stages(group.stages, value)

    first = await execute_plan(plan, [1, 2, 3], call, cache=cache)
    assert len(calls) == 4 and cache.stats()["entries"] == 4
    assert await execute_plan(plan, [1, 2, 3], call, cache=cache) == first
    assert len(calls) == 4 and cache.hits == 4
    # A new image id (a rebuilt image) is a new key; so is other data.
    await execute_plan(plan, [1, 2, 3], call, cache=cache, image_ids={IMAGE: "sha256:new"})
    assert len(calls) == 8
    await execute_plan(plan, [1, 2, 3, 5], call, cache=cache, image_ids={IMAGE: "sha256:new"})
    assert calls[8:] == ["dbl", "odds", "both", "total"]


# ---- explain --------------------------------------------------------------------------------


def test_explain_text() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE, input_items=100)
    text = explain(plan)
    lines = text.splitlines()
    assert lines[0] == (
        "compiled plan: 5 node(s) in 4 group(s) over 3 level(s); outputs: total, both"
    )
    assert lines[1] == "removed 1 dead node(s) no output depends on: unused"
    assert lines[2] == "level 0 — 2 groups in parallel"
    assert lines[3] == "  [dbl] filter → map  (fused: evens, dbl)"
    assert lines[4] == (
        "      inputs $data · image ploinky/python · 256 MiB, 1 cpu, 64 pids · ~75 µs, ~16 MiB"
    )
    assert "  [both] flatten" in lines
    assert "      inputs dbl, odds ·" in text
    assert lines[-1].startswith("estimate for 100 input item(s): ~")
    assert "4 round trip(s) for 5 node(s), up to 2 in parallel" in lines[-1]
    exec_text = explain(compile_graph(parse_pipeline([{"op": "wc"}]), OPS, IMAGE))
    assert "exec wc -l" in exec_text and "removed" not in exec_text


def test_estimates_follow_the_documented_model() -> None:
    graph = parse_pipeline(
        [{"op": "filter", "params": {"expr": "x"}}, {"op": "map", "params": {"expr": "x"}}]
    )
    plan = compile_graph(graph, OPS, IMAGE, input_items=1000)
    f, m = plan.groups[0].nodes
    assert (f.items_in, f.cpu_us) == (1000, 500)  # filter: 0.5 µs/item, keeps half
    assert (m.items_in, m.cpu_us) == (500, 250)
    assert plan.estimate.cpu_us == 750 == plan.estimate.critical_path_us
    both = g(n("a", "big"), n("b", "big"), n("c", "flatten", "a", "b"), outputs=("c",))
    est = compile_graph(both, OPS, IMAGE, input_items=10).estimate
    assert est.peak_memory_mb == 600  # two 300 MiB groups side by side
    assert est.cpu_us == 100 + 100 + 0.2 * 20
    assert est.critical_path_us == 100 + 0.2 * 20


def test_plan_json_round_trips() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE)
    doc = plan.model_dump(mode="json")
    json.dumps(doc)
    assert doc["levels"] == [["dbl", "odds"], ["both"], ["total"]]
    assert doc["removed"] == ["unused"]
    assert doc["groups"][0]["nodes"][0]["op"] == "filter"
    assert doc["groups"][0]["limits"] == {"memory_mb": 256, "cpus": 1.0, "pids": 64}
    assert set(doc["estimate"]) >= {"cpu_us", "critical_path_us", "peak_memory_mb"}
    assert Plan.model_validate(doc) == plan


def test_recompiling_a_plan_changes_nothing() -> None:
    plan = compile_graph(DIAMOND, OPS, IMAGE)
    again = compile_graph(plan.graph(), OPS, IMAGE)
    assert again == plan.model_copy(update={"removed": ()})
    assert compile_graph(again.graph(), OPS, IMAGE) == again


# ---- property: compiled == naive ------------------------------------------------------------

LIST_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("map", {"expr": "x + 1"}),
    ("map", {"expr": "x * 2"}),
    ("map_gpu", {"expr": "x - 3"}),
    ("filter", {"expr": "x % 2 == 0"}),
    ("filter", {"expr": "x > 0"}),
    ("sort", {}),
    ("sort", {"reverse": True}),
    ("sort_solo", {"key": "-x"}),
    ("identity", {}),
    *[("take", {"n": k}) for k in range(4)],
]
# Their values are not lists of ints, so nothing reads them.
TERMINAL_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("count", {}),
    ("reduce", {"expr": "acc + x", "initial": 0}),
    ("group_by", {"key": "x % 3"}),
]


@st.composite
def pipelines(draw: st.DrawFn) -> tuple[Graph, list[int]]:
    size = draw(st.integers(1, 9))
    nodes: list[Node] = []
    readable = [DATA]  # what produces a list of ints
    for i in range(size):
        nid = f"v{i}"
        # Lean on the newest nodes so long chains are common.
        pick = st.sampled_from(readable[-1:] * 3 + readable[-2:] + readable)
        arity = draw(st.sampled_from([1, 1, 1, 1, 1, 2, 3]))
        inputs = tuple(draw(st.lists(pick, min_size=arity, max_size=arity)))
        if len(inputs) > 1:
            op, params = "flatten", {}
        else:
            op, params = draw(st.sampled_from(LIST_STEPS + TERMINAL_STEPS))
        nodes.append(Node(id=nid, op=op, params=params, inputs=inputs))
        if (op, params) not in TERMINAL_STEPS:
            readable.append(nid)
    ids = [nd.id for nd in nodes]
    outputs = draw(
        st.lists(st.sampled_from(ids[-2:] * 2 + ids), min_size=1, max_size=3, unique=True)
    )
    order = draw(st.permutations(nodes))
    data = draw(st.lists(st.integers(-20, 20), max_size=12))
    return Graph(nodes=tuple(order), outputs=tuple(outputs)), data


def assert_fusion_is_maximal(plan: Plan, graph: Graph) -> None:
    """Every link left between two groups has a reason not to be fused."""
    consumers = Graph(nodes=plan.graph().nodes, outputs=graph.outputs).consumers()
    for grp in plan.groups:
        head = grp.nodes[0]
        if len(grp.inputs) != 1 or grp.inputs[0] == DATA:
            continue
        pred = plan.group(grp.inputs[0])
        a, b = OPS[pred.nodes[-1].op], OPS[head.op]
        assert (
            consumers[pred.id] > 1
            or pred.id in graph.outputs
            or not (a.fusable and b.fusable)
            or a.exec is not None
            or b.exec is not None
            or (a.image or IMAGE) != (b.image or IMAGE)
            or a.modules != b.modules
        ), f"{pred.id} → {grp.id} could have been fused"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines())
def test_compiled_equals_naive_and_compiling_is_idempotent(case: tuple[Graph, list[int]]) -> None:
    graph, data = case
    naive = naive_plan(graph, OPS, IMAGE)
    plan = compile_graph(graph, OPS, IMAGE)
    expected = run(naive, data)
    assert run(plan, data) == expected
    assert run(compile_graph(graph, OPS, IMAGE, fuse=False), data) == expected
    cache = TileCache(max_bytes=1 << 20, ttl_s=60)
    assert run(plan, data, cache=cache) == expected
    hits = cache.hits  # already some when two groups compute the same thing
    assert run(plan, data, cache=cache) == expected
    assert cache.hits - hits == len(plan.groups)

    assert set(plan.removed) == {nd.id for nd in graph.nodes} - graph.live()
    assert_fusion_is_maximal(plan, graph)
    again = compile_graph(plan.graph(), OPS, IMAGE)
    assert again == plan.model_copy(update={"removed": ()})
    assert compile_graph(again.graph(), OPS, IMAGE) == again
    assert Plan.model_validate(plan.model_dump(mode="json")) == plan
