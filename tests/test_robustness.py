"""Pass robustness: every registered pass, on model-zoo graphs and on random valid graphs,
either leaves a graph the verifier accepts (and that exports to a checker-clean ONNX model)
or declines; no exception other than a :class:`CircError` ever escapes a pass.

The model-zoo half is structural only (verify + ``onnx.checker``): running every pass's
result at 224x224 would cost minutes, and numerical equivalence is each pass's own test's job.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circ
from circ.errors import CircError, DataError
from circ.onnx_export import to_model_proto
from circ.passmanager import PassManager
from zoo import light_model_path, randomize_weights

# Every registered pass with default options, plus a few non-default configurations that take
# other code paths (structured sparsity, rank by ratio, MAC targets, per-tensor pow2 scales).
EXTRA_PIPELINES = ["prune(nm=2:4)", "svd(ratio=0.3)", "channel_prune(target_macs=0.5)",
                   "quant(per_channel=false,pow2=true)", "cluster(init=kmeans++,bits=3)",
                   "prune,cluster(bits=4),huffman"]


def pipelines() -> list[str]:
    return sorted(circ.passes()) + EXTRA_PIPELINES


def test_every_registered_pass_is_covered():
    """A newly registered pass is picked up here without editing this file."""
    assert set(circ.passes()) <= set(pipelines())
    assert len(circ.passes()) >= 13


def labelled_data(graph: circ.Graph, samples: int = 4, seed: int = 0):
    """Random inputs for ``graph`` (``samples`` along axis 0) and random class labels for its
    output, as ``(arrays, labels)``: what training and accuracy-measuring passes read."""
    rng = np.random.default_rng(seed)
    arrays = {v.name: rng.standard_normal((samples, *v.shape[1:])).astype(np.float32)
              for v in graph.inputs}
    return arrays, rng.integers(0, graph.outputs[0].shape[-1], samples)


def run_checked(graph: circ.Graph, pipeline: str, seed: int = 0, data=None):
    """Run ``pipeline`` on a copy of ``graph``; return the result graph, or None if a pass
    refused with a CircError. Anything else propagates (and fails the test). ``data`` is
    ``(arrays, labels)`` for passes that train or measure accuracy, given both as training
    and as validation data; without it such a pass must refuse, asking for --data/--val."""
    arrays, labels = data if data is not None else (None, None)
    manager = PassManager.from_pipeline(pipeline, verify=True, seed=seed, data=arrays,
                                        labels=labels, val=data)
    try:
        result = manager.run(graph.copy())
    except DataError as err:
        assert data is None and ("--data" in str(err) or "--val" in str(err)), str(err)
        return graph
    except CircError as err:
        # A refusal must be one readable sentence naming the pass, not a bare repr.
        assert str(err).strip()
        return None
    circ.verify(result.graph)
    return result.graph


def assert_exports(graph: circ.Graph) -> None:
    model = to_model_proto(graph)
    onnx.checker.check_model(model)


# ----------------------------------------------------------------------------- model zoo

ZOO = ("squeezenet", "shufflenet", "inception_v1", "resnet50")
# What each model skips to keep the test fast: SVD runs a LAPACK call per layer, which takes
# from one to thirty seconds per model depending on the machine's load, so only squeezenet
# gets it here (the random graphs below cover every SVD option); resnet50 (25M weights) also
# skips k-means and passes whose code paths the smaller models already cover.
SVD = {"svd", "svd(ratio=0.3)"}
SKIP = {
    "squeezenet": {"svd(ratio=0.3)"},
    "shufflenet": SVD,
    "inception_v1": SVD,
    "resnet50": SVD | {"cluster", "cluster(init=kmeans++,bits=3)", "prune,cluster(bits=4),huffman",
                       "prune", "ternary", "quant(per_channel=false,pow2=true)"},
}


@pytest.fixture(scope="module")
def zoo_graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust_zoo")
    graphs = {}
    for name in ZOO:
        path = folder / f"{name}.onnx"
        onnx.save(randomize_weights(onnx.load(str(light_model_path(name))), seed=1), str(path))
        graph = circ.load(str(path))
        graphs[name] = circ.optimize(graph, "fold_constants")
    return graphs


@pytest.mark.parametrize("model", ZOO)
def test_passes_on_zoo(zoo_graphs, model):
    graph = zoo_graphs[model]
    refused = []
    for pipeline in pipelines():
        if pipeline in SKIP.get(model, ()):
            continue
        result = run_checked(graph, pipeline)
        if result is None:
            refused.append(pipeline)
            continue
        assert_exports(result)
    # A valid zoo graph is a case every pass is meant to handle (or decline inside the report).
    assert refused == [], f"{model}: passes raised CircError on a valid graph: {refused}"


# ----------------------------------------------------------------------------- random graphs


@st.composite
def random_graphs(draw):
    """A small valid CNN/MLP: convs (grouped, strided), BN, ReLU, residual Adds, Concats,
    pooling, then Flatten + Gemm, or MatMul heads; random weights, batch fixed or symbolic."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    graph = circ.Graph()
    graph.opsets = {"": draw(st.sampled_from([11, 13, 17]))}
    batch = draw(st.sampled_from([1, 2, "N"]))
    channels = draw(st.integers(1, 6))
    size = draw(st.integers(3, 8))
    x = graph.add_input("x", np.float32, (batch, channels, size, size))

    def weight(name, shape):
        return graph.add_const(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))

    def conv(x, cin, cout, kernel, groups=1, stride=1, bias=True):
        inputs = [x, weight("w", (cout, cin // groups, kernel, kernel))]
        if bias:
            inputs.append(weight("b", (cout,)))
        pad = kernel // 2
        return graph.add_node("Conv", inputs, {"kernel_shape": [kernel, kernel], "group": groups,
                                               "pads": [pad] * 4, "strides": [stride, stride]}).output

    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "bn", "relu", "residual", "concat", "pool", "depthwise"]))
        if kind == "conv":
            cout = draw(st.integers(1, 8))
            kernel = draw(st.sampled_from([1, 3]))
            stride = draw(st.sampled_from([1, 2])) if size > 3 else 1
            x = conv(x, channels, cout, kernel, stride=stride, bias=draw(st.booleans()))
            channels, size = cout, (size + stride - 1) // stride
        elif kind == "depthwise":
            x = conv(x, channels, channels, 3, groups=channels)
        elif kind == "bn":
            scale = graph.add_const("s", rng.uniform(0.5, 1.5, channels).astype(np.float32))
            shift = weight("bias", (channels,))
            mean = weight("mean", (channels,))
            var = graph.add_const("var", rng.uniform(0.5, 1.5, channels).astype(np.float32))
            x = graph.add_node("BatchNormalization", [x, scale, shift, mean, var],
                               {"epsilon": 1e-5}).output
        elif kind == "relu":
            x = graph.add_node("Relu", [x]).output
        elif kind == "residual":
            branch = conv(x, channels, channels, 3, bias=draw(st.booleans()))
            x = graph.add_node("Add", [x, graph.add_node("Relu", [branch]).output]).output
        elif kind == "concat":
            extra = draw(st.integers(1, 4))
            branch = conv(x, channels, extra, 1)
            x = graph.add_node("Concat", [x, branch], {"axis": 1}).output
            channels += extra
        elif kind == "pool" and size >= 2:
            x = graph.add_node("MaxPool", [x], {"kernel_shape": [2, 2], "strides": [2, 2]}).output
            size //= 2

    features = channels * size * size
    flat = graph.add_node("Flatten", [x], {"axis": 1}).output
    classes = draw(st.integers(1, 6))
    if draw(st.booleans()):
        out = graph.add_node("Gemm", [flat, weight("fc_w", (classes, features)), weight("fc_b", (classes,))],
                             {"transB": 1}).output
    else:
        hidden = graph.add_node("MatMul", [flat, weight("fc_w", (features, classes))]).output
        out = graph.add_node("Add", [hidden, weight("fc_b", (classes,))]).output
    graph.outputs.append(out)
    circ.verify(graph)
    return graph


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_graphs(), seed=st.integers(0, 3))
def test_passes_on_random_graphs(graph, seed):
    data = labelled_data(graph, seed=seed)
    for pipeline in pipelines():
        result = run_checked(graph, pipeline, seed, data)
        assert result is not None, f"{pipeline} raised CircError on a valid random graph"
        assert_exports(result)
