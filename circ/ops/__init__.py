"""The op table. Each module holds, per op, its shape rule, kernel and gradient side by side:

- ``elementwise``   Add Sub Mul Div Pow Sum Max Min Mean, unary math, comparisons, Where
- ``activation``    Relu LeakyRelu PRelu Sigmoid Tanh Clip Softmax LogSoftmax Elu HardSigmoid ...
- ``linalg``        Gemm MatMul
- ``conv``          Conv ConvTranspose
- ``pool``          MaxPool AveragePool GlobalAveragePool GlobalMaxPool
- ``normalization`` BatchNormalization LRN InstanceNormalization LayerNormalization
- ``tensor``        Reshape Flatten Transpose Concat Split Slice Squeeze Unsqueeze Gather Shape
                    Size Constant ConstantOfShape Identity Dropout Cast CastLike Expand Tile Range
- ``pad``           Pad
- ``resize``        Resize Upsample
- ``reduce``        ReduceMean ReduceSum ReduceMax ReduceMin ArgMax ArgMin
- ``quantize``      QuantizeLinear DequantizeLinear
- ``ml``            the ai.onnx.ml ops that scikit-learn exports of MLPs use

Look an op up with :func:`get_op`; an op absent from the table is opaque: imported, kept and
exported untouched, but not run.
"""

from circ.ops.registry import OPS, OpDef, TensorType, get_op, gradient, kernel, shape_rule  # noqa: F401

# Importing the op modules registers their ops.
from circ.ops import (  # noqa: F401,E402
    activation, conv, elementwise, linalg, ml, normalization, pad, pool, quantize, reduce, resize, tensor,
)
