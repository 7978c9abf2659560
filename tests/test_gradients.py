"""Each op's registered gradient against central finite differences, in float64.

One node per graph (built with circ's graph API), a random cotangent on its output, and the
gradient of ``sum(cotangent * output)`` with respect to every float input compared with
``(f(x + h) - f(x - h)) / 2h`` element by element. Inputs are random normals, so kinks (Relu
at 0, Clip at its bounds, MaxPool ties) are met with probability zero.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circ.autodiff import Tape, backward
from circ.interpreter import Interpreter
from opcheck import circ_graph

STEP = 1e-6


def numeric_gradient(graph, feeds, name, cotangent):
    """d/d feeds[name] of sum(cotangent * output) by central differences."""
    interpreter = Interpreter(graph)
    out_name = graph.outputs[0].name
    base = feeds[name]
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        values = []
        for sign in (1, -1):
            moved = base.copy()
            moved[index] += sign * STEP
            output = interpreter.run({**feeds, name: moved})[out_name]
            values.append(float((cotangent * output).sum()))
        grad[index] = (values[0] - values[1]) / (2 * STEP)
    return grad


def check_gradient(op, inputs, attributes=None, *, consts=(), opset=17, seed=0):
    """Assert circ's gradient of ``op`` matches finite differences for every float input
    that is not in ``consts``; returns the analytic gradients."""
    rng = np.random.default_rng(seed)
    graph = circ_graph(op, inputs, attributes or {}, set(consts), 1, opset)
    feeds = {k: np.asarray(v) for k, v in inputs.items() if v is not None and k not in consts}
    tape = Tape(graph)
    output = tape.run(feeds)[graph.outputs[0].name]
    cotangent = rng.standard_normal(output.shape)
    wrt = [name for name, array in feeds.items() if array.dtype.kind == "f"]
    grads = backward(tape, {graph.outputs[0]: cotangent}, wrt)
    for name in wrt:
        assert grads[name].shape == feeds[name].shape, f"{op}: gradient shape for {name}"
        expected = numeric_gradient(graph, feeds, name, cotangent)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{op} gradient for {name}")
    return grads


def normal(*shape, seed=1):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


# ------------------------------------------------------------------ Gemm, MatMul


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), inner=st.integers(1, 4), cols=st.integers(1, 4),
       trans_a=st.booleans(), trans_b=st.booleans(),
       alpha=st.sampled_from([1.0, 0.5, -2.0]), beta=st.sampled_from([1.0, 0.0, 3.0]),
       c_shape=st.sampled_from(["none", "scalar", "row", "column", "full", "one"]))
def test_gemm(rows, inner, cols, trans_a, trans_b, alpha, beta, c_shape):
    a = normal(*((inner, rows) if trans_a else (rows, inner)))
    b = normal(*((cols, inner) if trans_b else (inner, cols)), seed=2)
    c = {"none": None, "scalar": normal(seed=3), "row": normal(cols, seed=3),
         "column": normal(rows, 1, seed=3), "full": normal(rows, cols, seed=3),
         "one": normal(1, 1, seed=3)}[c_shape]
    grads = check_gradient("Gemm", {"a": a, "b": b, "c": c},
                           {"transA": int(trans_a), "transB": int(trans_b), "alpha": alpha,
                            "beta": beta})
    if c is not None:
        assert grads["c"].shape == c.shape


@pytest.mark.parametrize("shapes", [
    ((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 3)),
    ((2, 3, 4), (4,)), ((4,), (4,)), ((1, 3, 2), (5, 2, 2)),
])
def test_matmul(shapes):
    check_gradient("MatMul", {"a": normal(*shapes[0]), "b": normal(*shapes[1], seed=2)})


# ------------------------------------------------------------------ elementwise


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)),
                                    ((1,), (2, 3)), ((), (2, 2))])
def test_binary(op, shapes):
    b = normal(*shapes[1], seed=2)
    if op == "Div":
        b = np.sign(b) * (np.abs(b) + 0.5)  # away from zero, where 1/b is steep
    check_gradient(op, {"a": normal(*shapes[0]), "b": b})


@pytest.mark.parametrize("op", ["Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal"])
def test_unary(op):
    x = normal(3, 4)
    if op in ("Sqrt", "Log", "Reciprocal"):
        x = np.abs(x) + 0.5
    check_gradient(op, {"x": x})


# ------------------------------------------------------------------ activations


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "LeakyRelu"])
def test_activation(op):
    check_gradient(op, {"x": normal(2, 3, 4) * 3})


@pytest.mark.parametrize("opset", [11, 13])
def test_clip_with_input_bounds(opset):
    low, high = np.array(-0.5), np.array(0.7)
    check_gradient("Clip", {"x": normal(3, 5), "low": low, "high": high}, consts={"low", "high"},
                   opset=opset)


def test_clip_one_bound_and_attributes():
    check_gradient("Clip", {"x": normal(3, 5), "low": None, "high": np.array(0.2)},
                   consts={"high"})
    check_gradient("Clip", {"x": normal(3, 5)}, {"min": -0.3, "max": 0.4}, opset=6)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 1), (11, 1), (11, 2)])
def test_softmax(op, opset, axis):
    check_gradient(op, {"x": normal(2, 3, 4)}, {"axis": axis}, opset=opset)


# ------------------------------------------------------------------ shape ops


def test_flatten_reshape_transpose():
    check_gradient("Flatten", {"x": normal(2, 3, 2)}, {"axis": 2})
    check_gradient("Reshape", {"x": normal(2, 3, 2), "shape": np.array([3, -1])}, consts={"shape"})
    check_gradient("Transpose", {"x": normal(2, 3, 4)}, {"perm": [2, 0, 1]})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 2], [2, 3, 2], [2, 3, 2]]
    for i, shape in enumerate(shapes):
        shape[axis] = i + 1
    check_gradient("Concat", {f"x{i}": normal(*s, seed=i) for i, s in enumerate(shapes)},
                   {"axis": axis})


# ------------------------------------------------------------------ Conv


@settings(max_examples=30, deadline=None)
@given(spatial=st.integers(1, 2), group=st.sampled_from([1, 2, 3]),
       per_group=st.integers(1, 2), out_per_group=st.integers(1, 2),
       kernel=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2),
       pad=st.integers(0, 2), bias=st.booleans(), size=st.integers(0, 3),
       auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
def test_conv(spatial, group, per_group, out_per_group, kernel, stride, dilation, pad, bias,
              size, auto_pad):
    extent = (kernel - 1) * dilation + 1
    dims = [extent + size + axis for axis in range(spatial)]
    x = normal(2, group * per_group, *dims)
    w = normal(group * out_per_group, per_group, *([kernel] * spatial), seed=2)
    attributes = {"group": group, "strides": [stride] * spatial, "dilations": [dilation] * spatial}
    if auto_pad == "NOTSET":
        attributes["pads"] = [pad] * spatial + [max(pad - 1, 0)] * spatial
    else:
        attributes["auto_pad"] = auto_pad
    check_gradient("Conv", {"x": x, "w": w, "b": normal(group * out_per_group, seed=3) if bias else None},
                   attributes)


# ------------------------------------------------------------------ pooling


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attributes", [
    {"kernel_shape": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 0, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2], "strides": [1]},
])
def test_pool(op, attributes):
    attributes = dict(attributes)
    if op == "MaxPool":
        attributes.pop("count_include_pad", None)
    rank = len(attributes["kernel_shape"])
    check_gradient(op, {"x": normal(2, 2, *([6] * rank))}, attributes)


def test_max_pool_dilated():
    check_gradient("MaxPool", {"x": normal(1, 2, 7, 7)},
                   {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]})


def test_global_average_pool():
    check_gradient("GlobalAveragePool", {"x": normal(2, 3, 4, 5)})


# ------------------------------------------------------------------ BatchNormalization


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 4)])
def test_batch_norm_frozen(shape):
    channels = shape[1]
    check_gradient("BatchNormalization", {
        "x": normal(*shape), "scale": normal(channels, seed=2), "bias": normal(channels, seed=3),
        "mean": normal(channels, seed=4), "var": np.abs(normal(channels, seed=5)) + 0.5,
    }, {"epsilon": 1e-3})
