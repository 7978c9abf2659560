"""The verifier names the node that breaks each invariant."""

import numpy as np
import pytest

from circ.errors import VerificationError
from circ.graph import Graph, Value
from circ.verifier import verify


def _graph():
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, ("N", 3, 8, 8))
    w = g.add_const("w", np.ones((4, 3, 3, 3), np.float32))
    conv = g.add_node("Conv", [x, w], {"pads": [1, 1, 1, 1]}, name="conv1")
    relu = g.add_node("Relu", [conv.output], name="relu1")
    g.outputs.append(relu.output)
    return g, conv, relu


def test_a_valid_graph_passes():
    verify(_graph()[0])


def test_type_disagreeing_with_the_shape_rule_names_the_node():
    g, conv, relu = _graph()
    conv.output.shape = ("N", 5, 8, 8)
    with pytest.raises(VerificationError, match="Conv node 'conv1'.*f32\\[N,4,8,8\\]"):
        verify(g)
    conv.output.shape = ("N", 4, None, 8)  # unknown dims agree with anything
    verify(g)
    conv.output.dtype = np.dtype("float64")
    with pytest.raises(VerificationError, match="conv1"):
        verify(g)


def test_input_from_outside_the_graph():
    g, conv, relu = _graph()
    stray = Value("stray", np.float32, ("N", 4, 8, 8))
    relu.inputs[0] = stray
    stray.uses.append((relu, 0))
    with pytest.raises(VerificationError, match="Relu node 'relu1': input 0 'stray' is not defined"):
        verify(g)


def test_use_lists_must_match_inputs():
    g, conv, relu = _graph()
    conv.output.uses.clear()
    with pytest.raises(VerificationError, match="relu1.*does not list this use"):
        verify(g)


def test_dangling_use_is_reported():
    g, conv, relu = _graph()
    g.nodes.remove(relu)  # bypassing erase_node leaves conv's use dangling
    g.outputs = [conv.output]
    with pytest.raises(VerificationError, match="dangling"):
        verify(g)


def test_out_of_order_node_is_a_cycle_or_order_error():
    g, conv, relu = _graph()
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="relu1.*produced later"):
        verify(g)


def test_duplicate_value_names():
    g, conv, relu = _graph()
    relu.output.name = conv.output.name
    with pytest.raises(VerificationError, match="defined twice"):
        verify(g)


def test_undefined_graph_output():
    g, conv, relu = _graph()
    g.outputs.append(Value("ghost", np.float32, (1,)))
    with pytest.raises(VerificationError, match="graph output 'ghost'"):
        verify(g)


def test_opaque_ops_are_not_type_checked():
    g, conv, relu = _graph()
    custom = g.add_node("MyOp", [relu.output], domain="com.example", name="mine")
    custom.output.shape = (1, 2, 3)
    g.outputs.append(custom.output)
    verify(g)
