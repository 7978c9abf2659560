import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from circ.errors import ModelError
from circ.graph import Graph
from opcheck import check_op

rng = np.random.default_rng(0)
TOL = dict(rtol=1e-4, atol=1e-4)  # float32 sums of a few hundred products, different orders


def _conv_inputs(x_shape, w_shape, bias=True):
    inputs = {"x": rng.standard_normal(x_shape).astype(np.float32),
              "w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        inputs["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    return inputs


CONV_2D = [
    ({}, (4, 6, 3, 3)),
    ({"pads": [1, 1, 1, 1]}, (4, 6, 3, 3)),
    ({"pads": [1, 2, 0, 1], "strides": [2, 1]}, (4, 6, 3, 2)),
    ({"strides": [2, 2], "dilations": [2, 1], "pads": [2, 1, 2, 1]}, (5, 6, 3, 3)),
    ({"group": 2, "dilations": [2, 2]}, (4, 3, 3, 3)),
    ({"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}, (6, 2, 3, 3)),
    ({"group": 6, "pads": [1, 1, 1, 1]}, (6, 1, 3, 3)),  # depthwise
    ({"group": 6, "strides": [2, 2], "pads": [1, 1, 1, 1]}, (12, 1, 3, 3)),  # depthwise x2
    ({"group": 6, "strides": [2, 1], "dilations": [1, 2]}, (6, 1, 3, 3)),  # uneven strides
    ({"group": 6, "auto_pad": "SAME_LOWER", "strides": [2, 2]}, (6, 1, 4, 4)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 3]}, (5, 6, 4, 3)),
    ({"auto_pad": "SAME_UPPER"}, (5, 6, 3, 3)),
    ({"auto_pad": "VALID", "strides": [2, 3]}, (5, 6, 2, 1)),
    ({}, (7, 6, 1, 1)),  # pointwise
    ({"strides": [2, 2]}, (7, 6, 1, 1)),  # strided pointwise (ResNet downsample)
    ({"group": 2, "pads": [1, 0, 1, 0]}, (4, 3, 1, 1)),  # grouped pointwise with pads
    ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (4, 6, 3, 3)),
]


@pytest.mark.parametrize("attributes, w_shape", CONV_2D)
@pytest.mark.parametrize("batch", [1, 2])
def test_conv_2d(attributes, w_shape, batch):
    check_op("Conv", _conv_inputs((batch, 6, 9, 10), w_shape), attributes, consts={"w", "b"}, **TOL)


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 22])
def test_conv_opsets_and_no_bias(opset):
    check_op("Conv", _conv_inputs((2, 4, 8, 8), (3, 4, 3, 3), bias=False), {"pads": [1, 1, 1, 1]},
             consts={"w"}, opset=opset, **TOL)


@pytest.mark.parametrize("attributes, w_shape", [
    ({}, (4, 3, 3)),
    ({"strides": [2], "pads": [1, 2], "dilations": [2]}, (4, 3, 3)),
    ({"group": 3, "auto_pad": "SAME_UPPER"}, (3, 1, 5)),
    ({"auto_pad": "SAME_LOWER", "strides": [3]}, (4, 3, 2)),
])
def test_conv_1d(attributes, w_shape):
    check_op("Conv", _conv_inputs((2, 3, 17), w_shape), attributes, consts={"w", "b"}, **TOL)


@pytest.mark.parametrize("attributes, w_shape", [
    ({"pads": [1, 1, 1, 1, 1, 1]}, (4, 3, 3, 3, 3)),
    ({"strides": [2, 1, 2], "dilations": [1, 2, 1]}, (4, 3, 2, 3, 2)),
    ({"group": 3, "pads": [1, 0, 1, 1, 0, 1]}, (3, 1, 3, 3, 3)),
])
def test_conv_3d(attributes, w_shape):
    check_op("Conv", _conv_inputs((1, 3, 6, 7, 5), w_shape), attributes, consts={"w", "b"}, **TOL)


@pytest.mark.parametrize("attributes, w_shape", [
    ({"pads": [1, 1, 1, 1]}, (4, 6, 3, 3)),
    ({"group": 2, "strides": [2, 1], "pads": [0, 1, 2, 1]}, (4, 3, 3, 2)),
])
def test_conv_in_row_chunks(monkeypatch, attributes, w_shape):
    from circ.ops import conv

    monkeypatch.setattr(conv, "IM2COL_CHUNK_BYTES", 2000)  # a few output rows per chunk
    check_op("Conv", _conv_inputs((2, 6, 9, 10), w_shape), attributes, consts={"w", "b"}, **TOL)


def test_conv_symbolic_batch_and_runtime_weights():
    inputs = _conv_inputs((3, 6, 9, 10), (4, 6, 3, 3))
    check_op("Conv", inputs, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, consts={"b"},
             batch_symbolic=True, **TOL)


def test_conv_stays_float32_and_same_stride1_keeps_symbolic_dims():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, ["N", 3, "H", "W"])
    w = graph.add_const("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    same = graph.add_node("Conv", [x, w], {"auto_pad": "SAME_UPPER"})
    assert same.output.shape == ("N", 8, "H", "W")
    strided = graph.add_node("Conv", [x, w], {"strides": [2, 2], "pads": [1, 1, 1, 1]})
    assert strided.output.shape == ("N", 8, None, None)
    assert strided.output.dtype == np.float32


def test_conv_channel_or_kernel_mismatch_is_a_model_error():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", np.float32, [1, 5, 8, 8])
    w = graph.add_const("w", np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(ModelError, match="Conv node .* 5 channels"):
        graph.add_node("Conv", [x, w], name="conv1")
    x3 = graph.add_input("x3", np.float32, [1, 3, 8, 8])
    with pytest.raises(ModelError, match="kernel_shape .* disagrees"):
        graph.add_node("Conv", [x3, w], {"kernel_shape": [5, 5]}, name="conv2")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv_matches_onnxruntime_on_random_configs(data):
    rank = data.draw(st.integers(1, 2), label="spatial rank")
    group = data.draw(st.sampled_from([1, 2, 3]), label="group")
    per_group_in = data.draw(st.integers(1, 3), label="channels per group")
    per_group_out = data.draw(st.integers(1, 3), label="outputs per group")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    auto_pad = data.draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad.startswith("SAME"):
        dilations = [1] * rank  # onnxruntime refuses dilated SAME padding
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    sizes = [data.draw(st.integers(e, e + 6)) for e in extents]
    attributes = {"group": group, "strides": strides, "dilations": dilations, "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attributes["pads"] = [data.draw(st.integers(0, e - 1)) for e in extents * 2]
    batch = data.draw(st.integers(1, 2), label="batch")
    inputs = _conv_inputs([batch, group * per_group_in] + sizes,
                          [group * per_group_out, per_group_in] + kernel,
                          bias=data.draw(st.booleans(), label="bias"))
    check_op("Conv", inputs, attributes, consts={"w", "b"}, **TOL)


# ------------------------------------------------------------------ ConvTranspose

CONV_TRANSPOSE_2D = [
    ({}, (6, 4, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 0, 1, 0], "output_padding": [1, 0]}, (6, 2, 3, 3)),
    ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (6, 3, 4, 4)),
    ({"group": 2, "dilations": [2, 1]}, (6, 3, 3, 3)),
    ({"group": 6, "strides": [2, 2]}, (6, 1, 3, 3)),
    ({"output_shape": [20, 20], "strides": [2, 2]}, (6, 2, 3, 3)),
    ({"output_shape": [18, 19], "strides": [2, 2]}, (6, 2, 3, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (6, 2, 3, 3)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (6, 2, 3, 3)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2], "output_shape": [17, 22]}, (6, 2, 4, 3)),
    ({"auto_pad": "VALID", "strides": [3, 2]}, (6, 2, 2, 2)),
    ({}, (6, 5, 1, 1)),
    ({"strides": [2, 2]}, (6, 5, 2, 2)),  # the UNet upsampler
]


@pytest.mark.parametrize("attributes, w_shape", CONV_TRANSPOSE_2D)
@pytest.mark.parametrize("batch", [1, 2])
def test_conv_transpose_2d(attributes, w_shape, batch):
    inputs = _conv_inputs((batch, 6, 9, 10), w_shape, bias=False)
    inputs["b"] = rng.standard_normal(w_shape[1] * attributes.get("group", 1)).astype(np.float32)
    check_op("ConvTranspose", inputs, attributes, consts={"w", "b"}, **TOL)


@pytest.mark.parametrize("opset", [9, 11, 17, 22])
def test_conv_transpose_1d_and_3d(opset):
    check_op("ConvTranspose", _conv_inputs((2, 3, 7), (3, 2, 4), bias=False),
             {"strides": [3], "pads": [1, 2]}, consts={"w"}, opset=opset, **TOL)
    check_op("ConvTranspose", _conv_inputs((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), bias=False),
             {"strides": [2, 1, 2], "output_padding": [1, 0, 0]}, consts={"w"}, opset=opset, **TOL)


def test_conv_transpose_symbolic_batch():
    inputs = _conv_inputs((2, 4, 5, 5), (4, 3, 3, 3), bias=False)
    check_op("ConvTranspose", inputs, {"strides": [2, 2]}, consts={"w"}, batch_symbolic=True, **TOL)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv_transpose_matches_onnxruntime_on_random_configs(data):
    rank = data.draw(st.integers(1, 2), label="spatial rank")
    group = data.draw(st.sampled_from([1, 2]), label="group")
    per_group_in = data.draw(st.integers(1, 3), label="channels per group")
    per_group_out = data.draw(st.integers(1, 3), label="outputs per group")
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    attributes = {"group": group, "strides": strides, "dilations": dilations,
                  "output_padding": [data.draw(st.integers(0, s - 1)) for s in strides],
                  "pads": [data.draw(st.integers(0, e - 1)) for e in extents * 2]}
    sizes = [data.draw(st.integers(1, 6)) for _ in range(rank)]
    pads = attributes["pads"]
    assume(all(s * (n - 1) + p + e - pads[i] - pads[i + rank] >= 1 for i, (s, n, p, e) in
               enumerate(zip(strides, sizes, attributes["output_padding"], extents))))
    inputs = _conv_inputs([data.draw(st.integers(1, 2)), group * per_group_in] + sizes,
                          [group * per_group_in, per_group_out] + kernel, bias=False)
    check_op("ConvTranspose", inputs, attributes, consts={"w"}, **TOL)


# ------------------------------------------------------------------ kernel layouts and gradients
#
# The im2col kernel builds channels-last or channels-first column matrices (whichever copies
# faster), reads inputs in either memory order and works in chunks of the batch or of output
# rows. Every combination must give the same numbers, forward and backward: checked here
# against torch in float64, forcing each layout and chunking.

LAYOUT_CASES = [  # x shape, w shape, attributes
    ((2, 6, 9, 10), (4, 6, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 6, 9, 10), (4, 3, 3, 2), {"group": 2, "strides": [2, 1], "pads": [0, 1, 2, 1]}),
    ((2, 6, 9, 10), (5, 6, 3, 3), {"strides": [2, 2], "dilations": [2, 1], "pads": [2, 1, 2, 1]}),
    ((3, 1, 12, 12), (4, 1, 5, 5), {}),  # LeNet's first layer, small
    ((2, 4, 9), (6, 4, 3), {"strides": [2], "pads": [1, 2], "dilations": [2]}),
    ((1, 3, 5, 6, 5), (4, 3, 2, 2, 2), {"pads": [1, 0, 1, 0, 1, 1]}),
    ((2, 6, 5, 5), (8, 6, 1, 1), {}),
    ((2, 6, 5, 5), (8, 3, 1, 1), {"group": 2, "strides": [2, 2]}),
]


class _Node:
    """Just what the Conv kernel and gradient read from a node."""

    def __init__(self, attributes):
        self.attrs, self.op = attributes, "Conv"


def _torch_conv(x, w, bias, attributes, cotangent):
    """Output and gradients (x, w, bias) of the same Conv computed by torch."""
    import torch
    import torch.nn.functional as F

    rank = x.ndim - 2
    pads = attributes.get("pads", [0] * 2 * rank)
    torch_pads = []
    for axis in reversed(range(rank)):  # F.pad lists the last axis first
        torch_pads += [pads[axis], pads[axis + rank]]
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, bias))
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    out = conv(F.pad(tx, torch_pads), tw, tb, stride=attributes.get("strides", 1),
               dilation=attributes.get("dilations", 1), groups=attributes.get("group", 1))
    out.backward(torch.tensor(cotangent))
    return out.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def _channels_last_copy(x):
    """``x`` with the same shape and values, its memory ordered (N, spatial..., C)."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)


@pytest.mark.parametrize("x_shape, w_shape, attributes", LAYOUT_CASES)
@pytest.mark.parametrize("columns", ["channels_last", "channels_first"])
def test_conv_layouts_and_chunks_match_torch(monkeypatch, x_shape, w_shape, attributes, columns):
    from circ.ops import conv

    for choice in ("_prefers_channels_last", "_gradient_prefers_channels_last"):
        monkeypatch.setattr(conv, choice, lambda *args: columns == "channels_last")
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    bias = rng.standard_normal(w_shape[0])
    node = _Node(attributes)
    out = conv._conv(node, x, w, bias)
    cotangent = rng.standard_normal(out.shape)
    want = _torch_conv(x, w, bias, attributes, cotangent)
    for chunk_bytes in (conv.IM2COL_CHUNK_BYTES, 1, 3000):  # whole batch, single rows, a few
        monkeypatch.setattr(conv, "IM2COL_CHUNK_BYTES", chunk_bytes)
        for layout, array in (("(N, C, ...)", x), ("channels last", _channels_last_copy(x))):
            got = [conv._conv(node, array, w, bias)]
            got += conv._conv_grad(node, [array, w, bias], got, [cotangent])
            for name, value, expected in zip(("output", "grad x", "grad w", "grad bias"), got, want):
                np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-10,
                                           err_msg=f"{name}, {layout} input, chunks of {chunk_bytes} B")


def test_conv_prefers_long_copy_runs():
    """LeNet's layers: one input channel reads output rows (channels first); twenty read
    kernel rows of all channels (channels last). A strided RGB stem copies its columns
    channels last but scatters its input's gradient channels first."""
    from circ.ops.conv import (
        _gradient_prefers_channels_last,
        _prefers_channels_last,
        window,
    )

    lenet1 = (np.empty((64, 1, 28, 28)), np.empty((20, 1, 5, 5)))
    lenet2 = (np.empty((64, 20, 12, 12)), np.empty((50, 20, 5, 5)))
    node = _Node({})
    assert not _prefers_channels_last(*lenet1, window(node, (28, 28), (5, 5)), 1)
    assert _prefers_channels_last(*lenet2, window(node, (12, 12), (5, 5)), 1)
    assert _gradient_prefers_channels_last(*lenet2, window(node, (12, 12), (5, 5)), 1)
    late_resnet = (np.empty((1, 512, 7, 7)), np.empty((512, 512, 3, 3)))  # 49 pixels < 512 outputs
    assert not _prefers_channels_last(*late_resnet, window(_Node({"pads": [1] * 4}), (7, 7), (3, 3)), 1)
    stem = (np.empty((8, 3, 224, 224)), np.empty((64, 3, 7, 7)))
    stem_window = window(_Node({"pads": [3] * 4, "strides": [2, 2]}), (224, 224), (7, 7))
    assert _prefers_channels_last(*stem, stem_window, 1)  # 21-element window rows
    assert not _gradient_prefers_channels_last(*stem, stem_window, 1)  # 3-element scatter runs


def test_conv_float32_lenet_layers_match_torch():
    from circ.ops import conv

    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    for w_shape in [(20, 1, 5, 5), (50, 20, 5, 5)]:
        w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
        bias = rng.standard_normal(w_shape[0]).astype(np.float32)
        out = conv._conv(_Node({}), x, w, bias)
        assert out.dtype == np.float32
        cotangent = rng.standard_normal(out.shape).astype(np.float32)
        grads = conv._conv_grad(_Node({}), [x, w, bias], [out], [cotangent])
        want = _torch_conv(x, w, bias, {}, cotangent)
        for value, expected in zip([out] + grads, want):
            assert value.dtype == np.float32
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        x = out[:, :, :12, :12]  # a channels-last view, as the next layer gets it


def test_conv_scratch_buffers_are_per_thread():
    """Column matrices live in per-thread scratch buffers: convs running at once in two
    threads must not share them."""
    from concurrent.futures import ThreadPoolExecutor

    from circ.ops import conv

    cases = [(rng.standard_normal((16, 6, 20, 20)).astype(np.float32),
              rng.standard_normal((8, 6, 3, 3)).astype(np.float32)) for _ in range(2)]
    expected = [conv._conv(_Node({}), x, w) for x, w in cases]

    def repeat(index):
        x, w = cases[index]
        return all(np.array_equal(conv._conv(_Node({}), x, w), expected[index]) for _ in range(20))

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(repeat, [0, 1, 0, 1]))
