"""EIE backend: lowering, simulator vs the reference interpreter, asm and binary round trips,
refusals, storage and the cycle model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import circ
from backends.eie.asm import parse_program, print_program
from backends.eie.encode import decode, encode, read_program, write_program
from backends.eie.isa import SpMV
from backends.eie.lower import encode_csc, lower
from backends.eie.sim import Simulator, column_cycles, decode_entries, decode_layer, matvec, run
from circ.errors import BackendError


def build_mlp(sizes=(784, 300, 100, 10), seed=0) -> circ.Graph:
    rng = np.random.default_rng(seed)
    graph = circ.Graph()
    hidden = graph.add_input("x", np.float32, ("N", sizes[0]))
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = graph.add_const(f"w{i}", (rng.standard_normal((fan_out, fan_in)) * 0.1).astype(np.float32))
        bias = graph.add_const(f"b{i}", (rng.standard_normal(fan_out) * 0.1).astype(np.float32))
        hidden = graph.add_node("Gemm", [hidden, weight, bias], {"transB": 1}, name=f"fc{i}").output
        if i < len(sizes) - 2:
            hidden = graph.add_node("Relu", [hidden], name=f"relu{i}").output
    graph.outputs.append(hidden)
    return graph


@pytest.fixture(scope="module")
def mlp():
    return circ.optimize(build_mlp(), "prune(sparsity=0.9),cluster(bits=4)")


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(1).standard_normal((4, 784)).astype(np.float32)


def reference(graph, x):
    return circ.run(graph, {"x": x})[graph.outputs[0].name]


def simulate(program, x, **options):
    """(the output, the SpMV layers' statistics)."""
    outputs, stats = run(program, {"x": x}, **options)
    return outputs[program.outputs[0].name], [s for s in stats if s.kind == "spmv"]


@pytest.mark.parametrize("pes,z_bits", [(64, 4), (1, 2), (7, 3), (3, 4)])
def test_matches_reference_interpreter(mlp, batch, pes, z_bits):
    program = lower(mlp, pes=pes, z_bits=z_bits)
    got, _ = simulate(program, batch)
    # float32 matmul in the reference vs float64 sums rounded once here: a few ulps of the
    # largest partial sums.
    np.testing.assert_allclose(got, reference(mlp, batch), rtol=1e-5, atol=1e-5)


def test_fillers_inserted_when_gaps_exceed_relative_range(mlp):
    program = lower(mlp, pes=1, z_bits=2)
    layer = program.layers[0]
    assert layer.entries > layer.nnz  # 90% sparse columns have gaps far beyond 3
    assert layer.nnz == int(np.count_nonzero(mlp.value("w0").const.indices >= 0))
    assert np.all(layer.rel[layer.rel != layer.filler] < layer.filler)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.integers(1, 9), st.integers(2, 5),
       st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_csc_encoding_decodes_to_the_same_matrix(rows, cols, pes, z_bits, density, seed):
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random((rows, cols)) < density, rng.integers(0, 16, (rows, cols)), -1)
    pe_ptr, col_ptr, code, rel = encode_csc(codes, pes, z_bits)
    layer = SpMV("l", "a0", "a1", rows, cols, pes, 4, z_bits, False, np.arange(16) + 1.0,
                 np.zeros(rows), pe_ptr, col_ptr, code, rel)
    row, col, code, _ = decode_entries(layer)
    matrix = np.full((rows, cols), -1)
    matrix[row, col] = code
    np.testing.assert_array_equal(matrix, codes)
    assert layer.nnz == np.count_nonzero(codes >= 0)
    # the simulator's layout multiplies back to the same matrix
    decoded = decode_layer(layer)
    dense = np.where(codes >= 0, codes + 1.0, 0.0)
    x = np.random.default_rng(seed).standard_normal((3, cols)).astype(np.float32)
    np.testing.assert_allclose(matvec(decoded, layer, x), x @ dense.T, rtol=1e-5, atol=1e-5)


def test_csc_layout_matches_paper_interleaving(mlp):
    program = lower(mlp, pes=4)
    layer = program.layers[1]
    codes = mlp.value("w1").const.indices  # (100, 300), Gemm transB=1: rows are outputs
    for pe in range(4):
        stream = slice(layer.pe_ptr[pe], layer.pe_ptr[pe + 1])
        for col in (0, 17, 299):
            begin, end = layer.col_ptr[pe, col], layer.col_ptr[pe, col + 1]
            rel = layer.rel[stream][begin:end]
            code = layer.code[stream][begin:end]
            rows = pe + 4 * (np.cumsum(np.where(rel == layer.filler, rel, rel + 1)) - 1)
            real = rel != layer.filler
            expected_rows = np.flatnonzero(codes[:, col] >= 0)
            expected_rows = expected_rows[expected_rows % 4 == pe]
            np.testing.assert_array_equal(rows[real], expected_rows)
            np.testing.assert_array_equal(code[real], codes[expected_rows, col])


def test_matmul_and_gemm_options():
    rng = np.random.default_rng(3)
    graph = circ.Graph()
    x = graph.add_input("x", np.float32, ("N", 40))
    w0 = graph.add_const("w0", rng.standard_normal((40, 30)).astype(np.float32))
    hidden = graph.add_node("MatMul", [x, w0], name="mm").output
    hidden = graph.add_node("Relu", [hidden], name="r").output
    w1 = graph.add_const("w1", rng.standard_normal((30, 20)).astype(np.float32))
    b1 = graph.add_const("b1", rng.standard_normal((1, 20)).astype(np.float32))
    out = graph.add_node("Gemm", [hidden, w1, b1], {"alpha": 0.5, "beta": 2.0}, name="g").output
    graph.outputs.append(out)
    graph = circ.optimize(graph, "prune(sparsity=0.7),cluster(bits=3)")
    x_value = rng.standard_normal((5, 40)).astype(np.float32)
    program = lower(graph, pes=4, v_bits=3)
    assert [layer.relu for layer in program.layers] == [True, False]
    got, _ = simulate(program, x_value)
    np.testing.assert_allclose(got, reference(graph, x_value), rtol=1e-5, atol=1e-5)


def test_onnx_model_with_matmul_add_relu(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(5)
    F = onnx.TensorProto.FLOAT
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in [("w0", (64, 32)), ("b0", (32,)), ("w1", (32, 10)), ("b1", (1, 10))]]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"),
             helper.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
             helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["b1", "m1"], ["y"], name="add1")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, ["N", 64])],
                              [helper.make_tensor_value_info("y", F, ["N", 10])], inits)
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    compressed = circ.optimize(circ.load(str(path)), "prune(sparsity=0.8),cluster(bits=4)")
    program = lower(compressed, pes=8)
    assert [(layer.layer, layer.relu) for layer in program.layers] == [("mm0", True), ("mm1", False)]
    x = rng.standard_normal((6, 64)).astype(np.float32)
    got, _ = simulate(program, x)
    np.testing.assert_allclose(got, reference(compressed, x), rtol=1e-5, atol=1e-5)


def test_refuses_convolution_naming_node():
    graph = circ.Graph()
    x = graph.add_input("x", np.float32, ("N", 1, 8, 8))
    w = graph.add_const("w", np.ones((2, 1, 3, 3), np.float32))
    graph.outputs.append(graph.add_node("Conv", [x, w], name="conv1").output)
    with pytest.raises(BackendError, match="Conv node 'conv1'.*not clustered"):
        lower(graph)
    graph2 = circ.Graph()
    x = graph2.add_input("x", np.float32, ("N", 8))
    graph2.outputs.append(graph2.add_node("Sigmoid", [x], name="sig").output)
    with pytest.raises(BackendError, match="Sigmoid node 'sig'.*only Gemm/MatMul/Conv"):
        lower(graph2)


def test_refuses_unclustered_and_too_many_clusters(mlp):
    with pytest.raises(BackendError, match="Gemm node 'fc0'.*not clustered"):
        lower(build_mlp())
    with pytest.raises(BackendError, match="Gemm node 'fc0'.*16 clusters do not fit 3-bit"):
        lower(mlp, v_bits=3)
    with pytest.warns(UserWarning, match="widened from 3 to 4 bits"):
        program = lower(mlp, v_bits=3, widen=True)
    assert all(layer.v_bits == 4 for layer in program.layers)


def test_refuses_relu_not_after_layer():
    graph = circ.Graph()
    x = graph.add_input("x", np.float32, ("N", 8))
    w = graph.add_const("w", np.ones((4, 8), np.float32))
    hidden = graph.add_node("Gemm", [x, w], {"transB": 1}, name="fc").output
    graph.outputs.append(graph.add_node("Relu", [x], name="early").output)
    graph = circ.optimize(graph, "cluster(bits=2)")
    with pytest.raises(BackendError, match="Relu node 'early': an Add of a constant bias or a Relu must directly follow"):
        lower(graph)
    assert hidden.producer.name == "fc"
    residual = circ.Graph()
    x = residual.add_input("x", np.float32, ("N", 8))
    w = residual.add_const("w", np.ones((8, 8), np.float32))
    hidden = residual.add_node("Gemm", [x, w], {"transB": 1}, name="fc").output
    residual.outputs.append(residual.add_node("Add", [hidden, x], name="skip").output)
    residual = circ.optimize(residual, "cluster(bits=2)")
    with pytest.raises(BackendError, match="Add node 'skip'"):
        lower(residual)


def test_activation_sparsity_zero_input(mlp):
    program = lower(mlp)
    zeros = np.zeros((1, 784), np.float32)
    got, stats = simulate(program, zeros)
    np.testing.assert_allclose(got, reference(mlp, zeros), rtol=1e-6, atol=1e-6)
    assert stats[0].active_columns == 0 and stats[0].work == 0 and stats[0].float_mults == 0
    assert stats[0].cycles == -(-300 // 64)  # only the bias/ReLU/write-back pass


def test_only_nonzero_activations_are_broadcast(mlp, batch):
    program = lower(mlp)
    relu_batch = np.maximum(batch, 0)
    _, stats = simulate(program, relu_batch)
    assert stats[0].active_columns == np.count_nonzero(relu_batch)
    codes = mlp.value("w0").const.indices
    assert stats[0].float_mults == sum(int(np.count_nonzero(codes[:, row != 0] >= 0)) for row in relu_batch)


def test_asm_round_trip(mlp, batch):
    program = lower(mlp, pes=8, z_bits=3)
    text = print_program(program)
    parsed = parse_program(text)
    assert print_program(parsed) == text
    np.testing.assert_array_equal(simulate(parsed, batch)[0], simulate(program, batch)[0])


def test_asm_errors_name_line():
    with pytest.raises(BackendError, match="prog.s: not EIE assembly"):
        parse_program("load x -> a0 size=3\n", "prog.s")
    with pytest.raises(BackendError, match="prog.s:2: unknown statement"):
        parse_program(".eie 2\nfrobnicate a b\n", "prog.s")
    with pytest.raises(BackendError, match="prog.s:3: expected 4 values"):
        parse_program(".eie 2\nspmv l a0 -> a1 rows=1 cols=1 pes=1 v=2 z=2 relu=0\n codebook 1 2\n",
                      "prog.s")


def test_binary_round_trip(mlp, batch, tmp_path):
    program = lower(mlp, pes=16)
    path = tmp_path / "mlp.eie"
    write_program(program, path)
    loaded = read_program(path)
    assert print_program(loaded) == print_program(program)
    assert print_program(decode(encode(program))) == print_program(program)
    np.testing.assert_array_equal(simulate(loaded, batch)[0], simulate(program, batch)[0])


def test_binary_size_is_modelled_storage(mlp):
    program = lower(mlp)
    data = encode(program)
    payload_floats = sum(4 * (layer.codebook.size + layer.bias.size) for layer in program.layers)
    overhead = len(data) - sum(layer.storage_bytes for layer in program.layers) - payload_floats
    assert 0 < overhead < 200


def test_truncated_or_flipped_binary_is_refused(mlp, tmp_path):
    data = encode(lower(mlp, pes=4))
    path = tmp_path / "bad.eie"
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(BackendError, match="bad.eie: .*(truncated|not an EIE)"):
            read_program(path)
    rng = np.random.default_rng(0)
    for position in [8, 20, len(data) - 2, *rng.integers(0, len(data), 20)]:
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(flipped))
        with pytest.raises(BackendError, match="bad.eie"):
            read_program(path)
    with pytest.raises(BackendError, match="missing.eie: cannot read"):
        read_program(tmp_path / "missing.eie")


def test_storage_bytes_per_nonzero(mlp, batch):
    program = lower(mlp, pes=64)
    layer = program.layers[0]
    # 8 bits per entry (4-bit index + 4-bit relative row) plus 64 x 785 16-bit pointers.
    assert layer.storage_bytes == layer.entries + 64 * 785 * 2
    _, stats = simulate(program, batch)
    assert stats[0].bytes_per_nonzero == pytest.approx(layer.storage_bytes / layer.nnz)
    dense_program = lower(mlp, pes=1)
    # one PE: pointers are cheap, entries dominate (fillers included)
    assert 1.0 <= dense_program.layers[0].storage_bytes / dense_program.layers[0].nnz < 1.5


def test_column_cycles_hand_computed():
    # PE 0 has 4 entries in column 0; PE 1 one each in columns 1 and 2. With a one-slot FIFO
    # the broadcast of column 2 waits until PE 0 dequeues column 1 (cycle 4).
    work = np.array([[4, 0, 0], [0, 1, 1]])
    assert column_cycles(work, 1) == 5
    assert column_cycles(work, 2) == 4
    assert column_cycles(np.zeros((3, 0), dtype=np.int64), 4) == 0
    assert column_cycles(np.array([[2, 3]]), 1) == 5


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_deeper_fifo_never_slower(pes, columns, seed):
    work = np.random.default_rng(seed).integers(0, 5, (pes, columns))
    cycles = [column_cycles(work, depth) for depth in (1, 2, 3, 5, 8, 16)]
    assert cycles == sorted(cycles, reverse=True)
    assert cycles[-1] >= max(int(work.sum(axis=1).max()), columns)


def test_cycle_model_pes_and_fifo(mlp, batch):
    x = np.maximum(batch, 0)
    cycles = {pes: simulate(lower(mlp, pes=pes), x)[1][0].cycles for pes in (4, 16, 64)}
    assert cycles[4] > cycles[16] > cycles[64]
    program = lower(mlp, pes=64)
    efficiency = [Simulator(program, fifo_depth=depth).run({"x": x})[1][1].efficiency
                  for depth in (1, 2, 4, 8, 16)]
    assert efficiency == sorted(efficiency)
    assert efficiency[0] < efficiency[-1] <= 1.0


def test_energy_accounts_operations(mlp, batch):
    _, stats = simulate(lower(mlp), np.maximum(batch, 0))
    layer = stats[0]
    assert layer.energy_pj > layer.float_mults * (3.7 + 0.9)
    assert layer.dram_read_bytes == 0  # 784-300-100-10 fits the 8 MB SRAM
    _, spilled = simulate(lower(mlp), np.maximum(batch, 0), sram_bytes=1000)
    assert spilled[0].dram_read_bytes == 4 * layer.storage_bytes  # once per sample
    assert spilled[0].energy_pj > layer.energy_pj


def test_sim_rejects_bad_feeds(mlp):
    program = lower(mlp)
    with pytest.raises(circ.DataError, match="missing input 'x'"):
        run(program, {})
    with pytest.raises(circ.DataError, match=r"shape \(batch, 784\)"):
        run(program, {"x": np.zeros((2, 5), np.float32)})
