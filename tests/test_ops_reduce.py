import numpy as np
import pytest

from opcheck import check_op

rng = np.random.default_rng(0)

OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
       "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _x():
    return rng.uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32)


def _axes_as_input(op, opset):
    return opset >= 18 or (op == "ReduceSum" and opset >= 13)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, -1], 0), (None, 1), (None, 0)])
def test_reduce(op, opset, axes, keepdims):
    inputs, attrs, consts = {"x": _x()}, {"keepdims": keepdims}, set()
    if axes is not None:
        if _axes_as_input(op, opset):
            inputs["axes"] = np.array(axes, np.int64)
            consts = {"axes"}
        else:
            attrs["axes"] = axes
    check_op(op, inputs, attrs, consts=consts, opset=opset)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax"])
def test_noop_with_empty_axes(op):
    out = check_op(op, {"x": _x()}, {"noop_with_empty_axes": 1}, opset=18)
    assert out[0].shape == (2, 3, 4)
    check_op(op, {"x": _x(), "axes": np.zeros(0, np.int64)}, {"noop_with_empty_axes": 0},
             consts={"axes"}, opset=18)


def test_reduce_with_runtime_axes():
    out = check_op("ReduceSum", {"x": _x(), "axes": np.array([2], np.int64)}, opset=13)
    assert out[0].shape == (2, 3, 1)


def test_log_sum_exp_is_stable():
    x = np.array([[1000.0, 999.0], [-1000.0, -1001.0]], np.float32)
    with np.errstate(over="raise"):
        check_op("ReduceLogSumExp", {"x": x}, {"axes": [1]}, opset=13)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [{}, {"axis": 1, "keepdims": 0}, {"axis": -1, "select_last_index": 1},
                                   {"axis": 2, "keepdims": 0, "select_last_index": 1}])
@pytest.mark.parametrize("opset", [11, 13])
def test_arg(op, attrs, opset):
    if opset < 12 and "select_last_index" in attrs:
        attrs = {k: v for k, v in attrs.items() if k != "select_last_index"}
    x = rng.integers(0, 3, (3, 4, 5)).astype(np.float32)  # many ties, so select_last_index matters
    out = check_op(op, {"x": x}, attrs, opset=opset)
    assert out[0].dtype == np.int64


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceLogSumExp", "ReduceL2"])
def test_empty_set_reduces_to_identity(op):
    x = np.zeros((2, 0, 3), np.float32)
    out = check_op(op, {"x": x, "axes": np.array([1], np.int64)}, {"keepdims": 1}, consts={"axes"}, opset=18)
    assert out[0].shape == (2, 1, 3)
