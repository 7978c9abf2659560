"""schedule: rounds of prune + finetune with a rising sparsity; the final sparsity is exact,
masks survive fine-tuning, the ramp, and the flows (sensitivity, auto_prune, schedule) run
through circ-opt on a torch CNN with BatchNorm that a user brings."""

import json

import numpy as np
import pytest

import circ
import digits
from circ.cli import opt
from circ.passmanager import PassManager
from circ.pipeline import parse_pipeline, pipeline_text
from circ.weights import weight_refs
from passes.schedule import Schedule, ramp_fraction
from test_sensitivity import onnxruntime_accuracy
from passes.sensitivity import Evaluation


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schedule")
    return {"mlp": digits.mlp_onnx(folder), "cnn": digits.cnn_onnx(folder)}


@pytest.fixture(scope="module")
def split():
    return digits.digits_split()


def run(model_path, pipeline, split, *, image=False):
    x_train, y_train, x_val, y_val = split
    if image:
        x_train, x_val = x_train.reshape(-1, 1, 8, 8), x_val.reshape(-1, 1, 8, 8)
    graph = circ.load(str(model_path))
    manager = PassManager.from_pipeline(pipeline, data={"x": x_train}, labels=y_train,
                                        val=({"x": x_val}, y_val))
    return manager.run(graph)


def pruned_count(ref) -> int:
    kept = ref.value.const.kept
    return 0 if kept is None else int(kept.size - np.count_nonzero(kept))


def test_ramp_reaches_the_target_exactly():
    assert [ramp_fraction(k, 4, "linear") for k in range(1, 5)] == [0.25, 0.5, 0.75, 1.0]
    cubic = [ramp_fraction(k, 4, "cubic") for k in range(1, 5)]
    assert cubic == pytest.approx([1 - 0.75 ** 3, 1 - 0.5 ** 3, 1 - 0.25 ** 3, 1.0])
    assert cubic[-1] == 1.0 and ramp_fraction(1, 1, "cubic") == 1.0
    rounds = [Schedule(sparsity=0.9, steps=3, layers="fc*:0.5").round_prune(k) for k in (1, 2, 3)]
    assert rounds[-1].sparsity == 0.9 and rounds[-1].layers == "fc*:0.5"
    assert rounds[0].sparsity < rounds[1].sparsity < rounds[2].sparsity


def test_final_sparsity_is_exact_and_masks_survive_finetune(models, split):
    result = run(models["mlp"], "schedule(sparsity=0.8,steps=3,epochs=1,lr=0.05)", split)
    graph = result.graph
    entry = result.report["passes"][0]
    rounds = entry["details"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["sparsity"] < rounds[1]["sparsity"] < rounds[2]["sparsity"]
    assert all(len(r["finetune"]["epochs"]) == 1 for r in rounds)
    for ref in weight_refs(graph):
        size = ref.value.const.size
        assert pruned_count(ref) == int(np.floor(0.8 * size + 0.5))
        weights = ref.value.const.to_numpy()
        assert np.all(weights[~ref.value.const.kept] == 0.0)  # exactly zero after fine-tuning
        assert np.count_nonzero(weights) == np.count_nonzero(ref.value.const.kept)
    assert entry["details"]["table"]["rows"][-1][2] == f"{100 * entry['details']['sparsity']:.2f}%"


def test_schedule_recovers_accuracy_one_shot_pruning_loses(models, split):
    x_val, y_val = split[2], split[3]
    val = Evaluation({"x": x_val}, y_val, "validation")
    scheduled = run(models["mlp"], "schedule(sparsity=0.7,steps=3,epochs=3,lr=0.05)", split).graph
    one_shot = circ.optimize(circ.load(str(models["mlp"])), "prune(sparsity=0.7)")
    dense = onnxruntime_accuracy(circ.load(str(models["mlp"])), val)
    assert onnxruntime_accuracy(one_shot, val) < dense - 0.1  # 95% -> 75% on this model
    assert onnxruntime_accuracy(scheduled, val) > dense - 0.02


def test_without_training_equals_one_prune(models, split):
    """Rounds compose: with epochs=0 the weights never move, so the rising prunes end where
    one prune to the target does, per-layer overrides included."""
    pipeline = "schedule(sparsity=0.7,steps=4,epochs=0,layers=/4/Gemm:0.4)"
    scheduled = run(models["mlp"], pipeline, split).graph
    once = circ.optimize(circ.load(str(models["mlp"])), "prune(sparsity=0.7,layers=/4/Gemm:0.4)")
    for ref, ref_once in zip(weight_refs(scheduled), weight_refs(once)):
        np.testing.assert_array_equal(ref.value.const.kept, ref_once.value.const.kept)
    assert pruned_count(weight_refs(scheduled)[-1]) == int(np.floor(0.4 * 320 + 0.5))


def test_distillation_asks_for_the_original_and_text_round_trips():
    text = "schedule(sparsity=0.8,steps=2,ramp=linear,epochs=2,optimizer=adam,distill=0.5)"
    passes = parse_pipeline(text)
    assert pipeline_text(passes) == text
    assert passes[0].wants_original() and not Schedule().wants_original()
    with pytest.raises(Exception, match="steps"):
        parse_pipeline("schedule(steps=0)")
    with pytest.raises(Exception, match="sparsity"):
        parse_pipeline("schedule(sparsity=1.5)")
    with pytest.raises(Exception, match="'schedule'.*'epochs'"):  # checked before anything runs
        parse_pipeline("schedule(epochs=-1)")


def test_user_cnn_through_circ_opt(models, split, tmp_path, capsys):
    """A torch CNN with BatchNorm exported to ONNX: sensitivity, auto_prune and schedule run
    through circ-opt with --data/--val and write a model that onnxruntime runs."""
    x_train, y_train, x_val, y_val = split
    train, val = tmp_path / "train.npz", tmp_path / "val.npz"
    np.savez(train, x=x_train.reshape(-1, 1, 8, 8), y=y_train)
    np.savez(val, x=x_val.reshape(-1, 1, 8, 8), y=y_val)
    out, report = tmp_path / "cnn.pruned.onnx", tmp_path / "report.json"
    pipeline = ("sensitivity(sparsities=0.5:0.9),auto_prune(max_drop=2.0,sparsities=0.5:0.7:0.9),"
                "schedule(sparsity=0.6,steps=2,epochs=1,lr=0.02,scope=conv)")
    code = opt.main([f"--passes={pipeline}", str(models["cnn"]), "-o", str(out), "--data", str(train),
                     "--val", str(val), "--report", str(report)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "sensitivity: top-1 accuracy" in printed and "auto_prune: top-1 accuracy" in printed
    entries = json.loads(report.read_text())["passes"]
    sensitivity, auto, schedule = (e["details"] for e in entries)
    assert set(sensitivity["layers"]) == {"/0/Conv", "/4/Conv", "/9/Gemm"}
    assert auto["drop"] <= 2.0
    graph = circ.load(str(out))
    assert any(n.op == "BatchNormalization" for n in graph.nodes)
    accuracy = onnxruntime_accuracy(graph, Evaluation({"x": x_val.reshape(-1, 1, 8, 8)}, y_val, "val"))
    assert accuracy > auto["baseline"] - 0.1
    for ref in weight_refs(graph, "conv"):  # ONNX keeps no masks: count the zeros
        zeros = ref.value.const.size - np.count_nonzero(ref.value.const.to_numpy())
        assert zeros >= int(np.floor(0.6 * ref.value.const.size + 0.5))
