"""The public API of circ/__init__.py: every name exported, load/save round trips checked
against onnxruntime, pipelines as text, objects and classes, copy semantics, plugins, stats."""

import numpy as np
import onnx
import pytest
from onnx import helper

import circ
from opcheck import make_model, run_onnxruntime


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    consts = {"w1": rng.standard_normal((8, 32)).astype(np.float32),
              "w2": rng.standard_normal((32, 4)).astype(np.float32)}
    proto = make_model(nodes, {"x": [3, 8]}, ["y"], consts)
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    return path, proto


def test_every_exported_name_exists():
    for name in circ.__all__:
        assert getattr(circ, name) is not None, name
    assert circ.register_pass is circ.passbase.register_pass


def test_load_run_save_round_trip_matches_onnxruntime(model, tmp_path):
    path, proto = model
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    expected = run_onnxruntime(proto, {"x": x})[0]
    graph = circ.load(path)
    np.testing.assert_allclose(circ.run(graph, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5)
    assert circ.save(graph, tmp_path / "again.onnx") is None
    again = onnx.load(str(tmp_path / "again.onnx"))
    np.testing.assert_allclose(run_onnxruntime(again, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    info = circ.save(circ.optimize(graph, "cluster(bits=3)"), tmp_path / "m.circ")
    assert info.file_bytes == (tmp_path / "m.circ").stat().st_size
    assert len(np.unique(circ.load(tmp_path / "m.circ").consts["w1"].const.to_numpy())) <= 8


def test_run_pipeline_copies_unless_told_not_to(model):
    graph = circ.load(model[0])
    before = circ.stats(graph).totals()
    result = circ.run_pipeline(graph, "prune(sparsity=0.5)")
    assert result.graph is not graph and circ.stats(graph).totals() == before
    assert result.report["stats"]["after"]["nonzeros"] == circ.stats(result.graph).nonzeros
    assert circ.stats(result.graph).nonzeros == before["nonzeros"] // 2
    in_place = circ.run_pipeline(graph, "prune(sparsity=0.5)", copy=False)
    assert in_place.graph is graph and circ.stats(graph).nonzeros == before["nonzeros"] // 2


def test_pipelines_as_text_objects_and_classes_agree(model):
    graph = circ.load(model[0])
    registry = circ.passes()
    as_text = circ.optimize(graph, "prune(sparsity=0.75),dce")
    as_objects = circ.optimize(graph, [registry["prune"](sparsity=0.75), registry["dce"]])
    for a, b in zip(as_text.consts.values(), as_objects.consts.values()):
        np.testing.assert_array_equal(a.const.to_numpy(), b.const.to_numpy())
    parsed = circ.parse_pipeline("prune(sparsity=0.75),dce")
    assert ",".join(p.to_text() for p in parsed) == "prune(sparsity=0.75),dce"


def test_pipeline_errors_are_circ_errors(model):
    graph = circ.load(model[0])
    with pytest.raises(circ.PipelineError, match="nope"):
        circ.optimize(graph, "nope")
    with pytest.raises(circ.PipelineError, match="a pipeline holds passes"):
        circ.optimize(graph, [42])
    with pytest.raises(circ.ModelError):
        circ.load(model[0].parent / "missing.onnx")


def test_plugin_pass_through_the_api(model, tmp_path, registry_snapshot):
    plugin = tmp_path / "negate.py"
    plugin.write_text(
        "import circ\n"
        "@circ.register_pass\n"
        "class NegateTwice(circ.Pass):\n"
        "    '''Multiply fc2's weight by -1 twice. Exact.'''\n"
        "    name = 'api_negate_twice'\n"
        "    def run(self, graph, ctx):\n"
        "        value = next(n for n in graph.nodes if n.name == 'fc2').inputs[1]\n"
        "        graph.set_const(value, circ.Dense(-(-value.const.to_numpy())))\n"
        "        return circ.PassResult(True, preserved={circ.STRUCTURE}, details={'touched': 1})\n")
    assert circ.load_pass_plugin(plugin) == ["api_negate_twice"]
    graph = circ.load(model[0])
    result = circ.run_pipeline(graph, "api_negate_twice", verify_numerics=True)
    assert result.report["passes"][0]["details"] == {"touched": 1}
    assert result.report["numerics"]["max_abs"] == 0.0


def test_stats_per_node(model):  # the batch dim is fixed at 3: MACs count 3 rows
    stats = circ.stats(circ.load(model[0]))
    assert stats.node("fc1").macs == 3 * 8 * 32 and stats.node("fc2").params == 32 * 4
    assert stats.totals()["params"] == 8 * 32 + 32 * 4
