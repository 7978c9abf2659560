"""The .circ container (circ.container): lossless round trips and damage detection."""

import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import circ
from circ.codecs.coded import Coded
from circ.container import load_circ, read_tensor, save_circ, tensor_bytes
from circ.errors import ModelError
from circ.onnx_export import to_model_proto
from circ.onnx_import import from_model_proto
from circ.tensors import Clustered, Dense, Quantized


def small_mlp(seed=0, hidden=12):
    """x[N,10] -> MatMul -> Add -> Relu -> Gemm(transB) -> y[N,4], float32 random weights."""
    rng = np.random.default_rng(seed)

    def init(name, shape):
        return onnx.numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [init("w1", (10, hidden)), init("b1", (hidden,)), init("w2", (4, hidden)), init("b2", (4,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return from_model_proto(model)


def compressed(seed=0, hidden=12):
    return circ.optimize(small_mlp(seed, hidden), "prune(sparsity=0.6),cluster(bits=3),huffman")


def same_graph(a, b):
    assert to_model_proto(a).SerializeToString() == to_model_proto(b).SerializeToString()
    for name, value in a.consts.items():
        other = b.consts[name].const
        assert type(other) is type(value.const)
        assert other.to_numpy().tobytes() == value.const.to_numpy().tobytes()
        assert other.to_numpy().dtype == value.const.to_numpy().dtype


def test_pipeline_output_roundtrips_bit_exactly(tmp_path):
    graph = compressed()
    assert any(isinstance(v.const, Coded) for v in graph.consts.values())
    info = save_circ(graph, tmp_path / "m.circ")
    assert info.file_bytes == os.path.getsize(tmp_path / "m.circ")
    back = circ.load(tmp_path / "m.circ")
    same_graph(graph, back)
    x = np.random.default_rng(1).normal(size=(3, 10)).astype(np.float32)
    expected, got = circ.run(graph, {"x": x}), circ.run(back, {"x": x})
    assert np.array_equal(expected["y"], got["y"])


def test_uncoded_representations_roundtrip(tmp_path):
    graph = circ.optimize(small_mlp(), "prune(sparsity=0.5),cluster(bits=2,scope=fc1)")
    circ.save(graph, tmp_path / "m.circ")
    same_graph(graph, circ.load(tmp_path / "m.circ"))


def test_onnx_to_circ_to_onnx_keeps_the_model(tmp_path):
    graph = small_mlp()
    circ.save(graph, tmp_path / "m.circ")
    circ.save(circ.load(tmp_path / "m.circ"), tmp_path / "back.onnx")
    same_graph(graph, circ.load(tmp_path / "back.onnx"))


# ------------------------------------------------------------------ random tensors

shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)


@st.composite
def tensors(draw):
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random(shape) < draw(st.floats(0.05, 1.0)) if draw(st.booleans()) else None
    kind = draw(st.sampled_from(["dense", "clustered", "quantized"]))
    if kind == "dense":
        dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int64]))
        tensor = Dense(rng.normal(size=shape).astype(dtype) * 3, mask)
    elif kind == "clustered":
        k = draw(st.integers(1, 40))
        codebook = np.sort(rng.normal(size=k)).astype(np.float32)
        indices = rng.integers(0, k, shape).astype(draw(st.sampled_from([np.int8, np.int16, np.int32])))
        if mask is not None:
            indices[~mask] = -1
        tensor = Clustered(codebook, indices)
    else:
        bits = draw(st.integers(2, 8))
        q = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), shape).astype(np.int8)
        axis = draw(st.sampled_from([None] + list(range(len(shape)))))
        channels = 1 if axis is None else shape[axis]
        scale = rng.uniform(0.01, 1, channels).astype(np.float32)
        zero_point = rng.integers(-3, 3, channels).astype(np.int8)
        if axis is None:
            scale, zero_point = scale[0], zero_point[0]
        tensor = Quantized(q, scale, zero_point, axis, bits, np.float32, mask)
    if draw(st.booleans()) and (kind != "dense" or mask is not None):
        tensor = Coded.encode(tensor, draw(st.integers(1, 9)) if tensor.kept is not None else 0)
    return tensor


@settings(max_examples=200, deadline=None)
@given(tensors())
def test_every_representation_roundtrips(tensor):
    back = read_tensor(tensor_bytes(tensor))
    assert type(back) is type(tensor)
    assert back.shape == tensor.shape and back.dtype == tensor.dtype
    assert back.to_numpy().tobytes() == tensor.to_numpy().tobytes()
    if isinstance(tensor, Coded):
        assert type(back.decode()) is type(tensor.decode())
    if tensor.kept is None:
        assert back.kept is None
    else:
        assert np.array_equal(back.kept, tensor.kept)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1000), st.integers(4, 40))
def test_random_models_roundtrip(tmp_path_factory, seed, hidden):
    path = tmp_path_factory.mktemp("rt") / "m.circ"
    graph = compressed(seed, hidden)
    save_circ(graph, path)
    same_graph(graph, load_circ(path))


# ------------------------------------------------------------------ damage


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "m.circ"
    save_circ(compressed(hidden=6), path)
    return path, path.read_bytes()


SECTION_NAMES = ("header", "section", "end section")


def test_every_truncation_is_refused_naming_the_file_and_section(small_file, tmp_path):
    path, data = small_file
    cut = tmp_path / "cut.circ"
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        with pytest.raises(ModelError) as err:
            load_circ(cut)
        message = str(err.value)
        assert message.startswith(str(cut)), message
        assert any(s in message for s in SECTION_NAMES), message


def test_flipped_bits_are_refused(small_file, tmp_path):
    path, data = small_file
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.circ"
    for _ in range(300):
        damaged = bytearray(data)
        damaged[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ModelError) as err:
            load_circ(bad)
        assert str(err.value).startswith(str(bad))
        assert any(s in str(err.value) for s in SECTION_NAMES), str(err.value)


def test_a_length_beyond_the_file_is_refused_before_reading(small_file, tmp_path):
    path, data = small_file
    damaged = bytearray(data)
    # the first section's payload length: after header (20), kind + name length (6), name ("")
    damaged[26:34] = (2**62).to_bytes(8, "little")
    bad = tmp_path / "big.circ"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(ModelError, match=r"section 1 .*declares 4611686018427387904 bytes"):
        load_circ(bad)


def test_other_files_and_versions_are_refused(small_file, tmp_path):
    path, data = small_file
    other = tmp_path / "x.circ"
    other.write_bytes(b"ONNX" + data[4:])
    with pytest.raises(ModelError, match="not a .circ file"):
        load_circ(other)
    import struct
    import zlib

    header = bytearray(data[:16])
    header[8:10] = struct.pack("<H", 9)
    other.write_bytes(bytes(header) + struct.pack("<I", zlib.crc32(bytes(header))) + data[20:])
    with pytest.raises(ModelError, match="version 9.0 is not supported"):
        load_circ(other)
    with pytest.raises(ModelError, match="no such file|cannot read"):
        load_circ(tmp_path / "missing.circ")
