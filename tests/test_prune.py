"""prune: exact sparsity, Han's quality rule, global ranking, N:M, scopes, overrides, masks."""

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import helper

import circ
import zoo
from opcheck import make_model
from circ.cli import opt
from circ.errors import PipelineError
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.passbase import PassContext
from circ.pipeline import parse_pipeline, pipeline_text
from circ.tensors import Clustered, Dense, Quantized
from circ.verifier import verify
from circ.weights import weight_refs
from passes.dce import DeadCodeElimination
from passes.fold_bn import FoldBatchNorm
from passes.fold_constants import FoldConstants
from passes.prune import Prune, smallest

# ----------------------------------------------------------------------------- models


def single_layer(op, weight, **attributes):
    """A graph with one layer reading constant ``weight``: Conv/ConvTranspose (NCHW input),
    Gemm or MatMul (2-D input)."""
    weight = np.asarray(weight, np.float32)
    if op == "Conv":
        groups = attributes.get("group", 1)
        x_shape = [1, weight.shape[1] * groups, 5, 5]
    elif op == "ConvTranspose":
        x_shape = [1, weight.shape[0], 3, 3]
    elif op == "Gemm":
        x_shape = [2, weight.shape[1] if attributes.get("transB") else weight.shape[0]]
    else:
        x_shape = [2, weight.shape[0]]
    node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **attributes)
    return from_model_proto(make_model([node], {"x": x_shape}, ["y"], {"w": weight}))


def network(seed=0):
    """Conv -> BatchNorm -> Relu -> ConvTranspose(group 2) -> Flatten -> Gemm(transB) -> MatMul."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    consts = {"conv_w": rand(8, 4, 3, 3), "conv_b": rand(8), "bn_scale": rand(8), "bn_bias": rand(8),
              "bn_mean": rand(8), "bn_var": np.abs(rand(8)) + 0.5, "up_w": rand(8, 2, 2, 2),
              "fc1_w": rand(12, 4 * 8 * 8, scale=0.05), "fc1_b": rand(12), "fc2_w": rand(12, 8)}
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"],
                         name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "up_w"], ["u"], name="up", group=2, strides=[2, 2]),
        helper.make_node("Flatten", ["u"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1_w", "fc1_b"], ["h"], name="fc1", transB=1),
        helper.make_node("MatMul", ["h", "fc2_w"], ["y"], name="fc2"),
    ]
    return make_model(nodes, {"x": [2, 4, 4, 4]}, ["y"], consts)


def onnxruntime_run(model, feeds):
    """Outputs of onnxruntime on a path or ModelProto: name -> array.

    Basic graph optimizations only: at the full level onnxruntime fuses DequantizeLinear ->
    MatMul into dynamically quantized integer kernels (activations rounded to 8 bits), which
    is not the model's float semantics that circ's interpreter computes.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def run_pass(graph, pass_):
    ctx = PassContext()
    ctx.current_pass = pass_.name
    result = pass_.run(graph, ctx)
    verify(graph)
    return result, ctx


def weight(graph, name="w"):
    return graph.value(name).const


def rounded(sparsity, size):
    return int(np.floor(sparsity * size + 0.5))


# ----------------------------------------------------------------------------- exact sparsity

shapes = st.one_of(
    st.tuples(st.sampled_from(["MatMul", "Gemm"]), st.tuples(st.integers(1, 12), st.integers(1, 12))),
    st.tuples(st.just("Conv"), st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3),
                                         st.integers(1, 3))))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=shapes, sparsity=st.floats(0.0, 1.0), levels=st.integers(1, 1000), seed=st.integers(0, 2**16))
def test_exact_sparsity_smallest_first_and_ties_by_position(layer, sparsity, levels, seed):
    op, shape = layer
    # Few magnitude levels make ties (and natural zeros) common.
    values = np.random.default_rng(seed).integers(-levels, levels + 1, shape).astype(np.float32)
    graph = single_layer(op, values)
    result, _ = run_pass(graph, Prune(sparsity=sparsity))
    tensor = weight(graph)
    want = rounded(sparsity, values.size)
    kept = np.ones(values.shape, bool) if tensor.mask is None else tensor.mask
    assert values.size - np.count_nonzero(kept) == want
    decoded = tensor.to_numpy()
    assert np.count_nonzero(decoded == 0) == max(want, np.count_nonzero(values == 0))
    np.testing.assert_array_equal(decoded[kept], values[kept])
    magnitude = np.abs(values).reshape(-1)
    pruned_flat = ~kept.reshape(-1)
    if 0 < want < values.size:
        boundary = magnitude[pruned_flat].max()
        assert boundary <= magnitude[~pruned_flat].min()
        at_boundary = magnitude == boundary
        kept_ties = np.flatnonzero(at_boundary & ~pruned_flat)
        if kept_ties.size:  # among equal magnitudes the earlier positions are the pruned ones
            assert np.flatnonzero(at_boundary & pruned_flat).max() < kept_ties.min()
    assert result.details["layers"]["layer"] == pytest.approx(want / values.size)


def test_smallest_takes_earlier_ties():
    np.testing.assert_array_equal(smallest(np.array([3.0, 1, 1, 1, 2]), 2), [False, True, True, False, False])
    np.testing.assert_array_equal(smallest(np.ones((2, 2)), 3), [[True, True], [True, False]])
    assert not smallest(np.ones(3), 0).any() and smallest(np.ones(3), 5).all()


def test_default_pipeline_prunes_half_and_outputs_match_onnxruntime():
    graph = from_model_proto(network())
    pruned = circ.optimize(graph, "prune")
    for ref in weight_refs(pruned):
        tensor = ref.value.const
        assert isinstance(tensor, Dense) and tensor.mask is not None
        assert np.count_nonzero(~tensor.mask) == rounded(0.5, tensor.size)
        assert np.all(tensor.to_numpy()[~tensor.mask] == 0)
    x = np.random.default_rng(1).standard_normal((2, 4, 4, 4)).astype(np.float32)
    ours = circ.run(pruned, {"x": x})["y"]
    exported = to_model_proto(pruned)
    np.testing.assert_allclose(ours, onnxruntime_run(exported, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    # The exported initializers hold the exact zeros, and re-import sees them.
    reimported = from_model_proto(exported)
    for ref in weight_refs(pruned):
        np.testing.assert_array_equal(reimported.value(ref.value.name).const.to_numpy(), ref.value.const.to_numpy())
    assert not np.allclose(circ.run(graph, {"x": x})["y"], ours)  # pruning did change the model


# ----------------------------------------------------------------------------- composition


@settings(max_examples=30, deadline=None)
@given(first=st.floats(0.0, 1.0), second=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_second_prune_never_revives(first, second, seed):
    values = np.random.default_rng(seed).standard_normal((7, 9)).astype(np.float32)
    graph = single_layer("MatMul", values)
    run_pass(graph, Prune(sparsity=first))
    before = weight(graph).kept
    before = np.ones(values.shape, bool) if before is None else before.copy()
    run_pass(graph, Prune(sparsity=second))
    after = weight(graph).kept
    after = np.ones(values.shape, bool) if after is None else after
    assert not np.any(after & ~before)
    assert np.count_nonzero(~after) == max(np.count_nonzero(~before), rounded(second, values.size))


def test_pruned_masks_survive_fold_bn_fold_constants_and_dce():
    graph = from_model_proto(network())
    run_pass(graph, Prune(sparsity=0.6))
    masks = {ref.node.name: ref.value.const.mask.copy() for ref in weight_refs(graph)}
    x = np.random.default_rng(2).standard_normal((2, 4, 4, 4)).astype(np.float32)
    expected = circ.run(graph, {"x": x})["y"]
    for pass_ in (FoldBatchNorm(), FoldConstants(), DeadCodeElimination()):
        run_pass(graph, pass_)
    assert "BatchNormalization" not in [n.op for n in graph.nodes]
    for ref in weight_refs(graph):
        tensor = ref.value.const
        np.testing.assert_array_equal(tensor.kept, masks[ref.node.name])
        assert np.all(tensor.to_numpy()[~tensor.kept] == 0)
    np.testing.assert_allclose(circ.run(graph, {"x": x})["y"], expected, rtol=1e-4, atol=1e-4)


def test_prunes_clustered_and_quantized_weights_keeping_their_form():
    graph = single_layer("MatMul", np.zeros((4, 6)))
    codebook = np.array([-2.0, -0.5, 0.25, 1.0], np.float32)
    indices = np.arange(24).reshape(4, 6) % 4
    indices[0, 0] = -1
    graph.set_const(graph.value("w"), Clustered(codebook, indices))
    run_pass(graph, Prune(sparsity=0.5))
    tensor = weight(graph)
    assert isinstance(tensor, Clustered) and np.count_nonzero(tensor.indices < 0) == 12
    assert tensor.indices[0, 0] == -1
    assert np.all(np.abs(tensor.to_numpy()[tensor.indices >= 0]) >= 0.5)  # the 0.25s went first

    q = np.arange(-12, 12).reshape(4, 6).astype(np.int8)
    zero_points = np.array([1, 2, 3, 4, 5, 6], np.int8)
    graph.set_const(graph.value("w"), Quantized(q, np.full(6, 0.1, np.float32), zero_points, axis=1))
    run_pass(graph, Prune(sparsity=0.25))
    tensor = weight(graph)
    assert isinstance(tensor, Quantized) and np.count_nonzero(~tensor.mask) == 6
    decoded = tensor.to_numpy()
    assert np.all(decoded[~tensor.mask] == 0)
    np.testing.assert_array_equal(tensor.q[~tensor.mask], np.broadcast_to(zero_points, q.shape)[~tensor.mask])


# ----------------------------------------------------------------------------- quality, global


def test_quality_prunes_below_quality_times_std():
    values = np.random.default_rng(3).standard_normal((30, 20)).astype(np.float32)
    graph = single_layer("Gemm", values)
    run_pass(graph, Prune(quality=0.8))
    threshold = 0.8 * np.std(values.astype(np.float64))
    np.testing.assert_array_equal(weight(graph).mask, np.abs(values) >= threshold)
    # A second pass measures std over the kept weights only.
    kept = values[np.abs(values) >= threshold]
    run_pass(graph, Prune(quality=0.8))
    again = np.abs(values) >= max(threshold, 0.8 * np.std(kept.astype(np.float64)))
    np.testing.assert_array_equal(weight(graph).mask, again)


def test_global_ranks_across_layers():
    rng = np.random.default_rng(4)
    small = (rng.standard_normal((8, 8)) * 0.01).astype(np.float32)
    large = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"], name="a_layer"),
             helper.make_node("MatMul", ["h", "b"], ["y"], name="b_layer")]
    graph = from_model_proto(make_model(nodes, {"x": [1, 8]}, ["y"], {"a": small, "b": large}))
    result, _ = run_pass(graph, Prune(sparsity=0.5, global_=True))
    a, b = weight(graph, "a"), weight(graph, "b")
    assert np.count_nonzero(~a.mask) + np.count_nonzero(~b.mask) == 64
    # One threshold for both layers: every pruned weight is smaller than every kept one.
    pruned = np.concatenate([np.abs(small)[~a.mask], np.abs(large)[~b.mask]])
    kept = np.concatenate([np.abs(small)[a.mask], np.abs(large)[b.mask]])
    assert pruned.max() <= kept.min()
    assert result.details["layers"]["a_layer"] > 0.9 > result.details["layers"]["b_layer"]
    assert result.details["sparsity"] == 0.5


@settings(max_examples=30, deadline=None)
@given(a_shape=st.tuples(st.integers(1, 9), st.integers(1, 9)), b_cols=st.integers(1, 9),
       sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_global_count_is_exact_over_all_layers(a_shape, b_cols, sparsity, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-5, 6, a_shape).astype(np.float32)
    b = rng.integers(-5, 6, (a_shape[1], b_cols)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])]
    graph = from_model_proto(make_model(nodes, {"x": [1, a_shape[0]]}, ["y"], {"a": a, "b": b}))
    run_pass(graph, Prune(sparsity=sparsity, global_=True))
    kept = [np.ones(v.shape, bool) if weight(graph, n).kept is None else weight(graph, n).kept
            for n, v in (("a", a), ("b", b))]
    assert sum(np.count_nonzero(~k) for k in kept) == rounded(sparsity, a.size + b.size)
    pruned = np.concatenate([np.abs(a)[~kept[0]], np.abs(b)[~kept[1]]])
    survivors = np.concatenate([np.abs(a)[kept[0]], np.abs(b)[kept[1]]])
    if pruned.size and survivors.size:
        assert pruned.max() <= survivors.min()


def test_global_quality_uses_one_pooled_threshold():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((6, 6)).astype(np.float32), (3 * rng.standard_normal((6, 6))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])]
    graph = from_model_proto(make_model(nodes, {"x": [1, 6]}, ["y"], {"a": a, "b": b}))
    run_pass(graph, Prune(quality=1.0, global_=True))
    threshold = np.std(np.concatenate([a.ravel(), b.ravel()]).astype(np.float64))
    np.testing.assert_array_equal(weight(graph, "a").mask, np.abs(a) >= threshold)
    np.testing.assert_array_equal(weight(graph, "b").mask, np.abs(b) >= threshold)


# ----------------------------------------------------------------------------- N:M


def groups_along(array, axis, m):
    moved = np.moveaxis(array, axis, -1)
    return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from([("Conv", {}, 1), ("Conv", {"group": 2}, 1), ("ConvTranspose", {"group": 2}, 0),
                             ("Gemm", {}, 0), ("Gemm", {"transB": 1}, 1), ("MatMul", {}, 0)]),
       nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8)]), blocks=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_nm_keeps_n_largest_of_every_m_along_the_reduction_axis(case, nm, blocks, seed):
    op, attributes, axis = case
    n, m = nm
    rng = np.random.default_rng(seed)
    groups = attributes.get("group", 1)
    reduce = m * blocks * groups if op == "ConvTranspose" else m * blocks
    shape = {"Conv": (2 * groups, reduce, 2, 2), "ConvTranspose": (reduce, 3, 2, 2),
             "Gemm": (reduce, 5), "MatMul": (reduce, 3)}[op]
    if op == "Gemm" and attributes.get("transB"):
        shape = (5, reduce)
    values = rng.integers(-4, 5, shape).astype(np.float32)  # ties and zeros
    graph = single_layer(op, values, **attributes)
    result, ctx = run_pass(graph, Prune(nm=nm))
    assert not ctx.declines
    kept = weight(graph).kept
    kept_groups = groups_along(kept, axis, m)
    assert np.all(kept_groups.sum(axis=-1) == n)
    decoded_groups = groups_along(weight(graph).to_numpy(), axis, m)
    assert np.all(np.count_nonzero(decoded_groups, axis=-1) <= n)
    # The kept ones are the largest of their group.
    magnitude = groups_along(np.abs(values), axis, m)
    smallest_kept = np.where(kept_groups, magnitude, np.inf).min(axis=-1)
    largest_pruned = np.where(kept_groups, -np.inf, magnitude).max(axis=-1)
    assert np.all(largest_pruned <= smallest_kept)
    assert result.details["layers"]["layer"] == pytest.approx(1 - n / m)


def test_nm_declines_a_reduction_size_not_multiple_of_m_and_keeps_old_zeros():
    rng = np.random.default_rng(6)
    graph = single_layer("Conv", rng.standard_normal((4, 3, 3, 3)))
    _, ctx = run_pass(graph, Prune(nm=(2, 4)))
    assert isinstance(weight(graph), Dense) and weight(graph).mask is None
    assert "multiple of 4" in ctx.declines[0].reason and "layer" in ctx.declines[0].node

    graph = single_layer("MatMul", rng.standard_normal((8, 4)))
    run_pass(graph, Prune(sparsity=0.9))
    before = weight(graph).mask.copy()
    run_pass(graph, Prune(nm=(2, 4)))
    assert not np.any(weight(graph).mask & ~before)


# ----------------------------------------------------------------------------- scope, overrides


def sparsities(graph, text):
    pass_ = parse_pipeline(text)[0]
    result, ctx = run_pass(graph, pass_)
    return result.details["layers"], ctx


def test_scopes_select_layers():
    layers, _ = sparsities(from_model_proto(network()), "prune(scope=conv,sparsity=0.7)")
    assert set(layers) == {"conv", "up"}
    layers, _ = sparsities(from_model_proto(network()), "prune(scope=fc)")
    assert set(layers) == {"fc1", "fc2"}
    graph = from_model_proto(network())
    layers, _ = sparsities(graph, "prune(scope=\"fc*\",sparsity=0.25)")
    assert layers == {"fc1": 0.25, "fc2": 0.25}
    assert weight(graph, "conv_w").kept is None and weight(graph, "conv_b").kept is None  # bias untouched


def test_layer_overrides_first_match_wins_and_zero_keeps_dense():
    graph = from_model_proto(network())
    layers, ctx = sparsities(graph, 'prune(sparsity=0.5,layers="fc1:0.9;fc*:0.75;up:0;nothing*:0.1")')
    assert layers["fc1"] == pytest.approx(rounded(0.9, 12 * 256) / (12 * 256))
    assert layers["fc2"] == 0.75 and layers["up"] == 0 and layers["conv"] == 0.5
    assert weight(graph, "up_w").kept is None
    assert [d.reason for d in ctx.declines] == ["layers pattern 'nothing*' matches no selected layer"]


def test_overrides_stay_out_of_the_global_ranking():
    graph = from_model_proto(network())
    layers, _ = sparsities(graph, 'prune(sparsity=0.8,global=true,layers="conv:0.1")')
    assert layers["conv"] == pytest.approx(rounded(0.1, 288) / 288)  # kind conv: conv and up
    assert layers["up"] == pytest.approx(rounded(0.1, 64) / 64)
    others = {"fc1": 12 * 256, "fc2": 96}
    pruned = sum(layers[name] * size for name, size in others.items())
    assert round(pruned) == rounded(0.8, sum(others.values()))


@pytest.mark.parametrize("text, fragment", [
    ("prune(sparsity=0.5,quality=1)", "not both"),
    ("prune(nm=2:4,global=true)", "drop global"),
    ("prune(nm=4:4)", "1 <= N < M"),
    ("prune(sparsity=1.5)", "[0, 1]"),
    ("prune(quality=-1)", ">= 0"),
    ("prune(layers=fc1)", "pattern:value"),
    ("prune(layers=\"fc1:2\")", "bad value"),
])
def test_bad_options_are_pipeline_errors(text, fragment):
    with pytest.raises(PipelineError, match="prune") as info:
        parse_pipeline(text)
    assert fragment in str(info.value)


def test_pipeline_text_round_trip_with_keyword_option():
    text = 'prune(sparsity=0.9,scope=fc,global=true,layers="fc1:0.95;conv*:0.5")'
    passes = parse_pipeline(text)
    assert pipeline_text(passes) == text and parse_pipeline(pipeline_text(passes)) == passes
    assert pipeline_text(parse_pipeline("prune(nm=2:4)")) == "prune(nm=2:4)"


def test_no_weights_in_scope_is_declined():
    graph = single_layer("MatMul", np.ones((2, 2)))
    result, ctx = run_pass(graph, Prune(scope="conv"))
    assert not result.modified and "no Conv" in ctx.declines[0].reason


# ----------------------------------------------------------------------------- zoo models, CLI


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory):
    return zoo.Zoo(tmp_path_factory.mktemp("prune_zoo"))


@pytest.mark.parametrize("name, passes, scope_size", [
    ("lenet5", "prune", None),
    ("light_squeezenet", "fold_constants,prune(scope=conv,sparsity=0.8)", 0.8),
])
def test_circ_opt_prunes_zoo_models(model_zoo, tmp_path, name, passes, scope_size):
    source = model_zoo.path(name)
    out = tmp_path / f"{name}.pruned.onnx"
    assert opt.main([f"--passes={passes}", str(source), "-o", str(out), "-q"]) == 0
    graph = circ.load(out)
    refs = weight_refs(graph)
    assert refs
    target = 0.5 if scope_size is None else scope_size
    for ref in refs:  # the ONNX file holds floats: the zeros are what remains of the mask
        array = ref.array
        assert np.count_nonzero(array == 0) >= rounded(target, array.size)
    feeds = zoo.random_feeds(onnx.load(str(source)), batch=1)
    ours = circ.run(graph, feeds)
    theirs = onnxruntime_run(out, feeds)
    for key, want in theirs.items():
        np.testing.assert_allclose(ours[key], want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
