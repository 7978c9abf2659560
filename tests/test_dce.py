import numpy as np
from hypothesis import given, settings, strategies as st

from circ.graph import Graph
from circ.interpreter import run
from circ.passbase import PassContext
from circ.verifier import verify
from passes.dce import DeadCodeElimination


def dce(graph):
    result = DeadCodeElimination().run(graph, PassContext())
    verify(graph)
    return result


def test_dangling_chains_and_unused_constants_go_inputs_stay():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (2, 3))
    unused_input = graph.add_input("unused", np.float32, (1,))
    c = graph.add_const("c", np.ones((2, 3), np.float32))
    graph.add_const("orphan", np.zeros(3, np.float32))
    live = graph.add_node("Relu", [x])
    dead = graph.add_node("Add", [x, c])  # a chain of three hanging off x
    dead = graph.add_node("Neg", [dead.output])
    graph.add_node("Exp", [dead.output])
    graph.outputs.append(live.output)
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 3, "unused": np.zeros(1, np.float32)}
    before = run(graph, feeds)
    result = dce(graph)
    assert result.modified
    assert result.details == {"nodes_removed": 3, "constants_removed": 2}
    assert [n.op for n in graph.nodes] == ["Relu"]
    assert not graph.consts
    assert graph.inputs == [x, unused_input]
    np.testing.assert_array_equal(run(graph, feeds)["relu_out"], before["relu_out"])
    assert not dce(graph).modified


def test_a_node_with_one_used_output_is_kept_and_constant_outputs_stay():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (4, 2))
    sizes = graph.add_const("sizes", np.array([1, 3], np.int64))
    split = graph.add_node("Split", [x, sizes], {"axis": 0}, outputs=2)
    table = graph.add_const("table", np.ones(2, np.float32))
    graph.outputs.extend([split.outputs[1], table])
    assert not dce(graph).modified
    assert [n.op for n in graph.nodes] == ["Split"] and "table" in graph.consts


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Add", "Mul", "Neg", "Relu"]), st.integers(0, 40),
                          st.integers(0, 40)), min_size=1, max_size=15),
       st.sets(st.integers(0, 40), min_size=1, max_size=3))
def test_random_graphs_keep_outputs_and_lose_everything_unreachable(steps, chosen):
    graph = Graph(opsets={"": 17})
    pool = [graph.add_input("x", np.float32, (3,)), graph.add_const("c", np.ones(3, np.float32))]
    for op, i, j in steps:
        args = [pool[i % len(pool)]] + ([pool[j % len(pool)]] if op in ("Add", "Mul") else [])
        pool.append(graph.add_node(op, args).output)
    nodes = pool[2:]
    graph.outputs.extend(dict.fromkeys(nodes[k % len(nodes)] for k in chosen))
    feeds = {"x": np.array([-1.0, 0.5, 2.0], np.float32)}
    before = run(graph, feeds)
    dce(graph)
    assert run(graph, feeds).keys() == before.keys()
    for name, array in run(graph, feeds).items():
        np.testing.assert_array_equal(array, before[name])
    # What is left is exactly what the outputs reach.
    reached, work = set(), list(graph.outputs)
    while work:
        value = work.pop()
        if value.producer is not None and id(value.producer) not in reached:
            reached.add(id(value.producer))
            work.extend(v for v in value.producer.inputs if v is not None)
    assert {id(n) for n in graph.nodes} == reached


def test_keeps_values_read_only_by_a_subgraph():
    import onnx
    from onnx import helper, numpy_helper

    from circ.onnx_export import to_model_proto
    from circ.onnx_import import from_model_proto

    F = onnx.TensorProto.FLOAT
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", F, [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", F, [2])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Relu", ["x"], ["unused"])],
        "g", [helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("y", F, [2])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero"),
         numpy_helper.from_array(np.ones(2, np.float32), "bias"),
         numpy_helper.from_array(np.ones(2, np.float32), "dead")])
    g = from_model_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    DeadCodeElimination().run(g, PassContext())
    assert "bias" in g.consts and "dead" not in g.consts
    assert [n.op for n in g.nodes] == ["ReduceSum", "Greater", "If"]
    onnx.checker.check_model(to_model_proto(g), full_check=True)
