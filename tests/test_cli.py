"""circ-opt and circ-run end to end: exit codes, one-line errors, files written or not.

A few runs go through a real subprocess (``python -m circ.cli.opt``), the rest call ``main``
in-process, which exercises the same code path minus the interpreter start-up.
"""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from circ.cli import opt, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

rng = np.random.default_rng(0)
W = rng.standard_normal((8, 4)).astype(np.float32)
B = rng.standard_normal(8).astype(np.float32)


def write_model(path, custom_op=False):
    """y = Relu(Identity(Gemm(x, W, B, transB=1))), x: f32[N,4]; optionally a custom-domain op."""
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1, name="fc1"),
             helper.make_node("Identity", ["h"], ["h2"], name="id"),
             helper.make_node("Relu", ["h2"], ["y"], name="relu")]
    opsets = [helper.make_opsetid("", 17)]
    if custom_op:
        nodes[1] = helper.make_node("Mystery", ["h"], ["h2"], name="mystery", domain="com.example")
        opsets.append(helper.make_opsetid("com.example", 1))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return str(path)


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path / "net.onnx")


def cli(tool, *args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", f"circ.cli.{tool}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_user_error(proc_or_code, stderr, prog, *fragments):
    code = proc_or_code
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def onnxruntime_outputs(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


# ----------------------------------------------------------------------------- subprocess


def test_opt_writes_default_output_and_report(tmp_path, model):
    original = open(model, "rb").read()
    proc = cli("opt", "--passes=remove_identity,dce", "net.onnx", "--report", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert open(model, "rb").read() == original
    out = tmp_path / "net.opt.onnx"
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(onnxruntime_outputs(str(out), x), onnxruntime_outputs(model, x), rtol=1e-6)
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Gemm", "Relu"]

    table = proc.stdout.splitlines()
    assert table[0] == "net.onnx -> net.opt.onnx"
    assert table[1] == "pipeline: remove_identity,dce"
    rows = table[2:8]
    assert [r.split()[0] for r in rows[1:]] == ["params", "non-zeros", "bytes", "MACs", "nodes"]
    assert len({len(r) for r in rows}) == 1  # right-aligned columns end together
    assert rows[-1].split() == ["nodes", "3", "2", "-33.3%"]

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "remove_identity,dce"
    assert report["input"] == "net.onnx" and report["output"] == "net.opt.onnx"
    assert report["stats"]["before"]["macs"] == 32 and report["stats"]["after"]["nodes"] == 2
    assert report["stats"]["before"]["params"] == 40


def test_opt_refuses_to_overwrite_the_input(tmp_path, model):
    original = open(model, "rb").read()
    proc = cli("opt", "--passes=dce", "net.onnx", "-o", "./net.onnx", cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "circ-opt", "refusing to overwrite the input")
    assert open(model, "rb").read() == original
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]


def test_opt_bad_pipeline_is_one_line_and_writes_nothing(tmp_path, model):
    proc = cli("opt", "--passes=dce(aggressive=true)", "net.onnx", cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "circ-opt",
                      "unknown option 'aggressive' for pass 'dce'")
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]


def test_opt_rejects_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / "notes.onnx").write_text("hello, I am not a model")
    proc = cli("opt", "--passes=dce", "notes.onnx", cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "circ-opt", "notes.onnx")
    assert sorted(os.listdir(tmp_path)) == ["notes.onnx"]


def test_run_writes_outputs_matching_onnxruntime(tmp_path, model):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    proc = cli("run", "net.onnx", "--input", "in.npz", "-o", "out.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "out.npz") as out:
        assert out.files == ["y"]
        np.testing.assert_allclose(out["y"], onnxruntime_outputs(model, x), rtol=1e-5, atol=1e-6)


def test_run_unsupported_op_is_a_user_error(tmp_path):
    write_model(tmp_path / "odd.onnx", custom_op=True)
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 4), np.float32))
    proc = cli("run", "odd.onnx", "--input", "in.npz", "-o", "out.npz", cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "circ-run", "Mystery node 'mystery'")
    assert not (tmp_path / "out.npz").exists()


# ----------------------------------------------------------------------------- in-process


def call(module, *args, capsys):
    code = module.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_and_help_pass(capsys):
    code, out, _ = call(opt, "--list-passes", capsys=capsys)
    assert code == 0
    dce = next(line for line in out.splitlines() if line.startswith("dce "))
    assert dce.split()[1] == "exact" and "Remove what no graph output depends on" in dce
    code, out, _ = call(opt, "--help-pass", "dce", capsys=capsys)
    assert code == 0 and out.startswith("dce (exact)\n\nRemove what no graph output depends on")
    code, _, err = call(opt, "--help-pass", "dcee", capsys=capsys)
    assert_user_error(code, err, "circ-opt", "unknown pass 'dcee'; valid passes: ", " dce, ")


PLUGIN = '''
import attrs
import numpy as np
from circ.passbase import Pass, PassResult, register_pass


@register_pass
class Sabotage(Pass):
    """Scales the first weight by ``factor`` while claiming to be exact."""

    name = "cli_sabotage"
    exact = True
    factor: float = attrs.field(default=2.0, metadata={"help": "how much to scale"})

    def run(self, graph, ctx):
        w = graph.consts["W"]
        graph.set_const(w, w.numpy() * np.float32(self.factor))
        return PassResult(True, {"structure"})


@register_pass
class Unlink(Pass):
    """Breaks the IR on purpose."""

    name = "cli_unlink"

    def run(self, graph, ctx):
        graph.node("relu").inputs[0] = graph.consts["B"]
        return PassResult(True)
'''


@pytest.fixture
def plugin(tmp_path):
    from circ.passbase import builtin_registry

    before = dict(builtin_registry())
    path = tmp_path / "myplugin.py"
    path.write_text(PLUGIN)
    yield str(path)
    builtin_registry().clear()
    builtin_registry().update(before)


def test_plugin_pass_and_help(tmp_path, model, plugin, capsys):
    code, out, _ = call(opt, "--load-pass-plugin", plugin, "--help-pass", "cli_sabotage", capsys=capsys)
    assert code == 0
    assert "factor  float  2.0      how much to scale" in out
    code, out, err = call(opt, "--load-pass-plugin", plugin, "--passes=cli_sabotage(factor=0.5)",
                          "--verify-numerics", model, capsys=capsys)
    assert code == 0
    assert err.startswith("circ-opt: warning: pass 'cli_sabotage(factor=0.5)' is exact but changed the outputs")
    assert os.path.exists(tmp_path / "net.opt.onnx")


def test_broken_pass_leaves_no_output(tmp_path, model, plugin, capsys):
    code, _, err = call(opt, "--load-pass-plugin", plugin, "--passes=cli_unlink", model,
                        "--report", str(tmp_path / "r.json"), capsys=capsys)
    assert_user_error(code, err, "circ-opt", "after pass 'cli_unlink'", "Relu node 'relu'")
    assert sorted(os.listdir(tmp_path)) == ["myplugin.py", "net.onnx"]


def test_broken_plugin_file_is_a_user_error(tmp_path, model, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import attrs\nthis is not python, is it?\n")
    code, _, err = call(opt, "--load-pass-plugin", str(bad), "--passes=dce", model, capsys=capsys)
    assert_user_error(code, err, "circ-opt", "bad.py", "line 2")


@pytest.mark.parametrize("args, fragment", [
    (["--passes=dce", "missing.onnx"], "missing.onnx: no such file"),
    (["--passes=dce"], "no input model given"),
    (["--passes=dce", "--print-ir-after=fold_bn", "{model}"], "'fold_bn' is not in the pipeline"),
    (["--passes=dce", "{model}", "--report", "{tmp}/no/such/dir/r.json"], "does not exist"),
    (["--passes=dce", "{model}", "-o", "{tmp}"], "is a directory"),
    (["--seed=abc", "{model}"], "invalid int value: 'abc'"),
    (["--passes=dce(", "{model}"], "bad pipeline 'dce(': expected an option name"),
])
def test_opt_user_errors(tmp_path, model, capsys, args, fragment):
    args = [a.format(model=model, tmp=tmp_path) for a in args]
    code, _, err = call(opt, *args, capsys=capsys)
    assert_user_error(code, err, "circ-opt", fragment)
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]


def test_opt_instruments_print_to_stdout(tmp_path, model, capsys):
    code, out, _ = call(opt, "--passes=remove_identity,dce", model, "-o", str(tmp_path / "o.onnx"),
                        "--print-ir-after=remove_identity", "--time-passes", "--pass-stats", "-q",
                        capsys=capsys)
    assert code == 0
    assert "// ----- IR after pass 0: remove_identity -----" in out
    assert "= Gemm(%x, %W, %B) {transB=1}  # fc1" in out
    assert "time-passes:" in out and "pass statistics:" in out
    assert "before" not in out  # -q: no summary table


def test_run_single_array_under_any_name_and_time(tmp_path, model, capsys):
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", whatever=x)
    code, out, _ = call(run, model, "--input", str(tmp_path / "in.npz"), "--time", "--runs", "3", capsys=capsys)
    assert code == 0
    summary, latency = out.splitlines()
    expected = onnxruntime_outputs(model, x)
    assert summary.startswith("y: float32[2, 8]  min ")
    assert f"max {expected.max():.6g}" in summary
    assert latency.startswith("latency: median ") and "over 3 runs" in latency


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.zeros((2, 5), np.float32)}, "input 'x' expects shape f32[N,4], got [2, 5]"),
    ({"x": np.zeros((2, 4), np.float32), "extra": np.zeros(1)}, "has array 'extra', which is not an input"),
    ({"a": np.zeros(1), "b": np.zeros(1)}, "has no array for input 'x'; the model's inputs are x: f32[N,4]"),
])
def test_run_bad_inputs(tmp_path, model, capsys, arrays, fragment):
    np.savez(tmp_path / "in.npz", **arrays)
    code, _, err = call(run, model, "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"),
                        capsys=capsys)
    assert_user_error(code, err, "circ-run", "in.npz: ", fragment)
    assert not (tmp_path / "out.npz").exists()


def test_run_other_user_errors(tmp_path, model, capsys):
    (tmp_path / "in.npz").write_bytes(b"not a zip")
    code, _, err = call(run, model, "--input", str(tmp_path / "in.npz"), capsys=capsys)
    assert_user_error(code, err, "circ-run", "in.npz: not a readable .npz file")
    code, _, err = call(run, str(tmp_path / "prog.xyz"), "--input", "in.npz", capsys=capsys)
    assert_user_error(code, err, "circ-run", "prog.xyz: no such file")
    (tmp_path / "prog.xyz").write_bytes(b"")
    code, _, err = call(run, str(tmp_path / "prog.xyz"), "--input", "in.npz", capsys=capsys)
    assert_user_error(code, err, "circ-run", "cannot run files of type '.xyz'; circ-run runs .onnx")
    code, _, err = call(run, model, "--input", str(tmp_path / "in.npz"), "-o", model, capsys=capsys)
    assert_user_error(code, err, "circ-run", "refusing to overwrite the input")


def test_run_dispatch_is_extensible(tmp_path, capsys, monkeypatch):
    def load_double(path):
        return run.Runnable(["x"], lambda feeds: {"y": feeds["x"] * 2})

    monkeypatch.setitem(run.RUNNERS, ".dbl", load_double)
    (tmp_path / "prog.dbl").write_bytes(b"")
    np.savez(tmp_path / "in.npz", np.arange(3.0))
    code, _, _ = call(run, str(tmp_path / "prog.dbl"), "--input", str(tmp_path / "in.npz"),
                      "-o", str(tmp_path / "out.npz"), capsys=capsys)
    assert code == 0
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["y"], [0.0, 2.0, 4.0])
