"""ternary: TWN's threshold and scale, integers in the IR, pruned zeros kept, ORT agreement."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import circ
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.tensors import Dense, Quantized
from circ.weights import weight_refs
from passes.prune import Prune
from passes.ternary import Ternary
from test_prune import network, onnxruntime_run, run_pass, single_layer, weight


def twn(values, threshold=0.7):
    """TWN for one slice, written out: (q, alpha)."""
    magnitude = np.abs(values.astype(np.float64))
    delta = threshold * magnitude.mean()
    large = magnitude > delta
    alpha = magnitude[large].mean() if large.any() else 1.0
    return (np.sign(values) * large).astype(np.int8), alpha


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), threshold=st.floats(0.0, 1.5), seed=st.integers(0, 2**16))
def test_ternary_per_layer_matches_twn(rows, cols, threshold, seed):
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    graph = single_layer("MatMul", values)
    result, _ = run_pass(graph, Ternary(threshold=threshold))
    tensor = weight(graph)
    q, alpha = twn(values, threshold)
    assert isinstance(tensor, Quantized) and tensor.num_bits == 2 and tensor.axis is None
    assert tensor.q.dtype == np.int8 and set(np.unique(tensor.q)) <= {-1, 0, 1}
    np.testing.assert_array_equal(tensor.q, q)
    assert tensor.zero_point == 0 and tensor.scale.dtype == np.float32
    assert tensor.scale == pytest.approx(alpha, rel=1e-6)
    np.testing.assert_array_equal(tensor.to_numpy(), (q * np.float32(alpha)).astype(np.float32))
    assert result.details["alpha"]["layer"] == pytest.approx(alpha, rel=1e-6)
    # alpha is the least-squares scale for the chosen q.
    if np.any(q):
        assert alpha == pytest.approx(float(values.ravel() @ q.ravel()) / np.count_nonzero(q), rel=1e-6)


@pytest.mark.parametrize("op, attributes, axis", [("Conv", {}, 0), ("Gemm", {}, 1), ("Gemm", {"transB": 1}, 0)])
def test_ternary_per_channel_along_output_channels(op, attributes, axis):
    rng = np.random.default_rng(1)
    shape = (6, 3, 2, 2) if op == "Conv" else (5, 7)
    # Channels of very different scale: one per-layer alpha would fit none of them.
    scales = np.geomspace(0.01, 10, shape[axis]).reshape([-1 if d == axis else 1 for d in range(len(shape))])
    values = (rng.standard_normal(shape) * scales).astype(np.float32)
    graph = single_layer(op, values, **attributes)
    run_pass(graph, Ternary(per_channel=True))
    tensor = weight(graph)
    assert tensor.axis == axis and tensor.scale.shape == (shape[axis],)
    for channel in range(shape[axis]):
        q, alpha = twn(np.take(values, channel, axis=axis))
        np.testing.assert_array_equal(np.take(tensor.q, channel, axis=axis), q)
        assert tensor.scale[channel] == pytest.approx(alpha, rel=1e-6)


def test_ternary_keeps_pruned_zeros_and_uses_kept_statistics():
    values = np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32)
    graph = single_layer("MatMul", values)
    run_pass(graph, Prune(sparsity=0.6))
    mask = weight(graph).mask.copy()
    run_pass(graph, Ternary())
    tensor = weight(graph)
    np.testing.assert_array_equal(tensor.mask, mask)
    assert np.all(tensor.q[~mask] == 0) and np.all(tensor.to_numpy()[~mask] == 0)
    kept = values[mask].astype(np.float64)
    delta = 0.7 * np.abs(kept).mean()
    np.testing.assert_array_equal(tensor.q != 0, mask & (np.abs(values) > delta))
    assert tensor.scale == pytest.approx(np.abs(kept)[np.abs(kept) > delta].mean(), rel=1e-6)


def test_ternary_declines_weights_already_quantized():
    graph = single_layer("MatMul", np.random.default_rng(3).standard_normal((4, 4)))
    run_pass(graph, Ternary())
    before = weight(graph)
    result, ctx = run_pass(graph, Ternary())
    assert weight(graph) is before and not result.modified
    assert "already Quantized" in ctx.declines[0].reason


def test_ternary_network_matches_onnxruntime_after_export():
    pruned = circ.optimize(from_model_proto(network()), "prune(sparsity=0.3)")
    graph = circ.optimize(pruned, "ternary(scope=conv),fold_bn")
    kinds = {ref.node.name: type(ref.value.const) for ref in weight_refs(graph)}
    # Folding BatchNorm scales the ternary conv weights back to floats; the mask survives.
    assert kinds == {"conv": Dense, "up": Quantized, "fc1": Dense, "fc2": Dense}
    np.testing.assert_array_equal(graph.value("conv_w").const.mask, pruned.value("conv_w").const.mask)
    x = np.random.default_rng(4).standard_normal((2, 4, 4, 4)).astype(np.float32)
    exported = to_model_proto(graph)
    theirs = onnxruntime_run(exported, {"x": x})["y"]
    np.testing.assert_allclose(circ.run(graph, {"x": x})["y"], theirs, rtol=1e-5, atol=1e-5)
