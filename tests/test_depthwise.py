"""depthwise: the per-channel rank-m factorisation (error = closed-form optimum, exact at
m = min(M, k^2)), MobileNet's MAC ratio, declines, and zoo models checked against onnxruntime."""

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import circ
import zoo
from circ.analysis.stats import graph_stats
from circ.errors import PipelineError
from circ.passmanager import PassManager
from circ.pipeline import parse_pipeline, pipeline_text
from passes.depthwise import DepthwiseSeparable
from test_svd import (assert_close, exported_matches_interpreter, layer_graph, one_blas_thread,  # noqa: F401
                      onnxruntime_run, run_pass)

RNG = np.random.default_rng(0)


def optimum(weight, multiplier):
    """Best error of a depthwise-separable approximation, computed here channel by channel:
    each input channel's M x k^2 slice keeps its ``multiplier`` largest singular values."""
    weight = np.asarray(weight, np.float64)
    dropped = 0.0
    for channel in range(weight.shape[1]):
        block = weight[:, channel].reshape(weight.shape[0], -1)
        singular = np.linalg.svd(block, compute_uv=False)
        dropped += float(np.sum(singular[multiplier:] ** 2))
    return float(np.sqrt(dropped) / np.linalg.norm(weight))


def effective_weight(graph):
    """The standard conv weight that depthwise (C m x 1 x k...) then pointwise (M x C m x 1...)
    compute together: W[o, c] = sum_j P[o, c m + j] D[c m + j]."""
    depthwise = graph.nodes[0].input(1).numpy().astype(np.float64)
    pointwise = graph.nodes[1].input(1).numpy().astype(np.float64)
    channels = graph.nodes[0].attrs["group"]
    multiplier = depthwise.shape[0] // channels
    mixing = pointwise.reshape(pointwise.shape[0], channels, multiplier)
    filters = depthwise.reshape((channels, multiplier) + depthwise.shape[2:])
    return np.einsum("ocj,cj...->oc...", mixing, filters)


@st.composite
def convs(draw):
    spatial = draw(st.sampled_from([1, 2, 2]))
    out_channels, in_channels = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
    strides = [draw(st.integers(1, 2)) for _ in range(spatial)]
    dilations = [draw(st.integers(1, 2)) for _ in range(spatial)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "VALID"]))
    if auto_pad != "NOTSET":
        dilations = [1] * spatial  # onnxruntime refuses dilations with SAME_* auto_pad
    attributes = {"strides": strides, "dilations": dilations}
    if auto_pad == "NOTSET":
        attributes["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * spatial)]
    else:
        attributes["auto_pad"] = auto_pad
    size = [(k - 1) * d + 1 + draw(st.integers(0, 4)) for k, d in zip(kernel, dilations)]
    return (out_channels, in_channels, *kernel), [2, in_channels] + size, draw(st.booleans()), attributes


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=convs(), multiplier=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_any_conv_gets_the_optimal_separable_weights(conv, multiplier, seed):
    weight_shape, x_shape, with_bias, attributes = conv
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(weight_shape).astype(np.float32)
    bias = rng.standard_normal(weight_shape[0]).astype(np.float32) if with_bias else None
    graph = layer_graph("Conv", weight, x_shape, bias, **attributes)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    original = circ.run(graph, feeds)["y"]
    out_channels, in_channels = weight_shape[:2]
    taps = int(np.prod(weight_shape[2:]))
    used = min(multiplier, out_channels, taps)

    result, ctx = run_pass(graph, DepthwiseSeparable(multiplier=multiplier, force=True))
    assert not ctx.declines
    assert [n.op for n in graph.nodes] == ["Conv", "Conv"]
    assert graph.nodes[0].attrs["group"] == in_channels
    assert graph.nodes[0].input(1).shape == (in_channels * used, 1, *weight_shape[2:])
    report = result.details["layers"]["layer"]
    assert report["multiplier"] == used
    assert report["error"] == pytest.approx(optimum(weight, used), abs=1e-9)
    achieved = np.linalg.norm(effective_weight(graph) - weight) / np.linalg.norm(weight)
    assert achieved == pytest.approx(report["error"], abs=2e-5)
    formula = used * (1 / out_channels + 1 / taps)
    assert report["mobilenet_ratio"] == pytest.approx(formula)
    assert report["mac_ratio"] == pytest.approx(formula)  # the depthwise conv does the striding

    ours = exported_matches_interpreter(graph, feeds, f"depthwise m={used} of {weight_shape} {attributes}")
    if used == min(out_channels, taps):
        assert report["error"] == pytest.approx(0.0, abs=1e-12)
        assert_close(ours["y"], original, "m = min(M, k^2) is exact")


def test_multiplier_one_costs_mobilenets_one_over_n_plus_one_over_k_squared():
    weight = RNG.standard_normal((32, 8, 3, 3)).astype(np.float32)
    graph = layer_graph("Conv", weight, [1, 8, 12, 12], pads=[1, 1, 1, 1])
    before = graph_stats(graph).macs
    result, _ = run_pass(graph, DepthwiseSeparable())
    report = result.details["layers"]["layer"]
    assert report["mobilenet_ratio"] == pytest.approx(1 / 32 + 1 / 9)
    assert graph_stats(graph).macs == report["macs_after"] == pytest.approx(before * (1 / 32 + 1 / 9))
    assert report["macs_before"] == before == 32 * 8 * 9 * 144


def test_declines_layers_it_cannot_or_should_not_rewrite():
    pointwise = layer_graph("Conv", RNG.standard_normal((8, 4, 1, 1)).astype(np.float32), [1, 4, 5, 5])
    result, ctx = run_pass(pointwise, DepthwiseSeparable())
    assert not result.modified and "would cost 1.12x the MACs" in ctx.declines[0].reason
    result, _ = run_pass(pointwise, DepthwiseSeparable(force=True))  # still exact: a 1x1 has rank 1 per channel
    assert result.modified and result.details["layers"]["layer"]["error"] == pytest.approx(0, abs=1e-12)
    # 3 filters of 9 taps with m = 3: 3 (1/3 + 1/9) > 1
    small = layer_graph("Conv", RNG.standard_normal((3, 4, 3, 3)).astype(np.float32), [1, 4, 5, 5])
    result, ctx = run_pass(small, DepthwiseSeparable(multiplier=3))
    assert not result.modified and "multiplier 3" in ctx.declines[0].reason
    for group, weight_shape in ((2, (8, 2, 3, 3)), (4, (4, 1, 3, 3))):
        grouped = layer_graph("Conv", RNG.standard_normal(weight_shape).astype(np.float32), [1, 4, 5, 5],
                              group=group)
        result, ctx = run_pass(grouped, DepthwiseSeparable())
        assert not result.modified and f"grouped Conv (group={group})" in ctx.declines[0].reason
    transposed = layer_graph("ConvTranspose", RNG.standard_normal((4, 8, 3, 3)).astype(np.float32), [1, 4, 5, 5])
    result, ctx = run_pass(transposed, DepthwiseSeparable())
    assert not result.modified and "ConvTranspose is not rewritten" in ctx.declines[0].reason


def test_pruned_weights_declined_unless_decode():
    weight = RNG.standard_normal((16, 4, 3, 3)).astype(np.float32)
    mask = np.abs(weight) > 0.3
    graph = layer_graph("Conv", weight, [1, 4, 6, 6])
    graph.set_const(graph.value("w"), circ.Dense(weight * mask, mask))
    result, ctx = run_pass(graph, DepthwiseSeparable())
    assert not result.modified and "pruned" in ctx.declines[0].reason
    result, _ = run_pass(graph, DepthwiseSeparable(decode=True))
    assert result.details["layers"]["layer"]["error"] == pytest.approx(optimum(weight * mask, 1), abs=1e-9)


def test_options():
    with pytest.raises(PipelineError):
        parse_pipeline("depthwise(multiplier=0)")
    text = pipeline_text(parse_pipeline("depthwise(multiplier=2,scope=conv1,force=true)"))
    assert pipeline_text(parse_pipeline(text)) == text and parse_pipeline(text)[0].multiplier == 2


# ----------------------------------------------------------------------------- zoo models

ZOO = ("resnet8", "vgg_small", "lenet5", "mobilenet_v2", "light_squeezenet", "light_shufflenet")


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory):
    return zoo.Zoo(tmp_path_factory.mktemp("zoo_depthwise"))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_exact_at_full_multiplier_and_reported_at_one(name, model_zoo):
    path = model_zoo.path(name)
    feeds = zoo.random_feeds(onnx.load(str(path)), batch=1)
    expected = onnxruntime_run(path, feeds)
    graph = circ.load(path)

    full = circ.optimize(graph, "depthwise(multiplier=10000,force=true)")  # clipped to min(M, k^2)
    ours = exported_matches_interpreter(full, feeds, f"{name} at full multiplier")
    for key, want in expected.items():
        assert_close(ours[key], want, f"{name} at full multiplier: {key}", rtol=1e-3)

    run = PassManager.from_pipeline("depthwise").run(graph.copy())
    details = run.report["passes"][0]["details"]["layers"]
    assert details, f"{name}: nothing rewritten"
    exported_matches_interpreter(run.graph, feeds, f"{name} with multiplier 1")
    saved = 0
    for layer, report in details.items():
        weight = graph.node(layer).input(1).numpy()
        assert report["error"] == pytest.approx(optimum(weight, 1), abs=1e-9), layer
        assert report["mac_ratio"] == pytest.approx(report["mobilenet_ratio"]) and report["mac_ratio"] < 1
        saved += report["macs_before"] - report["macs_after"]
    assert graph_stats(graph).macs - graph_stats(run.graph).macs == saved
