"""Element types: ONNX's TensorProto codes and the NumPy dtypes circ computes with."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from circ.errors import ModelError

# ONNX element type code -> NumPy dtype. Types NumPy cannot hold natively (bfloat16, float8,
# int4 ...) are absent: a model using them imports only as opaque nodes.
_ONNX_TO_NUMPY = {
    TensorProto.FLOAT: np.dtype("float32"),
    TensorProto.DOUBLE: np.dtype("float64"),
    TensorProto.FLOAT16: np.dtype("float16"),
    TensorProto.INT8: np.dtype("int8"),
    TensorProto.UINT8: np.dtype("uint8"),
    TensorProto.INT16: np.dtype("int16"),
    TensorProto.UINT16: np.dtype("uint16"),
    TensorProto.INT32: np.dtype("int32"),
    TensorProto.UINT32: np.dtype("uint32"),
    TensorProto.INT64: np.dtype("int64"),
    TensorProto.UINT64: np.dtype("uint64"),
    TensorProto.BOOL: np.dtype("bool"),
}
_NUMPY_TO_ONNX = {v: k for k, v in _ONNX_TO_NUMPY.items()}

FLOAT32 = np.dtype("float32")
INT64 = np.dtype("int64")


def from_onnx(code: int, where: str = "") -> np.dtype:
    """NumPy dtype of an ONNX element type code; ``where`` names the tensor for errors."""
    try:
        return _ONNX_TO_NUMPY[code]
    except KeyError:
        name = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else str(code)
        raise ModelError(f"{where}: element type {name} is not supported") from None


def to_onnx(dtype: np.dtype) -> int:
    """ONNX element type code of a NumPy dtype."""
    return _NUMPY_TO_ONNX[np.dtype(dtype)]


def is_supported_onnx(code: int) -> bool:
    return code in _ONNX_TO_NUMPY
