import numpy as np
import pytest

from circ.errors import ModelError
from circ.graph import Graph
from circ.interpreter import Interpreter
from opcheck import check_op

rng = np.random.default_rng(0)


def f32(*shape):
    return (rng.standard_normal(shape) * 4).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset", [10, 13, 21])
def test_quantize_dequantize_per_tensor(dtype, opset):
    x = f32(3, 5)
    x[0, :3] = [0.25, 0.75, -1.25]  # exact halves after dividing by 0.5: round half to even
    scale, zero = np.array(0.5, np.float32), np.array(3 if dtype == np.uint8 else -2, dtype)
    out = check_op("QuantizeLinear", {"x": x, "s": scale, "z": zero}, consts={"s", "z"}, opset=opset, atol=0)
    assert out[0].dtype == dtype
    check_op("DequantizeLinear", {"q": out[0], "s": scale, "z": zero}, consts={"s", "z"}, opset=opset)


def test_quantize_saturates_and_defaults_to_uint8():
    x = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0], np.float32)
    out = check_op("QuantizeLinear", {"x": x, "s": np.array(0.1, np.float32)}, consts={"s"}, opset=13, atol=0)
    assert out[0].dtype == np.uint8 and out[0][-1] == 255 and out[0][0] == 0


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_axis(axis):
    x = f32(4, 3, 2)
    length = x.shape[axis]
    scale = rng.uniform(0.05, 0.2, length).astype(np.float32)
    zero = rng.integers(-5, 5, length).astype(np.int8)
    out = check_op("QuantizeLinear", {"x": x, "s": scale, "z": zero}, {"axis": axis},
                   consts={"s", "z"}, opset=13, atol=0)
    check_op("DequantizeLinear", {"q": out[0], "s": scale, "z": zero}, {"axis": axis}, consts={"s", "z"}, opset=13)


def test_dequantize_int32_bias():
    q = rng.integers(-10000, 10000, (6,)).astype(np.int32)
    check_op("DequantizeLinear", {"q": q, "s": np.array(0.003, np.float32)}, consts={"s"}, opset=13)


def test_blocked_quantization_opset21():
    x = f32(4, 6)
    scale = rng.uniform(0.05, 0.2, (4, 2)).astype(np.float32)
    zero = rng.integers(-5, 5, (4, 2)).astype(np.int8)
    out = check_op("QuantizeLinear", {"x": x, "s": scale, "z": zero}, {"axis": 1, "block_size": 3},
                   consts={"s", "z"}, opset=21, atol=0)
    check_op("DequantizeLinear", {"q": out[0], "s": scale, "z": zero}, {"axis": 1, "block_size": 3},
             consts={"s", "z"}, opset=21)


def test_output_dtype_attribute_opset21():
    out = check_op("QuantizeLinear", {"x": f32(5), "s": np.array(0.1, np.float32)}, {"output_dtype": 3},
                   consts={"s"}, opset=21, atol=0)
    assert out[0].dtype == np.int8


def test_bad_scale_names_the_node():
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (2, 3))
    node = graph.add_node("QuantizeLinear", [x, graph.add_const("s", np.ones(4, np.float32))], name="q1")
    graph.outputs.append(node.output)
    with pytest.raises(ModelError, match="q1"):
        Interpreter(graph).run({"x": f32(2, 3)})


@pytest.mark.parametrize("data", [f32(3, 7), np.abs(f32(4)), -np.abs(f32(4)), np.zeros(3, np.float32)])
def test_dynamic_quantize(data):
    check_op("DynamicQuantizeLinear", {"x": data}, n_outputs=3, opset=11, atol=0, rtol=1e-6)
