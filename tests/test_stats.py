"""Statistics analysis: parameters, non-zeros, storage bytes, bits and MACs, checked by hand."""

import numpy as np
import pytest

from circ.analysis.stats import graph_stats, node_macs
from circ.graph import Graph
from circ.tensors import Clustered, Dense, Quantized

rng = np.random.default_rng(0)


def weights(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def node(graph, op, inputs, out_shape, **attributes):
    """A node with a given output shape (no shape rule needed: the counts read shapes only)."""
    n = graph.add_node(op, inputs, attributes, name=op.lower(), infer=False)
    n.output.dtype, n.output.shape = np.float32, out_shape
    return n


def test_conv_macs_with_groups():
    graph = Graph()
    x = graph.add_input("x", np.float32, ("N", 8, 10, 10))
    w = graph.add_const("w", weights(16, 4, 3, 3))  # group=2: 8 input channels, 4 per group
    conv = node(graph, "Conv", [x, w], ("N", 16, 8, 8), group=2)
    assert node_macs(conv) == 16 * 8 * 8 * (4 * 3 * 3)


def test_conv_transpose_macs():
    graph = Graph()
    x = graph.add_input("x", np.float32, (1, 4, 5, 5))
    w = graph.add_const("w", weights(4, 6, 3, 3))
    convt = node(graph, "ConvTranspose", [x, w], (1, 6, 11, 11), strides=[2, 2])
    assert node_macs(convt) == 4 * 5 * 5 * (6 * 3 * 3)


@pytest.mark.parametrize("trans_a, a_shape", [(0, (7, 5)), (1, (5, 7))])
def test_gemm_macs(trans_a, a_shape):
    graph = Graph()
    a = graph.add_input("a", np.float32, a_shape)
    b = graph.add_const("b", weights(5, 3))
    gemm = node(graph, "Gemm", [a, b], (7, 3), transA=trans_a)
    assert node_macs(gemm) == 7 * 5 * 3


def test_matmul_macs_batched_and_symbolic_batch_counts_once():
    graph = Graph()
    a = graph.add_input("a", np.float32, ("N", 2, 6, 5))
    b = graph.add_const("b", weights(5, 9))
    mm = node(graph, "MatMul", [a, b], ("N", 2, 6, 9))
    assert node_macs(mm) == 2 * 6 * 9 * 5


def test_unknown_shape_makes_macs_incomplete():
    graph = Graph()
    a = graph.add_input("a", np.float32, (None, 5))
    b = graph.add_const("b", weights(5, 3))
    mm = node(graph, "MatMul", [a, b], (None, 3))
    graph.outputs.append(mm.output)
    stats = graph_stats(graph)
    assert node_macs(mm) is None
    assert stats.macs == 0 and not stats.macs_complete


def test_other_ops_are_not_counted():
    graph = Graph()
    x = graph.add_input("x", np.float32, (2, 3))
    relu = node(graph, "Relu", [x], (2, 3))
    assert node_macs(relu) == 0


def test_params_nonzeros_bytes_bits_and_sharing():
    graph = Graph()
    x = graph.add_input("x", np.float32, (1, 4))
    dense = weights(4, 4)
    dense[0] = 0  # 4 zeros
    w1 = graph.add_const("w1", dense)
    mask = np.ones((4, 4), bool)
    mask[:, 0] = False  # 4 pruned
    w2 = graph.add_const("w2", Dense(weights(4, 4), mask))
    w3 = graph.add_const("w3", Clustered(np.array([-1.0, 0.5, 2.0], np.float32),
                                         np.array([[0, 1, -1, 2]] * 4)))  # 4 pruned (index -1)
    w4 = graph.add_const("w4", Quantized(np.arange(16, dtype=np.int8).reshape(4, 4), np.float32(0.1),
                                         np.int8(0), num_bits=4))  # one zero
    shape = graph.add_const("shape", np.array([1, 4], np.int64))  # not a parameter
    h1 = node(graph, "MatMul", [x, w1], (1, 4))
    h2 = node(graph, "MatMul", [h1.output, w2], (1, 4))
    h3 = node(graph, "MatMul", [h2.output, w3], (1, 4))
    h4 = node(graph, "MatMul", [h3.output, w4], (1, 4))
    h5 = node(graph, "MatMul", [h4.output, w1], (1, 4))  # w1 shared: counted once
    out = node(graph, "Reshape", [h5.output, shape], (1, 4))
    graph.outputs.append(out.output)

    stats = graph_stats(graph)
    assert stats.params == 4 * 16
    assert stats.nonzeros == 12 + 12 + 12 + 15
    # float32 arrays, 3-entry codebook + 2-bit indices, 4-bit integers + scale + zero point, shape
    assert stats.storage_bytes == 64 + 64 + (12 + 4) + (8 + 4 + 1) + 16
    assert stats.weight_bits == 16 * 32 + 16 * 32 + 16 * 2 + 16 * 4
    assert stats.bits == pytest.approx(stats.weight_bits / 64)
    assert stats.macs == 5 * 16 and stats.macs_complete
    assert stats.effective_macs == 12 + 12 + 12 + 15 + 12
    assert stats.nodes == 6
    per_node = stats.per_node
    assert sum(r.params for r in per_node) == stats.params
    assert sum(r.storage_bytes for r in per_node) == stats.storage_bytes
    assert stats.node(h2.name).params == 16 and stats.node(h5.name).params == 0
    assert stats.totals()["nonzeros"] == 51
    assert stats.sparsity == pytest.approx(1 - 51 / 64)


def test_int8_weight_matrix_is_a_parameter_but_int_vectors_are_not():
    graph = Graph()
    graph.add_const("q", np.ones((3, 3), np.int8))
    graph.add_const("axes", np.array([0, 1], np.int64))
    graph.add_const("bias", np.zeros(3, np.float32))
    stats = graph_stats(graph)
    assert stats.params == 9 + 3 and stats.nonzeros == 9
    assert stats.storage_bytes == 9 + 16 + 12
