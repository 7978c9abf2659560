"""Check one op against onnxruntime: the same node built as an ONNX model and as circ IR.

``check_op("Conv", {"x": x, "w": w}, {"pads": [1, 1, 1, 1]}, consts={"w"})`` builds a
single-node ONNX model (inputs in ``consts`` become initializers), runs it in onnxruntime,
builds the same node with circ's graph API (no importer involved), runs circ's interpreter,
and asserts that outputs match and that circ's shape rule predicted the actual shapes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper

from circ import dtypes
from circ.graph import Graph
from circ.interpreter import Interpreter
from circ.verifier import verify


def _onnx_model(op, inputs, attributes, consts, n_outputs, opset, domain):
    names = list(inputs)
    graph_inputs, initializers = [], []
    for name, array in inputs.items():
        if array is None:
            continue
        if name in consts:
            initializers.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, dtypes.to_onnx(np.asarray(array).dtype), list(np.shape(array))))
    out_names = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, [n if inputs[n] is not None else "" for n in names], out_names,
                            domain=domain, **attributes)
    outputs = [onnx.ValueInfoProto(name=n) for n in out_names]  # types left to onnxruntime
    graph = helper.make_graph([node], "check", graph_inputs, outputs, initializer=initializers)
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1 if domain == "ai.onnx.ml" else opset))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(model.ir_version, 10)
    return model


def make_model(nodes, inputs, outputs, consts, opset=13):
    """An ONNX model of float ``inputs`` (name -> shape), ``outputs`` (names; types left to
    inference) and initializers ``consts`` (name -> array), at ``opset``."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
        [onnx.ValueInfoProto(name=n) for n in outputs],
        initializer=[onnx.numpy_helper.from_array(a, n) for n, a in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def circ_graph(op, inputs, attributes, consts, n_outputs, opset, domain="", batch_symbolic=False):
    graph = Graph(opsets={"": opset, **({domain: 1 if domain == "ai.onnx.ml" else opset} if domain else {})})
    values = []
    for name, array in inputs.items():
        if array is None:
            values.append(None)
        elif name in consts:
            values.append(graph.add_const(name, np.asarray(array)))
        else:
            shape = list(np.shape(array))
            if batch_symbolic and shape:
                shape[0] = "N"
            values.append(graph.add_input(name, np.asarray(array).dtype, shape))
    node = graph.add_node(op, values, attributes, outputs=n_outputs, domain=domain)
    graph.outputs.extend(node.outputs)
    verify(graph)
    return graph


def check_op(op: str, inputs: dict, attributes: Optional[dict] = None, *, consts=(),
             n_outputs: int = 1, opset: int = 17, domain: str = "", rtol: float = 1e-5,
             atol: float = 1e-5, check_shape: bool = True, batch_symbolic: bool = False):
    """Assert circ computes what onnxruntime computes for one node; returns circ's outputs."""
    attributes = dict(attributes or {})
    consts = set(consts)
    model = _onnx_model(op, inputs, attributes, consts, n_outputs, opset, domain)
    feeds = {k: np.asarray(v) for k, v in inputs.items() if v is not None and k not in consts}
    expected = run_onnxruntime(model, feeds)
    graph = circ_graph(op, inputs, attributes, consts, n_outputs, opset, domain, batch_symbolic)
    got = Interpreter(graph).run(feeds)
    for value, want in zip(graph.outputs, expected):
        have = got[value.name]
        assert have.dtype == want.dtype, f"{op}: dtype {have.dtype} != onnxruntime's {want.dtype}"
        assert have.shape == want.shape, f"{op}: shape {have.shape} != onnxruntime's {want.shape}"
        np.testing.assert_allclose(have, want, rtol=rtol, atol=atol, err_msg=f"{op} output {value.name}")
        if check_shape and value.shape is not None:
            assert len(value.shape) == want.ndim, f"{op}: inferred rank {value.shape} vs {want.shape}"
            for inferred, actual in zip(value.shape, want.shape):
                assert inferred is None or isinstance(inferred, str) or inferred == actual, \
                    f"{op}: inferred shape {value.shape} vs actual {want.shape}"
        if check_shape and value.dtype is not None:
            assert value.dtype == want.dtype, f"{op}: inferred dtype {value.dtype} vs {want.dtype}"
    return [got[v.name] for v in graph.outputs]
