import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper

from circ.graph import Graph
from opcheck import make_model as model
from circ.interpreter import run
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.passbase import PassContext
from circ.verifier import verify
from passes.fold_bn import FoldBatchNorm
from passes.fold_constants import FoldConstants

RNG = np.random.default_rng(0)


def rand(*shape, low=None):
    if low is not None:
        return RNG.uniform(low, low + 1.0, shape).astype(np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(prefix, channels):
    return {f"{prefix}_scale": rand(channels), f"{prefix}_bias": rand(channels),
            f"{prefix}_mean": rand(channels), f"{prefix}_var": rand(channels, low=0.5)}


def bn_node(x, y, prefix, **attributes):
    inputs = [x] + [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [y], epsilon=1e-3, **attributes)


def onnxruntime(proto, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def fold_and_compare(proto, feeds, *, passes=(FoldBatchNorm,)):
    """Import, fold, verify; outputs of circ and of onnxruntime on the exported result must
    match onnxruntime on the original. Returns the folded graph and the context."""
    expected = onnxruntime(proto, feeds)
    graph = from_model_proto(proto)
    ctx = PassContext()
    for cls in passes:
        ctx.current_pass = cls.name
        cls().run(graph, ctx)
        verify(graph)
    assert [v.name for v in graph.outputs] == list(expected)
    circ_out = run(graph, feeds)
    ort_out = onnxruntime(to_model_proto(graph), feeds)
    for name, want in expected.items():
        np.testing.assert_allclose(circ_out[name], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ort_out[name], want, rtol=1e-4, atol=1e-4)
    return graph, ctx


def ops(graph):
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize("group,bias", [(1, True), (1, False), (2, True), (6, False)])
def test_conv_bn_folds_for_any_group_with_and_without_bias(group, bias):
    channels_in, channels_out = 6, 6 if group == 6 else 4
    consts = {"w": rand(channels_out, channels_in // group, 3, 3), **bn_params("bn", channels_out)}
    conv_inputs = ["x", "w"]
    if bias:
        consts["b"] = rand(channels_out)
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], group=group, pads=[1, 1, 1, 1]),
             bn_node("c", "y", "bn")]
    proto = model(nodes, {"x": [2, channels_in, 5, 5]}, ["y"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(2, channels_in, 5, 5)})
    assert ops(graph) == ["Conv"] and not ctx.declines
    conv = graph.nodes[0]
    assert conv.input(1).name == "w" and conv.input(2).is_const
    assert set(graph.consts) == {"w", conv.input(2).name}  # the BatchNorm statistics are gone


def test_weights_shared_by_two_convs_are_copied_not_overwritten():
    consts = {"w": rand(3, 2, 3, 3), **bn_params("bn", 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "y", "bn"),
             helper.make_node("Conv", ["x", "w"], ["z"])]
    proto = model(nodes, {"x": [1, 2, 5, 5]}, ["y", "z"], consts)
    graph, _ = fold_and_compare(proto, {"x": rand(1, 2, 5, 5)})
    first, second = graph.nodes
    assert ops(graph) == ["Conv", "Conv"]
    assert second.input(1).name == "w" and first.input(1) is not second.input(1)
    np.testing.assert_array_equal(second.input(1).numpy(), consts["w"])


def test_bn_output_name_survives_when_it_is_a_graph_output_and_opset_9_works():
    consts = {"w": rand(3, 2, 1, 1), **bn_params("bn", 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "y", "bn")]
    proto = model(nodes, {"x": [1, 2, 4, 4]}, ["y"], consts, opset=9)
    graph, _ = fold_and_compare(proto, {"x": rand(1, 2, 4, 4)})
    assert graph.outputs[0].name == "y" and graph.outputs[0].producer.op == "Conv"


def test_bn_on_a_shared_conv_output_is_declined():
    consts = {"w": rand(3, 2, 3, 3), **bn_params("bn", 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "y", "bn"),
             helper.make_node("Relu", ["c"], ["r"])]
    proto = model(nodes, {"x": [1, 2, 5, 5]}, ["y", "r"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(1, 2, 5, 5)})
    assert ops(graph) == ["Conv", "BatchNormalization", "Relu"]
    assert len(ctx.declines) == 1 and "shared" in ctx.declines[0].reason
    assert ctx.declines[0].pass_name == "fold_bn"


def test_bn_with_non_constant_statistics_or_after_another_op_is_declined():
    params = bn_params("bn", 3)
    scale = params.pop("bn_scale")
    consts = {"w": rand(3, 2, 3, 3), **params, **bn_params("p", 3)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             bn_node("c", "y", "bn"),  # its scale is a graph input
             helper.make_node("MaxPool", ["y"], ["m"], kernel_shape=[2, 2]),
             bn_node("m", "z", "p")]
    proto = model(nodes, {"x": [1, 2, 5, 5], "bn_scale": [3]}, ["z"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(1, 2, 5, 5), "bn_scale": scale})
    assert ops(graph).count("BatchNormalization") == 2
    reasons = sorted(d.reason for d in ctx.declines)
    assert reasons == ["its input comes from MaxPool, not Conv/ConvTranspose/Gemm",
                       "scale, bias, mean or var is not a constant"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", ["none", "vector", "matrix"])
def test_gemm_bn_folds_for_both_layouts(trans_b, bias):
    features, units, batch = 5, 4, 3
    consts = {"B": rand(units, features) if trans_b else rand(features, units), **bn_params("bn", units)}
    inputs = ["x", "B"]
    if bias != "none":
        consts["C"] = rand(units) if bias == "vector" else rand(batch, units)
        inputs.append("C")
    nodes = [helper.make_node("Gemm", inputs, ["g"], transB=trans_b, alpha=0.7, beta=1.3),
             bn_node("g", "y", "bn")]
    proto = model(nodes, {"x": [batch, features]}, ["y"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(batch, features)})
    assert ops(graph) == ["Gemm"] and not ctx.declines


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_scales_output_channels_within_groups(group):
    channels_in, per_group_out = 4, 3
    channels_out = per_group_out * group
    consts = {"w": rand(channels_in, per_group_out, 3, 3), "b": rand(channels_out),
              **bn_params("bn", channels_out)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=group, strides=[2, 2]),
             bn_node("c", "y", "bn")]
    proto = model(nodes, {"x": [1, channels_in, 3, 3]}, ["y"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(1, channels_in, 3, 3)})
    assert ops(graph) == ["ConvTranspose"] and not ctx.declines


def test_model_zoo_pattern_conv_bn_unsqueeze_mul_add_becomes_one_conv():
    channels = 4
    consts = {"w": rand(channels, 3, 3, 3), **bn_params("bn", channels),
              "sc_w": rand(channels), "sc_b": rand(channels)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("c", "n", "bn"),
             helper.make_node("Unsqueeze", ["sc_w"], ["uw"], axes=[1, 2]),
             helper.make_node("Mul", ["n", "uw"], ["m"]),
             helper.make_node("Unsqueeze", ["sc_b"], ["ub"], axes=[1, 2]),
             helper.make_node("Add", ["m", "ub"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    proto = model(nodes, {"x": [1, 3, 6, 6]}, ["y"], consts, opset=9)
    graph, ctx = fold_and_compare(proto, {"x": rand(1, 3, 6, 6)}, passes=(FoldConstants, FoldBatchNorm))
    assert ops(graph) == ["Conv", "Relu"] and not ctx.declines


def test_densenet_pattern_merges_mul_add_into_a_batchnorm_after_concat():
    channels = 4
    consts = {**bn_params("bn", channels), "sc_w": rand(channels, 1, 1), "sc_b": rand(channels, 1, 1)}
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], axis=1), bn_node("c", "n", "bn"),
             helper.make_node("Mul", ["sc_w", "n"], ["m"]),  # the constant on the left
             helper.make_node("Add", ["m", "sc_b"], ["y"])]
    proto = model(nodes, {"x": [1, 2, 3, 3]}, ["y"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(1, 2, 3, 3)})
    assert ops(graph) == ["Concat", "BatchNormalization"]
    assert [d.reason for d in ctx.declines] == [
        "its input comes from Concat, not Conv/ConvTranspose/Gemm"]


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_sub_and_div_by_per_channel_constants_fold_but_not_the_other_way_round(op):
    consts = {"w": rand(3, 2, 1, 1), "k": rand(1, 3, 1, 1, low=0.5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node(op, ["c", "k"], ["y"]),
             helper.make_node("Conv", ["x", "w"], ["c2"]), helper.make_node(op, ["k", "c2"], ["z"])]
    proto = model(nodes, {"x": [1, 2, 4, 4]}, ["y", "z"], consts)
    graph, _ = fold_and_compare(proto, {"x": rand(1, 2, 4, 4)})
    assert ops(graph) == ["Conv", "Conv", op]


def test_constants_that_vary_along_other_axes_are_left_alone():
    consts = {"w": rand(3, 2, 1, 1), "k": rand(1, 1, 4, 1), "s": rand(1)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "k"], ["m"]),
             helper.make_node("Add", ["m", "s"], ["y"])]  # a scalar is fine once Mul is gone
    proto = model(nodes, {"x": [1, 2, 4, 4]}, ["y"], consts)
    graph, ctx = fold_and_compare(proto, {"x": rand(1, 2, 4, 4)})
    assert ops(graph) == ["Conv", "Mul", "Add"] and not ctx.declines


def test_pruned_weights_keep_their_mask():
    from circ.tensors import Dense

    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (1, 2, 3, 3))
    weight = rand(3, 2, 1, 1)
    mask = np.ones(weight.shape, bool)
    mask[0, 1] = False
    w = graph.add_const("w", Dense(weight, mask))
    conv = graph.add_node("Conv", [x, w])
    stats = [graph.add_const(k, v) for k, v in bn_params("bn", 3).items()]
    bn = graph.add_node("BatchNormalization", [conv.output] + stats)
    graph.outputs.append(bn.output)
    feeds = {"x": rand(1, 2, 3, 3)}
    before = run(graph, feeds)[bn.output.name]
    FoldBatchNorm().run(graph, PassContext())
    verify(graph)
    assert w.const.mask is not None and w.numpy()[0, 1, 0, 0] == 0
    np.testing.assert_allclose(run(graph, feeds)[graph.outputs[0].name], before, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(channels=st.integers(1, 4), groups=st.sampled_from([1, 2]), kernel=st.integers(1, 3),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16), epsilon=st.sampled_from([1e-5, 1e-3, 0.1]))
def test_random_conv_bn_graphs_keep_their_outputs(channels, groups, kernel, bias, seed, epsilon):
    rng = np.random.default_rng(seed)
    out_channels, in_channels = channels * groups, 2 * groups
    graph = Graph(opsets={"": 15})
    x = graph.add_input("x", np.float32, ("N", in_channels, 5, 5))
    inputs = [x, graph.add_const("w", rng.standard_normal(
        (out_channels, in_channels // groups, kernel, kernel)).astype(np.float32))]
    if bias:
        inputs.append(graph.add_const("b", rng.standard_normal(out_channels).astype(np.float32)))
    conv = graph.add_node("Conv", inputs, {"group": groups, "kernel_shape": [kernel, kernel]})
    stats = [rng.standard_normal(out_channels), rng.standard_normal(out_channels),
             rng.standard_normal(out_channels), rng.uniform(0.01, 3.0, out_channels)]
    stats = [graph.add_const(f"s{i}", s.astype(np.float32)) for i, s in enumerate(stats)]
    bn = graph.add_node("BatchNormalization", [conv.output] + stats, {"epsilon": epsilon})
    relu = graph.add_node("Relu", [bn.output], outputs=["y"])
    graph.outputs.append(relu.output)
    feeds = {"x": rng.standard_normal((2, in_channels, 5, 5)).astype(np.float32)}
    before = run(graph, feeds)["y"]
    result = FoldBatchNorm().run(graph, PassContext())
    verify(graph)
    assert result.modified and ops(graph) == ["Conv", "Relu"]
    np.testing.assert_allclose(run(graph, feeds)["y"], before, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- the light model zoo

LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
         "squeezenet", "vgg19", "zfnet512"]
# Huge classifier weights (150-400 MB once folded): onnxruntime alone takes seconds per run, so
# these three (which have no BatchNorm) are checked for structure only.
STRUCTURE_ONLY = {"bvlc_alexnet", "vgg19", "zfnet512"}
# The circ interpreter also runs these after the passes (each takes about a second or less).
INTERPRETED = {"squeezenet", "inception_v1", "resnet50"}


def light_path(name):
    import os

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        f"light_{name}.onnx")


def randomize(graph, seed=0):
    """Seeded weights instead of the zoo's constant 0.02 fills, so that folding mistakes show;
    BatchNorm variances stay positive, weights are He-scaled to keep activations finite."""
    rng = np.random.default_rng(seed)
    variances = {id(n.input(4)) for n in graph.nodes if n.op == "BatchNormalization"}
    for value in list(graph.consts.values()):
        array = value.numpy()
        if array.dtype.kind != "f":
            continue
        if id(value) in variances:
            new = rng.uniform(0.5, 1.5, array.shape)
        elif array.ndim >= 2:
            new = rng.standard_normal(array.shape) * np.sqrt(2.0 * array.shape[0] / array.size)
        else:
            new = rng.standard_normal(array.shape) * 0.1
        graph.set_const(value, new.astype(array.dtype))


def run_exported(graph, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the zoo graphs carry unused initializers; ort warns
    session = ort.InferenceSession(to_model_proto(graph).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("name", LIGHT)
def test_light_model_zoo_cleanup_pipeline(name):
    from circ.onnx_import import load_onnx
    from passes.dce import DeadCodeElimination
    from passes.remove_identity import RemoveIdentity

    graph = load_onnx(light_path(name))
    output_names = [v.name for v in graph.outputs]
    ctx = PassContext()
    ctx.current_pass = "fold_constants"
    FoldConstants().run(graph, ctx)
    verify(graph)
    assert "ConstantOfShape" not in ops(graph)  # every weight is a constant now
    weighted = [n for n in graph.nodes if n.op in ("Conv", "Gemm")]
    assert weighted and all(n.input(1).is_const for n in weighted)
    check_numbers = name not in STRUCTURE_ONLY
    if check_numbers:
        randomize(graph)
        rng = np.random.default_rng(1)
        feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
        expected = run_exported(graph, feeds)
    for cls in (RemoveIdentity, FoldBatchNorm, DeadCodeElimination):
        ctx.current_pass = cls.name
        cls().run(graph, ctx)
        verify(graph)
    assert [v.name for v in graph.outputs] == output_names
    assert not {"Dropout", "Identity"} & set(ops(graph))
    # BatchNorm is left only where it does not follow a layer it could fold into (DenseNet's
    # pre-activation BatchNorms after Concat/pooling), and each such case was declined.
    left = [n for n in graph.nodes if n.op == "BatchNormalization"]
    for bn in left:
        assert bn.input(0).producer.op not in ("Conv", "ConvTranspose", "Gemm")
    assert len([d for d in ctx.declines if d.pass_name == "fold_bn"]) == len(left)
    assert not {"Mul", "Add"} & set(ops(graph))  # the zoo's BatchNorm scale/shift folded too
    if not check_numbers:
        return
    scale = max(float(np.max(np.abs(a))) for a in expected.values())
    for outputs in [run_exported(graph, feeds)] + ([run(graph, feeds)] if name in INTERPRETED else []):
        for key, want in expected.items():
            np.testing.assert_allclose(outputs[key], want, rtol=1e-3, atol=1e-5 * scale)
