"""finetune: through circ-opt with --data/--val on models exported from PyTorch (pruned zeros
kept, accuracy won back, report records the epochs), distillation's default teacher, the
missing-labels error, and the option checks."""

from __future__ import annotations

import json

import attrs

import numpy as np
import onnx
import pytest

import circ
import digits
from circ.cli import opt
from circ.errors import DataError, PipelineError
from circ.passbase import Pass, PassContext, PassResult
from circ.passmanager import PassManager
from circ.pipeline import parse_pipeline, pipeline_text
from circ.tensors import Clustered
from circ.train import accuracy
from passes.finetune import Finetune


@pytest.fixture(scope="module")
def split():
    return digits.digits_split()


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return str(digits.mlp_onnx(tmp_path_factory.mktemp("finetune")))


@pytest.fixture(scope="module")
def npz(tmp_path_factory, split):
    folder = tmp_path_factory.mktemp("finetune_data")
    x_train, y_train, x_val, y_val = split
    paths = {"train": folder / "train.npz", "val": folder / "val.npz", "x_only": folder / "x.npz"}
    np.savez(paths["train"], x=x_train, y=y_train)
    np.savez(paths["val"], x=x_val, y=y_val)
    np.savez(paths["x_only"], x=x_train)
    return {k: str(v) for k, v in paths.items()}


def weights(path):
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_circ_opt_finetunes_a_pruned_model(mlp, npz, split, tmp_path, capsys):
    pruned_path, tuned_path = str(tmp_path / "pruned.onnx"), str(tmp_path / "tuned.onnx")
    report_path = str(tmp_path / "report.json")
    assert opt.main(["--passes=prune(sparsity=0.9)", mlp, "-o", pruned_path, "-q"]) == 0
    code = opt.main(["--passes=prune(sparsity=0.9),finetune(epochs=3,lr=0.05)", mlp, "-o", tuned_path,
                     "--data", npz["train"], "--val", npz["val"], "--report", report_path])
    assert code == 0, capsys.readouterr().err
    pruned, tuned = weights(pruned_path), weights(tuned_path)
    changed = 0
    for name, before in pruned.items():
        if before.ndim == 2:  # Gemm weights: every pruned zero is still exactly zero
            assert np.all(tuned[name][before == 0] == 0), name
            assert np.count_nonzero(tuned[name]) == np.count_nonzero(before)
        changed += not np.array_equal(tuned[name], before)
    assert changed == len(pruned)  # weights and biases all trained
    _, _, x_val, y_val = split
    before_accuracy = accuracy(circ.load(pruned_path), x_val, y_val)
    after_accuracy = accuracy(circ.load(tuned_path), x_val, y_val)
    assert after_accuracy > before_accuracy + 0.05
    entry = json.load(open(report_path))["passes"][1]
    assert entry["text"] == "finetune(epochs=3,lr=0.05)" and not entry["exact"]
    epochs = entry["details"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["val_accuracy"] == pytest.approx(after_accuracy)
    assert entry["details"]["val_accuracy_before"] == pytest.approx(before_accuracy)


@pytest.mark.parametrize("data_args,fragment", [
    (["--data", "x_only"], "--data has no y array"),
    ([], "--data was not given"),
])
def test_missing_labels_is_one_line_exit_2(mlp, npz, tmp_path, capsys, data_args, fragment):
    args = [a if a not in npz else npz[a] for a in data_args]
    output = tmp_path / "out.onnx"
    code = opt.main(["--passes=finetune", mlp, "-o", str(output), *args])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("circ-opt: error: ")
    assert "finetune" in lines[0] and fragment in lines[0] and "y" in lines[0]
    assert not output.exists()


def test_val_without_labels_is_refused(mlp, npz, tmp_path, capsys):
    code = opt.main(["--passes=finetune", mlp, "-o", str(tmp_path / "o.onnx"), "--data", npz["train"],
                     "--val", npz["x_only"]])
    assert code == 2 and "validation data needs a y array" in capsys.readouterr().err


def test_quant_calibration_ignores_labels(mlp, npz, tmp_path):
    """--data with x and y still calibrates quant (y is the labels, not an input)."""
    assert opt.main(["--passes=quant", mlp, "-o", str(tmp_path / "q.onnx"), "--data", npz["train"], "-q"]) == 0
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "QuantizeLinear" in ops


@attrs.define
class _SeesOriginal(Pass):
    """Records what the context offers (a test double, not registered)."""

    name = "sees_original"
    seen: list = attrs.field(factory=list, init=False)

    def run(self, graph, ctx):
        self.seen.append(ctx.original)
        return PassResult(False)


def test_original_graph_is_copied_only_when_asked(mlp, split):
    x_train, y_train, _, _ = split
    graph = circ.load(mlp)
    spy = _SeesOriginal()
    PassManager([spy]).run(graph)
    assert spy.seen == [None]
    tuned = Finetune(epochs=1, distill=0.5)
    assert tuned.wants_original()
    result = PassManager([spy, tuned], data={"x": x_train}, labels=y_train).run(graph)
    original = spy.seen[1]
    assert original is not None and original is not graph
    first = next(n for n in graph.consts if graph.consts[n].rank == 2)
    assert np.array_equal(original.consts[first].numpy(), circ.load(mlp).consts[first].numpy())
    assert not np.array_equal(graph.consts[first].numpy(), original.consts[first].numpy())
    assert result.report["passes"][1]["details"]["teacher"] == "the input model"


def untrained_cnn_onnx(folder) -> str:
    """digits.cnn_onnx's architecture (conv, BatchNorm, ReLU, pool twice, fc), exported from
    PyTorch with its seeded initial weights: no torch training time in this test."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10)).eval()
    return str(digits._export(model, (1, 1, 8, 8), folder / "cnn.onnx"))


def test_cnn_with_batch_norm_then_clustered(tmp_path, split):
    """A torch-exported CNN with BatchNormalization: finetune trains it (BN statistics untied
    from the scale and bias they were exported as), then cluster and finetune again: indices
    stay, centroids move, accuracy is won back."""
    x_train, y_train, x_val, y_val = split
    graph = circ.load(untrained_cnn_onnx(tmp_path))
    images, val_images = x_train.reshape(-1, 1, 8, 8), x_val.reshape(-1, 1, 8, 8)
    data = dict(data={"x": images}, labels=y_train, val=({"x": val_images}, y_val))
    initial = {n: v.numpy().copy() for n, v in graph.consts.items()}
    result = PassManager.from_pipeline("finetune(epochs=2,lr=0.01,optimizer=adam,batch=32)", **data).run(graph)
    details = result.report["passes"][0]["details"]
    # torch exported the untrained BN's running var/mean as Identity(scale/bias): untied first.
    assert details["untied_running_statistics"] == 4 and result.report["passes"][0]["preserved"] == []
    assert "Identity" not in [n.op for n in graph.nodes]  # the exporter's aliases, now unused, are gone
    for bn in (n for n in graph.nodes if n.op == "BatchNormalization"):
        scale, bias, mean, var = bn.inputs[1:]
        assert not np.array_equal(scale.numpy(), initial[scale.name])
        assert not np.array_equal(bias.numpy(), initial[bias.name])
        assert mean.const is not None and len(mean.uses) == 1 and np.all(mean.numpy() != 0)
        assert var.const is not None and len(var.uses) == 1 and not np.allclose(var.numpy(), 1)
    assert details["epochs"][-1]["val_accuracy"] > 0.85

    PassManager.from_pipeline("cluster(bits=3)").run(graph)
    clustered = {n: v.const for n, v in graph.consts.items() if isinstance(v.const, Clustered)}
    assert len(clustered) == 3
    clustered_accuracy = accuracy(graph, val_images, y_val)
    result = PassManager.from_pipeline("finetune(lr=0.003,optimizer=adam,batch=32)", **data).run(graph)
    for name, tensor in clustered.items():
        trained = graph.consts[name].const
        assert isinstance(trained, Clustered) and np.array_equal(trained.indices, tensor.indices)
        assert not np.array_equal(trained.codebook, tensor.codebook)
    assert result.report["passes"][0]["preserved"] == ["structure"]
    assert result.report["passes"][0]["details"]["epochs"][-1]["val_accuracy"] > clustered_accuracy + 0.03


def test_pipeline_text_round_trip_and_options():
    passes = parse_pipeline("finetune(epochs=2,optimizer=adam,distill=0.3,seed=7,freeze_bn=true)")
    assert pipeline_text(passes) == "finetune(epochs=2,optimizer=adam,distill=0.3,freeze_bn=true,seed=7)"
    assert pipeline_text(parse_pipeline(pipeline_text(passes))) == pipeline_text(passes)
    config = passes[0].config(PassContext(seed=1))
    assert (config.epochs, config.optimizer, config.distill, config.seed, config.freeze_bn) == (2, "adam", 0.3, 7, True)
    assert Finetune().config(PassContext(seed=5)).seed == 5
    for bad, fragment in (("lr=0", "'lr' must be > 0"), ("distill=1.5", "'distill' must be in [0, 1]"),
                          ("optimizer=rmsprop", "optimizer"), ("momentum=1", "'momentum' must be in [0, 1)")):
        with pytest.raises(PipelineError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
            parse_pipeline(f"finetune({bad})")


def test_direct_run_without_data_names_finetune():
    with pytest.raises(DataError, match="finetune needs labelled training data"):
        Finetune().run(circ.Graph(), PassContext())
