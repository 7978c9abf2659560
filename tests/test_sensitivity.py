"""sensitivity: per-layer accuracy curves equal independently pruned models' accuracy, the
graph is left unchanged, the table and plot, and the missing-labels error."""

import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest

import circ
import digits
from circ.errors import DataError
from circ.passbase import PassContext
from circ.pipeline import parse_pipeline, pipeline_text
from circ.printer import format_table
from circ.weights import weight_refs
from opcheck import run_onnxruntime
from passes.sensitivity import Evaluation, Sensitivity, evaluation_data, sensitivity_curves

SPARSITIES = (0.3, 0.6, 0.9)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return digits.mlp_onnx(tmp_path_factory.mktemp("sensitivity"))


@pytest.fixture(scope="module")
def val():
    _, _, x_val, y_val = digits.digits_split()
    return Evaluation({"x": x_val}, y_val, "validation")


def snapshot(graph):
    """Every constant's values and mask, and the node list: what 'unchanged' compares."""
    consts = {name: (value.const.to_numpy().copy(),
                     None if value.const.kept is None else value.const.kept.copy(), type(value.const))
              for name, value in graph.consts.items()}
    return consts, [(node.op, node.name, [v.name if v else None for v in node.inputs]) for node in graph.nodes]


def assert_same(before, after):
    assert before[1] == after[1]
    assert before[0].keys() == after[0].keys()
    for name, (array, kept, kind) in before[0].items():
        new_array, new_kept, new_kind = after[0][name]
        assert kind is new_kind
        np.testing.assert_array_equal(array, new_array)
        assert (kept is None) == (new_kept is None)
        if kept is not None:
            np.testing.assert_array_equal(kept, new_kept)


def onnxruntime_accuracy(graph, data: Evaluation) -> float:
    """Accuracy of ``graph`` exported to ONNX and run by onnxruntime (not circ's interpreter)."""
    from circ.onnx_export import to_model_proto

    logits = run_onnxruntime(to_model_proto(graph), data.x)[0]
    return float(np.mean(logits.argmax(axis=1) == data.y))


def test_curves_equal_accuracy_of_independently_pruned_models(mlp, val):
    graph = circ.load(str(mlp))
    before = snapshot(graph)
    refs = weight_refs(graph)
    curves = sensitivity_curves(graph, refs, SPARSITIES, val, PassContext())
    assert_same(before, snapshot(graph))
    assert list(curves) == [ref.name for ref in refs] and len(refs) == 3
    for ref in refs:
        for sparsity, measured in zip(SPARSITIES, curves[ref.name]):
            # The prune pass on a copy, scoped to this layer alone, then onnxruntime.
            pruned = circ.optimize(graph, f"prune(sparsity={sparsity},scope={ref.name})")
            assert measured == onnxruntime_accuracy(pruned, val), (ref.name, sparsity)
    # The curves fall: the most pruned first layer loses accuracy.
    first = curves[refs[0].name]
    assert first[-1] < first[0] - 0.1


def test_pass_leaves_graph_unchanged_and_records_table_and_plot(mlp, val, tmp_path, monkeypatch):
    import passes.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "evaluation_data", lambda ctx, name: val)
    graph = circ.load(str(mlp))
    before = snapshot(graph)
    plot = tmp_path / "curves.svg"
    result = Sensitivity(sparsities=SPARSITIES, plot=str(plot)).run(graph, PassContext())
    assert_same(before, snapshot(graph))
    assert not result.modified
    details = result.details
    assert details["baseline"] == onnxruntime_accuracy(graph, val)
    names = [ref.name for ref in weight_refs(graph)]
    assert [s["label"] for s in details["series"]] == names
    assert details["series"][0]["x"] == [30.0, 60.0, 90.0]
    table = details["table"]
    assert table["headers"] == ["layer", "weights", "dense", "30%", "60%", "90%"]
    assert [row[0] for row in table["rows"]] == names
    row = table["rows"][0]
    assert row[3:] == [f"{100 * a:.2f}" for a in details["layers"][names[0]]]
    assert len(format_table(table["headers"], table["rows"]).splitlines()) == 4
    svg = ET.parse(plot).getroot()
    text = "".join(svg.itertext())
    assert all(name in text for name in names)


def test_scope_selects_layers(mlp, val, monkeypatch):
    import passes.sensitivity as sensitivity

    monkeypatch.setattr(sensitivity, "evaluation_data", lambda ctx, name: val)
    graph = circ.load(str(mlp))
    last = weight_refs(graph)[-1].name
    result = Sensitivity(sparsities=(0.5,), scope=last).run(graph, PassContext())
    assert list(result.details["layers"]) == [last]


def test_without_labels_is_a_data_error_naming_the_pass():
    with pytest.raises(DataError, match="'sensitivity'.*--val"):
        evaluation_data(PassContext(), "sensitivity")


def test_pipeline_text_round_trip():
    text = "sensitivity(sparsities=0.5:0.75:0.9,scope=fc,plot=out.svg)"
    passes = parse_pipeline(text)
    assert passes[0].sparsities == (0.5, 0.75, 0.9)
    assert pipeline_text(passes) == text
    assert pipeline_text(parse_pipeline("sensitivity")) == "sensitivity"
    with pytest.raises(Exception, match="sparsities"):
        parse_pipeline("sensitivity(sparsities=0.5:1.5)")
