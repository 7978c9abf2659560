"""End-to-end: whole models through circ's importer, interpreter and exporter vs onnxruntime.

For every zoo model (see ``zoo.py``): circ's interpreter must match onnxruntime on the same
seeded input, at batch 1 and, when the batch axis is symbolic, at batch 3; the model circ
exports must pass ``onnx.checker`` (full check) and onnxruntime on it must match circ's
interpreter. The clean-up pipeline of the README must keep every output. The scikit-learn
models must also predict what scikit-learn predicts on the real digits, and the ZipMap model
must import but be refused by the interpreter, naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo

import circ
from circ.errors import CircError

# Float32 kernels sum in different orders than onnxruntime's; 1e-4 relative plus an absolute
# tolerance scaled to the output's magnitude covers that without hiding real errors (a wrong
# pad or axis shifts outputs by a sizeable fraction of their magnitude).
RTOL = 1e-4
ATOL_SCALE = 1e-5
DYNAMIC_BATCH = 3

# 224x224 nets whose weights alone are 240-570 MB: a few seconds each.
SLOW = {"light_vgg19", "light_zfnet512", "light_bvlc_alexnet"}


def _marked(names):
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


# The batched ShuffleNet runs Reshape shapes starting with 0 ("copy the batch") at batch 3.
IMAGE_AND_MLP_MODELS = _marked(zoo.TORCH_MODELS + zoo.SKLEARN_MODELS + zoo.LIGHT_MODELS
                               + ("light_shufflenet_batched",))


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory) -> zoo.Zoo:
    return zoo.Zoo(tmp_path_factory.mktemp("zoo"))


class _Runs:
    """Caches per session what several tests compare: circ graphs and circ's outputs."""

    def __init__(self, model_zoo: zoo.Zoo):
        self.zoo = model_zoo
        self._graphs: dict = {}
        self._outputs: dict = {}

    def graph(self, name):
        if name not in self._graphs:
            self._graphs[name] = circ.load(self.zoo.path(name))
        return self._graphs[name]

    def feeds(self, name, batch):
        return zoo.random_feeds(onnx.load(str(self.zoo.path(name)), load_external_data=False), batch)

    def circ_outputs(self, name, batch):
        key = (name, batch)
        if key not in self._outputs:
            self._outputs[key] = circ.run(self.graph(name), self.feeds(name, batch))
        return self._outputs[key]


@pytest.fixture(scope="session")
def runs(model_zoo) -> _Runs:
    return _Runs(model_zoo)


def onnxruntime_outputs(model, feeds) -> dict[str, np.ndarray]:
    """Run a model path or ModelProto in onnxruntime (CPU, one thread); name -> array."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def assert_outputs_match(actual: dict, expected: dict, what: str) -> None:
    assert list(actual) == list(expected), f"{what}: output names differ"
    for name, want in expected.items():
        got = actual[name]
        want = np.asarray(want)
        assert got.shape == want.shape, f"{what}: output {name!r} shape {got.shape} != {want.shape}"
        assert got.dtype == want.dtype, f"{what}: output {name!r} dtype {got.dtype} != {want.dtype}"
        if want.dtype.kind == "f":
            atol = ATOL_SCALE * max(1.0, float(np.abs(want).max(initial=0.0)))
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=f"{what}: output {name!r}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{what}: output {name!r}")


def _batches(model_zoo, name):
    proto = onnx.load(str(model_zoo.path(name)), load_external_data=False)
    return [1, DYNAMIC_BATCH] if zoo.has_dynamic_batch(proto) else [1]


@pytest.mark.parametrize("name", IMAGE_AND_MLP_MODELS)
def test_interpreter_matches_onnxruntime(name, model_zoo, runs):
    for batch in _batches(model_zoo, name):
        feeds = runs.feeds(name, batch)
        expected = onnxruntime_outputs(model_zoo.path(name), feeds)
        assert_outputs_match(runs.circ_outputs(name, batch), expected, f"{name} at batch {batch}")


@pytest.mark.parametrize("name", IMAGE_AND_MLP_MODELS)
def test_export_passes_checker_and_matches(name, model_zoo, runs, tmp_path):
    exported = tmp_path / f"{name}.onnx"
    # Models that came with external data go out the same way: a 570 MB protobuf is slow to
    # write and slower for onnxruntime to parse.
    circ.save(runs.graph(name), exported, external_data=zoo.uses_external_data(model_zoo.path(name)))
    onnx.checker.check_model(str(exported), full_check=True)
    # a symbolic batch stays symbolic in the exported model
    assert zoo.has_dynamic_batch(onnx.load(str(exported), load_external_data=False)) == \
        zoo.has_dynamic_batch(onnx.load(str(model_zoo.path(name)), load_external_data=False))
    for batch in _batches(model_zoo, name):
        feeds = runs.feeds(name, batch)
        assert_outputs_match(onnxruntime_outputs(exported, feeds), runs.circ_outputs(name, batch),
                             f"{name} exported by circ, at batch {batch}")


def test_export_reimport_keeps_structure(runs, tmp_path):
    """import -> export -> import gives the same ops, inputs and outputs (one CNN suffices)."""
    graph = runs.graph("shufflenet_small")
    path = tmp_path / "again.onnx"
    circ.save(graph, path)
    again = circ.load(path)
    assert [n.op for n in again.nodes] == [n.op for n in graph.nodes]
    assert [(v.name, v.shape) for v in again.inputs] == [(v.name, v.shape) for v in graph.inputs]
    assert [v.name for v in again.outputs] == [v.name for v in graph.outputs]


def test_dynamic_batch_is_symbolic(runs):
    """The importer keeps a symbolic batch symbolic through Shape->Gather->Reshape chains."""
    graph = runs.graph("shufflenet_small")
    batch = graph.inputs[0].shape[0]
    assert isinstance(batch, str)
    assert graph.outputs[0].shape == (batch, 10)


def test_randomized_light_weights_are_usable():
    """randomize_weights leaves no fills, keeps BN variances positive, is seeded, and gives
    outputs that depend on the input (a zero or constant network would compare trivially)."""
    source = onnx.load(str(zoo.light_model_path("shufflenet")))
    model = zoo.randomize_weights(source, seed=0)
    assert not [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            assert (weights[node.input[4]] > 0).all()
    again = zoo.randomize_weights(source, seed=0)
    assert again.SerializeToString() == model.SerializeToString()
    other = zoo.randomize_weights(source, seed=1)
    assert other.SerializeToString() != model.SerializeToString()
    first = onnxruntime_outputs(model, zoo.random_feeds(model, seed=0))
    second = onnxruntime_outputs(model, zoo.random_feeds(model, seed=1))
    logits = [name for name in first if name.endswith("_logits")]
    assert logits and np.isfinite(first[logits[0]]).all()
    assert not np.allclose(first[logits[0]], second[logits[0]], rtol=1e-2)


# ----------------------------------------------------------------------------- the main job

CLEANUP = "fold_constants,remove_identity,fold_bn,dce"
CLEANUP_MODELS = zoo.TORCH_MODELS + zoo.SKLEARN_MODELS + (
    "light_resnet50", "light_densenet121", "light_shufflenet_batched")
# Every BatchNormalization in these follows a Conv, so fold_bn must remove them all.
BN_AFTER_CONV = {"resnet8", "mobilenet_v2", "mobilenet_v2_opset9", "shufflenet_small", "light_resnet50"}


@pytest.mark.parametrize("name", CLEANUP_MODELS)
def test_cleanup_pipeline_keeps_outputs(name, model_zoo, runs):
    """The README's clean-up pipeline is exact: outputs still match onnxruntime on the original."""
    optimized = circ.optimize(runs.graph(name), CLEANUP)
    circ.verify(optimized)
    assert len(optimized.nodes) <= len(runs.graph(name).nodes)
    if name in BN_AFTER_CONV:
        assert not [n for n in optimized.nodes if n.op == "BatchNormalization"]
    for batch in _batches(model_zoo, name):
        feeds = runs.feeds(name, batch)
        expected = onnxruntime_outputs(model_zoo.path(name), feeds)
        assert_outputs_match(circ.run(optimized, feeds), expected, f"{name} after {CLEANUP} at batch {batch}")


def test_readme_main_job_on_example_lenet5(tmp_path, capsys):
    """examples/build_lenet5.py then circ-opt, as the README's set-up runs them: the model
    matches onnxruntime, and fold_constants folds its two Transposes without changing outputs."""
    import importlib.util
    from pathlib import Path

    from circ.cli import opt

    script = Path(__file__).resolve().parent.parent / "examples" / "build_lenet5.py"
    spec = importlib.util.spec_from_file_location("build_lenet5", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    source, optimized = tmp_path / "lenet5.onnx", tmp_path / "lenet5.opt.onnx"
    assert example.main([str(source)]) == 0
    assert opt.main(["--passes=fold_constants,dce", str(source), "-o", str(optimized)]) == 0
    capsys.readouterr()

    # pixel-like values: the model scales its input by 1/256 as Caffe's LeNet does
    feeds = {"data": np.random.default_rng(0).uniform(0, 255, (4, 1, 28, 28)).astype(np.float32)}
    expected = onnxruntime_outputs(source, feeds)
    assert_outputs_match(circ.run(circ.load(source), feeds), expected, "example LeNet-5")
    onnx.checker.check_model(str(optimized), full_check=True)
    assert_outputs_match(onnxruntime_outputs(optimized, feeds), expected, "example LeNet-5 after circ-opt")
    ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    assert "Transpose" not in ops and ops.count("MatMul") == 2


# ----------------------------------------------------------------------------- scikit-learn


@pytest.mark.parametrize("name", ["sk_mlp_classifier", "sk_pipeline"])
def test_sklearn_classifier_labels_match_sklearn(name, runs):
    X, _ = zoo.digits()
    estimator = zoo.trained_estimator(zoo.SKLEARN_ESTIMATORS[name])
    outputs = circ.run(runs.graph(name), {"input": X})
    np.testing.assert_array_equal(outputs["label"], estimator.predict(X))
    # probabilities agree with sklearn's (computed in float64) to float32 accuracy
    np.testing.assert_allclose(outputs["probabilities"], estimator.predict_proba(X), atol=1e-4)


def test_sklearn_regressor_matches_sklearn(runs):
    X, _ = zoo.digits()
    estimator = zoo.trained_estimator("regressor")
    outputs = circ.run(runs.graph("sk_mlp_regressor"), {"input": X})
    np.testing.assert_allclose(outputs["variable"][:, 0], estimator.predict(X), rtol=1e-4, atol=1e-4)


def test_zipmap_imports_but_interpreter_refuses_it(model_zoo):
    path = model_zoo.path("sk_mlp_classifier_zipmap")
    graph = circ.load(path)
    zipmaps = [node for node in graph.nodes if node.op == "ZipMap"]
    assert len(zipmaps) == 1
    X, _ = zoo.digits()
    with pytest.raises(CircError, match="ZipMap") as info:
        circ.run(graph, {"input": X[:2]})
    assert zipmaps[0].name in str(info.value)
    # and circ writes the opaque node back: onnxruntime still runs the exported model
    exported = path.with_name("zipmap_exported.onnx")
    circ.save(graph, exported)
    onnx.checker.check_model(str(exported), full_check=True)
    labels = onnxruntime_outputs(exported, {"input": X[:5]})["output_label"]
    np.testing.assert_array_equal(labels, zoo.trained_estimator("classifier").predict(X[:5]))
