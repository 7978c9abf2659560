"""cluster: k-means weight sharing per layer — bits rule, pruned zeros kept, exactness for few
values, overrides, outputs vs the original, onnxruntime on the export, circ-opt end to end."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import circ
import zoo
from circ.cli import opt
from circ.errors import PipelineError
from circ.interpreter import run
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.passbase import PassContext
from circ.pipeline import parse_pipeline, pipeline_text
from circ.tensors import Clustered, Dense, Quantized
from circ.verifier import verify
from passes.cluster import index_dtype

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)


def network(seed=0):
    """Conv(16x3x3x3) -> Relu -> Flatten -> Gemm(transB, 10x1024) -> MatMul(10x6)."""
    rng = np.random.default_rng(seed)
    consts = {
        "conv_w": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
        "conv_b": rng.standard_normal(16).astype(np.float32) * 0.1,
        "fc_w": rng.standard_normal((10, 1024)).astype(np.float32) * 0.05,
        "fc_b": rng.standard_normal(10).astype(np.float32) * 0.1,
        "out_w": rng.standard_normal((10, 6)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], name="fc1", transB=1),
        helper.make_node("MatMul", ["g", "out_w"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.ValueInfoProto(name="y")],
        initializer=[numpy_helper.from_array(a, n) for n, a in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return from_model_proto(proto)


def apply(graph, text, seed=0):
    ctx = PassContext(seed=seed)
    results = []
    for p in parse_pipeline(text):
        ctx.current_pass = p.name
        results.append(p.run(graph, ctx))
        verify(graph)
    return results[-1], ctx


def onnxruntime_output(graph, x):
    proto = to_model_proto(graph)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_default_bits_conv_8_fc_5_and_outputs_close():
    graph = network()
    before = run(graph, {"x": X})["y"]
    result, ctx = apply(graph, "cluster")
    layers = result.details["layers"]
    assert {name: info["bits"] for name, info in layers.items()} == {"conv1": 8, "fc1": 5, "fc2": 5}
    conv, fc, out = (graph.value(n).const for n in ("conv_w", "fc_w", "out_w"))
    for tensor, k, dtype in ((conv, 256, np.int16), (fc, 32, np.int8), (out, 32, np.int8)):
        assert isinstance(tensor, Clustered)
        assert tensor.codebook.dtype == np.float32 and tensor.indices.dtype == dtype
        assert len(tensor.codebook) == min(k, tensor.size)
        assert np.all(np.diff(tensor.codebook) > 0)
        assert tensor.indices.min() >= 0 and tensor.indices.max() < len(tensor.codebook)
        assert len(np.unique(tensor.to_numpy())) <= k
    # 432 conv weights in 256 clusters: near exact; 10240 normal fc weights in 32: ~6%.
    assert layers["conv1"]["rel_error"] < 0.01 and layers["fc1"]["rel_error"] < 0.07
    assert layers["fc2"]["k"] == 32 and layers["fc2"]["rel_error"] < 0.1
    after = run(graph, {"x": X})["y"]
    assert relative_error(after, before) < 0.1
    np.testing.assert_allclose(onnxruntime_output(graph, X), after, rtol=1e-4, atol=1e-4)
    assert result.modified and not ctx.declines


def test_explicit_bits_and_layer_overrides():
    graph = network()
    result, _ = apply(graph, "cluster(bits=3,layers=fc1:2;conv:4)")
    layers = result.details["layers"]
    assert {name: info["k"] for name, info in layers.items()} == {"conv1": 16, "fc1": 4, "fc2": 8}
    assert graph.value("fc_w").const.bits == 2.0


def test_scope_leaves_other_layers_dense():
    graph = network()
    apply(graph, "cluster(scope=fc)")
    assert isinstance(graph.value("conv_w").const, Dense)
    assert isinstance(graph.value("fc_w").const, Clustered)


@pytest.mark.parametrize("init", ["linear", "density", "random", "kmeans++"])
def test_pruned_zeros_stay_zero_and_are_not_clustered(init):
    graph = network()
    apply(graph, "prune(sparsity=0.8)")
    masks = {n: graph.value(n).const.kept.copy() for n in ("conv_w", "fc_w", "out_w")}
    originals = {n: graph.value(n).const.to_numpy().copy() for n in masks}
    result, _ = apply(graph, f"cluster(init={init})")
    for name, kept in masks.items():
        tensor = graph.value(name).const
        decoded = tensor.to_numpy()
        assert tensor.shape == kept.shape
        np.testing.assert_array_equal(tensor.kept, kept)
        np.testing.assert_array_equal(tensor.indices < 0, ~kept)
        assert np.all(decoded[~kept] == 0)
        # the codebook comes from the kept weights only: no centroid pulled toward zero
        kept_values = originals[name][kept]
        assert tensor.codebook.min() >= kept_values.min() and tensor.codebook.max() <= kept_values.max()
    assert result.details["layers"]["fc1"]["k"] == 32
    x = X[:2]
    np.testing.assert_allclose(onnxruntime_output(graph, x), run(graph, {"x": x})["y"],
                               rtol=1e-4, atol=1e-4)


def test_quantized_mask_is_kept():
    graph = network()
    apply(graph, "prune(sparsity=0.5),quant(bits=8)")
    kept = graph.value("fc_w").const.kept.copy()
    assert isinstance(graph.value("fc_w").const, Quantized)
    apply(graph, "cluster(bits=4)")
    tensor = graph.value("fc_w").const
    np.testing.assert_array_equal(tensor.indices >= 0, kept)


def test_few_distinct_values_are_exact():
    graph = network()
    levels = np.array([-0.5, -0.125, 0.0625, 0.25, 0.75], np.float32)
    fc = levels[np.random.default_rng(1).integers(0, 5, (10, 1024))]
    graph.set_const(graph.value("fc_w"), fc)
    result, _ = apply(graph, "cluster(scope=fc1)")
    tensor = graph.value("fc_w").const
    np.testing.assert_array_equal(tensor.codebook, levels)
    np.testing.assert_array_equal(tensor.to_numpy(), fc)
    assert result.details["layers"]["fc1"] == {"bits": 5, "k": 5, "inertia": 0.0, "rel_error": 0.0,
                                               "iterations": 0}


def test_deterministic_for_a_seed():
    first, second = network(), network()
    apply(first, "cluster(init=kmeans++)", seed=3)
    apply(second, "cluster(init=kmeans++)", seed=3)
    for name in ("conv_w", "fc_w", "out_w"):
        a, b = first.value(name).const, second.value(name).const
        np.testing.assert_array_equal(a.codebook, b.codebook)
        np.testing.assert_array_equal(a.indices, b.indices)


def test_all_pruned_layer_is_declined():
    graph = network()
    weight = graph.value("out_w")
    graph.set_const(weight, Dense(weight.const.to_numpy(), np.zeros(weight.shape, bool)))
    result, ctx = apply(graph, "cluster")
    assert "fc2" not in result.details["layers"]
    assert any("every weight is pruned" in str(d) for d in ctx.declines)


@pytest.mark.parametrize("text, fragment", [
    ("cluster(bits=0)", "bits"),
    ("cluster(bits=17)", "bits"),
    ("cluster(layers=fc1)", "pattern:value"),
    ("cluster(layers=fc1:x)", "bad value"),
    ("cluster(init=forgy)", "init"),
    ("cluster(max_iter=0)", "max_iter"),
])
def test_bad_options(text, fragment):
    with pytest.raises(PipelineError, match=fragment):
        parse_pipeline(text)


def test_pipeline_text_round_trip():
    printed = pipeline_text(parse_pipeline("cluster(bits=6,init=kmeans++,layers=fc1:4;conv*:7)"))
    assert printed == 'cluster(bits=6,init=kmeans++,layers="fc1:4;conv*:7")'
    assert pipeline_text(parse_pipeline(printed)) == printed


def test_index_dtype():
    assert index_dtype(128) == np.int8 and index_dtype(129) == np.int16
    assert index_dtype(32768) == np.int16 and index_dtype(32769) == np.int32


def test_circ_opt_prune_cluster_on_a_torch_cnn(tmp_path):
    model = zoo.Zoo(tmp_path / "zoo").path("lenet5")
    out = tmp_path / "lenet5.pc.onnx"
    assert opt.main(["--passes=prune,cluster", str(model), "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    x = zoo.random_feeds(proto)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, x)[0], run(circ.load(str(out)), x)[proto.graph.output[0].name],
                               rtol=1e-4, atol=1e-5)
    weights = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert layers
    for node in layers:
        w = weights.get(node.input[1])
        if w is None:
            continue
        limit = 256 if node.op_type == "Conv" else 32
        assert len(np.unique(w[w != 0])) <= limit
        assert np.mean(w == 0) >= 0.45  # prune's default sparsity survived
