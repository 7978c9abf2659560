import numpy as np
from hypothesis import given, settings, strategies as st

from circ.graph import Graph
from circ.interpreter import run
from circ.passbase import PassContext
from circ.verifier import verify
from passes.fold_constants import FoldConstants


def fold(graph, **options):
    ctx = PassContext()
    result = FoldConstants(**options).run(graph, ctx)
    verify(graph)
    return result, ctx


def ops(graph):
    return [n.op for n in graph.nodes]


def shape_chain(batch):
    """x -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(.., 1)), [-1]))."""
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (batch, 3, 4, 5))
    shape = graph.add_node("Shape", [x])
    axes = graph.add_const("axes", np.array([0], np.int64))
    parts = []
    for index in (0, 1):
        gather = graph.add_node("Gather", [shape.output, graph.add_const(f"i{index}", np.array(index))])
        parts.append(graph.add_node("Unsqueeze", [gather.output, axes]).output)
    rest = graph.add_const("rest", np.array([-1], np.int64))
    concat = graph.add_node("Concat", parts + [rest], {"axis": 0})
    reshape = graph.add_node("Reshape", [x, concat.output])
    graph.outputs.append(reshape.output)
    return graph


def test_static_shape_arithmetic_folds_to_a_constant_reshape():
    graph = shape_chain(2)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)}
    before = run(graph, feeds)
    result, ctx = fold(graph)
    assert result.modified and not ctx.declines
    assert ops(graph) == ["Reshape"]
    target = graph.nodes[0].input(1)
    assert target.is_const and target.numpy().tolist() == [2, 3, -1]
    assert graph.outputs[0].shape == (2, 3, 20)
    np.testing.assert_array_equal(run(graph, feeds)[graph.outputs[0].name], before["reshape_out"])
    assert set(graph.consts) == {target.name}  # the index and axes constants went with their users


def test_symbolic_batch_keeps_the_dynamic_part_and_folds_the_static_part():
    graph = shape_chain("N")
    fold(graph)
    # Gather(Shape(x), 1) is known to be 3 from the static dim; the batch stays dynamic.
    assert ops(graph) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    concat = graph.nodes[3]
    assert concat.input(1).is_const and concat.input(1).numpy().tolist() == [3]
    for n in (1, 4):
        x = np.ones((n, 3, 4, 5), np.float32)
        assert run(graph, {"x": x})[graph.outputs[0].name].shape == (n, 3, 20)


def constant_of_shape_weight_graph(out_channels=4):
    graph = Graph(opsets={"": 9})
    x = graph.add_input("x", np.float32, (1, 3, 6, 6))
    dims = graph.add_const("w__SHAPE", np.array([out_channels, 3, 3, 3], np.int64))
    fill = graph.add_node("ConstantOfShape", [dims], {"value": np.array([0.02], np.float32)},
                          outputs=["w"])
    conv = graph.add_node("Conv", [x, fill.output], {"kernel_shape": [3, 3]})
    graph.outputs.append(conv.output)
    return graph


def test_constant_of_shape_weights_become_named_dense_constants():
    graph = constant_of_shape_weight_graph()
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    before = run(graph, {"x": x})
    fold(graph)
    assert ops(graph) == ["Conv"]
    weight = graph.nodes[0].input(1)
    assert weight.name == "w" and weight.is_const and weight.shape == (4, 3, 3, 3)
    assert np.all(weight.numpy() == np.float32(0.02))
    assert "w__SHAPE" not in graph.consts
    np.testing.assert_array_equal(run(graph, {"x": x})["conv_out"], before["conv_out"])


def test_large_results_fold_only_into_weight_inputs():
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (64, 64))
    big = graph.add_const("big_shape", np.array([64, 64], np.int64))
    value = {"value": np.array([0.5], np.float32)}
    weight = graph.add_node("ConstantOfShape", [big], value, outputs=["weight"])
    addend = graph.add_node("ConstantOfShape", [big], value, outputs=["addend"])
    gemm = graph.add_node("Gemm", [x, weight.output])
    add = graph.add_node("Add", [gemm.output, addend.output])
    graph.outputs.append(add.output)
    feeds = {"x": np.ones((64, 64), np.float32)}
    before = run(graph, feeds)
    fold(graph, max_bytes=1024)  # 16 KB results, 16-byte input
    assert ops(graph) == ["ConstantOfShape", "Gemm", "Add"]
    assert graph.nodes[1].input(1).is_const
    assert not graph.nodes[2].input(1).is_const
    np.testing.assert_array_equal(run(graph, feeds)[add.output.name], before[add.output.name])
    fold(graph)  # the default limit (1 MB) lets the addend fold too
    assert ops(graph) == ["Gemm", "Add"]


def test_opaque_and_output_nodes_are_kept():
    graph = Graph(opsets={"": 17, "vendor": 1})
    a = graph.add_const("a", np.arange(4, dtype=np.float32))
    opaque = graph.add_node("Mystery", [a], domain="vendor")
    opaque.output.dtype, opaque.output.shape = np.dtype(np.float32), (4,)
    x = graph.add_input("x", np.float32, (4,))
    add = graph.add_node("Add", [x, opaque.output])
    neg = graph.add_node("Neg", [a])  # all-constant, but a graph output: stays a node
    graph.outputs.extend([add.output, neg.output])
    result, ctx = fold(graph)
    assert not result.modified
    assert ops(graph) == ["Mystery", "Add", "Neg"]
    assert len(ctx.declines) == 1 and "no kernel" in ctx.declines[0].reason


def test_constant_inputs_of_a_live_node_fold_and_multi_output_nodes_fold_whole():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (3, 4))
    table = graph.add_const("table", np.arange(12, dtype=np.float32).reshape(3, 4))
    split = graph.add_node("Split", [table, graph.add_const("sizes", np.array([1, 2], np.int64))],
                           {"axis": 0}, outputs=2)
    top = graph.add_node("Concat", [split.outputs[1], split.outputs[0]], {"axis": 0})
    add = graph.add_node("Add", [x, top.output])
    graph.outputs.append(add.output)
    feeds = {"x": np.ones((3, 4), np.float32)}
    before = run(graph, feeds)
    fold(graph)
    assert ops(graph) == ["Add"]
    np.testing.assert_array_equal(run(graph, feeds)[add.output.name], before[add.output.name])


BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(BINARY), st.integers(0, 50), st.integers(0, 50)),
                min_size=1, max_size=12),
       st.integers(0, 2 ** 16))
def test_random_expression_graphs_keep_their_outputs(steps, seed):
    """Random DAGs over constants and one input: folding keeps every output and leaves no
    node whose inputs are all constants."""
    rng = np.random.default_rng(seed)
    graph = Graph(opsets={"": 17})
    pool = [graph.add_input("x", np.float32, (2, 3))]
    for k in range(3):
        shape = [(2, 3), (3,), (1, 3)][k]
        pool.append(graph.add_const(f"c{k}", rng.standard_normal(shape).astype(np.float32)))
    for op, i, j in steps:
        node = graph.add_node(op, [pool[i % len(pool)], pool[j % len(pool)]])
        pool.append(node.output)
    graph.outputs.extend(v for v in pool[4:] if not v.uses)
    if not graph.outputs:
        return
    feeds = {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    before = run(graph, feeds)
    names = [v.name for v in graph.outputs]
    fold(graph)
    assert [v.name for v in graph.outputs] == names
    after = run(graph, feeds)
    for name in names:
        np.testing.assert_array_equal(after[name], before[name])
    for node in graph.nodes:
        assert not all(v.is_const for v in node.inputs) or graph.is_output(node.output)


def onnxruntime_outputs(graph, feeds):
    import onnxruntime as ort

    from circ.onnx_export import to_model_proto

    session = ort.InferenceSession(to_model_proto(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_folded_graphs_export_and_agree_with_onnxruntime():
    for graph, shape in [(shape_chain("N"), (3, 3, 4, 5)), (shape_chain(2), (2, 3, 4, 5)),
                         (constant_of_shape_weight_graph(), (1, 3, 6, 6))]:
        feeds = {"x": np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
        before = onnxruntime_outputs(graph, feeds)
        fold(graph)
        after = onnxruntime_outputs(graph, feeds)
        assert after.keys() == before.keys()
        for name in before:
            np.testing.assert_allclose(after[name], before[name], rtol=1e-6)
