"""circ-opt --target and circ-run on backend programs: lowering from the command line, runs
that match the reference interpreter on the same optimized graph, --stats/--asm/--report, and
one-line errors (exit 2, no output left behind, inputs untouched)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import circ
from circ.cli import opt, run

PIPELINE = "prune(sparsity=0.9),cluster(bits=4)"


def write_mlp(path: Path, sizes=(784, 300, 100, 10)) -> Path:
    """LeNet-300-100's shape as ONNX Gemm + Relu layers, seeded random weights."""
    rng = np.random.default_rng(0)
    initializers, nodes, hidden = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        initializers += [
            numpy_helper.from_array((rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array((0.1 * rng.standard_normal(fan_out)).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [hidden, f"w{i}", f"b{i}"], [f"h{i}"], transB=1, name=f"fc{i}"))
        hidden = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [hidden], [f"r{i}"], name=f"relu{i}"))
            hidden = f"r{i}"
    graph = helper.make_graph(nodes, "lenet300", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                              [helper.make_tensor_value_info(hidden, TensorProto.FLOAT, ["N", sizes[-1]])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def write_lenet5(path: Path) -> Path:
    """A LeNet-5-style CNN (conv, relu, max pool, conv, relu, max pool, flatten, fc, relu, fc)
    exported from torch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 5 * 5, 84), nn.ReLU(), nn.Linear(84, 10)).eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 1, 28, 28),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                          opset_version=13, dynamo=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backend_cli")
    rng = np.random.default_rng(1)
    mlp_in = folder / "mlp_in.npz"
    np.savez(mlp_in, x=np.maximum(rng.standard_normal((7, 784)), 0).astype(np.float32))
    cnn_in = folder / "cnn_in.npz"
    np.savez(cnn_in, x=rng.standard_normal((3, 1, 28, 28)).astype(np.float32))
    return {"folder": folder, "mlp": write_mlp(folder / "mlp.onnx"), "mlp_in": mlp_in,
            "cnn": write_lenet5(folder / "lenet5.onnx"), "cnn_in": cnn_in}


def call(main, argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lower_and_compare(files, model_key, capsys, tmp_path, target="eie", rtol=1e-4, atol=1e-5):
    """circ-opt twice (ONNX and program, same pipeline and seed), circ-run both; the outputs."""
    model, inputs = files[model_key], files[model_key + "_in"]
    onnx_out, program = tmp_path / "opt.onnx", tmp_path / f"prog.{target.split('(')[0]}"
    assert call(opt.main, [f"--passes={PIPELINE}", model, "-o", onnx_out, "-q"], capsys)[0] == 0
    code, out, err = call(opt.main, [f"--passes={PIPELINE}", f"--target={target}", model, "-o",
                                     program], capsys)
    assert code == 0, err
    reference = circ.run(circ.load(str(onnx_out)), dict(np.load(inputs)))
    result = tmp_path / "out.npz"
    code, _, err = call(run.main, [program, "--input", inputs, "-o", result], capsys)
    assert code == 0, err
    got = dict(np.load(result))
    assert sorted(got) == sorted(reference)
    for name in got:
        np.testing.assert_allclose(got[name], reference[name], rtol=rtol, atol=atol)
    return out


def test_mlp_program_matches_reference(files, capsys, tmp_path):
    summary = lower_and_compare(files, "mlp", capsys, tmp_path, "eie(pes=32)")
    assert "target: eie(pes=32,v_bits=4,z_bits=4" in summary
    assert "bytes_per_nonzero" in summary


def test_cnn_program_matches_reference(files, capsys, tmp_path):
    lower_and_compare(files, "cnn", capsys, tmp_path)


def test_default_output_name_stats_asm_and_report(files, capsys, tmp_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(files["mlp"].read_bytes())
    report = tmp_path / "report.json"
    code, _, err = call(opt.main, [f"--passes={PIPELINE}", "--target=eie", model, "--report", report,
                                   "-q"], capsys)
    assert code == 0, err
    program = tmp_path / "net.eie"
    assert program.exists()
    data = json.loads(report.read_text())
    assert data["target"]["name"] == "eie" and data["target"]["options"]["pes"] == 64
    layers = data["target"]["program"]["layers"]
    assert [layer["layer"] for layer in layers] == ["fc0", "fc1", "fc2"]
    assert sum(layers[0]["nonzeros_per_pe"]) == layers[0]["nonzeros"] > 0

    code, out, err = call(run.main, [program, "--input", files["mlp_in"], "--stats", "--asm"], capsys)
    assert code == 0, err
    assert out.startswith(".eie 2\nload x -> a0 shape=784\nspmv fc0 a0 -> a1 rows=300 cols=784")
    table = out[out.index("instruction"):].splitlines()
    assert table[0].split()[:5] == ["instruction", "kind", "issues", "cycles", "LB"]
    rows = {line.split()[0]: line.split() for line in table[1:-1]}
    assert rows["fc0"][1] == "spmv" and rows["fc0"][2] == "7" and int(rows["fc0"][3]) > 0
    assert 0 < float(rows["fc0"][4]) <= 1
    assert "Horowitz" in table[-1]
    code, out, _ = call(run.main, [program, "--asm"], capsys)  # no --input: assembly only
    assert code == 0 and out.startswith(".eie 2") and "instruction" not in out


def test_dpu_program_runs_from_the_command_line(files, capsys, tmp_path):
    program = tmp_path / "mlp.dpu"
    code, out, err = call(opt.main, ["--passes=prune(sparsity=0.5)", "--target=dpu", "--data",
                                     files["mlp_in"], files["mlp"], "-o", program], capsys)
    assert code == 0, err
    assert "target: dpu(" in out
    result = tmp_path / "out.npz"
    code, out, err = call(run.main, [program, "--input", files["mlp_in"], "-o", result, "--stats"],
                          capsys)
    assert code == 0, err
    assert "total" in out
    assert np.load(result)["h2"].shape == (7, 10)


def test_widened_indices_are_a_warning_line(files, capsys, tmp_path):
    program = tmp_path / "wide.eie"
    code, _, err = call(opt.main, [f"--passes={PIPELINE}", "--target=eie(v_bits=3,widen=true)",
                                   files["mlp"], "-o", program, "-q"], capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("circ-opt: warning: eie: Gemm node") for line in lines)
    assert "widened from 3 to 4 bits" in lines[0]
    code, out, _ = call(run.main, [program, "--asm"], capsys)
    assert code == 0 and " v=4 " in out


def one_line_error(main, argv, capsys, pattern):
    code, _, err = call(main, argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert pattern in err, err


def test_errors_are_one_line(files, capsys, tmp_path):
    mlp = files["mlp"]
    one_line_error(opt.main, ["--target=eie", mlp, "-o", tmp_path / "x.onnx"], capsys,
                   "--target=eie writes .eie programs; name the output *.eie")
    one_line_error(opt.main, [mlp, "-o", tmp_path / "x.eie"], capsys,
                   "a .eie program is written by --target=eie")
    one_line_error(opt.main, ["--target=tpu", mlp], capsys, "unknown target 'tpu'; valid targets: dpu, eie")
    one_line_error(opt.main, ["--target=eie(pes=0)", mlp], capsys, "'pes' must be at least 1")
    one_line_error(opt.main, ["--target=eie(lanes=3)", mlp], capsys, "unknown option 'lanes'")
    # not clustered: the node is named
    one_line_error(opt.main, ["--target=eie", mlp, "-o", tmp_path / "x.eie"], capsys,
                   "Gemm node 'fc0'")
    one_line_error(run.main, [mlp, "--input", files["mlp_in"], "--stats"], capsys,
                   "--stats, --asm and --target-options are for backend programs")
    one_line_error(run.main, [mlp], capsys, "required: --input")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    program = tmp_path / "p.eie"
    assert call(opt.main, [f"--passes={PIPELINE}", "--target=eie", mlp, "-o", program, "-q"], capsys)[0] == 0
    one_line_error(run.main, [program, "--input", files["cnn_in"]], capsys,
                   "cnn_in.npz: eie: input 'x' must have shape (batch, 784)")
    one_line_error(run.main, [program, "--input", files["mlp_in"], "-o", program], capsys,
                   "p.eie")
    assert call(run.main, [program, "--asm"], capsys)[0] == 0  # still intact
    damaged = tmp_path / "bad.eie"
    damaged.write_bytes(program.read_bytes()[:-9])
    one_line_error(run.main, [damaged, "--input", files["mlp_in"], "-o", tmp_path / "o.npz"], capsys,
                   "bad.eie: EIE program truncated")
    assert not (tmp_path / "o.npz").exists()


def total_row(out: str) -> list[str]:
    """The words of the --stats table's total row (the empty kind column drops out)."""
    return next(line.split() for line in out.splitlines() if line.startswith("total"))


def test_target_options_change_the_simulated_hardware(files, capsys, tmp_path):
    eie = tmp_path / "mlp.eie"
    assert call(opt.main, [f"--passes={PIPELINE}", "--target=eie", files["mlp"], "-o", eie, "-q"],
                capsys)[0] == 0
    runs = {}
    for options in (None, "fifo_depth=1", "fifo_depth=1,sram_bytes=0"):
        out_npz = tmp_path / f"out{len(runs)}.npz"
        argv = [eie, "--input", files["mlp_in"], "-o", out_npz, "--stats"]
        code, out, err = call(run.main, argv + (["--target-options", options] if options else []),
                              capsys)
        assert code == 0, err
        runs[options] = (total_row(out), dict(np.load(out_npz)))
    (default, y), (shallow, y1), (no_sram, y2) = runs.values()
    for other in (y1, y2):  # options change the cost model, never the outputs
        np.testing.assert_array_equal(other["h2"], y["h2"])
    # total: instructions, cycles, LB eff, reg rd, reg wr, SRAM rd, SRAM wr, DRAM rd, DRAM wr, uJ
    assert int(shallow[2]) > int(default[2])  # a one-deep FIFO cannot hide the imbalance
    assert float(shallow[3]) < float(default[3])
    assert int(no_sram[8]) > int(shallow[8]) and float(no_sram[-1]) > float(shallow[-1])

    dpu = tmp_path / "mlp.dpu"
    assert call(opt.main, ["--target=dpu", "--data", files["mlp_in"], files["mlp"], "-o", dpu,
                           "-q"], capsys)[0] == 0
    code, out, err = call(run.main, [dpu, "--input", files["mlp_in"], "--stats"], capsys)
    assert code == 0, err
    default = total_row(out)
    code, out, err = call(run.main, [dpu, "--input", files["mlp_in"], "--stats",
                                     "--target-options", "mac_rows=4,mac_cols=4"], capsys)
    assert code == 0, err
    small = total_row(out)  # total: instr, MACs, cycles, compute cycles, transfer cycles, ...
    assert small[2] == default[2] and int(small[4]) > 2 * int(default[4])


def test_target_options_errors_are_one_line(files, capsys, tmp_path):
    eie, dpu = tmp_path / "p.eie", tmp_path / "p.dpu"
    assert call(opt.main, [f"--passes={PIPELINE}", "--target=eie", files["mlp"], "-o", eie, "-q"],
                capsys)[0] == 0
    assert call(opt.main, ["--target=dpu", "--data", files["mlp_in"], files["mlp"], "-o", dpu,
                           "-q"], capsys)[0] == 0
    out_npz = tmp_path / "o.npz"
    common = ["--input", files["mlp_in"], "-o", out_npz, "--target-options"]
    one_line_error(run.main, [eie, *common, "lanes=3"], capsys,
                   "--target-options 'lanes=3': ")
    one_line_error(run.main, [eie, *common, "fifo_depth=0"], capsys,
                   "'fifo_depth' must be at least 1")
    one_line_error(run.main, [eie, *common, "fifo_depth=deep"], capsys, "fifo_depth")
    one_line_error(run.main, [dpu, *common, "mac_rows=0"], capsys, "'mac_rows' must be at least 1")
    # the program's tiles were cut for 32 KB buffers: a smaller ibuf is refused before running,
    # naming the file, the instruction and the option
    one_line_error(run.main, [dpu, *common, "ibuf_bytes=64"], capsys, "p.dpu: ")
    _, _, err = call(run.main, [dpu, *common, "ibuf_bytes=64"], capsys)
    assert "instruction 0 (load " in err and "ibuf_bytes=64" in err
    one_line_error(run.main, [files["mlp"], *common, "fifo_depth=8"], capsys,
                   "--target-options are for backend programs")
    assert not out_npz.exists()
