"""auto_prune: the measured accuracy drop stays within the budget on the validation set, the
greedy plan respects the predicted budget, back-off, and the reproducing prune text."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import circ
import digits
from circ.passbase import PassContext
from circ.pipeline import parse_pipeline, pipeline_text
from circ.weights import weight_refs
from passes import auto_prune
from passes.auto_prune import AutoPrune, Plan, back_off_order, greedy_plan, predicted_drops
from passes.sensitivity import Evaluation
from test_sensitivity import onnxruntime_accuracy

GRID = (0.3, 0.5, 0.7, 0.8, 0.9)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return digits.mlp_onnx(tmp_path_factory.mktemp("auto_prune"))


@pytest.fixture(scope="module")
def val():
    _, _, x_val, y_val = digits.digits_split()
    return Evaluation({"x": x_val}, y_val, "validation")


@pytest.fixture
def with_val(monkeypatch, val):
    monkeypatch.setattr(auto_prune, "evaluation_data", lambda ctx, name: val)
    return val


@pytest.mark.parametrize("max_drop", [0.0, 1.0, 3.0])
def test_measured_drop_within_budget(mlp, with_val, max_drop):
    graph = circ.load(str(mlp))
    baseline = onnxruntime_accuracy(graph, with_val)
    result = AutoPrune(max_drop=max_drop, sparsities=GRID).run(graph, PassContext())
    details = result.details
    after = onnxruntime_accuracy(graph, with_val)  # independent of circ's interpreter
    assert details["baseline"] == baseline and details["accuracy"] == after
    assert 100 * (baseline - after) <= max_drop + 1e-9
    assert details["drop"] == pytest.approx(100 * (baseline - after))
    # Each layer got exactly its chosen sparsity.
    for ref in weight_refs(graph):
        chosen = details["layers"][ref.name]
        kept = ref.value.const.kept
        pruned = 0 if kept is None else kept.size - np.count_nonzero(kept)
        assert pruned == int(np.floor(chosen * ref.value.const.size + 0.5))
    if max_drop >= 3.0:
        assert result.modified and details["sparsity"] > 0.3
    # The recorded prune text reproduces the same masks on the original model.
    again = circ.optimize(circ.load(str(mlp)), details["prune"])
    for ref, ref_again in zip(weight_refs(graph), weight_refs(again)):
        np.testing.assert_array_equal(ref.value.const.to_numpy(), ref_again.value.const.to_numpy())


def test_back_off_restores_budget(mlp, with_val, monkeypatch):
    """Claim every layer is free to prune alone: the plan then overshoots and the combined
    check must step layers down until the measured drop fits."""
    monkeypatch.setattr(auto_prune, "predicted_drops",
                        lambda baseline, curves: {name: [0.0] * len(a) for name, a in curves.items()})
    graph = circ.load(str(mlp))
    baseline = onnxruntime_accuracy(graph, with_val)
    details = AutoPrune(max_drop=1.0, sparsities=GRID).run(graph, PassContext()).details
    assert details["backoffs"] > 0
    assert 100 * (baseline - onnxruntime_accuracy(graph, with_val)) <= 1.0


def test_greedy_prefers_cheap_big_layers():
    drops = {"big": [0.0, 0.1, 0.2, 2.0], "small": [0.0, 0.4, 0.5, 0.6]}
    sizes = {"big": 1000, "small": 10}
    grid = [0.5, 0.7, 0.8, 0.9]
    plan = greedy_plan(drops, sizes, grid, max_drop=0.5)
    assert plan.levels == {"big": 2, "small": 0}  # big to 80% (0.2), small to 50% (free)
    assert back_off_order(plan, drops, grid) == "big"
    assert greedy_plan(drops, sizes, grid, max_drop=0.0).levels == {"big": 0, "small": 0}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(0, 5), min_size=4, max_size=4), min_size=1, max_size=4),
       st.floats(0, 5))
def test_greedy_plan_keeps_predicted_drop_within_budget(rows, max_drop):
    grid = [0.5, 0.7, 0.8, 0.9]
    drops = {f"l{i}": row for i, row in enumerate(rows)}
    sizes = {f"l{i}": 10 * (i + 1) for i in range(len(rows))}
    plan = greedy_plan(drops, sizes, grid, max_drop)
    total = sum(drops[name][level] for name, level in plan.levels.items() if level >= 0)
    assert total <= max_drop + 1e-9
    # Maximal: no layer can move to any higher level within the budget.
    for name, level in plan.levels.items():
        current = drops[name][level] if level >= 0 else 0.0
        for higher in range(level + 1, len(grid)):
            assert total - current + drops[name][higher] > max_drop


def test_predicted_drops_are_points_and_never_negative():
    assert predicted_drops(0.9, {"a": [0.95, 0.9, 0.8]}) == {"a": [0.0, 0.0, pytest.approx(10.0)]}
    assert Plan({"a": -1}).sparsity("a", GRID) == 0.0


def test_pipeline_text_and_bad_budget():
    text = "auto_prune(max_drop=1.0,sparsities=0.5:0.9,scope=fc)"
    assert pipeline_text(parse_pipeline(text)) == text
    with pytest.raises(Exception, match="max_drop"):
        parse_pipeline("auto_prune(max_drop=-1.0)")
