import numpy as np
import pytest

from opcheck import check_op

rng = np.random.default_rng(0)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (3, 1, 1)), ((4,), (2, 3, 4)), ((1, 5), (5, 1))])
def test_broadcast_binary(op, shapes):
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = rng.standard_normal(shapes[1]).astype(np.float32) + 3.0
    check_op(op, {"a": a, "b": b})


def test_integer_division_truncates_toward_zero():
    a = np.array([7, -7, 7, -7], dtype=np.int64)
    b = np.array([2, 2, -2, -2], dtype=np.int64)
    check_op("Div", {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Sum", "Max", "Min", "Mean"])
def test_variadic(op):
    arrays = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate([(2, 3), (3,), (1, 3)])}
    check_op(op, arrays)


@pytest.mark.parametrize("op", ["Neg", "Abs", "Exp", "Floor", "Ceil", "Sign"])
def test_unary(op):
    check_op(op, {"x": rng.standard_normal((3, 4)).astype(np.float32)})


def test_sqrt_log_reciprocal_on_positive():
    x = rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
    for op in ["Sqrt", "Log", "Reciprocal"]:
        check_op(op, {"x": x})


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater"])
def test_compare(op):
    a = rng.integers(0, 3, (4, 3)).astype(np.float32)
    b = rng.integers(0, 3, (3,)).astype(np.float32)
    check_op(op, {"a": a, "b": b})


def test_where():
    cond = rng.random((2, 3)) > 0.5
    check_op("Where", {"c": cond, "a": rng.standard_normal((2, 3)).astype(np.float32),
                       "b": rng.standard_normal((1, 3)).astype(np.float32)})
