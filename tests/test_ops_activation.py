import numpy as np
import pytest

from opcheck import check_op

rng = np.random.default_rng(0)


def f32(*shape, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


SIMPLE = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}), ("Elu", {"alpha": 0.7}),
          ("Selu", {}), ("Celu", {"alpha": 1.5}), ("ThresholdedRelu", {"alpha": 0.5}),
          ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("Softplus", {}), ("Softsign", {}),
          ("Erf", {}), ("Mish", {})]


@pytest.mark.parametrize("op,attrs", SIMPLE)
def test_unary_activation(op, attrs):
    opset = 18 if op == "Mish" else 14
    check_op(op, {"x": f32(3, 4, 5)}, attrs, opset=opset)


def test_sigmoid_softplus_do_not_overflow():
    x = np.array([-1000.0, -80.0, 0.0, 80.0, 1000.0], dtype=np.float32)
    with np.errstate(over="raise"):
        check_op("Sigmoid", {"x": x})
        check_op("Softplus", {"x": x}, rtol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    check_op("Gelu", {"x": f32(4, 6)}, {"approximate": approximate}, opset=20)


@pytest.mark.parametrize("slope_shape", [(1,), (4, 1, 1), (5,), (3, 4, 1, 5)])
def test_prelu_slope_broadcasting(slope_shape):
    slope = rng.uniform(0.01, 0.5, slope_shape).astype(np.float32)
    check_op("PRelu", {"x": f32(3, 4, 2, 5), "slope": slope}, consts={"slope"}, opset=9)
    check_op("PRelu", {"x": f32(3, 4, 2, 5), "slope": slope}, consts={"slope"}, opset=16)


def test_clip_attributes_and_inputs():
    x = f32(3, 4)
    check_op("Clip", {"x": x}, {"min": -0.5, "max": 1.0}, opset=9)
    check_op("Clip", {"x": x}, opset=9)
    lo, hi = np.array(-0.5, np.float32), np.array(1.0, np.float32)
    check_op("Clip", {"x": x, "lo": lo, "hi": hi}, consts={"lo", "hi"}, opset=13)
    check_op("Clip", {"x": x, "lo": None, "hi": hi}, consts={"hi"}, opset=11)
    check_op("Clip", {"x": x, "lo": lo}, consts={"lo"}, opset=13)
    ints = rng.integers(-10, 10, (5,)).astype(np.int32)
    check_op("Clip", {"x": ints, "lo": np.array(-3, np.int32), "hi": np.array(4, np.int32)},
             consts={"lo", "hi"}, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset,axis", [(11, None), (11, 2), (11, -3), (13, None), (13, 1), (13, 0)])
def test_softmax_family_across_opsets(op, opset, axis):
    attrs = {} if axis is None else {"axis": axis}
    check_op(op, {"x": f32(2, 3, 4, 5)}, attrs, opset=opset)


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32)
    with np.errstate(over="raise"):
        out = check_op("Softmax", {"x": x}, opset=13)
    assert np.isfinite(out[0]).all()
    check_op("LogSoftmax", {"x": x}, opset=13)


def test_hardmax_takes_first_of_ties():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    out = check_op("Hardmax", {"x": x}, opset=13)
    np.testing.assert_array_equal(out[0], [[0, 1, 0], [1, 0, 0]])
