"""CIRC_MAX_TENSOR_BYTES: one size limit for every reader, set from the environment, checked
before anything is allocated, and named in the one-line error that tells the user how to raise it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import circ
from circ import limits
from circ.cli import opt, run
from circ.errors import CircError, DataError, ModelError


def write_model(path, features=256):
    weight = numpy_helper.from_array(np.ones((features, features), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("text, expected", [("", limits.DEFAULT_MAX_TENSOR_BYTES), ("1000", 1000),
                                            ("64K", 64 << 10), ("512M", 512 << 20), ("2g", 2 << 30),
                                            ("3GiB", 3 << 30)])
def test_setting_is_parsed(monkeypatch, text, expected):
    monkeypatch.setenv(limits.ENV, text)
    assert limits.max_tensor_bytes() == expected


@pytest.mark.parametrize("text", ["lots", "-5", "0", "1.5G", "G"])
def test_bad_setting_is_one_clear_error(monkeypatch, tmp_path, capsys, text):
    monkeypatch.setenv(limits.ENV, text)
    with pytest.raises(CircError, match=limits.ENV):
        limits.max_tensor_bytes()
    model = write_model(tmp_path / "m.onnx", 4)
    assert opt.main(["--passes=dce", str(model), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and limits.ENV in err


def test_onnx_tensor_over_the_limit_is_refused(monkeypatch, tmp_path, capsys):
    model = write_model(tmp_path / "m.onnx")  # a 256 KiB weight
    monkeypatch.setenv(limits.ENV, "100K")
    with pytest.raises(ModelError, match=f"262144 bytes .* limit of 102400 bytes .*{limits.ENV}"):
        circ.load(model)
    assert opt.main(["--passes=dce", str(model), "-q"]) == 2
    assert limits.ENV in capsys.readouterr().err
    assert not (tmp_path / "m.opt.onnx").exists()
    monkeypatch.setenv(limits.ENV, "1M")
    assert circ.load(model).consts["w"].const.to_numpy().shape == (256, 256)


def test_circ_tensor_over_the_limit_is_refused(monkeypatch, tmp_path):
    model = write_model(tmp_path / "m.onnx")
    container = tmp_path / "m.circ"
    assert opt.main(["--passes=prune(sparsity=0.5),cluster(bits=2),huffman", str(model), "-o",
                     str(container), "-q"]) == 0
    monkeypatch.setenv(limits.ENV, "100K")  # 25,600 float32 elements < 65,536
    with pytest.raises(CircError, match=limits.ENV):
        circ.load(container)
    monkeypatch.delenv(limits.ENV)
    assert circ.load(container).consts["w"].const.to_numpy().shape == (256, 256)


def test_npz_over_the_limit_is_refused(monkeypatch, tmp_path, capsys):
    model = write_model(tmp_path / "m.onnx", 4)
    data = tmp_path / "in.npz"
    np.savez(data, x=np.zeros((1000, 4), np.float32))  # 16,000 bytes
    monkeypatch.setenv(limits.ENV, "8K")
    with pytest.raises(DataError, match=limits.ENV):
        from circ.npzio import read_arrays
        read_arrays(data)
    assert run.main([str(model), "--input", str(data)]) == 2
    assert limits.ENV in capsys.readouterr().err
