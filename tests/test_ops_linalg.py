import numpy as np
import pytest

from circ.errors import ModelError
from circ.graph import Graph
from opcheck import check_op

rng = np.random.default_rng(0)
TOL = dict(rtol=1e-5, atol=1e-5)


def _randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [(3, 5), (5,), (1, 5), (3, 1), ()])
def test_gemm_transposes_and_c_broadcast(trans_a, trans_b, c_shape):
    a = _randn(*((4, 3) if trans_a else (3, 4)))
    b = _randn(*((5, 4) if trans_b else (4, 5)))
    c = np.asarray(rng.standard_normal(c_shape), dtype=np.float32)
    check_op("Gemm", {"a": a, "b": b, "c": c},
             {"transA": trans_a, "transB": trans_b, "alpha": 0.5, "beta": 2.0}, consts={"b", "c"}, **TOL)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17])
def test_gemm_linear_layer_across_opsets(opset):
    check_op("Gemm", {"x": _randn(2, 8), "w": _randn(6, 8), "bias": _randn(6)}, {"transB": 1},
             consts={"w", "bias"}, opset=opset, **TOL)


@pytest.mark.parametrize("opset", [11, 13])
def test_gemm_without_c_from_opset_11(opset):
    check_op("Gemm", {"a": _randn(3, 4), "b": _randn(4, 2), "c": None}, {"alpha": 3.0},
             consts={"b"}, opset=opset, **TOL)


def test_gemm_beta_zero_ignores_c():
    check_op("Gemm", {"a": _randn(3, 4), "b": _randn(4, 2), "c": _randn(3, 2)}, {"beta": 0.0},
             consts={"b", "c"}, **TOL)


def test_gemm_without_c_before_opset_11_is_refused():
    graph = Graph(opsets={"": 9})
    a = graph.add_input("a", np.float32, [2, 3])
    b = graph.add_const("b", _randn(3, 4))
    with pytest.raises(ModelError, match="Gemm node 'fc'.*opset 11"):
        graph.add_node("Gemm", [a, b], name="fc")


def test_gemm_inner_mismatch_is_refused():
    graph = Graph(opsets={"": 13})
    a = graph.add_input("a", np.float32, ["N", 3])
    b = graph.add_const("b", _randn(4, 4))
    with pytest.raises(ModelError, match="inner dims"):
        graph.add_node("Gemm", [a, b])


def test_gemm_c_broadcasts_one_way_only():
    graph = Graph(opsets={"": 13})
    a = graph.add_input("a", np.float32, [1, 3])
    b = graph.add_const("b", _randn(3, 4))
    c = graph.add_const("c", _randn(2, 4))
    with pytest.raises(ModelError, match="does not broadcast"):
        graph.add_node("Gemm", [a, b, c])


def test_gemm_symbolic_batch():
    check_op("Gemm", {"x": _randn(5, 8), "w": _randn(6, 8), "bias": _randn(6)}, {"transB": 1},
             consts={"w", "bias"}, batch_symbolic=True, **TOL)


@pytest.mark.parametrize("shapes", [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((5,), (2, 3, 5, 4)),
    ((2, 3, 4), (2, 4, 6)),
    ((1, 3, 4), (7, 4, 2)),
])
@pytest.mark.parametrize("opset", [9, 13])
def test_matmul_broadcasting(shapes, opset):
    check_op("MatMul", {"a": _randn(*shapes[0]), "b": _randn(*shapes[1])}, opset=opset, **TOL)


def test_matmul_integers_and_symbolic_batch():
    a = rng.integers(-5, 5, (3, 2, 4)).astype(np.int32)
    b = rng.integers(-5, 5, (4, 3)).astype(np.int32)
    check_op("MatMul", {"a": a, "b": b}, consts={"b"}, batch_symbolic=True)
    check_op("MatMul", {"x": _randn(4, 7, 8), "w": _randn(8, 3)}, consts={"w"}, batch_symbolic=True, **TOL)


def test_matmul_shape_rule():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, ["N", None, 8])
    w = graph.add_const("w", _randn(8, 3))
    assert graph.add_node("MatMul", [x, w]).output.shape == ("N", None, 3)
    v = graph.add_const("v", _randn(8))
    assert graph.add_node("MatMul", [x, v]).output.shape == ("N", None)
    bad = graph.add_const("bad", _randn(7, 3))
    with pytest.raises(ModelError, match="inner dims"):
        graph.add_node("MatMul", [x, bad])
