"""The interpreter: feeds checked by name, dtype and shape; opaque ops refused by name."""

import numpy as np
import pytest

from circ.errors import DataError, ModelError
from circ.graph import Graph
from circ.interpreter import Interpreter, run
from circ.tensors import Clustered, Quantized


def _graph():
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, ("N", 3))
    w = g.add_const("w", np.eye(3, dtype=np.float32) * 2)
    mm = g.add_node("MatMul", [x, w], name="mm")
    g.outputs.append(g.add_node("Relu", [mm.output], name="relu").output)
    return g, w


def test_runs_any_batch_and_checks_feeds():
    g, _ = _graph()
    x = np.array([[1, -1, 2], [0, 3, -4]], np.float32)
    np.testing.assert_array_equal(run(g, {"x": x})["relu_out"], np.maximum(2 * x, 0))
    with pytest.raises(DataError, match="missing input 'x'"):
        run(g, {})
    with pytest.raises(DataError, match="unknown input 'y'"):
        run(g, {"x": x, "y": x})
    with pytest.raises(DataError, match="expects shape"):
        run(g, {"x": np.ones((2, 4), np.float32)})
    with pytest.raises(DataError, match="expects float32"):
        run(g, {"x": np.ones((2, 3), bool)})
    # integers and doubles are converted to the input's float type
    assert run(g, {"x": np.ones((1, 3), np.int64)})["relu_out"].dtype == np.float32


def test_runs_compressed_constants_without_knowing_their_kind():
    g, w = _graph()
    x = np.ones((1, 3), np.float32)
    g.set_const(w, Clustered(np.array([0.0, 2.0], np.float32), np.eye(3, dtype=np.int8)))
    np.testing.assert_array_equal(run(g, {"x": x})["relu_out"], [[2, 2, 2]])
    g.set_const(w, Quantized(np.eye(3, dtype=np.int8) * 4, np.float32(0.5), np.int8(0)))
    np.testing.assert_array_equal(run(g, {"x": x})["relu_out"], [[2, 2, 2]])


def test_opaque_op_is_refused_naming_node_and_op():
    g, _ = _graph()
    node = g.add_node("Frobnicate", [g.outputs[0]], domain="com.example", name="frob")
    g.outputs = [node.output]
    with pytest.raises(ModelError, match="Frobnicate node 'frob'.*no kernel for op 'Frobnicate'"):
        Interpreter(g)


def test_kernel_failure_names_the_node():
    g = Graph(opsets={"": 17})
    a = g.add_input("a", np.float32, (None,))
    b = g.add_input("b", np.float32, (None,))
    g.outputs.append(g.add_node("Add", [a, b], name="add").output)
    with pytest.raises(ModelError, match="Add node 'add' failed"):
        run(g, {"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)})


def test_run_node_can_be_overridden_to_observe():
    g, _ = _graph()
    seen = []

    class Recorder(Interpreter):
        def run_node(self, node, args):
            out = super().run_node(node, args)
            seen.append((node.op, out[0].shape))
            return out

    Recorder(g).run({"x": np.ones((4, 3), np.float32)})
    assert seen == [("MatMul", (4, 3)), ("Relu", (4, 3))]
