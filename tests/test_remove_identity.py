import numpy as np
import pytest

from circ.graph import Graph
from circ.interpreter import run
from circ.passbase import PassContext
from circ.verifier import verify
from passes.remove_identity import RemoveIdentity


def remove(graph):
    ctx = PassContext()
    result = RemoveIdentity().run(graph, ctx)
    verify(graph)
    return result, ctx


def ops(graph):
    return [n.op for n in graph.nodes]


X = np.array([[-1.0, 2.0, -3.0]], np.float32)


def test_identity_chain_inside_the_graph_goes():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (1, 3))
    value = graph.add_node("Relu", [x]).output
    for _ in range(3):
        value = graph.add_node("Identity", [value]).output
    graph.outputs.append(graph.add_node("Neg", [value]).output)
    before = run(graph, {"x": X})
    result, _ = remove(graph)
    assert result.modified and result.details["removed"] == 3
    assert ops(graph) == ["Relu", "Neg"]
    np.testing.assert_array_equal(run(graph, {"x": X})["neg_out"], before["neg_out"])


def test_identity_feeding_an_output_hands_the_name_to_the_producer():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (1, 3))
    relu = graph.add_node("Relu", [x])
    other = graph.add_node("Neg", [relu.output])  # the producer's value has another user
    ident = graph.add_node("Identity", [relu.output], outputs=["y"])
    graph.outputs.extend([ident.output, other.output])
    before = run(graph, {"x": X})
    remove(graph)
    assert ops(graph) == ["Relu", "Neg"]
    assert [v.name for v in graph.outputs] == ["y", "neg_out"]
    assert graph.outputs[0] is relu.output
    after = run(graph, {"x": X})
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize("source", ["input", "constant", "output"])
def test_identity_is_kept_when_its_input_cannot_take_the_output_name(source):
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, (1, 3))
    if source == "input":
        value = x
    elif source == "constant":
        value = graph.add_const("c", X)
    else:
        value = graph.add_node("Relu", [x]).output
        graph.outputs.append(value)
    graph.outputs.append(graph.add_node("Identity", [value], outputs=["y"]).output)
    result, ctx = remove(graph)
    assert not result.modified and not ctx.declines
    assert "Identity" in ops(graph) and graph.outputs[-1].name == "y"


def dropout_graph(opset, *, ratio_input=False, training=None, mask_used=False):
    graph = Graph(opsets={"": opset})
    x = graph.add_input("x", np.float32, (1, 3))
    inputs = [x]
    if ratio_input:
        inputs.append(graph.add_const("ratio", np.array(0.5, np.float32)))
    if training is not None:
        inputs.append(graph.add_const("training", np.array(training)))
    attributes = {} if ratio_input else {"ratio": 0.3}
    drop = graph.add_node("Dropout", inputs, attributes, outputs=2 if mask_used else 1)
    relu = graph.add_node("Relu", [drop.output], outputs=["y"])
    graph.outputs.append(relu.output)
    if mask_used:
        graph.outputs.append(graph.add_node("Not", [drop.outputs[1]]).output)
    return graph


@pytest.mark.parametrize("opset,ratio_input,training", [(7, False, None), (10, False, None),
                                                        (13, True, None), (13, True, False)])
def test_inference_dropout_goes(opset, ratio_input, training):
    graph = dropout_graph(opset, ratio_input=ratio_input, training=training)
    before = run(graph, {"x": X})
    result, ctx = remove(graph)
    assert result.modified and not ctx.declines
    assert ops(graph) == ["Relu"] and not graph.consts  # ratio and training_mode went too
    np.testing.assert_array_equal(run(graph, {"x": X})["y"], before["y"])


@pytest.mark.parametrize("case,reason", [({"training": True}, "training_mode is true"),
                                         ({"mask_used": True}, "mask")])
def test_dropout_that_is_not_a_no_op_is_declined(case, reason):
    graph = dropout_graph(13, ratio_input=True, **case)
    result, ctx = remove(graph)
    assert not result.modified
    assert "Dropout" in ops(graph)
    assert len(ctx.declines) == 1 and reason in ctx.declines[0].reason


@pytest.mark.parametrize("source", ["input", "constant", "node"])
def test_results_export_with_the_same_output_names_and_values(source):
    import onnxruntime as ort

    from circ.onnx_export import to_model_proto

    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (1, 3))
    value = {"input": x, "constant": graph.add_const("c", X)}.get(source)
    if value is None:
        value = graph.add_node("Relu", [x]).output
    ident = graph.add_node("Identity", [value])
    drop = graph.add_node("Dropout", [ident.output], outputs=["y"])
    graph.outputs.append(drop.output)
    before = run(graph, {"x": X})["y"]
    remove(graph)
    # One no-op must stay to produce "y" from an input or constant: the last one, the Dropout.
    assert [n.op for n in graph.nodes] == (["Relu"] if source == "node" else ["Dropout"])
    session = ort.InferenceSession(to_model_proto(graph).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["y"]
    np.testing.assert_array_equal(session.run(None, {"x": X})[0], before)
