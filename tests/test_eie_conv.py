"""EIE backend on convolutional nets: im2col lowering, host pooling steps, their asm and
binary forms, and the batched cycle model against a plain sequential transcription."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import circ
from backends.eie.asm import parse_program, print_program
from backends.eie.encode import decode, encode
from backends.eie.isa import Im2Col, Pool, Unpatch, Window
from backends.eie.lower import lower
from backends.eie.sim import column_cycles_batch, run
from circ.errors import BackendError


def build_lenet(seed=0, pool2="AveragePool", pads=(2, 2, 2, 2), flatten="Flatten") -> circ.Graph:
    """LeNet-5's shape on 1x16x16 inputs: conv 6 5x5 (padded) + relu, max pool, conv 16 3x3
    + bias Add + relu, a second pool, flatten, fc 32 + relu, fc 10."""
    rng = np.random.default_rng(seed)
    graph = circ.Graph()

    def const(name, shape, scale=0.3):
        return graph.add_const(name, (scale * rng.standard_normal(shape)).astype(np.float32))

    x = graph.add_input("x", np.float32, ("N", 1, 16, 16))
    h = graph.add_node("Conv", [x, const("w1", (6, 1, 5, 5)), const("b1", (6,))],
                       {"kernel_shape": [5, 5], "pads": list(pads)}, name="conv1").output
    h = graph.add_node("Relu", [h], name="relu1").output
    h = graph.add_node("MaxPool", [h], {"kernel_shape": [2, 2], "strides": [2, 2]}, name="pool1").output
    h = graph.add_node("Conv", [h, const("w2", (16, 6, 3, 3))], {"kernel_shape": [3, 3]},
                       name="conv2").output
    h = graph.add_node("Add", [h, const("b2", (16, 1, 1))], name="bias2").output
    h = graph.add_node("Relu", [h], name="relu2").output
    h = graph.add_node(pool2, [h], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]}
                       if pool2 == "AveragePool" else {}, name="pool2").output
    if flatten == "Flatten":
        h = graph.add_node("Flatten", [h], {"axis": 1}, name="flatten").output
    else:
        shape = graph.add_const("shape", np.array([0, -1], np.int64))
        h = graph.add_node("Reshape", [h, shape], name="flatten").output
    features = 16 * 4 * 4 if pool2 == "AveragePool" else 16
    h = graph.add_node("Gemm", [h, const("w3", (32, features), 0.1), const("b3", (32,))],
                       {"transB": 1}, name="fc1").output
    h = graph.add_node("Relu", [h], name="relu3").output
    h = graph.add_node("Gemm", [h, const("w4", (10, 32)), const("b4", (10,))], {"transB": 1},
                       name="fc2").output
    graph.outputs.append(h)
    return circ.optimize(graph, "")


@pytest.fixture(scope="module")
def lenet():
    return circ.optimize(build_lenet(), "prune(sparsity=0.6),cluster(bits=4)")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).standard_normal((3, 1, 16, 16)).astype(np.float32)


def reference(graph, x):
    return circ.run(graph, {"x": x})[graph.outputs[0].name]


@pytest.mark.parametrize("pes", [64, 5])
def test_small_cnn_matches_reference_interpreter(lenet, images, pes):
    program = lower(lenet, pes=pes)
    kinds = [type(ins).__name__ for ins in program.instructions]
    assert kinds == ["Load", "Im2Col", "SpMV", "Unpatch", "Pool", "Im2Col", "SpMV", "Unpatch",
                     "Pool", "SpMV", "SpMV", "Store"]
    outputs, stats = run(program, {"x": images})
    np.testing.assert_allclose(outputs[lenet.outputs[0].name], reference(lenet, images),
                               rtol=1e-4, atol=1e-5)
    conv1 = [s for s in stats if s.kind == "spmv"][0]
    assert conv1.instructions == 3 * 16 * 16  # one matvec per output pixel
    assert conv1.cycles > 0 and 0 < conv1.efficiency <= 1


def test_global_average_pool_and_max_pool_variants(images):
    graph = circ.optimize(build_lenet(seed=4, pool2="GlobalAveragePool", pads=(1, 1, 1, 1)),
                          "prune(sparsity=0.5),cluster(bits=3)")
    program = lower(graph, pes=8, v_bits=3)
    got, _ = run(program, {"x": images})
    np.testing.assert_allclose(got[graph.outputs[0].name], reference(graph, images),
                               rtol=1e-4, atol=1e-5)


def test_conv_output_as_graph_output_keeps_its_shape(images):
    graph = circ.Graph()
    x = graph.add_input("x", np.float32, ("N", 1, 16, 16))
    w = graph.add_const("w", np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32))
    graph.outputs.append(graph.add_node("Conv", [x, w], {"strides": [2, 2], "dilations": [2, 2],
                                                         "auto_pad": "SAME_UPPER"}, name="c").output)
    graph = circ.optimize(graph, "cluster(bits=2)")
    got, _ = run(lower(graph, pes=3, v_bits=2), {"x": images})
    expected = reference(graph, images)
    assert got[graph.outputs[0].name].shape == expected.shape == (3, 4, 8, 8)
    np.testing.assert_allclose(got[graph.outputs[0].name], expected, rtol=1e-5, atol=1e-5)


def test_reshape_to_rows_is_free_and_other_reshapes_are_refused(images):
    graph = circ.optimize(build_lenet(seed=5, flatten="Reshape"), "prune(sparsity=0.5),cluster(bits=4)")
    program = lower(graph, pes=8)
    assert "Reshape" not in [type(ins).__name__ for ins in program.instructions]
    got, _ = run(program, {"x": images})
    np.testing.assert_allclose(got[graph.outputs[0].name], reference(graph, images), rtol=1e-4,
                               atol=1e-5)
    odd = circ.Graph()
    x = odd.add_input("x", np.float32, ("N", 1, 4, 4))
    odd.outputs.append(odd.add_node("Reshape", [x, odd.add_const("s", np.array([-1, 4], np.int64))],
                                    name="rows4").output)
    with pytest.raises(BackendError, match="Reshape node 'rows4': only a Flatten or Reshape"):
        lower(circ.optimize(odd, ""))


def test_conv_refusals_name_the_node(lenet):
    grouped = circ.Graph()
    x = grouped.add_input("x", np.float32, ("N", 4, 8, 8))
    w = grouped.add_const("w", np.ones((4, 2, 3, 3), np.float32))
    grouped.outputs.append(grouped.add_node("Conv", [x, w], {"group": 2}, name="gconv").output)
    grouped = circ.optimize(grouped, "cluster(bits=2)")
    with pytest.raises(BackendError, match="Conv node 'gconv': grouped convolutions"):
        lower(grouped)
    ceil = build_lenet()
    ceil.node("pool1").attrs["ceil_mode"] = 1
    ceil.node("pool1").attrs["kernel_shape"] = [3, 3]
    ceil = circ.optimize(ceil, "cluster(bits=4)")
    with pytest.raises(BackendError, match="MaxPool node 'pool1': ceil_mode=1"):
        lower(ceil)


def test_conv_program_asm_and_binary_round_trip(lenet, images):
    program = lower(lenet, pes=4)
    text = print_program(program)
    assert "im2col a0 -> p1 image=1x16x16 kernel=5x5 stride=1x1 pads=2x2x2x2 dilation=1x1" in text
    parsed = parse_program(text)
    assert print_program(parsed) == text
    again = decode(encode(program))
    assert print_program(again) == text
    first = run(program, {"x": images})[0]
    for other in (parsed, again):
        for name, array in run(other, {"x": images})[0].items():
            np.testing.assert_array_equal(array, first[name])


def test_window_problems_refused_in_text_and_at_run():
    with pytest.raises(BackendError, match="prog.s:2: a pad is as large as the window"):
        parse_program(".eie 2\nim2col a0 -> p1 image=1x4x4 kernel=2x2 stride=1x1 pads=2x0x0x0 "
                      "dilation=1x1\n", "prog.s")
    window = Window(1, 4, 4, (5, 5), (1, 1), (0, 0, 0, 0))
    assert window.problem() == "the window is larger than the padded image"
    from backends.eie.isa import Load, Program, Store

    bad = Program([Load("x", "a0", (1, 4, 4)), Im2Col("a0", "p1", window), Store("p1", "y", (25,))])
    with pytest.raises(BackendError, match="Im2Col -> 'p1': the window is larger"):
        run(bad, {"x": np.zeros((1, 1, 4, 4), np.float32)})
    unpatch = Program([Load("x", "a0", (5,)), Unpatch("a0", "a1", 2), Store("a1", "y", (5,))])
    with pytest.raises(BackendError, match="Unpatch -> 'a1': 3 rows are not whole images"):
        run(unpatch, {"x": np.zeros((3, 5), np.float32)})
    pool = Program([Load("x", "a0", (8,)), Pool("a0", "a1", "max", Window(1, 2, 2, (1, 1), (1, 1),
                                                                             (0, 0, 0, 0))),
                    Store("a1", "y", (4,))])
    with pytest.raises(BackendError, match="Pool -> 'a1': input has 8 values per sample, not 1x2x2"):
        run(pool, {"x": np.zeros((1, 8), np.float32)})


def sequential_cycles(work: np.ndarray, active_row: np.ndarray, depth: int) -> int:
    """The cycle model written as the hardware runs it: one broadcast per loop step."""
    work = work[:, active_row]
    pes, columns = work.shape
    if columns == 0:
        return 0
    starts = np.empty((columns, pes), dtype=np.int64)
    finish = np.zeros(pes, dtype=np.int64)
    broadcast = -1
    for k in range(columns):
        broadcast += 1
        if k >= depth:
            broadcast = max(broadcast, int(starts[k - depth].max()))  # wait for a free slot
        starts[k] = np.maximum(finish, broadcast)
        finish = starts[k] + work[:, k]
    return int(max(finish.max(), broadcast + 1))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 7), st.integers(1, 14), st.integers(1, 6), st.floats(0, 1),
       st.integers(0, 2**32 - 1))
def test_batched_cycle_model_equals_sequential(pes, cols, depth, density, seed):
    rng = np.random.default_rng(seed)
    work = rng.integers(0, 6, (pes, cols))
    active = rng.random((6, cols)) < density
    expected = [sequential_cycles(work, row, depth) for row in active]
    assert column_cycles_batch(work, active, depth).tolist() == expected
