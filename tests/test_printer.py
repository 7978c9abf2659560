"""The IR text printer and the table formatter (golden outputs)."""

import numpy as np
import onnx
from onnx import helper

from circ.graph import Graph
from circ.printer import format_count, format_table, print_graph, print_node, summarize_tensor
from circ.tensors import Clustered, Dense, Quantized


def conv_graph() -> Graph:
    graph = Graph()
    x = graph.add_input("x", np.float32, ("N", 3, 8, 8))
    w = graph.add_const("w", np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3) - 50)
    shape = graph.add_const("shape", np.array([-1, 256]))
    conv = graph.add_node("Conv", [x, w, None], {"pads": [1, 1, 1, 1], "auto_pad": "NOTSET", "alpha": 0.5},
                          name="conv1", infer=False)
    conv.output.dtype, conv.output.shape = np.float32, ("N", 4, 8, 8)
    flat = graph.add_node("Reshape", [conv.output, shape], name="flat", infer=False)
    flat.output.dtype, flat.output.shape = np.float32, None
    graph.outputs.append(flat.output)
    return graph


def test_golden_graph_text():
    assert print_graph(conv_graph()) == "\n".join([
        "graph main(%x: f32[N,3,8,8]) {",
        "  %w: f32[4,3,3,3] = const dense{min=-50, max=57, nnz=107/108}",
        "  %shape: i64[2] = const [-1, 256]",
        '  %conv1_out: f32[N,4,8,8] = Conv(%x, %w, _) {alpha=0.5, auto_pad="NOTSET", pads=[1,1,1,1]}  # conv1',
        "  %flat_out: f32[*] = Reshape(%conv1_out, %shape)  # flat",
        "  return %flat_out",
        "}",
    ])


def test_compressed_constants_are_summarized():
    mask = np.zeros((3, 4), bool)
    mask[0] = True
    assert summarize_tensor(Dense(np.full((3, 4), 2.0, np.float32), mask)) == "masked{min=0, max=2, nnz=4/12}"
    clustered = Clustered(np.array([-1.0, 0.25], np.float32), np.array([[0, 1, -1]] * 3))
    assert summarize_tensor(clustered) == "clustered{k=2, min=-1, max=0.25, nnz=6/9}"
    quantized = Quantized(np.arange(-4, 5, dtype=np.int8).reshape(3, 3), np.array([0.5, 1, 2], np.float32),
                          np.zeros(3, np.int8), axis=0)
    assert summarize_tensor(quantized) == "quantized{bits=8, per axis 0, min=-2, max=8, nnz=8/9}"
    assert summarize_tensor(Dense(np.array(3.5, np.float32))) == "3.5"
    assert summarize_tensor(Dense(np.array([True, False]))) == "[true, false]"


def test_node_with_domain_lists_and_raw_attributes():
    graph = Graph(opsets={"": 17, "ai.onnx.ml": 3})
    x = graph.add_input("x", np.float32, (1, 2))
    node = graph.add_node("LinearClassifier", [x], {"classlabels_ints": list(range(12)),
                                                    "coefficients": np.zeros(20, np.float32)},
                          outputs=["label", "scores"], name="clf", domain="ai.onnx.ml", infer=False)
    node.raw_attrs["body"] = helper.make_attribute("body", helper.make_graph([], "b", [], []))
    assert print_node(node) == (
        "%label: ?[*], %scores: ?[*] = ai.onnx.ml.LinearClassifier(%x) "
        "{classlabels_ints=[0,1,2,3,4,5,6,7, ...], coefficients=<f32[20]>, body=<graph>}  # clf")
    assert onnx.AttributeProto.GRAPH == node.raw_attrs["body"].type


def test_table_columns_line_up():
    text = format_table(["", "before", "after"], [["params", "1,234", "12"], ["MACs", "5", "123,456"]])
    lines = text.splitlines()
    assert lines == ["        before    after",
                     "params   1,234       12",
                     "MACs         5  123,456"]
    assert format_count(1234567) == "1,234,567" and format_count(None) == "?" and format_count(2.5) == "2.50"
