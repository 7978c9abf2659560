"""The huffman pass (passes/huffman.py) and .circ output from circ-opt."""

import json

import numpy as np
import pytest

import circ
from circ.cli.opt import main as circ_opt
from circ.codecs.coded import Coded
from circ.errors import PipelineError
from circ.passmanager import optimize as run_pipeline
from circ.tensors import Clustered, Dense, Quantized
from test_container import small_mlp


def weight(graph, name):
    return graph.consts[name].const


def run_both(a, b):
    x = np.random.default_rng(3).normal(size=(5, 10)).astype(np.float32)
    return circ.run(a, {"x": x})["y"], circ.run(b, {"x": x})["y"]


def test_clustered_layers_are_coded_exactly_with_the_paper_index_bits():
    before = circ.optimize(small_mlp(hidden=40), "prune(sparsity=0.8),cluster")
    after = circ.optimize(before, "huffman")
    for name in ("w1", "w2"):
        coded = weight(after, name)
        assert isinstance(coded, Coded) and coded.kind == "clustered"
        assert coded.index_bits == 5  # fc layers: 5-bit relative index, as in the paper
        assert coded.to_numpy().tobytes() == weight(before, name).to_numpy().tobytes()
        assert isinstance(coded.decode(), Clustered)
        assert np.array_equal(coded.kept, weight(before, name).kept)
    expected, got = run_both(before, after)
    assert np.array_equal(expected, got)


def test_options_override_index_bits_per_layer():
    graph = circ.optimize(small_mlp(hidden=40), "prune(sparsity=0.8),cluster,huffman(index_bits=3,layers=fc2:7)")
    assert weight(graph, "w1").index_bits == 3
    assert weight(graph, "w2").index_bits == 7


def test_quantized_and_pruned_dense_layers_are_coded_unpruned_dense_declined():
    graph = circ.optimize(small_mlp(hidden=40), "prune(sparsity=0.9,scope=fc1),quant(scope=fc2)")
    result = run_pipeline(graph, "huffman")
    w1, w2 = weight(graph, "w1"), weight(graph, "w2")
    assert isinstance(w1, Coded) and isinstance(w1.decode(), Dense)  # pruned float: positions coded
    assert isinstance(w2, Coded) and isinstance(w2.decode(), Quantized)
    details = result.report["passes"][0]["details"]["layers"]
    assert details["fc1"]["kept"] == pytest.approx(0.1 * 400, abs=1)
    unpruned = run_pipeline(small_mlp(), "huffman")
    reasons = [d.reason for d in unpruned.declines]
    assert any("unpruned float weights" in r for r in reasons)
    assert not any(isinstance(v.const, Coded) for v in unpruned.graph.consts.values())


def test_bad_options_are_refused():
    with pytest.raises(PipelineError):
        circ.optimize(small_mlp(), "huffman(index_bits=17)")
    with pytest.raises(PipelineError):
        circ.optimize(small_mlp(), "huffman(layers=fc1:x)")


def test_circ_opt_writes_a_container_prints_the_table_and_reads_it_back(tmp_path, capsys):
    model = tmp_path / "mlp.onnx"
    circ.save(small_mlp(hidden=40), model)
    packed = tmp_path / "mlp.circ"
    report = tmp_path / "r.json"
    assert circ_opt(["--passes=prune(sparsity=0.8),cluster,huffman", str(model), "-o", str(packed),
                     "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "weight bits" in text and "index bits" in text and "ratio" in text
    container = json.loads(report.read_text())["container"]
    assert container["file_bytes"] == packed.stat().st_size
    assert container["baseline_bytes"] == 4 * (10 * 40 + 40 + 4 * 40 + 4)
    assert [row["layer"] for row in container["layers"]] == ["fc1", "fc2"]
    back = tmp_path / "back.onnx"
    assert circ_opt([str(packed), "-o", str(back), "-q"]) == 0
    expected, got = run_both(circ.load(packed), circ.load(back))
    assert np.array_equal(expected, got)
