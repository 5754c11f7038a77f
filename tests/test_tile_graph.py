"""Pipeline input: both forms normalise to one graph, and every mistake says how to fix it."""

from __future__ import annotations

from typing import Any

import pytest

from ploinkyd.errors import TaskError
from ploinkyd.tiles.graph import (
    DATA,
    Graph,
    Node,
    parse_pipeline,
    single_node,
    validate_graph,
)
from ploinkyd.tiles.model import LimitRequest, Limits, OperatorSpec
from ploinkyd.tiles.operators import builtin_operators

OPS = {s.name: s for s in builtin_operators()}


def invalid(pipeline: Any, operators: dict[str, OperatorSpec] | None = None) -> TaskError:
    with pytest.raises(TaskError) as info:
        parse_pipeline(pipeline, OPS if operators is None else operators)
    assert info.value.code == "INVALID_PIPELINE"
    assert info.value.details["problems"]
    return info.value


def dag(nodes: list[dict[str, Any]], outputs: list[str]) -> dict[str, Any]:
    return {"nodes": nodes, "outputs": outputs}


def test_chain_becomes_numbered_nodes_each_taking_the_previous() -> None:
    graph = parse_pipeline(
        [{"op": "sort"}, {"op": "take", "params": {"n": 2}, "limits": {"memory_mb": 512}}], OPS
    )
    assert [(n.id, n.op, n.inputs) for n in graph.nodes] == [
        ("n0", "sort", (DATA,)),
        ("n1", "take", ("n0",)),
    ]
    assert graph.nodes[1].limits == LimitRequest(memory_mb=512)
    assert graph.outputs == ("n1",)


def test_dag_form_keeps_ids_inputs_and_outputs() -> None:
    graph = parse_pipeline(
        dag(
            [
                {"id": "evens", "op": "filter", "params": {"expr": "x % 2 == 0"}, "inputs": [DATA]},
                {"id": "both", "op": "flatten", "inputs": ["evens", DATA, "evens"]},
            ],
            ["both", "evens"],
        ),
        OPS,
    )
    assert graph.node_map()["both"].inputs == ("evens", DATA, "evens")
    assert graph.outputs == ("both", "evens")
    assert graph.consumers() == {"evens": 2, "both": 0}


def test_single_node_is_a_one_step_chain() -> None:
    assert single_node("map", {"expr": "x"}) == parse_pipeline(
        [{"op": "map", "params": {"expr": "x"}}]
    )


def test_without_operators_only_the_shape_is_checked() -> None:
    graph = parse_pipeline([{"op": "no-such-op"}])
    with pytest.raises(TaskError, match="unknown operator 'no-such-op'"):
        validate_graph(graph, OPS)


def test_empty_chain() -> None:
    assert invalid([]).message == "the pipeline is empty: give it at least one step"


def test_pipeline_of_the_wrong_type() -> None:
    err = invalid("sort")
    assert err.message.startswith("pipeline is a str; give a list of steps")


def test_shape_errors_name_the_field() -> None:
    err = invalid([{"op": "sort"}, {"params": {}}])
    assert err.message == "pipeline.1.op: Field required"
    err = invalid(dag([{"id": "a", "op": "sort", "inputs": [DATA], "colour": 1}], ["a"]))
    assert err.message == "pipeline.nodes.0.colour: Extra inputs are not permitted"
    err = invalid({"nodes": [], "outputs": []})
    assert err.message.startswith("pipeline.nodes: List should have at least 1 item")


def test_duplicate_node_ids() -> None:
    err = invalid(
        dag(
            [
                {"id": "a", "op": "sort", "inputs": [DATA]},
                {"id": "a", "op": "count", "inputs": [DATA]},
            ],
            ["a"],
        )
    )
    assert err.message == "node id 'a' is used twice (nodes 0 and 1); give every node its own id"


def test_reserved_node_id() -> None:
    err = invalid(dag([{"id": "$x", "op": "sort", "inputs": [DATA]}], ["$x"]))
    assert (
        err.message == "node id '$x' starts with '$', which is kept for \"$data\"; rename the node"
    )


def test_unknown_input_suggests_close_names() -> None:
    err = invalid(
        dag(
            [
                {"id": "evens", "op": "filter", "params": {"expr": "x"}, "inputs": [DATA]},
                {"id": "top", "op": "take", "params": {"n": 1}, "inputs": ["evnes"]},
            ],
            ["top"],
        )
    )
    assert err.message == (
        "node 'top' takes input 'evnes', which is not a node; did you mean 'evens'? "
        '(use "$data" for the pipeline\'s data)'
    )
    assert err.details["problems"][0] == {
        "message": err.message,
        "node": "top",
        "input": "evnes",
    }


def test_misspelt_data_reference_suggests_data() -> None:
    err = invalid(dag([{"id": "a", "op": "sort", "inputs": ["$dta"]}], ["a"]))
    assert "did you mean '$data'?" in err.message


def test_unknown_input_without_a_close_name() -> None:
    err = invalid(dag([{"id": "a", "op": "sort", "inputs": ["zzzz"]}], ["a"]))
    assert err.message == (
        "node 'a' takes input 'zzzz', which is not a node (use \"$data\" for the pipeline's data)"
    )


def test_cycle_names_its_nodes() -> None:
    err = invalid(
        dag(
            [
                {"id": "start", "op": "sort", "inputs": [DATA]},
                {"id": "a", "op": "sort", "inputs": ["c"]},
                {"id": "b", "op": "sort", "inputs": ["a"]},
                {"id": "c", "op": "flatten", "inputs": ["b", "start"]},
                {"id": "after", "op": "count", "inputs": ["c"]},
            ],
            ["after"],
        )
    )
    assert err.message.startswith("the pipeline has a cycle: ")
    assert err.message.endswith(
        "; a node cannot depend, directly or through other nodes, on its own output"
    )
    cycle = err.details["problems"][0]["cycle"]
    assert sorted(cycle) == ["a", "b", "c"]  # "after" is stuck behind it but not on it
    path = err.message.split(": ", 1)[1].split(";")[0].split(" → ")
    assert path[0] == path[-1] and len(path) == 4


def test_self_loop() -> None:
    err = invalid(dag([{"id": "a", "op": "sort", "inputs": ["a"]}], ["a"]))
    assert err.message == ("node 'a' takes its own output as input; a node cannot depend on itself")


def test_empty_outputs() -> None:
    err = invalid(dag([{"id": "a", "op": "sort", "inputs": [DATA]}], []))
    assert err.message == (
        '"outputs" is empty: name at least one node whose value the pipeline returns'
    )


def test_unknown_output_suggests_close_names() -> None:
    err = invalid(dag([{"id": "total", "op": "count", "inputs": [DATA]}], ["totl"]))
    assert err.message == "output 'totl' is not a node; did you mean 'total'?"


def test_output_listed_twice() -> None:
    err = invalid(dag([{"id": "a", "op": "count", "inputs": [DATA]}], ["a", "a"]))
    assert err.message == "output 'a' is listed twice; list it once"


def test_node_with_zero_inputs() -> None:
    err = invalid(dag([{"id": "a", "op": "count", "inputs": []}], ["a"]))
    assert err.message == "node 'a' has no inputs; give it \"$data\" or the id of another node"


def test_unknown_op_suggests_and_lists_known_ones() -> None:
    ops = {n: OperatorSpec(name=n) for n in ("map", "filter", "sort")}
    err = invalid([{"op": "mapp"}], ops)
    assert err.message == (
        "node 'n0' uses unknown operator 'mapp'; did you mean 'map'?; "
        "known operators: filter, map, sort"
    )


def test_invalid_params_use_the_operators_model() -> None:
    err = invalid([{"op": "take", "params": {"n": "many"}}])
    assert err.message == "node 'n0' (take): params.n: Input should be a valid integer"
    err = invalid([{"op": "map", "params": {"exprr": "x"}}])
    assert err.details["problems"][0]["field"] in {"expr", "exprr"}
    assert "params.expr: Field required" in err.message
    assert "params.exprr: Extra inputs are not permitted" in err.message


def test_operator_without_params_model_accepts_any_params() -> None:
    ops = {"thing": OperatorSpec(name="thing")}
    assert parse_pipeline([{"op": "thing", "params": {"anything": [1]}}], ops).nodes[0].params


def test_limits_above_an_operators_ceiling() -> None:
    ops = {"big": OperatorSpec(name="big", limits=Limits(memory_mb=512))}
    err = invalid([{"op": "big", "limits": {"memory_mb": 1024}}], ops)
    assert err.message == (
        "node 'n0' asks for limits.memory_mb=1024, above the 'big' operator's ceiling of 512; "
        "ask for at most that"
    )


def test_several_problems_are_reported_together() -> None:
    err = invalid(
        dag(
            [
                {"id": "a", "op": "sortt", "inputs": [DATA]},
                {"id": "b", "op": "take", "params": {"n": -1}, "inputs": ["x"]},
            ],
            ["c"],
        )
    )
    lines = err.message.splitlines()
    assert lines[0] == "the pipeline has 4 problems:"
    assert len(lines) == 5 and all(line.startswith("- ") for line in lines[1:])
    assert {p.get("node") for p in err.details["problems"]} == {"a", "b", None}


def test_topological_order_is_stable() -> None:
    graph = Graph(
        nodes=(
            Node(id="z", op="count", inputs=("b", "a")),
            Node(id="b", op="sort", inputs=(DATA,)),
            Node(id="a", op="sort", inputs=(DATA,)),
        ),
        outputs=("z",),
    )
    assert [n.id for n in validate_graph(graph, OPS).topological()] == ["b", "a", "z"]
    assert graph.live() == {"z", "a", "b"}
