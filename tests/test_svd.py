"""svd: rank choice, the Eckart–Young error report, exactness at full rank, every layer kind
(Gemm layouts, MatMul, Conv channel and spatial splits with pads/strides/dilations), declines,
and the zoo models checked against onnxruntime."""

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import circ
import zoo
from circ.analysis.stats import graph_stats
from circ.cli import opt
from circ.errors import PipelineError
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.passbase import PassContext
from circ.pipeline import parse_pipeline, pipeline_text
from circ.tensors import Clustered, Dense
from circ.verifier import verify
from passes.svd import LowRankSVD

# ----------------------------------------------------------------------------- helpers


def make_model(nodes, inputs, consts, opset=13, outputs=("y",)):
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [onnx.ValueInfoProto(name=n) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


def layer_graph(op, weight, x_shape, bias=None, opset=13, **attributes):
    """One layer ``op(x, w[, b])`` named ``layer`` whose output ``y`` is the graph output."""
    consts = {"w": weight}
    inputs = ["x", "w"]
    if bias is not None:
        consts["b"] = bias
        inputs.append("b")
    node = helper.make_node(op, inputs, ["y"], name="layer", **attributes)
    return from_model_proto(make_model([node], {"x": x_shape}, consts, opset))


def onnxruntime_run(model, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def assert_close(got, want, what, rtol=1e-4):
    # float32 sums in a different order (and, after a split, through one more layer)
    atol = 1e-5 * max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def run_pass(graph, pass_):
    ctx = PassContext()
    ctx.current_pass = pass_.name
    result = pass_.run(graph, ctx)
    verify(graph)
    return result, ctx


def exported_matches_interpreter(graph, feeds, what):
    """The exported graph passes onnx.checker (full) and onnxruntime agrees with circ."""
    proto = to_model_proto(graph)
    onnx.checker.check_model(proto, full_check=True)
    ours = circ.run(graph, feeds)
    theirs = onnxruntime_run(proto, feeds)
    for name, want in theirs.items():
        assert_close(ours[name], want, f"{what}: {name}")
    return ours


def optimum(matrix, rank):
    """sqrt(sum of the dropped sigma^2) / ||W||, computed here independently of the pass."""
    singular = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    return float(np.sqrt(np.sum(singular[rank:] ** 2)) / np.linalg.norm(matrix))


def weight_matrix(op, weight, mode, trans_b=False):
    """The matrix the pass factors, built here from its definition."""
    if op == "Conv" and mode == "spatial":
        out_channels, in_channels, height, width = weight.shape
        matrix = np.zeros((in_channels * height, out_channels * width))
        for m in range(out_channels):
            for c in range(in_channels):
                for y in range(height):
                    for x in range(width):
                        matrix[c * height + y, m * width + x] = weight[m, c, y, x]
        return matrix
    if op == "Conv":
        return weight.reshape(weight.shape[0], -1)
    return weight.T if trans_b else weight


def effective_weight(graph, op, mode, trans_b=False):
    """The original layer's weight as the two split layers compute it (float64)."""
    first, second = graph.nodes[0], graph.nodes[1]
    head = first.input(1).numpy().astype(np.float64)
    tail = second.input(1).numpy().astype(np.float64)
    if op != "Conv":
        if trans_b:
            return (head.T @ tail.T).T  # stored like B: (N x K)
        return head @ tail
    if mode == "spatial":  # vertical (r, C, kh, 1) then horizontal (M, r, 1, kw)
        return np.einsum("mkx,kcy->mcyx", tail[:, :, 0, :], head[:, :, :, 0])
    rank = head.shape[0]
    return np.tensordot(tail.reshape(tail.shape[0], rank), head, axes=1)


# ----------------------------------------------------------------------------- single layers

RNG = np.random.default_rng(0)


def gemm_case(draw):
    rows, inner, cols = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
    opset = draw(st.sampled_from([9, 13]))
    bias_shape = draw(st.sampled_from([None, (cols,), (rows, cols), (1,)] if opset >= 11 else
                                      [(cols,), (rows, cols), (1,)]))
    attributes = {"transA": int(trans_a), "transB": int(trans_b),
                  "alpha": draw(st.sampled_from([1.0, 0.5, -2.0])), "beta": draw(st.sampled_from([1.0, 0.25]))}
    weight_shape = (cols, inner) if trans_b else (inner, cols)
    x_shape = [inner, rows] if trans_a else [rows, inner]
    return "Gemm", weight_shape, x_shape, bias_shape, attributes, opset


def matmul_case(draw):
    inner, cols = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    lead = draw(st.sampled_from([[2], [2, 3]]))
    return "MatMul", (inner, cols), lead + [inner], None, {}, 13


def conv_case(draw):
    out_channels, in_channels = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    kernel = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    strides = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    dilations = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad.startswith("SAME"):
        dilations = [1, 1]  # onnxruntime refuses dilations with SAME_* auto_pad
    attributes = {"strides": strides, "dilations": dilations, "kernel_shape": kernel}
    if auto_pad == "NOTSET":
        attributes["pads"] = [draw(st.integers(0, 2)) for _ in range(4)]
    else:
        attributes["auto_pad"] = auto_pad
    size = [(k - 1) * d + 1 + draw(st.integers(0, 4)) for k, d in zip(kernel, dilations)]
    bias = (out_channels,) if draw(st.booleans()) else None
    return "Conv", (out_channels, in_channels, *kernel), [2, in_channels] + size, bias, attributes, 13


@st.composite
def layers(draw):
    kind = draw(st.sampled_from(["gemm", "matmul", "conv", "conv"]))
    return {"gemm": gemm_case, "matmul": matmul_case, "conv": conv_case}[kind](draw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=layers(), mode=st.sampled_from(["channel", "spatial"]), keep=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_any_layer_split_reports_the_optimum_and_matches_onnxruntime(layer, mode, keep, seed):
    op, weight_shape, x_shape, bias_shape, attributes, opset = layer
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(weight_shape).astype(np.float32)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    graph = layer_graph(op, weight, x_shape, bias, opset, **attributes)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    original = circ.run(graph, feeds)["y"]
    trans_b = bool(attributes.get("transB"))
    matrix = weight_matrix(op, weight.astype(np.float64), mode, trans_b)
    full = min(matrix.shape)
    rank = max(1, round(keep * full))

    result, ctx = run_pass(graph, LowRankSVD(rank=rank, mode=mode, force=True))
    assert not ctx.declines
    report = result.details["layers"]["layer"]
    assert (report["rank"], report["full_rank"]) == (rank, full)
    assert report["shape"] == list(matrix.shape)
    assert report["error"] == pytest.approx(optimum(matrix, rank), abs=1e-9)
    # the factors in the graph achieve the reported error (up to their float32 rounding)
    split = weight_matrix(op, effective_weight(graph, op, mode, trans_b), mode, trans_b)
    achieved = np.linalg.norm(split - matrix) / max(np.linalg.norm(matrix), 1e-30)
    assert achieved == pytest.approx(report["error"], abs=2e-5)
    assert report["params_after"] == rank * sum(matrix.shape) == sum(
        node.input(1).const.size for node in graph.nodes if node.op in ("Gemm", "MatMul", "Conv"))

    ours = exported_matches_interpreter(graph, feeds, f"{op} {attributes} split to rank {rank}")
    if rank == full:
        assert_close(ours["y"], original, "full rank is exact", rtol=1e-4)


@pytest.mark.parametrize("mode", ["channel", "spatial"])
def test_one_dimensional_conv_channel_split_and_spatial_declined(mode):
    weight = RNG.standard_normal((6, 3, 3)).astype(np.float32)
    graph = layer_graph("Conv", weight, [1, 3, 10], pads=[1, 1])
    result, ctx = run_pass(graph, LowRankSVD(energy=1.0, force=True, mode=mode))
    if mode == "spatial":
        assert not result.modified and "2-D convolutions only" in ctx.declines[0].reason
    else:
        assert [n.op for n in graph.nodes] == ["Conv", "Conv"]
        assert graph.nodes[1].input(1).shape == (6, 6, 1)


# ----------------------------------------------------------------------------- rank choice


def graph_with_singular_values(singular, rows=6, cols=7):
    """A MatMul whose weight has exactly these singular values."""
    left, _ = np.linalg.qr(RNG.standard_normal((rows, rows)))
    right, _ = np.linalg.qr(RNG.standard_normal((cols, cols)))
    sigma = np.zeros((rows, cols))
    sigma[np.arange(len(singular)), np.arange(len(singular))] = singular
    return layer_graph("MatMul", left @ sigma @ right.T, [2, rows])


@pytest.mark.parametrize("options, rank", [
    ({"energy": 0.45}, 1), ({"energy": 0.5}, 2), ({"energy": 0.8}, 3), ({"energy": 0.9}, 3),
    ({"energy": 0.97}, 4), ({"energy": 0.98}, 5),
    ({"energy": 1.0}, 6), ({"rank": 2}, 2), ({"rank": 99}, 6), ({"ratio": 0.5}, 1),
    ({"ratio": 1.0}, 3), ({}, 1),  # default ratio 0.5: floor(0.5 * 42 / 13) = 1
])
def test_rank_from_rank_ratio_or_energy(options, rank):
    # squared: 25, 16, 9, 4, 1, 0.25 of 55.25 -> cumulative 0.452, 0.742, 0.905, 0.977, 0.995, 1
    graph = graph_with_singular_values([5, 4, 3, 2, 1, 0.5])
    result, _ = run_pass(graph, LowRankSVD(force=True, **options))
    report = result.details["layers"]["layer"]
    assert report["rank"] == rank
    dropped = np.square([5, 4, 3, 2, 1, 0.5])[rank:].sum()
    assert report["error"] == pytest.approx(np.sqrt(dropped / 55.25), abs=1e-6)


def test_ratio_keeps_at_most_that_fraction_of_parameters():
    weight = RNG.standard_normal((40, 30)).astype(np.float32)
    for ratio in (0.1, 0.3, 0.6):
        graph = layer_graph("MatMul", weight, [2, 40])
        result, _ = run_pass(graph, LowRankSVD(ratio=ratio))
        report = result.details["layers"]["layer"]
        assert report["params_after"] <= ratio * weight.size < (report["rank"] + 1) * 70


def test_splits_that_do_not_shrink_are_declined_with_the_reason():
    graph = layer_graph("Gemm", RNG.standard_normal((8, 4)).astype(np.float32), [2, 8])
    result, ctx = run_pass(graph, LowRankSVD(rank=3))  # 3 * 12 = 36 >= 32
    assert not result.modified and [n.op for n in graph.nodes] == ["Gemm"]
    assert "keeps 36 parameters, not fewer than 32" in ctx.declines[0].reason
    result, _ = run_pass(graph, LowRankSVD(rank=2))  # 24 < 32
    assert result.modified and result.details["params_before"] == 32 and result.details["params_after"] == 24


# ----------------------------------------------------------------------------- declines


def test_unsupported_layers_are_declined_and_left_valid():
    rng = np.random.default_rng(1)
    consts = {"grouped_w": rng.standard_normal((8, 2, 3, 3)), "up_w": rng.standard_normal((8, 2, 2, 2)),
              "batched_w": rng.standard_normal((2, 10, 16)), "shared_w": rng.standard_normal((16, 16)),
              "small_w": rng.standard_normal((16, 2))}
    nodes = [
        helper.make_node("Conv", ["x", "grouped_w"], ["c"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "up_w"], ["u"], name="up", group=2),
        helper.make_node("Reshape", ["u", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "batched_w"], ["b"], name="batched"),
        helper.make_node("MatMul", ["b", "shared_w"], ["s1"], name="shared1"),
        helper.make_node("MatMul", ["s1", "shared_w"], ["s2"], name="shared2"),
        helper.make_node("MatMul", ["s2", "small_w"], ["y"], name="small"),
    ]
    proto = make_model(nodes, {"x": [1, 4, 4, 4]}, consts)
    proto.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 5, 10], np.int64), "shape"))
    graph = from_model_proto(proto)
    before = [n.op for n in graph.nodes]
    graph.set_const(graph.value("small_w"), np.full((16, 2), np.nan, np.float32))
    result, ctx = run_pass(graph, LowRankSVD(rank=1))
    assert "NaN" in ctx.declines[-1].reason
    result, ctx = run_pass(graph, LowRankSVD(rank=1, min_size=33))
    assert not result.modified and [n.op for n in graph.nodes] == before
    reasons = {d.node: d.reason for d in ctx.declines}
    assert "grouped Conv (group=2)" in reasons["Conv node 'grouped'"]
    assert "ConvTranspose" in reasons["ConvTranspose node 'up'"]
    assert "rank 3, not 2" in reasons["MatMul node 'batched'"]
    assert "shared" in reasons["MatMul node 'shared1'"]
    assert "fewer than min_size=33" in reasons["MatMul node 'small'"]


def test_compressed_and_pruned_weights_declined_unless_decode():
    weight = RNG.standard_normal((12, 10)).astype(np.float32)
    mask = np.abs(weight) > 0.5
    codebook = np.array([-1.0, 0.5, 2.0], np.float32)
    indices = RNG.integers(0, 3, weight.shape).astype(np.int8)
    for tensor, word in ((Dense(weight * mask, mask), "pruned"), (Clustered(codebook, indices), "Clustered")):
        graph = layer_graph("MatMul", weight, [3, 12])
        graph.set_const(graph.value("w"), tensor)
        x = {"x": RNG.standard_normal((3, 12)).astype(np.float32)}
        want = circ.run(graph, x)["y"]
        result, ctx = run_pass(graph, LowRankSVD(rank=2))
        assert not result.modified and word in ctx.declines[0].reason and "decode=true" in ctx.declines[0].reason
        result, ctx = run_pass(graph, LowRankSVD(energy=1.0, force=True, decode=True))
        assert result.modified and not ctx.declines
        assert_close(circ.run(graph, x)["y"], want, f"decoded {word} weight at full rank")


def test_option_errors_and_pipeline_text_round_trip():
    for text in ("svd(rank=2,energy=0.5)", "svd(ratio=0)", "svd(energy=1.5)", "svd(rank=0)", "svd(mode=diagonal)"):
        with pytest.raises(PipelineError):
            parse_pipeline(text)
    text = "svd(energy=0.9,mode=spatial,scope=conv,min_size=100)"
    assert pipeline_text(parse_pipeline(pipeline_text(parse_pipeline(text)))) == pipeline_text(parse_pipeline(text))
    assert parse_pipeline(text)[0].mode == "spatial"


def test_graph_output_name_and_shared_bias_survive():
    """The split layer's output keeps the graph output's name; a bias also read elsewhere stays."""
    weight = RNG.standard_normal((6, 8)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="layer"),
             helper.make_node("Add", ["y", "b"], ["z"], name="add")]
    graph = from_model_proto(make_model(nodes, {"x": [2, 6]}, {"w": weight, "b": np.ones(8)},
                                        outputs=("y", "z")))
    feeds = {"x": RNG.standard_normal((2, 6)).astype(np.float32)}
    want = circ.run(graph, feeds)
    run_pass(graph, LowRankSVD(energy=1.0, force=True))
    assert [v.name for v in graph.outputs] == ["y", "z"]
    got = exported_matches_interpreter(graph, feeds, "shared bias")
    for name in want:
        assert_close(got[name], want[name], name)


# ----------------------------------------------------------------------------- zoo models

ZOO = ("lenet5", "mlp", "resnet8", "vgg_small", "mobilenet_v2_opset9", "light_squeezenet", "light_shufflenet")


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """SVDs on one BLAS thread: with other test processes on the two cores, OpenBLAS's
    threads contend and a 500x800 SVD goes from 0.4 s to several seconds."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory):
    return zoo.Zoo(tmp_path_factory.mktemp("zoo_svd"))


def model_and_feeds(model_zoo, name):
    path = model_zoo.path(name)
    feeds = zoo.random_feeds(onnx.load(str(path)), batch=1)
    return circ.load(path), feeds, onnxruntime_run(path, feeds)


def check_report(original, split, details):
    """Each split layer's error is the truncated-SVD optimum of its original weight, and the
    graph lost exactly the parameters the report says."""
    layers = details["layers"]
    for name, report in layers.items():
        node = original.node(name)
        weight = node.input(1).numpy().astype(np.float64)
        matrix = weight_matrix(node.op, weight, report["mode"], bool(node.attrs.get("transB")))
        assert report["error"] == pytest.approx(optimum(matrix, report["rank"]), abs=1e-9), name
    # Gemm before opset 11 needs a C: its (1,) zero constant is the only extra parameter.
    zero_cs = sum(1 for n in split.nodes if n.op == "Gemm" and n.opset < 11 and n.name.endswith("_svd1"))
    saved = graph_stats(original).params - graph_stats(split).params
    assert saved == details["params_before"] - details["params_after"] - zero_cs


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_exact_at_full_rank_and_reported_at_ratio(name, model_zoo):
    graph, feeds, expected = model_and_feeds(model_zoo, name)
    for mode in ("channel", "spatial"):
        full = circ.optimize(graph, f"svd(energy=1.0,force=true,mode={mode})")
        ours = exported_matches_interpreter(full, feeds, f"{name} at full rank ({mode})")
        for key, want in expected.items():
            assert_close(ours[key], want, f"{name} at full rank ({mode}): {key}", rtol=1e-3)
    from circ.passmanager import PassManager

    run = PassManager.from_pipeline("svd(ratio=0.4)").run(graph.copy())
    details = run.report["passes"][0]["details"]
    assert details["layers"], f"{name}: nothing split"
    exported_matches_interpreter(run.graph, feeds, f"{name} at ratio 0.4")
    check_report(graph, run.graph, details)
    for report in details["layers"].values():
        assert report["params_after"] <= 0.4 * report["params_before"]


def test_circ_opt_verify_numerics(model_zoo, tmp_path, capsys):
    out = tmp_path / "lenet5.svd.onnx"
    code = opt.main(["--passes=svd(energy=0.9)", str(model_zoo.path("lenet5")), "--verify-numerics",
                     "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "svd(energy=0.9)" in printed and "approx" in printed
    onnx.checker.check_model(str(out), full_check=True)
