"""binary: sign and mean-|W| scale, 1-bit integers in the IR, pruned zeros kept by the mask."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import circ
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.tensors import Quantized
from circ.weights import weight_refs
from passes.binary import Binary
from passes.prune import Prune
from test_prune import network, onnxruntime_run, run_pass, single_layer, weight


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_binary_per_layer_sign_and_mean_magnitude(rows, cols, seed):
    values = np.random.default_rng(seed).integers(-3, 4, (rows, cols)).astype(np.float32)  # zeros too
    graph = single_layer("MatMul", values)
    result, _ = run_pass(graph, Binary())
    tensor = weight(graph)
    assert isinstance(tensor, Quantized) and tensor.num_bits == 1 and tensor.axis is None
    assert tensor.q.dtype == np.int8 and tensor.zero_point == 0
    np.testing.assert_array_equal(tensor.q, np.where(values >= 0, 1, -1))  # sign(0) = +1
    alpha = np.abs(values.astype(np.float64)).mean()
    assert tensor.scale == pytest.approx(alpha, rel=1e-6)
    np.testing.assert_array_equal(tensor.to_numpy(), (tensor.q * np.float32(alpha)).astype(np.float32))
    assert result.details["alpha"]["layer"] == pytest.approx(alpha, rel=1e-6)


@pytest.mark.parametrize("op, attributes, axis", [("Conv", {}, 0), ("ConvTranspose", {}, 1), ("MatMul", {}, 1)])
def test_binary_per_channel_alpha_along_output_channels(op, attributes, axis):
    shape = {"Conv": (4, 3, 2, 2), "ConvTranspose": (3, 5, 2, 2), "MatMul": (6, 4)}[op]
    values = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    graph = single_layer(op, values, **attributes)
    run_pass(graph, Binary(per_channel=True))
    tensor = weight(graph)
    assert tensor.axis == axis
    other = tuple(d for d in range(values.ndim) if d != axis)
    np.testing.assert_allclose(tensor.scale, np.abs(values.astype(np.float64)).mean(axis=other), rtol=1e-6)
    np.testing.assert_allclose(tensor.to_numpy(), np.sign(values) * np.abs(values).mean(axis=other, keepdims=True),
                               rtol=1e-6)


def test_binary_keeps_pruned_zeros_through_the_mask():
    values = np.random.default_rng(2).standard_normal((6, 10)).astype(np.float32)
    graph = single_layer("MatMul", values)
    run_pass(graph, Prune(sparsity=0.7))
    mask = weight(graph).mask.copy()
    run_pass(graph, Binary())
    tensor = weight(graph)
    np.testing.assert_array_equal(tensor.mask, mask)
    decoded = tensor.to_numpy()
    assert np.all(decoded[~mask] == 0) and np.all(np.isin(tensor.q, (-1, 1)))
    alpha = np.abs(values[mask].astype(np.float64)).mean()  # over the kept weights only
    np.testing.assert_allclose(decoded[mask], np.sign(values[mask]) * alpha, rtol=1e-6)


def test_binary_all_zero_channel_stays_zero():
    values = np.zeros((3, 4), np.float32)
    values[:, 1] = [1.0, -2.0, 3.0]
    graph = single_layer("MatMul", values)
    run_pass(graph, Binary(per_channel=True))
    decoded = weight(graph).to_numpy()
    assert np.all(decoded[:, [0, 2, 3]] == 0)
    np.testing.assert_allclose(decoded[:, 1], [2.0, -2.0, 2.0])


def test_binary_network_matches_onnxruntime_and_declines_clustered_or_quantized():
    graph = circ.optimize(from_model_proto(network()), "fold_bn,binary(per_channel=true,scope=fc)")
    assert {ref.node.name for ref in weight_refs(graph) if isinstance(ref.value.const, Quantized)} == {"fc1", "fc2"}
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 4)).astype(np.float32)
    exported = to_model_proto(graph)
    theirs = onnxruntime_run(exported, {"x": x})["y"]
    np.testing.assert_allclose(circ.run(graph, {"x": x})["y"], theirs, rtol=1e-5, atol=1e-5)

    result, ctx = run_pass(graph, Binary(scope="fc"))
    assert not result.modified and len(ctx.declines) == 2 and "already Quantized" in ctx.declines[0].reason
