"""DPU backend: integer semantics on hand-computed cases, lowering vs the fake-quant reference
(exact) on small graphs with tiny buffers, refusals, asm and binary round trips, the target."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import circ
from backends import parse_target, target_class, target_for_file
from backends.dpu.asm import parse_program, print_program
from backends.dpu.encode import decode, encode, read_program, write_program
from backends.dpu.isa import Conv, Elew, Fc, Layer, Load, LoadW, Pool, Program, Store, TensorDesc
from backends.dpu.lower import lower, reference_graph
from backends.dpu.sim import Config, divide_round, run, shift_round
from circ.errors import BackendError, DataError

# ------------------------------------------------------------------ integer primitives


def test_shift_round_is_half_to_even_right_and_exact_left():
    values = np.array([5, 6, 7, -5, -6, -7, 2, 3])
    assert shift_round(values, 1).tolist() == [2, 3, 4, -2, -3, -4, 1, 2]
    assert shift_round(np.array([6, 10, -6, 7, 5, -10]), 2).tolist() == [2, 2, -2, 2, 1, -2]
    assert shift_round(np.array([3, -3]), -2).tolist() == [12, -12]
    assert shift_round(np.array([3, -3]), 0).tolist() == [3, -3]
    # per-channel shifts broadcast
    assert shift_round(np.array([[6, 6, 6]]), np.array([1, 2, -1])).tolist() == [[3, 2, 12]]


def test_divide_round_is_exact_half_to_even():
    assert divide_round(np.array([9, 13, 14, -13, 10, -10]), 4).tolist() == [2, 3, 4, -3, 2, -2]
    assert divide_round(np.array([5, 7, -5]), 2).tolist() == [2, 4, -2]
    assert divide_round(np.array([11]), 9).tolist() == [1]


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 31))
def test_shift_round_matches_rational_rounding(acc, shift):
    exact = acc / 2**shift
    expected = int(np.rint(np.float64(acc) / 2**shift)) if abs(acc) < 2**52 else None
    got = int(shift_round(np.array([acc]), shift)[0])
    assert abs(got - exact) <= 0.5
    if expected is not None:
        assert got == expected  # numpy's rint is half to even


# ------------------------------------------------------------------ hand-written programs


def _program(tensors, layers, instructions, inputs, outputs) -> Program:
    program = Program()
    for t in tensors:
        program.add_tensor(t)
    for layer in layers:
        program.add_layer(layer)
    program.instructions = instructions
    program.inputs, program.outputs = inputs, outputs
    return program


def test_conv_tile_by_hand():
    # x (exp 0): 1..9 in a 3x3 image; 2x2 kernels, weights at exp -1, bias at exp -1, output
    # at exp 1: a right shift by 2 of the accumulator.
    weights = np.array([[[[3, 0], [0, -1]]], [[[2, 1], [1, 2]]]])
    conv = Layer("c", "conv", ["t0"], "t1", kernel=(2, 2), weights=weights, w_exp=[-1, -1],
                 bias=[3, -40])
    program = _program(
        [TensorDesc("t0", (1, 3, 3), 0, True), TensorDesc("t1", (2, 2, 2), 1, True)], [conv],
        [Load("c", 0, "t0", 0, 1, 0, 3), LoadW("c", 0, 2), Conv("c", 0, 2, 0, 2),
         Store("c", "t1", 0, 2, 0, 2)], [("x", "t0")], [("y", "t1")])
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    outputs, stats = run(program, {"x": x})
    # ch0: 3a - d + 3 = 1, 3, 7, 9 -> /4 -> 0.25, 0.75, 1.75, 2.25 -> 0, 1, 2, 2
    # ch1: 2a + b + c + 2d - 40 = -22, -16, -4, 2 -> -5.5, -4, -1, 0.5 -> -6, -4, -1, 0
    expected = np.array([[[0, 1], [2, 2]], [[-6, -4], [-1, 0]]]) * 2.0
    np.testing.assert_array_equal(outputs["y"][0], expected)
    assert stats[0].macs == 2 * 4 * 4
    # 1 input channel on 16 rows, 2 outputs on 16 columns: one pass per pixel and tap
    assert stats[0].compute_cycles == 4 * 4


def test_fc_saturates_and_fuses_relu():
    fc = Layer("f", "fc", ["t0"], "t1", weights=[[127, 127, 127, 127], [1, -1, 1, -1]],
               w_exp=[0, 0], bias=[0, 5], relu=True)
    program = _program(
        [TensorDesc("t0", (4,), 0, False), TensorDesc("t1", (2,), 0, False)], [fc],
        [Load("f", 0, "t0", 0, 4, 0, 1), LoadW("f", 0, 2), Fc("f", 0, 2), Store("f", "t1", 0, 2, 0, 1)],
        [("x", "t0")], [("y", "t1")])
    # the host quantizes: 10.4 -> 10, 19.5 -> 20 (half to even), 300 -> 255 (saturated)
    outputs, _ = run(program, {"x": np.array([[10.4, 19.5, 30, 40], [0, 0, 0, 300]])})
    # row 0: 127 * 100 = 12700 -> 255; 10 - 20 + 30 - 40 + 5 = -15 -> ReLU 0
    # row 1: 127 * 255 -> 255; -255 + 5 -> 0
    np.testing.assert_array_equal(outputs["y"], [[255, 0], [255, 0]])


def test_elew_aligns_exponents_then_rounds():
    add = Layer("a", "add", ["t0", "t1"], "t2")
    program = _program(
        [TensorDesc("t0", (4,), -1, True), TensorDesc("t1", (4,), 1, True),
         TensorDesc("t2", (4,), 0, True)], [add],
        [Load("a", 0, "t0", 0, 4, 0, 1), Load("a", 1, "t1", 0, 4, 0, 1), Elew("a", 0, 4, 0, 1),
         Store("a", "t2", 0, 4, 0, 1)], [("a", "t0"), ("b", "t1")], [("y", "t2")])
    a = np.array([[1.5, -1.5, 2.5, 0.5]])  # ints 3, -3, 5, 1 at exp -1
    b = np.array([[2.0, 2.0, -2.0, 4.0]])  # ints 1, 1, -1, 2 at exp 1
    # aligned to exp -1: 3+4, -3+4, 5-4, 1+8 = 7, 1, 1, 9 -> >>1: 3.5, 0.5, 0.5, 4.5 -> 4, 0, 0, 4
    outputs, _ = run(program, {"a": a, "b": b})
    np.testing.assert_array_equal(outputs["y"], [[4, 0, 0, 4]])


def test_pools_by_hand():
    x = np.array([[[[1, 2, 0], [3, 5, -7], [4, 4, 4]]]], dtype=np.float32)
    tensors = [TensorDesc("t0", (1, 3, 3), 0, True), TensorDesc("t1", (1, 3, 3), 0, True),
               TensorDesc("t2", (1, 2, 2), -1, True), TensorDesc("t3", (1, 1, 1), -1, True)]
    layers = [Layer("mp", "maxpool", ["t0"], "t1", kernel=(2, 2), pads=(0, 0, 1, 1)),
              Layer("ap", "avgpool", ["t0"], "t2", kernel=(2, 2)),
              Layer("gap", "gap", ["t0"], "t3", kernel=(3, 3))]
    instructions = []
    for layer, out, rows in (("mp", "t1", 3), ("ap", "t2", 2), ("gap", "t3", 1)):
        instructions += [Load(layer, 0, "t0", 0, 1, 0, 3), Pool(layer, 0, 1, 0, rows),
                         Store(layer, out, 0, 1, 0, rows)]
    program = _program(tensors, layers, instructions, [("x", "t0")],
                       [("max", "t1"), ("avg", "t2"), ("gap", "t3")])
    outputs, _ = run(program, {"x": x})
    # stride 1, padded below/right: windows never pick the padding (-7 beats it)
    np.testing.assert_array_equal(outputs["max"][0, 0], [[5, 5, 0], [5, 5, 4], [4, 4, 4]])
    # sums 11, 0, 16, 6 over 4, at exp -1: 22/4=5.5->6, 0, 32/4=8, 12/4=3 -> x 0.5
    np.testing.assert_array_equal(outputs["avg"][0, 0], [[3, 0], [4, 1.5]])
    # sum 16 over 9 at exp -1: 32/9 = 3.56 -> 4 -> 2.0
    np.testing.assert_array_equal(outputs["gap"][0, 0], [[2.0]])


def test_simulator_names_the_instruction_that_fails():
    fc = Layer("f", "fc", ["t0"], "t1", weights=[[1, 1]], w_exp=[0], bias=[0])
    program = _program([TensorDesc("t0", (2,), 0, True), TensorDesc("t1", (1,), 0, True)], [fc],
                       [Load("f", 0, "t0", 0, 2, 0, 1), Fc("f", 0, 1)], [("x", "t0")], [("y", "t1")])
    with pytest.raises(BackendError, match=r"instruction 1 \(fc layer=f .*wbuf holds None"):
        run(program, {"x": np.ones((1, 2))})
    program.instructions[0] = Load("f", 0, "t0", 0, 2, 0, 1)
    # a tile larger than its buffer is refused before the program runs
    with pytest.raises(BackendError, match=r"instruction 0 \(load .*more than ibuf_bytes=1$"):
        run(program, {"x": np.ones((1, 2))}, Config(ibuf_bytes=1))
    with pytest.raises(DataError, match="must have shape"):
        run(program, {"x": np.ones((1, 3))})


# ------------------------------------------------------------------ lowering


def small_cnn(seed=0) -> circ.Graph:
    """Conv+bias+Relu, Conv (grouped) + residual Add + Relu, MaxPool, AveragePool, GAP,
    Flatten, MatMul + Add bias: every DPU layer kind."""
    rng = np.random.default_rng(seed)
    graph = circ.Graph(opsets={"": 13})

    def const(name, shape, scale):
        return graph.add_const(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    x = graph.add_input("x", np.float32, ("N", 3, 12, 12))
    h = graph.add_node("Conv", [x, const("w1", (8, 3, 3, 3), 0.3), const("b1", (8,), 0.1)],
                       {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, name="c1").output
    h = graph.add_node("Relu", [h], name="r1").output
    h2 = graph.add_node("Conv", [h, const("w2", (8, 2, 3, 3), 0.3)],
                        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 4}, name="c2").output
    s = graph.add_node("Add", [h, h2], name="res").output
    s = graph.add_node("Relu", [s], name="r2").output
    p = graph.add_node("MaxPool", [s], {"kernel_shape": [3, 3], "strides": [2, 2],
                                        "pads": [1, 1, 1, 1]}, name="mp").output
    p = graph.add_node("AveragePool", [p], {"kernel_shape": [2, 2], "strides": [2, 2]},
                       name="ap").output
    p = graph.add_node("GlobalAveragePool", [p], name="gap").output
    f = graph.add_node("Flatten", [p], {"axis": 1}, name="flat").output
    y = graph.add_node("MatMul", [f, const("wf", (8, 5), 0.5)], name="fc").output
    y = graph.add_node("Add", [y, const("bf", (5,), 0.1)], name="fc_bias").output
    graph.outputs.append(y)
    circ.verify(graph)
    return graph


@pytest.fixture(scope="module")
def cnn():
    return small_cnn()


@pytest.fixture(scope="module")
def calibration():
    return {"x": np.random.default_rng(5).standard_normal((24, 3, 12, 12)).astype(np.float32)}


def dpu_vs_reference(graph, calibration, x, config=Config(), **options):
    reference, program = reference_graph(graph, config, calibration=calibration, **options)
    name = graph.inputs[0].name
    got, stats = run(program, {name: x}, config)
    want = circ.run(reference, {name: x})
    return list(got.values())[0], list(want.values())[0], program, stats


@pytest.mark.parametrize("config", [
    Config(), Config(ibuf_bytes=300, wbuf_bytes=200, obuf_bytes=100),
    Config(mac_rows=4, mac_cols=8, ibuf_bytes=700, wbuf_bytes=64, obuf_bytes=40)])
def test_matches_fake_quant_reference_exactly(cnn, calibration, config):
    x = np.random.default_rng(6).standard_normal((7, 3, 12, 12)).astype(np.float32)
    got, want, program, stats = dpu_vs_reference(cnn, calibration, x, config)
    np.testing.assert_array_equal(got, want)
    float_out = circ.run(cnn, {"x": x})[cnn.outputs[0].name]
    assert np.abs(got - float_out).max() < 0.1 * np.abs(float_out).max()
    assert [s.kind for s in stats] == ["conv", "conv", "add", "maxpool", "avgpool", "gap", "fc"]
    if config.obuf_bytes < 1000:  # tiny buffers: layers are cut into several tiles
        assert sum(isinstance(i, Conv) for i in program.instructions) > 2


def test_per_channel_weights_and_tiling_change_nothing_but_cost(cnn, calibration):
    x = np.random.default_rng(7).standard_normal((3, 3, 12, 12)).astype(np.float32)
    got, want, program, _ = dpu_vs_reference(cnn, calibration, x, weight_per_channel=True)
    np.testing.assert_array_equal(got, want)
    assert any(len(set(layer.w_exp.tolist())) > 1 for layer in program.layers.values())
    big = run(lower(cnn, calibration=calibration), {"x": x})
    small_config = Config(ibuf_bytes=300, wbuf_bytes=200, obuf_bytes=100)
    small = run(lower(cnn, small_config, calibration=calibration), {"x": x}, small_config)
    np.testing.assert_array_equal(list(big[0].values())[0], list(small[0].values())[0])
    dram = lambda stats: sum(s.dram_read for s in stats)  # noqa: E731
    assert dram(small[1]) > dram(big[1])  # smaller buffers reload halos and weights


def test_quant_pass_formats_are_used(calibration):
    from circ.passmanager import PassManager

    graph = small_cnn(seed=1)
    quantized = PassManager.from_pipeline("quant(pow2=true)", data=calibration).run(graph).graph
    assert any(node.op == "QuantizeLinear" for node in quantized.nodes)
    x = calibration["x"][:5]
    got, want, program, _ = dpu_vs_reference(quantized, calibration, x)
    np.testing.assert_array_equal(got, want)
    # the quantized weights are taken as they are: per-channel pow2 scales
    q = quantized.value("w1").const
    np.testing.assert_array_equal(program.layers["c1"].weights, q.q)
    np.testing.assert_array_equal(program.layers["c1"].w_exp, np.log2(q.scale))
    # the format of c1's output comes from the QDQ that quant put on c2's input
    qdq = next(n for n in quantized.nodes if n.op == "QuantizeLinear" and n.output.users[0]
               .output.users[0].name == "c2")
    assert program.tensors[program.layers["c1"].output].exp == \
        np.log2(qdq.input(1).const.to_numpy())
    # the quant pass's own graph agrees with the DPU up to the formats it left to calibration
    assert np.abs(got - circ.run(quantized, {"x": x})[quantized.outputs[0].name]).max() < 0.2


def test_refusals_name_the_node(cnn):
    with pytest.raises(BackendError, match="no fixed-point format for 'x'.*calibration"):
        lower(cnn)
    graph = circ.Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 4))
    y = graph.add_node("Sigmoid", [x], name="sig").output
    graph.outputs.append(y)
    with pytest.raises(BackendError, match="Sigmoid.*sig.*not a DPU operation"):
        lower(graph)
    graph = circ.Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 2, 4, 4))
    scale = graph.add_const("s", np.ones(2, np.float32))
    zero = graph.add_const("z", np.zeros(2, np.float32))
    y = graph.add_node("BatchNormalization", [x, scale, zero, zero, scale], name="bn").output
    graph.outputs.append(y)
    with pytest.raises(BackendError, match="bn.*fold_bn"):
        lower(graph)
    with pytest.raises(BackendError, match="c1.*do not fit wbuf_bytes=10"):
        lower(cnn, Config(wbuf_bytes=10), calibration={"x": np.ones((1, 3, 12, 12), np.float32)})


def test_batch_runs_whole_axis_0_like_one_sample_at_a_time(cnn, calibration):
    program = lower(cnn, calibration=calibration)
    x = calibration["x"][:6]
    batch, stats = run(program, {"x": x})
    single, single_stats = run(program, {"x": x[2:3]})
    key = cnn.outputs[0].name
    np.testing.assert_array_equal(batch[key][2:3], single[key])
    assert stats[0].cycles == 6 * single_stats[0].cycles


# ------------------------------------------------------------------ formats and target


def test_asm_and_binary_round_trip(cnn, calibration, tmp_path):
    program = lower(cnn, Config(ibuf_bytes=300, wbuf_bytes=200, obuf_bytes=100),
                    calibration=calibration)
    text = print_program(program)
    assert print_program(parse_program(text)) == text
    path = tmp_path / "cnn.dpu"
    write_program(program, path)
    assert print_program(read_program(path)) == text
    x = calibration["x"][:2]
    small = Config(ibuf_bytes=300, wbuf_bytes=200, obuf_bytes=100)
    np.testing.assert_array_equal(run(read_program(path), {"x": x}, small)[0][cnn.outputs[0].name],
                                  run(program, {"x": x}, small)[0][cnn.outputs[0].name])


def test_damaged_binaries_are_refused_naming_the_file(cnn, calibration, tmp_path):
    data = encode(lower(cnn, calibration=calibration))
    cases = {"bad magic": b"X" + data[1:], "version 9": data[:8] + b"\x09" + data[9:],
             "truncated": data[:-10], "checksum": data[:40] + bytes([data[40] ^ 1]) + data[41:],
             "truncated: 5": data[:5]}
    for expected, damaged in cases.items():
        path = tmp_path / "bad.dpu"
        path.write_bytes(damaged)
        with pytest.raises(BackendError, match=f"bad.dpu: .*{expected.split()[0]}") as info:
            read_program(path)
        assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="cannot read"):
        read_program(tmp_path / "missing.dpu")


def test_asm_errors_name_the_line():
    with pytest.raises(BackendError, match="<asm>: not DPU assembly"):
        parse_program("hello\n")
    with pytest.raises(BackendError, match="<asm>:3: unknown statement"):
        parse_program(".dpu 1\n# comment\nfrobnicate a=1\n")
    with pytest.raises(BackendError, match="<asm>:3: values outside -128..127"):
        parse_program(".dpu 1\nlayer name=f kind=fc inputs=t0 output=t1 kernel=1,1 stride=1,1 "
                      "pads=0,0,0,0 groups=1 relu=0\nweights 1,1 300\nw_exp 0\nbias 0\n")
    with pytest.raises(BackendError, match="<asm>:2: missing o1"):
        parse_program(".dpu 1\nloadw layer=f o0=0\n")


def test_target_interface(cnn, calibration, tmp_path):
    target = parse_target("dpu(mac_rows=8,ibuf_bytes=4096,calibration=percentile)")
    assert (target.mac_rows, target.ibuf_bytes, target.calibration) == (8, 4096, "percentile")
    assert target_class("dpu").extension == ".dpu"
    assert type(target_for_file("model.dpu")).__name__ == "DPUTarget"
    program = target.lower(cnn, calibration)
    path = str(tmp_path / "cnn.dpu")
    target.write(program, path)
    again = target.read(path)
    assert target.asm(again) == target.asm(program)
    assert target.inputs(again) == ["x"]
    outputs, stats = target.run(again, {"x": calibration["x"][:2]})
    assert outputs[cnn.outputs[0].name].shape == (2, 5)
    table = target.format_stats(stats)
    assert table.splitlines()[0].split()[:3] == ["layer", "kind", "instr"]
    assert table.splitlines()[-1].startswith("total")
    summary = target.stats_dict(stats)
    assert summary["total"]["macs"] == sum(s.macs for s in stats) > 0
    assert summary["total"]["energy_pj"] == pytest.approx(sum(s.energy_pj for s in stats))
    assert target.program_stats(program)["layer_count"] == 7
    with pytest.raises(circ.PipelineError):
        parse_target("dpu(mac_rows=0)")


def test_command_line_lowers_and_runs_a_cnn(cnn, calibration, tmp_path, capsys):
    from circ.cli import opt
    from circ.cli import run as run_cli

    model, data, feed = tmp_path / "cnn.onnx", tmp_path / "calib.npz", tmp_path / "in.npz"
    circ.save(cnn, str(model))
    np.savez(data, **calibration)
    x = calibration["x"][:3]
    np.savez(feed, x=x)
    program_path, out_path = tmp_path / "cnn.dpu", tmp_path / "out.npz"
    assert opt.main(["--target=dpu(mac_cols=8)", "--data", str(data), str(model),
                     "-o", str(program_path)]) == 0
    assert run_cli.main([str(program_path), "--input", str(feed), "-o", str(out_path),
                         "--stats"]) == 0
    printed = capsys.readouterr().out
    assert "energy uJ" in printed and "total" in printed
    want = run(lower(cnn, calibration=calibration), {"x": x})[0][cnn.outputs[0].name]
    with np.load(out_path) as outputs:
        np.testing.assert_array_equal(outputs[cnn.outputs[0].name], want)
    assert run_cli.main([str(program_path), "--asm"]) == 0
    assert capsys.readouterr().out.startswith(".dpu 1")
