"""The code in docs/ runs: the example pass of docs/writing-passes.md works as described, and
every code block of docs/api.md runs, in order, in one namespace."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import circ

ROOT = Path(__file__).resolve().parents[1]


def _example_pass_source() -> str:
    text = (ROOT / "docs" / "writing-passes.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "register_pass" in b)


def _model(path):
    F = onnx.TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["x", "zeros"], ["a"]),
             helper.make_node("Mul", ["a", "ones"], ["b"]),
             helper.make_node("Mul", ["b", "wide"], ["y"])]  # broadcasts: must be kept
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, [1, 3])],
        [helper.make_tensor_value_info("y", F, [2, 3])],
        [numpy_helper.from_array(np.zeros(3, np.float32), "zeros"),
         numpy_helper.from_array(np.ones((1, 3), np.float32), "ones"),
         numpy_helper.from_array(np.ones((2, 3), np.float32), "wide")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_example_pass_from_docs_runs_as_a_plugin(tmp_path):
    plugin = tmp_path / "drop_neutral.py"
    plugin.write_text(_example_pass_source())
    model, out, report = tmp_path / "m.onnx", tmp_path / "m.opt.onnx", tmp_path / "r.json"
    _model(model)
    proc = subprocess.run(
        [sys.executable, "-m", "circ.cli.opt", "--load-pass-plugin", str(plugin),
         "--passes=drop_neutral,dce", "--verify-numerics", str(model), "-o", str(out),
         "--report", str(report)],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    before, after = circ.load(str(model)), circ.load(str(out))
    assert [n.op for n in after.nodes] == ["Mul"]
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    np.testing.assert_array_equal(circ.run(after, {"x": x})["y"], circ.run(before, {"x": x})["y"])
    assert "drop_neutral" in report.read_text() and "broadcasts" in report.read_text()


def test_api_examples_run_in_order(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "api_md"}
    for index, block in enumerate(blocks):
        code = compile(block, f"docs/api.md block {index + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples
    printed = capsys.readouterr().out
    assert "['Gemm', 'Relu', 'Gemm']" in printed
    assert "prune(sparsity=0.8,scope=fc2),cluster(bits=3)" in printed
    assert "sparsity" in printed  # the PipelineError names the option
    assert (tmp_path / "mlp.circ").stat().st_size < 4 * namespace["totals"]["params"] / 10
