import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from circ.graph import Graph
from opcheck import check_op

rng = np.random.default_rng(0)

WINDOWS_2D = [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "strides": [1, 2], "pads": [1, 0, 0, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 3], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [1, 0, 1, 0], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"kernel_shape": [3, 3], "auto_pad": "VALID", "strides": [2, 1]},
    {"kernel_shape": [4, 3]},
]


@pytest.mark.parametrize("attributes", WINDOWS_2D)
@pytest.mark.parametrize("opset", [11, 13, 22])
def test_max_pool_2d(attributes, opset):
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    check_op("MaxPool", {"x": x}, attributes, opset=opset)


@pytest.mark.parametrize("attributes", [
    {"kernel_shape": [3, 3], "dilations": [2, 2]},
    {"kernel_shape": [2, 3], "dilations": [2, 1], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "dilations": [2, 2], "strides": [2, 2], "ceil_mode": 1},
])
def test_max_pool_dilations(attributes):
    check_op("MaxPool", {"x": rng.standard_normal((1, 2, 11, 12)).astype(np.float32)}, attributes)


def test_max_pool_old_opsets_ignore_storage_order():
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    check_op("MaxPool", {"x": x}, {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=7)
    check_op("MaxPool", {"x": x}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "storage_order": 1},
             opset=9)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_max_pool_integers_pad_with_the_lowest_value(dtype):
    x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (1, 2, 6, 7)).astype(dtype)
    check_op("MaxPool", {"x": x}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
             opset=12)


def test_max_pool_1d_and_3d():
    check_op("MaxPool", {"x": rng.standard_normal((2, 3, 13)).astype(np.float32)},
             {"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
    check_op("MaxPool", {"x": rng.standard_normal((1, 2, 5, 6, 7)).astype(np.float32)},
             {"kernel_shape": [2, 3, 2], "strides": [2, 2, 1], "ceil_mode": 1})


@pytest.mark.parametrize("attributes", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [2, 3], "dilations": [2, 1], "storage_order": 1},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2], "storage_order": 1},
])
def test_max_pool_indices(attributes):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    check_op("MaxPool", {"x": x}, attributes, n_outputs=2)


def test_max_pool_indices_1d_and_3d():
    check_op("MaxPool", {"x": rng.standard_normal((2, 3, 11)).astype(np.float32)},
             {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, n_outputs=2)
    check_op("MaxPool", {"x": rng.standard_normal((1, 2, 4, 5, 6)).astype(np.float32)},
             {"kernel_shape": [2, 2, 3], "strides": [2, 1, 2]}, n_outputs=2)


@pytest.mark.parametrize("attributes", WINDOWS_2D)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_2d(attributes, count_include_pad):
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    check_op("AveragePool", {"x": x}, {**attributes, "count_include_pad": count_include_pad})


@pytest.mark.parametrize("opset", [7, 9, 11, 19, 22])
def test_average_pool_opsets(opset):
    x = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    check_op("AveragePool", {"x": x},
             {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, opset=opset)


def test_average_pool_dilations_opset_19():
    x = rng.standard_normal((1, 2, 11, 10)).astype(np.float32)
    for count_include_pad in (0, 1):
        check_op("AveragePool", {"x": x},
                 {"kernel_shape": [3, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1],
                  "count_include_pad": count_include_pad}, opset=19)


def test_average_pool_1d_and_3d():
    check_op("AveragePool", {"x": rng.standard_normal((2, 3, 13)).astype(np.float32)},
             {"kernel_shape": [4], "strides": [3], "pads": [1, 2]})
    check_op("AveragePool", {"x": rng.standard_normal((1, 2, 5, 6, 7)).astype(np.float32)},
             {"kernel_shape": [2, 3, 2], "strides": [2, 2, 1], "pads": [0, 1, 1, 1, 1, 0]})


def test_pools_with_symbolic_batch():
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    window = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    check_op("MaxPool", {"x": x}, window, batch_symbolic=True)
    check_op("AveragePool", {"x": x}, window, batch_symbolic=True)
    check_op("GlobalAveragePool", {"x": x}, batch_symbolic=True)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 7, 6), (1, 2, 3, 4, 5)])
def test_global_pools(op, shape):
    check_op(op, {"x": rng.standard_normal(shape).astype(np.float32)}, rtol=1e-5, atol=1e-6)


def test_pool_shape_keeps_unknown_dims_unknown():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, ["N", 8, None, 32])
    node = graph.add_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]})
    assert node.output.shape == ("N", 8, None, 16)
    gap = graph.add_node("GlobalAveragePool", [node.output])
    assert gap.output.shape == ("N", 8, 1, 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_pools_match_onnxruntime_on_random_windows(data):
    op = data.draw(st.sampled_from(["MaxPool", "AveragePool"]), label="op")
    rank = data.draw(st.integers(1, 2), label="spatial rank")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    auto_pad = data.draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attributes = {"kernel_shape": kernel, "strides": strides, "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attributes["pads"] = [data.draw(st.integers(0, k - 1)) for k in kernel * 2]
        attributes["ceil_mode"] = data.draw(st.integers(0, 1), label="ceil_mode")
    if op == "AveragePool":
        attributes["count_include_pad"] = data.draw(st.integers(0, 1), label="count_include_pad")
    sizes = [data.draw(st.integers(k, k + 6)) for k in kernel]
    if auto_pad.startswith("SAME"):
        # onnxruntime refuses SAME windows whose padding would be negative (kernel < stride);
        # circ pads zero there
        assume(all((-(-n // s) - 1) * s + k >= n for n, s, k in zip(sizes, strides, kernel)))
    x = rng.standard_normal([data.draw(st.integers(1, 2)), 2] + sizes).astype(np.float32)
    check_op(op, {"x": x}, attributes)


# ------------------------------------------------------------------ MaxPool gradient and layouts


def _max_pool_grad_by_loops(x, grad, kernel, strides, pads):
    """Reference MaxPool gradient for 2-D windows: each window sends its gradient to its
    first maximum in row-major order (padding never wins)."""
    out = np.zeros_like(x)
    for n, c, i, j in np.ndindex(grad.shape):
        best, where = -np.inf, None
        for a, b in np.ndindex(*kernel):
            row, col = i * strides[0] + a - pads[0], j * strides[1] + b - pads[1]
            if 0 <= row < x.shape[2] and 0 <= col < x.shape[3] and x[n, c, row, col] > best:
                best, where = x[n, c, row, col], (row, col)
        out[(n, c) + where] += grad[n, c, i, j]
    return out


def _channels_last_copy(x):
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)


class _Node:
    def __init__(self, attributes):
        self.attrs, self.op, self.outputs = attributes, "MaxPool", [None]


@pytest.mark.parametrize("kernel, strides, pads", [
    ((2, 2), (2, 2), (0, 0)),  # disjoint windows (LeNet)
    ((3, 3), (2, 2), (1, 1)),  # overlapping windows with pads (ResNet)
    ((3, 2), (1, 2), (1, 0)),
])
@pytest.mark.parametrize("layout", ["(N, C, ...)", "channels last"])
def test_max_pool_gradient_goes_to_the_first_maximum(kernel, strides, pads, layout):
    from circ.ops.pool import _max_pool, _max_pool_grad

    # few distinct values: many ties, within windows and across overlapping windows
    x = rng.integers(0, 3, size=(2, 3, 7, 8)).astype(np.float64)
    node = _Node({"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads) * 2})
    if layout == "channels last":
        x = _channels_last_copy(x)
    out = _max_pool(node, x)
    grad = rng.standard_normal(out.shape)
    (got,) = _max_pool_grad(node, [x], [out], [grad])
    np.testing.assert_allclose(got, _max_pool_grad_by_loops(x, grad, kernel, strides, pads),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pools_keep_a_channels_last_layout(op):
    """Conv returns channels-last views; pooling them gives the same numbers as pooling a
    plain array, and keeps the memory order so the next Conv need not transpose."""
    from circ.ops.conv import _is_channels_last
    from circ.ops.pool import _average_pool, _max_pool

    kernel = _max_pool if op == "MaxPool" else _average_pool
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    for attributes in WINDOWS_2D[:3]:
        node = _Node(attributes)
        got = kernel(node, _channels_last_copy(x))
        np.testing.assert_allclose(got, kernel(node, x), rtol=1e-6, atol=1e-6)
        assert _is_channels_last(got)


def test_max_pool_gradient_keeps_infinities_in_place():
    """An infinite gradient goes to its window's maximum and nowhere else (a multiply by a
    0/1 mask would spread NaN over the window)."""
    from circ.ops.pool import _max_pool, _max_pool_grad

    x = rng.standard_normal((1, 2, 4, 4))
    node = _Node({"kernel_shape": [2, 2], "strides": [2, 2]})
    out = _max_pool(node, x)
    grad = rng.standard_normal(out.shape)
    grad[0, 1, 1, 0] = np.inf
    (got,) = _max_pool_grad(node, [x], [out], [grad])
    np.testing.assert_array_equal(got, _max_pool_grad_by_loops(x, grad, (2, 2), (2, 2), (0, 0)))
    assert np.isinf(got).sum() == 1 and not np.isnan(got).any()
