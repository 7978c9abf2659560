"""The op table. Each module holds, per op, its shape rule, kernel and gradient side by side:

- ``elementwise``   Add Sub Mul Div Pow Sum Max Min Mean, unary math, comparisons, Where
- ``activation``    Relu LeakyRelu PRelu Sigmoid Tanh Clip Softmax LogSoftmax Elu HardSigmoid ...
- ``linalg``        Gemm MatMul
- ``conv``          Conv ConvTranspose
- ``pool``          MaxPool AveragePool GlobalAveragePool GlobalMaxPool
- ``normalization`` BatchNormalization LRN InstanceNormalization LayerNormalization
- ``tensor``        Reshape Flatten Transpose Concat Split Slice Squeeze Unsqueeze Gather Shape
                    Constant ConstantOfShape Identity Dropout Pad Cast Expand Tile Range ...
- ``reduce``        ReduceMean ReduceSum ReduceMax ReduceMin ArgMax ArgMin
- ``quantize``      QuantizeLinear DequantizeLinear
- ``ml``            the ai.onnx.ml ops that scikit-learn exports of MLPs use

Look an op up with :func:`get_op`; an op absent from the table is opaque: imported, kept and
exported untouched, but not run.
"""

from circ.ops.registry import OPS, OpDef, TensorType, get_op, gradient, kernel, shape_rule  # noqa: F401

from circ.ops import elementwise  # noqa: F401,E402  (imports register the ops)

import importlib as _importlib

for _module in ("activation", "linalg", "conv", "pool", "normalization", "tensor", "reduce",
                "quantize", "ml"):
    try:
        _importlib.import_module(f"circ.ops.{_module}")
    except ModuleNotFoundError as _err:  # modules land one by one while circ is being built
        if _err.name != f"circ.ops.{_module}":
            raise
