import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper

from circ.graph import Graph
from circ.interpreter import Interpreter
from circ.ops.tensor import _constant_array  # noqa: F401  (imported to fail loudly if renamed)
from opcheck import check_op, run_onnxruntime

rng = np.random.default_rng(0)
I64 = np.int64


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def i64(values):
    return np.array(values, dtype=I64)


# ------------------------------------------------------------------ Reshape, Flatten, Transpose


@pytest.mark.parametrize("target", [[2, -1], [0, 12], [-1], [2, 0, 0], [2, 3, 2, 2], [0, -1, 2]])
@pytest.mark.parametrize("opset", [9, 13])
def test_reshape(target, opset):
    check_op("Reshape", {"x": f32(2, 3, 4), "shape": i64(target)}, consts={"shape"}, opset=opset)


def test_reshape_allowzero():
    check_op("Reshape", {"x": np.zeros((0, 3), np.float32), "shape": i64([3, 0])},
             {"allowzero": 1}, consts={"shape"}, opset=14)


def test_reshape_with_runtime_shape_leaves_dims_unknown():
    out = check_op("Reshape", {"x": f32(2, 6), "shape": i64([3, 4])})
    assert out[0].shape == (3, 4)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis):
    check_op("Flatten", {"x": f32(2, 3, 4)}, {"axis": axis}, opset=13)


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
def test_transpose(perm):
    check_op("Transpose", {"x": f32(2, 3, 4)}, {} if perm is None else {"perm": perm})


# ------------------------------------------------------------------ Concat, Split


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [(2, 3, 2), (2, 3, 2)]
    shapes = [tuple(4 if i == axis % 3 and k else d for i, d in enumerate(s)) for k, s in enumerate(shapes)]
    check_op("Concat", {"a": f32(*shapes[0]), "b": f32(*shapes[1])}, {"axis": axis})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_by_sizes(opset):
    x = f32(7, 3)
    if opset < 13:
        check_op("Split", {"x": x}, {"split": [2, 5]}, n_outputs=2, opset=opset)
    else:
        check_op("Split", {"x": x, "split": i64([2, 5])}, consts={"split"}, n_outputs=2, opset=opset)


def test_split_equal_and_num_outputs():
    check_op("Split", {"x": f32(6, 3)}, {"axis": 0}, n_outputs=3, opset=13)
    check_op("Split", {"x": f32(7, 3)}, {"num_outputs": 3}, n_outputs=3, opset=18)
    check_op("Split", {"x": f32(2, 8)}, {"axis": -1, "num_outputs": 4}, n_outputs=4, opset=18)


# ------------------------------------------------------------------ Slice


def test_slice_attributes_opset9():
    check_op("Slice", {"x": f32(5, 6)}, {"starts": [1, -4], "ends": [100, -1], "axes": [0, 1]}, opset=9)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [4], [1], [1]),
    ([-1], [-100], [0], [-1]),          # full reverse with clamping
    ([4, 0], [0, 6], [0, 1], [-2, 3]),
    ([0], [2 ** 62], [-1], [2]),
    ([10], [20], [0], [1]),             # empty after clamping
])
def test_slice_inputs(starts, ends, axes, steps):
    check_op("Slice", {"x": f32(5, 6, 2), "starts": i64(starts), "ends": i64(ends),
                       "axes": i64(axes), "steps": i64(steps)},
             consts={"starts", "ends", "axes", "steps"}, opset=13)


def test_slice_without_axes_and_steps():
    check_op("Slice", {"x": f32(5, 6), "starts": i64([1, 2]), "ends": i64([3, 5]), "axes": None,
                       "steps": None}, consts={"starts", "ends"}, opset=11)


# ------------------------------------------------------------------ Squeeze, Unsqueeze, Gather


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    x = f32(1, 3, 1, 2)
    if opset < 13:
        check_op("Squeeze", {"x": x}, {"axes": [0, -2]}, opset=opset)
        check_op("Unsqueeze", {"x": f32(3, 2)}, {"axes": [0, -1]}, opset=opset)
    else:
        check_op("Squeeze", {"x": x, "axes": i64([0, -2])}, consts={"axes"}, opset=opset)
        check_op("Unsqueeze", {"x": f32(3, 2), "axes": i64([0, 3])}, consts={"axes"}, opset=opset)
    check_op("Squeeze", {"x": x}, opset=opset)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis):
    check_op("Gather", {"x": f32(4, 5, 3), "i": i64([[0, -1], [2, 1]])}, {"axis": axis}, consts={"i"})
    check_op("Gather", {"x": f32(4, 5, 3), "i": np.array(1, dtype=I64)}, {"axis": axis}, consts={"i"})


# ------------------------------------------------------------------ Shape, Size, Constant*


@pytest.mark.parametrize("attrs", [{}, {"start": 1}, {"end": -1}, {"start": -2, "end": 10}])
def test_shape(attrs):
    check_op("Shape", {"x": f32(2, 3, 4)}, attrs, opset=15)


def test_size_and_identity():
    check_op("Size", {"x": f32(2, 3, 4)})
    check_op("Identity", {"x": f32(2, 3)})


def test_constant_of_shape():
    value = onnx.numpy_helper.from_array(np.array([7], dtype=I64))
    model_out = check_op("ConstantOfShape", {"s": i64([2, 3])}, consts={"s"})
    assert model_out[0].dtype == np.float32 and not model_out[0].any()
    graph = Graph(opsets={"": 17})
    node = graph.add_node("ConstantOfShape", [graph.add_const("s", i64([2, 3]))],
                          {"value": onnx.numpy_helper.to_array(value)})
    graph.outputs.append(node.output)
    got = Interpreter(graph).run({})[node.output.name]
    assert node.output.shape == (2, 3) and got.dtype == I64 and (got == 7).all()


@pytest.mark.parametrize("attrs,expected", [
    ({"value": np.arange(6, dtype=np.float32).reshape(2, 3)}, np.arange(6, dtype=np.float32).reshape(2, 3)),
    ({"value_float": 1.5}, np.array(1.5, np.float32)),
    ({"value_floats": [1.0, 2.0]}, np.array([1.0, 2.0], np.float32)),
    ({"value_int": 3}, np.array(3, I64)),
    ({"value_ints": [4, 5]}, np.array([4, 5], I64)),
])
def test_constant(attrs, expected):
    onnx_attrs = {k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
    node = helper.make_node("Constant", [], ["out"], **onnx_attrs)
    model = helper.make_model(helper.make_graph([node], "c", [], [onnx.ValueInfoProto(name="out")]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    want = run_onnxruntime(model, {})[0]
    graph = Graph(opsets={"": 13})
    circ_node = graph.add_node("Constant", [], attrs)
    graph.outputs.append(circ_node.output)
    got = Interpreter(graph).run({})[circ_node.output.name]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == want.dtype and circ_node.output.shape == want.shape
    if expected.dtype == I64:
        assert circ_node.output.sym == tuple(expected.reshape(-1).tolist())


def test_dropout_is_identity_with_full_mask():
    x = f32(3, 4)
    check_op("Dropout", {"x": x}, n_outputs=2, opset=13)
    check_op("Dropout", {"x": x}, {"ratio": 0.3}, n_outputs=2, opset=9)


# ------------------------------------------------------------------ Pad


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attribute_opset9(mode):
    check_op("Pad", {"x": f32(3, 4)}, {"pads": [1, 2, 2, 1], "mode": mode, "value": 1.5}, opset=9)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_inputs(mode):
    check_op("Pad", {"x": f32(1, 2, 4, 4), "pads": i64([0, 0, 1, 2, 0, 0, 2, 1]),
                     "value": np.array(-2.0, np.float32)}, {"mode": mode}, consts={"pads", "value"}, opset=13)


def test_pad_negative_crops_and_opset18_axes():
    check_op("Pad", {"x": f32(4, 5), "pads": i64([-1, 2, 1, -2])}, consts={"pads"}, opset=13)
    check_op("Pad", {"x": f32(2, 4, 5), "pads": i64([1, 2, 0, 3]), "value": None, "axes": i64([1, -1])},
             {"mode": "reflect"}, consts={"pads", "axes"}, opset=18)


# ------------------------------------------------------------------ Cast, Expand, Tile, Range


@pytest.mark.parametrize("to,dtype", [(onnx.TensorProto.INT32, np.int32), (onnx.TensorProto.FLOAT16, np.float16),
                                      (onnx.TensorProto.BOOL, np.bool_), (onnx.TensorProto.INT64, np.int64)])
def test_cast(to, dtype):
    x = (f32(3, 4) * 10).astype(np.float32)
    out = check_op("Cast", {"x": x}, {"to": to})
    assert out[0].dtype == dtype


def test_cast_like():
    check_op("CastLike", {"x": f32(2, 3) * 5, "like": i64([1])}, consts={"like"}, opset=15)


def test_expand_tile_range():
    check_op("Expand", {"x": f32(3, 1), "s": i64([2, 1, 4])}, consts={"s"})
    check_op("Expand", {"x": f32(3, 4), "s": i64([1, 1])}, consts={"s"})
    check_op("Tile", {"x": f32(2, 3), "r": i64([2, 1])}, consts={"r"})
    check_op("Range", {"a": np.array(1, I64), "b": np.array(10, I64), "d": np.array(3, I64)},
             consts={"a", "b", "d"})
    check_op("Range", {"a": np.array(1.0, np.float32), "b": np.array(-2.0, np.float32),
                       "d": np.array(-0.3, np.float32)}, consts={"a", "b", "d"})


# ------------------------------------------------------------------ Resize, Upsample


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("transform", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])
def test_resize_scales_opset13(mode, transform):
    x = f32(1, 2, 3, 4)
    check_op("Resize", {"x": x, "roi": None, "scales": np.array([1, 1, 2, 2], np.float32)},
             {"mode": mode, "coordinate_transformation_mode": transform}, consts={"scales"}, opset=13)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_sizes_nearest_modes(nearest_mode):
    x = f32(1, 1, 4, 6)
    check_op("Resize", {"x": x, "roi": None, "scales": None, "sizes": i64([1, 1, 7, 3])},
             {"mode": "nearest", "nearest_mode": nearest_mode}, consts={"sizes"}, opset=13)


def test_resize_linear_downsample_and_axes():
    check_op("Resize", {"x": f32(1, 1, 6, 8), "roi": np.zeros(0, np.float32),
                        "scales": np.array([1, 1, 0.5, 0.75], np.float32)},
             {"mode": "linear"}, consts={"roi", "scales"}, opset=11)
    check_op("Resize", {"x": f32(1, 2, 3, 4), "roi": None, "scales": None, "sizes": i64([6, 5])},
             {"mode": "linear", "axes": [2, 3]}, consts={"sizes"}, opset=18)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_opset10_and_upsample(mode):
    x = f32(1, 2, 3, 3)
    scales = np.array([1, 1, 2, 2], np.float32)
    check_op("Resize", {"x": x, "scales": scales}, {"mode": mode}, consts={"scales"}, opset=10)
    check_op("Upsample", {"x": x, "scales": scales}, {"mode": mode}, consts={"scales"}, opset=9)
    check_op("Upsample", {"x": x}, {"mode": mode, "scales": [1.0, 1.0, 2.0, 2.0]}, opset=7)


# ------------------------------------------------------------------ symbolic contents


def _dynamic_flatten_graph(x_shape, batch_gather=True):
    """torch's export of ``x.view(x.size(0), -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, x_shape)
    shape = graph.add_node("Shape", [x]).output
    batch = graph.add_node("Gather", [shape, graph.add_const("zero", np.array(0, I64))], {"axis": 0}).output
    batch = graph.add_node("Unsqueeze", [batch, graph.add_const("axes", i64([0]))]).output
    target = graph.add_node("Concat", [batch, graph.add_const("rest", i64([-1]))], {"axis": 0}).output
    out = graph.add_node("Reshape", [x, target]).output
    graph.outputs.append(out)
    return graph, target, out


def test_dynamic_batch_flatten_infers_symbolic_shape():
    graph, target, out = _dynamic_flatten_graph(("N", 512, 1, 1))
    assert target.sym == ("N", -1)
    assert out.shape == ("N", 512)
    got = Interpreter(graph).run({"x": f32(3, 512, 1, 1)})[out.name]
    assert got.shape == (3, 512)


def test_dynamic_flatten_with_unknown_dims_stays_unknown():
    graph, target, out = _dynamic_flatten_graph((None, 512, 1, 1))
    assert target.sym is None and out.shape == (None, None)


def _reshape_graph(x_shape, target):
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, x_shape)
    return graph.add_node("Reshape", [x, graph.add_const("t", i64(target))]).output


def test_reshape_resolves_minus_one_with_symbolic_batch():
    assert _reshape_graph(("N", 512, 7, 7), [-1, 25088]).shape == ("N", 25088)
    assert _reshape_graph(("N", 8, 3, 3), [0, -1]).shape == ("N", 72)
    assert _reshape_graph(("N", "C", 3, 3), [0, -1]).shape == ("N", None)
    assert _reshape_graph(("N", 8, 3, 3), [-1, 3]).shape == (None, 3)


def test_shape_slice_cast_squeeze_carry_contents():
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, ("N", 3, 8, 8))
    shape = graph.add_node("Shape", [x]).output
    assert shape.sym == ("N", 3, 8, 8)
    tail = graph.add_node("Slice", [shape, graph.add_const("s", i64([2])), graph.add_const("e", i64([4]))]).output
    assert tail.sym == (8, 8) and tail.shape == (2,)
    cast = graph.add_node("Cast", [tail], {"to": onnx.TensorProto.INT64}).output
    assert cast.sym == (8, 8)
    first = graph.add_node("Slice", [shape, graph.add_const("s0", i64([0])), graph.add_const("e0", i64([1]))]).output
    squeezed = graph.add_node("Squeeze", [first, graph.add_const("ax", i64([0]))]).output
    assert squeezed.shape == () and squeezed.sym == ("N",)
    flat = graph.add_node("Reshape", [x, graph.add_node("Concat", [first, graph.add_const("m", i64([-1]))],
                                                           {"axis": 0}).output]).output
    assert flat.shape == ("N", 192)
    as_float = graph.add_node("Cast", [shape], {"to": onnx.TensorProto.FLOAT}).output
    assert as_float.sym is None


# ------------------------------------------------------------------ property tests against NumPy


@st.composite
def _reshape_case(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    size = int(np.prod(shape))
    dims, left = [], size
    while left > 1 and len(dims) < 4:
        divisor = draw(st.sampled_from([d for d in range(1, left + 1) if left % d == 0]))
        dims.append(divisor)
        left //= divisor
    dims.append(left)
    if draw(st.booleans()):
        dims[draw(st.integers(0, len(dims) - 1))] = -1
    return shape, dims


@settings(max_examples=60, deadline=None)
@given(_reshape_case())
def test_reshape_rule_matches_numpy(case):
    shape, target = case
    out = _reshape_graph(shape, target)
    assert out.shape == np.zeros(shape).reshape(target).shape


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=5).flatmap(
    lambda shape: st.tuples(st.just(shape), st.permutations(range(len(shape))))))
def test_transpose_rule_matches_numpy(case):
    shape, perm = case
    graph = Graph(opsets={"": 13})
    out = graph.add_node("Transpose", [graph.add_input("x", np.float32, shape)], {"perm": list(perm)}).output
    assert out.shape == np.zeros(shape).transpose(perm).shape


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 7), st.integers(-10, 10), st.integers(-10, 10),
       st.sampled_from([1, 2, 3, -1, -2]))
def test_slice_rule_and_kernel_match_numpy(length, start, end, step):
    graph = Graph(opsets={"": 13})
    x = graph.add_input("x", np.float32, (length, 2))
    out = graph.add_node("Slice", [x, graph.add_const("s", i64([start])), graph.add_const("e", i64([end])),
                                   graph.add_const("a", i64([0])), graph.add_const("t", i64([step]))]).output
    graph.outputs.append(out)
    data = rng.standard_normal((length, 2)).astype(np.float32)
    want = data[start:end:step]
    assert out.shape == want.shape
    np.testing.assert_array_equal(Interpreter(graph).run({"x": data})[out.name], want)


def _export_upsample_flatten(opset):
    """A small CNN exported by torch with a dynamic batch: Resize/Upsample with scales from
    Constant nodes, then ``view(size(0), -1)`` and ``reshape(b, c, -1)`` shape arithmetic."""
    import io
    import warnings

    torch = pytest.importorskip("torch")

    class UpsampleFlatten(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.fc = torch.nn.Linear(8 * 6 * 6, 4)

        def forward(self, x):
            y = torch.nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2, mode="nearest")
            y = torch.nn.functional.max_pool2d(y, 2)
            return self.fc(y.view(y.size(0), -1)), y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(UpsampleFlatten().eval(), torch.randn(2, 3, 8, 8), buffer, dynamo=False,
                          opset_version=opset, input_names=["x"], dynamic_axes={"x": {0: "N"}},
                          do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset", [9, 13])
def test_torch_dynamic_batch_export_infers_shapes(opset):
    from circ.onnx_import import from_model_proto

    proto = _export_upsample_flatten(opset)
    graph = from_model_proto(proto)
    assert [v.shape for v in graph.outputs] == [("N", 4), ("N", 36, 8)]
    x = f32(5, 3, 8, 8)
    want = run_onnxruntime(proto, {"x": x})
    got = Interpreter(graph).run({"x": x})
    for value, expected in zip(graph.outputs, want):
        np.testing.assert_allclose(got[value.name], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transform", ["half_pixel", "asymmetric", "align_corners"])
@pytest.mark.parametrize("attrs", [{}, {"cubic_coeff_a": -0.5, "exclude_outside": 1}])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 0.8, 0.6]])
def test_resize_cubic(transform, attrs, scales):
    check_op("Resize", {"x": f32(1, 2, 5, 5), "roi": None, "scales": np.array(scales, np.float32)},
             {"mode": "cubic", "coordinate_transformation_mode": transform, **attrs}, consts={"scales"},
             opset=13, rtol=1e-4, atol=1e-4)


def test_symbolic_arguments_leave_dims_unknown_instead_of_failing():
    graph = Graph(opsets={"": 18})
    x = graph.add_input("x", np.float32, ("N", 4))
    batch = graph.add_node("Shape", [x], {"end": 1}).output  # contents ("N",)
    sizes = graph.add_node("Concat", [batch, graph.add_const("two", i64([2]))], {"axis": 0}).output
    split = graph.add_node("Split", [x, sizes], {"axis": 0}, outputs=2)
    assert [o.shape for o in split.outputs] == [(None, 4), (None, 4)]
    ends = graph.add_node("Slice", [x, graph.add_const("s", i64([1])), batch]).output
    assert ends.shape == (None, 4)
    tiled = graph.add_node("Tile", [x, graph.add_node("Concat", [batch, graph.add_const("one", i64([1]))],
                                                      {"axis": 0}).output]).output
    assert tiled.shape == (None, 4)
    filled = graph.add_node("ConstantOfShape", [sizes]).output
    assert filled.shape == ("N", 2)
    steps = graph.add_node("Range", [graph.add_const("zero", np.array(0, I64)),
                                     graph.add_node("Squeeze", [batch]).output,
                                     graph.add_const("step", np.array(1, I64))]).output
    assert steps.shape == (None,)
