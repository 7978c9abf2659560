"""circ.npzio: .npz/.npy reading that refuses damaged and hostile files with one DataError."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from circ.errors import DataError
from circ.npzio import read_arrays


def test_reads_what_numpy_writes(tmp_path):
    arrays = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
              "scalar": np.array(3.5), "empty": np.zeros((0, 5), np.uint8)}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        loaded = read_arrays(path)
        assert sorted(loaded) == sorted(arrays)
        for name, array in arrays.items():
            assert loaded[name].dtype == array.dtype
            np.testing.assert_array_equal(loaded[name], array)
        assert loaded["x"].flags.writeable
    np.save(tmp_path / "one.npy", arrays["x"])
    np.testing.assert_array_equal(read_arrays(tmp_path / "one.npy")[""], arrays["x"])


def npz_with_header(tmp_path, shape, payload=b"\0" * 16, descr="<f4"):
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": descr, "fortran_order": False, "shape": shape})
    member.write(payload)
    path = tmp_path / "crafted.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member.getvalue())
    return path


def test_header_claiming_more_than_the_file_holds_is_refused_before_allocation(tmp_path):
    # 1 GiB claimed by a 250-byte file: np.load would allocate it all, then find 16 bytes.
    with pytest.raises(DataError, match=r"crafted.npz: .*needs 1073741824 bytes but the file holds 144"):
        read_arrays(npz_with_header(tmp_path, (1 << 28,)))
    with pytest.raises(DataError, match=r"\(68719476736 bytes\) exceeds the limit"):
        read_arrays(npz_with_header(tmp_path, (1 << 34,)))


def test_limit_on_total_size(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, a=np.zeros(100, np.float32), b=np.zeros(100, np.float32))
    assert len(read_arrays(path, max_bytes=800)) == 2
    with pytest.raises(DataError, match="exceeds the limit"):
        read_arrays(path, max_bytes=799)


@pytest.mark.parametrize("damage", ["truncated", "deflate", "method", "objects", "not_zip"])
def test_damaged_files_are_one_data_error(tmp_path, damage):
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, x=np.arange(64, dtype=np.float32))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "deflate":
        data[80] ^= 0xFF  # inside the compressed stream: zlib.error from zipfile
    elif damage == "method":
        data[8] = 99  # local header compression method: NotImplementedError from zipfile
        central = data.rfind(b"PK\x01\x02")
        data[central + 10] = 99
    elif damage == "objects":
        data = bytearray(npz_with_header(tmp_path, (1,), descr="|O").read_bytes())
    else:
        data = b"just some text\n"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad.npz: "):
        read_arrays(path)
