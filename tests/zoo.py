"""The models circ is tested and benchmarked on, written as ONNX files on demand.

Three families, all built offline and deterministically (fixed seeds):

* small CNNs and MLPs written in torch and exported with ``torch.onnx.export`` (random init,
  eval mode, BatchNorm statistics randomized so BN is not the identity);
* scikit-learn MLPs trained briefly on the bundled 8x8 digits and converted with skl2onnx;
* the onnx wheel's "light" model zoo (``onnx/backend/test/data/light``), whose weights are
  ``ConstantOfShape`` fills of 0.02; :func:`randomize_weights` gives them seeded random weights.

Use :class:`Zoo` (one per test session or benchmark run) to build each file once::

    zoo = Zoo(tmp_dir)
    path = zoo.path("resnet8")          # builds <tmp_dir>/resnet8.onnx the first time
    feeds = random_feeds(onnx.load(path), batch=2)

Every builder has the signature ``build(directory: Path) -> Path``; ``BUILDERS`` maps model
names to builders, and the tuples ``TORCH_MODELS``, ``SKLEARN_MODELS`` and ``LIGHT_MODELS``
list the names per family. Each light model also has a ``<name>_batched`` variant whose batch
axis is symbolic (used by the benchmark and for one batched test).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# ----------------------------------------------------------------------------- feeds


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs (old models also list initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def uses_external_data(path) -> bool:
    """Whether the ONNX file at ``path`` keeps any initializer in an external file."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def has_dynamic_batch(model: onnx.ModelProto) -> bool:
    """Whether the first dimension of every input is symbolic (a dim_param or unset)."""
    inputs = graph_inputs(model)
    return bool(inputs) and all(
        v.type.tensor_type.shape.dim and not v.type.tensor_type.shape.dim[0].HasField("dim_value")
        for v in inputs)


def random_feeds(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input; symbolic dims become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph_inputs(model):
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


# ----------------------------------------------------------------------------- torch models


def _torch_export(module, example, path: Path, *, opset: int, dynamic_batch: bool,
                  output_names=("output",), dynamo: bool = False) -> Path:
    """Export ``module`` (already in eval mode) with input name ``input``."""
    import torch

    kwargs = {"input_names": ["input"], "output_names": list(output_names), "opset_version": opset}
    if dynamo:
        if dynamic_batch:
            kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("N", min=1, max=1024)}}
        kwargs["dynamo"] = True
    else:
        # Constant folding would fold BatchNorm into Conv; circ should see (and fold) BN itself.
        kwargs.update(dynamo=False, do_constant_folding=False)
        if dynamic_batch:
            kwargs["dynamic_axes"] = {name: {0: "N"} for name in ["input", *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(path), **kwargs)
    return path


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def _randomize_batchnorm(module, seed: int) -> None:
    """Give every BatchNorm layer non-trivial statistics and affine parameters."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            n = layer.num_features
            with torch.no_grad():
                layer.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(n, generator=generator))


def _prepare(module, seed: int = 0):
    _randomize_batchnorm(module, seed)
    return module.eval()


def _nn():
    from torch import nn

    return nn


def _conv_bn(cin, cout, kernel=3, stride=1, groups=1, act="relu"):
    nn = _nn()
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU())
    elif act == "relu6":
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


def _resnet8():
    """ResNet-style: BasicBlocks with residual Add, BN, strided 1x1 downsample shortcut."""
    import torch

    nn = _nn()

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, act=None))
            self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                             else _conv_bn(cin, cout, 1, stride, act=None))

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class ResNet8(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 16)
            self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.pool(self.blocks(self.stem(x)))
            return self.fc(torch.flatten(x, 1))

    return ResNet8()


def small_resnet(width: int = 8, seed: int = 0):
    """A small ResNet for integer backends: a stem, three BasicBlocks (the middle one strided,
    with a 1x1 convolution shortcut), global average pooling and a linear classifier; batch
    norm with non-trivial statistics for fold_bn to fold. Eight convolutions, three Adds."""
    import torch

    nn = _nn()

    class Block(nn.Module):
        def __init__(self, channels, stride):
            super().__init__()
            out = channels * stride
            self.conv1 = nn.Conv2d(channels, out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out)
            self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out)
            self.shortcut = nn.Sequential()
            if stride != 1:
                self.shortcut = nn.Sequential(nn.Conv2d(channels, out, 1, stride, bias=False),
                                              nn.BatchNorm2d(out))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                          Block(width, 1), Block(width, 2), Block(2 * width, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def build_resnet8(directory: Path) -> Path:
    import torch

    _seeded(1)
    return _torch_export(_prepare(_resnet8()), torch.randn(1, 3, 32, 32), directory / "resnet8.onnx",
                         opset=13, dynamic_batch=True)


def build_resnet8_dynamo(directory: Path) -> Path:
    """The same ResNet-style net through the torch.export-based (dynamo) exporter, opset 18."""
    import torch

    _seeded(1)
    return _torch_export(_prepare(_resnet8()), torch.randn(1, 3, 32, 32),
                         directory / "resnet8_dynamo.onnx", opset=18, dynamic_batch=True, dynamo=True)


def _mobilenet_v2():
    """MobileNetV2-style: inverted residuals, depthwise 3x3, ReLU6 (exported as Clip)."""
    nn = _nn()

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                _conv_bn(cin, hidden, 1, act="relu6"),
                _conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                _conv_bn(hidden, cout, 1, act=None))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                _conv_bn(3, 16, 3, 2, act="relu6"),
                InvertedResidual(16, 24, 2, 4),
                InvertedResidual(24, 24, 1, 4),
                InvertedResidual(24, 32, 2, 4),
                _conv_bn(32, 64, 1, act="relu6"))
            self.classifier = nn.Linear(64, 10)

        def forward(self, x):
            return self.classifier(self.features(x).mean([2, 3]))

    return MobileNetV2()


def build_mobilenet_v2(directory: Path) -> Path:
    import torch

    _seeded(2)
    return _torch_export(_prepare(_mobilenet_v2()), torch.randn(1, 3, 32, 32),
                         directory / "mobilenet_v2.onnx", opset=11, dynamic_batch=True)


def build_mobilenet_v2_opset9(directory: Path) -> Path:
    """Opset 9: Clip takes min/max as attributes, ReduceMean axes as an attribute."""
    import torch

    _seeded(2)
    return _torch_export(_prepare(_mobilenet_v2()), torch.randn(1, 3, 32, 32),
                         directory / "mobilenet_v2_opset9.onnx", opset=9, dynamic_batch=False)


def build_vgg_small(directory: Path) -> Path:
    """VGG-style: conv-relu pairs, max pooling, Flatten before Linear, Dropout (a no-op in eval)."""
    import torch

    nn = _nn()
    _seeded(3)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))
    return _torch_export(_prepare(model), torch.randn(1, 3, 32, 32), directory / "vgg_small.onnx",
                         opset=17, dynamic_batch=True)


def _densenet_small():
    """DenseNet-style: a dense block (BN-ReLU-Conv, Concat of all earlier maps) and a transition."""
    import torch

    nn = _nn()

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    class DenseNet(nn.Module):
        def __init__(self, growth=8):
            super().__init__()
            channels = 16
            layers = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
            for _ in range(3):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 24, 1, bias=False),
                       nn.AvgPool2d(2), nn.BatchNorm2d(24), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(24, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.features(x), 1))

    return DenseNet()


def build_densenet_small(directory: Path) -> Path:
    import torch

    _seeded(4)
    return _torch_export(_prepare(_densenet_small()), torch.randn(1, 3, 32, 32),
                         directory / "densenet_small.onnx", opset=13, dynamic_batch=False)


def _shufflenet_small():
    """ShuffleNet-like: grouped 1x1 convs, channel shuffle (Reshape/Transpose/Reshape with the
    batch read from Shape), depthwise 3x3, residual Add and a strided unit with Concat."""
    import torch

    nn = _nn()

    def channel_shuffle(x, groups):
        batch, channels, height, width = x.shape
        x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
        return x.view(batch, channels, height, width)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride, groups=3):
            super().__init__()
            self.stride, self.groups = stride, groups
            branch = cout - cin if stride == 2 else cout
            mid = cout // 4
            self.reduce = _conv_bn(cin, mid, 1, groups=groups)
            self.depthwise = _conv_bn(mid, mid, 3, stride, groups=mid, act=None)
            self.expand = _conv_bn(mid, branch, 1, groups=groups, act=None)
            self.pool = nn.AvgPool2d(3, 2, 1)

        def forward(self, x):
            y = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
            if self.stride == 2:
                return torch.relu(torch.cat([self.pool(x), y], 1))
            return torch.relu(x + y)

    class ShuffleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 24, 3, 1)
            self.units = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 96, 2))
            self.fc = nn.Linear(96, 10)

        def forward(self, x):
            x = self.units(self.stem(x))
            return self.fc(x.mean([2, 3]))

    return ShuffleNet()


def build_shufflenet_small(directory: Path) -> Path:
    import torch

    _seeded(5)
    return _torch_export(_prepare(_shufflenet_small()), torch.randn(1, 3, 32, 32),
                         directory / "shufflenet_small.onnx", opset=11, dynamic_batch=True)


def _autoencoder():
    """Conv encoder, ConvTranspose + nearest Resize decoder with a skip Add, and a second
    output upsampled bilinearly (align_corners=False)."""
    import torch
    import torch.nn.functional as F

    nn = _nn()

    class AutoEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1 = nn.Conv2d(3, 16, 3, 2, 1)
            self.enc2 = nn.Conv2d(16, 32, 3, 2, 1)
            self.dec1 = nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1)
            self.dec2 = nn.Conv2d(16, 3, 3, 1, 1)
            self.coarse = nn.Conv2d(32, 3, 1)

        def forward(self, x):
            e1 = torch.relu(self.enc1(x))
            e2 = torch.relu(self.enc2(e1))
            d1 = torch.relu(self.dec1(e2)) + e1
            d2 = F.interpolate(d1, scale_factor=2.0, mode="nearest")
            out = torch.sigmoid(self.dec2(d2))
            coarse = F.interpolate(self.coarse(e2), scale_factor=4.0, mode="bilinear", align_corners=False)
            return out, coarse

    return AutoEncoder()


def build_autoencoder(directory: Path) -> Path:
    import torch

    _seeded(6)
    return _torch_export(_prepare(_autoencoder()), torch.randn(1, 3, 32, 32), directory / "autoencoder.onnx",
                         opset=13, dynamic_batch=True, output_names=("reconstruction", "coarse"))


def build_autoencoder_opset9(directory: Path) -> Path:
    """Opset 9: the resizes are the old Upsample op (scales as an input)."""
    import torch

    _seeded(6)
    return _torch_export(_prepare(_autoencoder()), torch.randn(1, 3, 32, 32),
                         directory / "autoencoder_opset9.onnx", opset=9, dynamic_batch=True,
                         output_names=("reconstruction", "coarse"))


def _lenet5():
    """LeNet-5 as in Caffe's MNIST example: conv 20 5x5, maxpool, conv 50 5x5, maxpool,
    fc 500, ReLU, fc 10."""
    nn = _nn()
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


def build_lenet5(directory: Path) -> Path:
    import torch

    _seeded(7)
    return _torch_export(_prepare(_lenet5()), torch.randn(1, 1, 28, 28), directory / "lenet5.onnx",
                         opset=9, dynamic_batch=True)


def build_mlp(directory: Path) -> Path:
    """An MLP with LayerNorm (LayerNormalization at opset 17), GELU (Erf), Tanh and LogSoftmax."""
    import torch

    nn = _nn()
    _seeded(8)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, 64), nn.Tanh(),
        nn.Linear(64, 10), nn.LogSoftmax(dim=-1))
    return _torch_export(_prepare(model), torch.randn(1, 64), directory / "mlp.onnx",
                         opset=17, dynamic_batch=True)


def build_mlp_opset20(directory: Path) -> Path:
    """Opset 20: LayerNormalization and the Gelu op with ``approximate="tanh"``, softmax head."""
    import torch

    nn = _nn()
    _seeded(9)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.LayerNorm(128), nn.GELU(approximate="tanh"), nn.Linear(128, 10), nn.Softmax(-1))
    return _torch_export(_prepare(model), torch.randn(1, 64), directory / "mlp_opset20.onnx",
                         opset=20, dynamic_batch=True)


# ----------------------------------------------------------------------------- scikit-learn

SKLEARN_OPSETS = {"": 17, "ai.onnx.ml": 3}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: X float32 (1797, 64) in 0..16, y int labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target


@functools.cache
def trained_estimator(kind: str):
    """A briefly trained scikit-learn model on the digits (deterministic; cached per process).

    ``kind`` is ``classifier``, ``regressor`` (predicts the digit as a number) or ``pipeline``
    (StandardScaler then MLPClassifier).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = digits()
    if kind == "classifier":
        model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=40, random_state=0)
        target = y
    elif kind == "regressor":
        model = MLPRegressor(hidden_layer_sizes=(32, 16), max_iter=40, random_state=0)
        target = y.astype(np.float64)
    elif kind == "pipeline":
        model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(24,), activation="tanh",
                                                              max_iter=40, random_state=0))
        target = y
    else:
        raise ValueError(f"unknown estimator kind {kind!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, target)
    return model


def _convert_sklearn(model, path: Path, *, zipmap: bool) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = None
    if not zipmap:
        classifier = model.steps[-1][1] if hasattr(model, "steps") else model
        if hasattr(classifier, "classes_"):
            options = {id(classifier): {"zipmap": False}}
    proto = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 64]))],
                            options=options, target_opset=dict(SKLEARN_OPSETS))
    onnx.save(proto, str(path))
    return path


def build_sk_mlp_classifier(directory: Path) -> Path:
    return _convert_sklearn(trained_estimator("classifier"), directory / "sk_mlp_classifier.onnx", zipmap=False)


def build_sk_mlp_regressor(directory: Path) -> Path:
    return _convert_sklearn(trained_estimator("regressor"), directory / "sk_mlp_regressor.onnx", zipmap=False)


def build_sk_pipeline(directory: Path) -> Path:
    return _convert_sklearn(trained_estimator("pipeline"), directory / "sk_pipeline.onnx", zipmap=False)


def build_sk_mlp_classifier_zipmap(directory: Path) -> Path:
    """The classifier with ZipMap left on: its second output is a sequence of maps."""
    return _convert_sklearn(trained_estimator("classifier"), directory / "sk_mlp_classifier_zipmap.onnx",
                            zipmap=True)


# Which estimator each converted model came from.
SKLEARN_ESTIMATORS = {"sk_mlp_classifier": "classifier", "sk_mlp_regressor": "regressor",
                      "sk_pipeline": "pipeline", "sk_mlp_classifier_zipmap": "classifier"}


# ----------------------------------------------------------------------------- light model zoo


def light_model_path(name: str) -> Path:
    """Path of ``light_<name>.onnx`` shipped in the onnx wheel (e.g. ``resnet50``)."""
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def light_model_names() -> list[str]:
    folder = light_model_path("x").parent
    return sorted(p.name[len("light_"):-len(".onnx")] for p in folder.glob("light_*.onnx"))


def randomize_weights(model: onnx.ModelProto, seed: int = 0, *, expose_logits: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` whose float weights are seeded random values.

    Every ``ConstantOfShape`` whose shape is an initializer becomes an initializer, and every
    float initializer of rank >= 1 is redrawn according to how it is used: weights of
    Conv/ConvTranspose/Gemm/MatMul get He-normal values (std sqrt(2 / fan_in)); BatchNorm scale
    and variance, and Mul operands, get uniform(0.5, 1.5) (so variances stay positive); biases,
    means and everything else get normal(0, 0.1). Done on the ONNX proto, not with circ, so the
    reference models do not depend on the code under test.

    With ``expose_logits``, the input of a Softmax that produces a graph output becomes an
    extra graph output ``<name>_logits``: random deep nets (ResNet-50) saturate the softmax to
    one-hot, which would hide numerical differences.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))

    def redraw(tensor: onnx.TensorProto, name: str, shape, dtype) -> None:
        # Filled in place: copying 500 MB of VGG-19 weights through from_array/append is slow.
        array = _draw(rng, _weight_role(name, consumers), tuple(int(d) for d in shape))
        array = array.astype(dtype, copy=False)
        tensor.Clear()
        tensor.name = name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()

    # 1. ConstantOfShape(initializer) -> a random initializer of that shape.
    kept_nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in initializers:
            shape = numpy_helper.to_array(initializers[node.input[0]])
            dtype = np.float32
            for attribute in node.attribute:
                if attribute.name == "value":
                    dtype = numpy_helper.to_array(attribute.t).dtype
            if dtype.kind == "f" and len(shape) >= 1:
                redraw(graph.initializer.add(), node.output[0], shape, dtype)
                continue
        kept_nodes.append(node)
    del graph.node[:]
    graph.node.extend(kept_nodes)

    # 2. Redraw the float initializers the model had.
    for position, tensor in enumerate(list(graph.initializer)):
        if tensor.name not in initializers:
            continue  # drawn in step 1
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if dtype.kind == "f" and len(tensor.dims) >= 1 and tensor.name in consumers:
            redraw(tensor, tensor.name, list(tensor.dims), dtype)

    # 3. Drop initializers nothing reads any more (the shapes of step 1).
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    for position in reversed(range(len(graph.initializer))):
        if graph.initializer[position].name not in used:
            del graph.initializer[position]
    inputs = [v for v in graph.input if v.name in used]
    del graph.input[:]
    graph.input.extend(inputs)

    if expose_logits:
        outputs = {v.name: v for v in graph.output}
        for node in graph.node:
            if node.op_type == "Softmax" and node.output[0] in outputs:
                element_type = outputs[node.output[0]].type.tensor_type.elem_type
                logits = f"{node.output[0]}_logits"
                graph.node.append(onnx.helper.make_node("Identity", [node.input[0]], [logits]))
                graph.output.append(onnx.helper.make_tensor_value_info(logits, element_type, None))
    return model


def _weight_role(name: str, consumers: dict) -> tuple[str, int]:
    """(role, consuming node) of an initializer, looking through Unsqueeze/Reshape/Identity."""
    for node, index in consumers.get(name, []):
        op = node.op_type
        if op in ("Unsqueeze", "Reshape", "Identity") and index == 0:
            return _weight_role(node.output[0], consumers)
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and index == 1:
            return "weight", node
        if op == "BatchNormalization" and index in (1, 4):
            return "positive", node
        if op == "Mul":
            return "positive", node
    return "small", None


def _draw(rng: np.random.Generator, role, shape) -> np.ndarray:
    kind, node = role
    if kind == "positive":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if kind == "weight":
        scale = np.float32(np.sqrt(2.0 / max(_fan_in(node, shape), 1)))
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= scale
        return array
    return (0.1 * rng.standard_normal(shape, dtype=np.float32))


def _fan_in(node: onnx.NodeProto, shape) -> int:
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return int(np.prod(shape[1:]))
    if node.op_type == "ConvTranspose":
        return int(shape[0] * np.prod(shape[2:]))
    if node.op_type == "Gemm":
        return int(shape[-1] if attributes.get("transB", 0) else shape[0])
    return int(shape[0])  # MatMul: (K, N)


def make_batch_dynamic(model: onnx.ModelProto, symbol: str = "N") -> onnx.ModelProto:
    """A copy of a batch-1 model whose batch axis is the symbol ``symbol``.

    Graph inputs and outputs get ``symbol`` as their first dimension, and constant Reshape
    shapes that start with the batch (1) start with 0 instead ("copy this dimension from the
    input", the Reshape default), which is what the model zoo's Caffe2 exports need.
    Intermediate ``value_info`` is dropped since its batch-1 shapes no longer hold.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for value in [*graph_inputs(model), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = symbol
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in initializers:
            tensor = initializers[node.input[1]]
            shape = numpy_helper.to_array(tensor).copy()
            if shape.ndim == 1 and shape.size and shape[0] == 1:
                shape[0] = 0
                tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    del graph.value_info[:]
    return model


EXTERNAL_DATA_BYTES = 64 << 20


def build_light(name: str, seed: int = 0, *, dynamic_batch: bool = False) -> Callable[[Path], Path]:
    """A builder writing ``light_<name>`` with random weights to ``<directory>/light_<name>.onnx``
    (``light_<name>_batched.onnx`` with a symbolic batch, see :func:`make_batch_dynamic`)."""
    filename = f"light_{name}_batched.onnx" if dynamic_batch else f"light_{name}.onnx"

    def build(directory: Path) -> Path:
        model = randomize_weights(onnx.load(str(light_model_path(name))), seed)
        if dynamic_batch:
            model = make_batch_dynamic(model)
        path = directory / filename
        # Big models (VGG-19: 570 MB) go to external data: faster to write than one huge
        # protobuf, and it exercises circ's external-data import.
        external = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
        onnx.save(model, str(path), save_as_external_data=external, location=f"{path.name}.data",
                  size_threshold=1024)
        return path

    build.__name__ = f"build_{filename[:-len('.onnx')]}"
    return build


# ----------------------------------------------------------------------------- registry

TORCH_MODELS = ("resnet8", "resnet8_dynamo", "mobilenet_v2", "mobilenet_v2_opset9", "vgg_small",
                "densenet_small", "shufflenet_small", "autoencoder", "autoencoder_opset9", "lenet5",
                "mlp", "mlp_opset20")
SKLEARN_MODELS = ("sk_mlp_classifier", "sk_mlp_regressor", "sk_pipeline")
LIGHT_MODELS = tuple(f"light_{name}" for name in light_model_names())

BUILDERS: dict[str, Callable[[Path], Path]] = {
    **{name: globals()[f"build_{name}"] for name in TORCH_MODELS},
    **{name: globals()[f"build_{name}"] for name in SKLEARN_MODELS},
    "sk_mlp_classifier_zipmap": build_sk_mlp_classifier_zipmap,
    **{name: build_light(name[len("light_"):]) for name in LIGHT_MODELS},
    **{f"{name}_batched": build_light(name[len("light_"):], dynamic_batch=True) for name in LIGHT_MODELS},
}


class Zoo:
    """Builds zoo models into ``directory`` on first request and remembers the paths."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._paths: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self._paths:
            if name not in BUILDERS:
                raise KeyError(f"no zoo model {name!r}; known: {', '.join(sorted(BUILDERS))}")
            self._paths[name] = BUILDERS[name](self.directory)
        return self._paths[name]

    def proto(self, name: str) -> onnx.ModelProto:
        return onnx.load(str(self.path(name)))
