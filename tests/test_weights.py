import numpy as np

from circ.graph import Graph
from circ.weights import weight_refs


def _graph():
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, ("N", 3, 8, 8))
    conv = g.add_node("Conv", [x, g.add_const("conv1.w", np.ones((4, 3, 3, 3), np.float32))],
                      {"pads": [1, 1, 1, 1]}, name="conv1")
    dw = g.add_node("Conv", [conv.output, g.add_const("dw.w", np.ones((4, 1, 3, 3), np.float32))],
                    {"group": 4, "pads": [1, 1, 1, 1]}, name="dw")
    flat = g.add_node("Flatten", [dw.output])
    shared = g.add_const("fc.w", np.ones((10, 256), np.float32))
    fc = g.add_node("Gemm", [flat.output, shared], {"transB": 1}, name="fc1")
    fc2 = g.add_node("Gemm", [flat.output, shared], {"transB": 1}, name="fc_shared")
    mm = g.add_node("MatMul", [fc.output, g.add_const("head.w", np.ones((10, 2), np.float32))], name="head")
    g.outputs += [mm.output, fc2.output]
    return g


def test_finds_every_layer_weight_once_with_its_output_axis():
    refs = weight_refs(_graph())
    assert [(r.name, r.kind, r.out_axis) for r in refs] == [
        ("conv1", "conv", 0), ("dw", "conv", 0), ("fc1", "fc", 0), ("head", "fc", 1)]


def test_scopes():
    g = _graph()
    assert [r.name for r in weight_refs(g, "conv")] == ["conv1", "dw"]
    assert [r.name for r in weight_refs(g, "fc")] == ["fc1", "head"]
    assert [r.name for r in weight_refs(g, "fc*")] == ["fc1"]
    assert [r.name for r in weight_refs(g, "*.w")] == ["conv1", "dw", "fc1", "head"]
    assert weight_refs(g, "nothing*") == []


def test_layers_with_computed_weights_are_declined_with_a_hint():
    from circ.passbase import PassContext
    from circ.weights import select_layers

    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, ("N", 4))
    t = g.add_node("Transpose", [g.add_const("w", np.ones((3, 4), np.float32))])
    g.outputs.append(g.add_node("MatMul", [x, t.output], name="fc").output)
    ctx = PassContext()
    assert select_layers(g, "all", [], ctx) == []
    assert any("run fold_constants first" in d.reason and "fc" in d.node for d in ctx.declines)
