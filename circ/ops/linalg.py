"""Matrix products: Gemm and MatMul (NumPy's matmul, so BLAS does the work).

Gemm computes ``alpha * A' @ B' + beta * C`` with ``A'``/``B'`` optionally transposed and
``C`` broadcast to the result (unidirectionally). Before opset 11 ``C`` is required.
MatMul follows numpy.matmul: 1-D operands gain and lose an axis, leading axes broadcast.
"""

from __future__ import annotations

import numpy as np

from circ.ops.elementwise import sum_to_shape
from circ.ops.registry import (ShapeError, TensorType, broadcast_shapes, dims_equal, gradient,
                               kernel, shape_rule)


@shape_rule("Gemm")
def _gemm_shape(node):
    a, b = node.inputs[0], node.inputs[1]
    c = node.input(2)
    if c is None and node.opset < 11:
        raise ShapeError(f"Gemm needs input C before opset 11 (this graph is opset {node.opset})")
    if a.shape is None or b.shape is None:
        return [TensorType(a.dtype, None)]
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise ShapeError(f"Gemm takes 2-D A and B, got shapes {a.shape} and {b.shape}")
    rows, inner_a = a.shape[::-1] if node.attrs.get("transA", 0) else a.shape
    inner_b, cols = b.shape[::-1] if node.attrs.get("transB", 0) else b.shape
    if not dims_equal(inner_a, inner_b):
        raise ShapeError(f"Gemm inner dims differ: {inner_a} vs {inner_b} "
                         f"(A {a.shape}, B {b.shape}, transA/transB applied)")
    if c is not None and c.shape is not None:
        if len(c.shape) > 2:
            raise ShapeError(f"Gemm's C must have rank 2 or less, got {c.shape}")
        # C broadcasts one way only: to the result's shape, never growing it
        if broadcast_shapes((rows, cols), c.shape) != broadcast_shapes((rows, cols)):
            raise ShapeError(f"Gemm's C of shape {c.shape} does not broadcast to {(rows, cols)}")
    return [TensorType(a.dtype, (rows, cols))]


@kernel("Gemm")
def _gemm(node, a, b, c=None):
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    alpha = node.attrs.get("alpha", 1.0)
    beta = node.attrs.get("beta", 1.0)
    out = np.matmul(a, b)
    if alpha != 1.0:
        out *= np.asarray(alpha, dtype=out.dtype)
    if c is not None and beta != 0.0:
        c = c.astype(out.dtype, copy=False)
        out += c if beta == 1.0 else c * np.asarray(beta, dtype=out.dtype)
    return out


@gradient("Gemm")
def _gemm_grad(node, inputs, outputs, grad_outputs):
    a, b, c = (list(inputs) + [None])[:3]
    grad = grad_outputs[0]
    trans_a, trans_b = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    alpha = node.attrs.get("alpha", 1.0)
    beta = node.attrs.get("beta", 1.0)
    left = a.T if trans_a else a
    right = b.T if trans_b else b
    grad_left = alpha * (grad @ right.T)
    grad_right = alpha * (left.T @ grad)
    grad_c = None if c is None else sum_to_shape(beta * grad, c.shape)
    return [grad_left.T if trans_a else grad_left, grad_right.T if trans_b else grad_right, grad_c]


@shape_rule("MatMul")
def _matmul_shape(node):
    a, b = node.inputs[0], node.inputs[1]
    if a.shape is None or b.shape is None:
        return [TensorType(a.dtype, None)]
    left, right = tuple(a.shape), tuple(b.shape)
    if not left or not right:
        raise ShapeError("MatMul operands must have rank 1 or more")
    vector_left, vector_right = len(left) == 1, len(right) == 1
    if vector_left:
        left = (1,) + left
    if vector_right:
        right = right + (1,)
    if not dims_equal(left[-1], right[-2]):
        raise ShapeError(f"MatMul inner dims differ: {a.shape} @ {b.shape}")
    batch = broadcast_shapes(left[:-2], right[:-2])
    out = batch + (() if vector_left else (left[-2],)) + (() if vector_right else (right[-1],))
    return [TensorType(a.dtype, out)]


@kernel("MatMul")
def _matmul(node, a, b):
    return np.matmul(a, b)


@gradient("MatMul")
def _matmul_grad(node, inputs, outputs, grad_outputs):
    a, b = inputs
    grad = grad_outputs[0]
    # 1-D operands work as matrices with a unit axis; the gradient gets that axis back
    left = a[None, :] if a.ndim == 1 else a
    right = b[:, None] if b.ndim == 1 else b
    if b.ndim == 1:
        grad = grad[..., None]
    if a.ndim == 1:
        grad = grad[..., None, :]
    grad_left = grad @ np.swapaxes(right, -1, -2)
    grad_right = np.swapaxes(left, -1, -2) @ grad
    return [sum_to_shape(grad_left, left.shape).reshape(a.shape),
            sum_to_shape(grad_right, right.shape).reshape(b.shape)]
