"""The trainer: fine-tunes a graph's constant weights in place, keeping their representations.

:func:`fit` runs mini-batch SGD (momentum, weight decay) or Adam (:mod:`circ.optim`) on the
softmax cross-entropy of the graph's logits (:func:`circ.autodiff.logits_of`: a graph that
ends in Softmax trains through the fused, stable loss on the Softmax's input), optionally
mixed with a teacher's soft targets (:func:`distillation_loss`). Shuffling is seeded, so the
same seed gives byte-identical weights.

What trains (:func:`trainable_parameters`): the weights and biases of Conv, ConvTranspose,
Gemm and MatMul layers (also when an exporter wrote ``Transpose(W)`` or a Reshape between the
constant and the layer), the constant operand of an Add that follows a layer (a bias), and
BatchNormalization's scale and bias. Shape constants and anything else stay as they are.
BatchNormalization normalizes with the batch's statistics while training and its running
mean and variance are updated with the node's ``momentum`` (PyTorch's rule: unbiased batch
variance); ``TrainConfig.freeze_bn`` keeps it frozen instead (running statistics used and
kept, scale and bias not trained).

Each representation trains by its own rule, and the graph gets the same representation back:

- :class:`~circ.tensors.Dense` (and any tensor's pruning mask, ``.kept``): the gradient is
  masked, so pruned weights stay exactly zero (Han et al. 2015, section 3.1).
- :class:`~circ.tensors.Clustered`: the centroids train; each centroid's gradient is the sum
  of the gradients of the weights that share it (Deep Compression, section 3.2, equation 3),
  the indices never change and pruned (index -1) weights stay zero.
- :class:`~circ.tensors.Quantized`: a straight-through estimator (Bengio et al. 2013;
  BinaryConnect): a float shadow copy takes the optimizer's steps, clipped to the grid's range,
  and is re-quantized after every step with the tensor's own scale, zero point, axis and bits;
  the forward pass sees the quantized weights, so the result stays on the grid.

Entropy-coded tensors (the ``huffman`` pass's) do not train: fine-tune before coding.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional, Sequence, Union

import attrs
import numpy as np

from circ.autodiff import Tape, backward, logits_of, softmax_cross_entropy
from circ.errors import DataError, ModelError, PipelineError
from circ.graph import Graph, Node, Value
from circ.interpreter import Interpreter
from circ.optim import OPTIMIZERS, make_optimizer
from circ.progress import note, track
from circ.tensors import Clustered, Dense, Quantized, Tensor

Feeds = Union[Mapping[str, np.ndarray], np.ndarray]

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops a weight may pass through between its constant and the layer (exporters write a Linear
# layer's (out, in) weight as Transpose(W); some reshape a bias).
PASS_THROUGH = ("Transpose", "Reshape", "Identity", "Flatten", "Squeeze", "Unsqueeze")
BIAS_OPS = ("Add",)


@attrs.define
class TrainConfig:
    """Options of :func:`fit` (the ``finetune`` pass has the same)."""

    epochs: int = 1
    lr: float = 0.01
    batch: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum, weight_decay) | "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    distill: float = 0.0  # weight of the soft (teacher) loss; 0 = off
    temperature: float = 4.0
    seed: int = 0
    freeze_bn: bool = False  # BN uses and keeps its running statistics; scale/bias fixed

    def check(self) -> None:
        """Raise PipelineError naming the first option out of range."""
        problems = [
            (self.epochs < 0, "epochs", "must be >= 0"),
            (not self.lr > 0, "lr", "must be > 0"),
            (self.batch < 1, "batch", "must be >= 1"),
            (self.optimizer not in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}"),
            (not 0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay < 0, "weight_decay", "must be >= 0"),
            (not 0 <= self.distill <= 1, "distill", "must be in [0, 1]"),
            (not self.temperature > 0, "temperature", "must be > 0"),
        ]
        for bad, option, rule in problems:
            if bad:
                raise PipelineError(f"training option {option!r} {rule}, got {getattr(self, option)!r}")


@attrs.define
class EpochRecord:
    """One epoch: mean training loss, training accuracy (on the batches as they were seen),
    validation accuracy after the epoch (None without validation data), and wall time."""

    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: Optional[float]
    seconds: float


# --------------------------------------------------------------------------- parameters


class DenseParameter:
    """A plain (optionally masked) weight: trains every kept element; pruned stay 0."""

    def __init__(self, value: Value, tensor: Tensor):
        self.value = value
        self.mask = None if tensor.kept is None else np.asarray(tensor.kept, bool)
        self.weights = np.array(tensor.to_numpy(), copy=True)  # pruned positions are 0

    def forward(self) -> np.ndarray:
        return self.weights

    def gradient(self, grad: np.ndarray) -> np.ndarray:
        grad = np.asarray(grad, self.weights.dtype)
        return grad if self.mask is None else np.where(self.mask, grad, 0).astype(grad.dtype, copy=False)

    def after_step(self) -> None:
        if self.mask is not None:
            # Masked gradients already keep them at 0; this makes it an invariant.
            np.copyto(self.weights, 0, where=~self.mask)

    def tensor(self) -> Tensor:
        return Dense(self.weights.copy(), None if self.mask is None else self.mask.copy())


class ClusteredParameter:
    """Shared weights: the codebook trains, the indices stay (Deep Compression, eq. 3)."""

    def __init__(self, value: Value, tensor: Clustered):
        self.value = value
        self.indices = tensor.indices
        self.weights = np.array(tensor.codebook, copy=True)
        count = len(self.weights)
        flat = tensor.indices.reshape(-1).astype(np.intp)
        self._kept = np.flatnonzero(flat >= 0) if np.any(flat < 0) else None
        # Index -1 (pruned) reads the extra zero slot at the end of the table.
        self._lookup = np.where(flat >= 0, flat, count).reshape(tensor.indices.shape)
        self._kept_indices = flat if self._kept is None else flat[self._kept]

    def forward(self) -> np.ndarray:
        table = np.append(self.weights, np.zeros(1, self.weights.dtype))
        return table[self._lookup]

    def gradient(self, grad: np.ndarray) -> np.ndarray:
        grad = np.asarray(grad).reshape(-1)
        if self._kept is not None:
            grad = grad[self._kept]
        summed = np.bincount(self._kept_indices, weights=grad, minlength=len(self.weights))
        return summed.astype(self.weights.dtype)

    def after_step(self) -> None:
        pass

    def tensor(self) -> Tensor:
        return Clustered(self.weights.copy(), self.indices.copy())


class QuantizedParameter:
    """Straight-through estimator: a float shadow trains, the forward pass sees its
    re-quantization on the tensor's own grid (scale, zero point, axis, bits)."""

    def __init__(self, value: Value, tensor: Quantized):
        self.value = value
        self.source = tensor
        self.mask = None if tensor.mask is None else np.asarray(tensor.mask, bool)
        self.qmin, self.qmax = _grid_bounds(tensor)
        q_dims = tensor.q.ndim
        self._scale = _along(tensor.scale.astype(np.float64), q_dims, tensor.axis)
        self._zero = _along(tensor.zero_point.astype(np.float64), q_dims, tensor.axis)
        # A slice with scale 0 (binary's all-pruned slices) decodes to 0 whatever q is.
        self._live = self._scale != 0
        self._safe_scale = np.where(self._live, self._scale, 1.0)
        self.q = tensor.q.copy()
        self._decoded = tensor.to_numpy()
        self.weights = self._decoded.copy()
        low = (self.qmin - self._zero) * self._scale
        high = (self.qmax - self._zero) * self._scale
        self._low = np.broadcast_to(low, self.q.shape).astype(self.weights.dtype)
        self._high = np.broadcast_to(high, self.q.shape).astype(self.weights.dtype)

    def forward(self) -> np.ndarray:
        return self._decoded

    def gradient(self, grad: np.ndarray) -> np.ndarray:
        grad = np.asarray(grad, self.weights.dtype)
        return grad if self.mask is None else np.where(self.mask, grad, 0).astype(grad.dtype, copy=False)

    def after_step(self) -> None:
        # The shadow stays inside the grid's range (BinaryConnect clips to [-1, 1]), so a weight
        # pushed past the end can come back after one step the other way.
        np.clip(self.weights, self._low, self._high, out=self.weights)
        if self.mask is not None:
            np.copyto(self.weights, 0, where=~self.mask)
        shadow = self.weights.astype(np.float64)
        if self.source.num_bits == 1:  # binary: {-1, +1}, the sign (0 counts as +1)
            q = np.where(shadow >= 0, 1, -1)
        else:
            q = np.clip(np.rint(shadow / self._safe_scale) + self._zero, self.qmin, self.qmax)
        q = np.where(self._live, q, self.q)
        if self.mask is not None:
            q = np.where(self.mask, q, self.q)
        self.q = q.astype(self.source.q.dtype)
        self._decoded = self.tensor_view().to_numpy()

    def tensor_view(self) -> Quantized:
        source = self.source
        return Quantized(self.q, source.scale, source.zero_point, source.axis, source.num_bits,
                         source.float_dtype, self.mask)

    def tensor(self) -> Tensor:
        return self.tensor_view().copy()


def _along(param: np.ndarray, ndim: int, axis: Optional[int]) -> np.ndarray:
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def _grid_bounds(tensor: Quantized) -> tuple[int, int]:
    """The integers a ``num_bits`` grid holds: signed narrow range ``[-(2^(b-1)-1),
    2^(b-1)-1]`` as circ's quant writes it (or the full range when the tensor already uses
    ``-2^(b-1)``, as an imported one may), unsigned ``[0, 2^b-1]``; one bit is {-1, +1}."""
    bits = tensor.num_bits
    if tensor.q.dtype.kind == "u":
        return 0, 2**bits - 1
    if bits == 1:
        return -1, 1
    top = 2 ** (bits - 1) - 1
    lowest = int(tensor.q.min()) if tensor.q.size else 0
    return (-(top + 1) if lowest < -top else -top), top


Parameter = Union[DenseParameter, ClusteredParameter, QuantizedParameter]


def make_parameter(value: Value) -> Optional[Parameter]:
    """The training rule for constant ``value``'s representation; None when it has none."""
    tensor = value.const
    if tensor is None or tensor.dtype.kind != "f":
        return None
    if isinstance(tensor, Clustered):
        return ClusteredParameter(value, tensor)
    if isinstance(tensor, Quantized):
        return QuantizedParameter(value, tensor)
    if isinstance(tensor, Dense):
        return DenseParameter(value, tensor)
    return None


@attrs.define
class BatchNormState:
    """Running statistics of one BatchNormalization node, updated from each batch."""

    node: Node
    mean: np.ndarray
    var: np.ndarray
    momentum: float

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, count: int) -> None:
        # ONNX's momentum weighs the old value; PyTorch keeps the unbiased batch variance.
        unbiased = batch_var * (count / max(count - 1, 1))
        self.mean *= self.momentum
        self.mean += (1.0 - self.momentum) * batch_mean.astype(self.mean.dtype)
        self.var *= self.momentum
        self.var += (1.0 - self.momentum) * unbiased.astype(self.var.dtype)


def trainable_values(graph: Graph, *, freeze_bn: bool = False) -> list[Value]:
    """The float constants :func:`fit` trains, in graph order (see the module docstring)."""
    found: dict[int, Value] = {}

    def add(value: Optional[Value]) -> None:
        root = _root_const(value)
        if root is not None and root.const.dtype.kind == "f":
            found.setdefault(id(root), root)

    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op in LAYER_OPS:
            first = 0 if node.op in ("Gemm", "MatMul") else 1
            for value in node.inputs[first:]:
                add(value)
        elif node.op in BIAS_OPS and len(node.inputs) == 2:
            for mine, other in ((0, 1), (1, 0)):
                producer = node.inputs[other].producer if node.inputs[other] is not None else None
                if producer is not None and producer.op in LAYER_OPS:
                    add(node.inputs[mine])
        elif node.op == "BatchNormalization" and not freeze_bn:
            add(node.input(1))
            add(node.input(2))
    return list(found.values())


def _root_const(value: Optional[Value]) -> Optional[Value]:
    while value is not None and value.const is None:
        node = value.producer
        if node is None or node.op not in PASS_THROUGH or node.domain not in ("", "ai.onnx"):
            return None
        value = node.inputs[0]
    return value


def trainable_parameters(graph: Graph, *, freeze_bn: bool = False
                         ) -> tuple[list[Parameter], list[tuple[Value, str]]]:
    """Parameters for :func:`trainable_values`, and ``(value, reason)`` for those that cannot
    train (an entropy-coded tensor, say)."""
    params, frozen = [], []
    for value in trainable_values(graph, freeze_bn=freeze_bn):
        param = make_parameter(value)
        if param is None:
            frozen.append((value, f"a {type(value.const).__name__} tensor does not train "
                                  f"(fine-tune before entropy coding)"))
        else:
            params.append(param)
    return params, frozen


def _trained_batch_norms(graph: Graph) -> list[Node]:
    """BatchNormalization nodes that train on batch statistics (per-channel parameters)."""
    return [node for node in graph.nodes
            if node.op == "BatchNormalization" and node.domain in ("", "ai.onnx")
            and len(node.outputs) == 1 and node.inputs[1].shape is not None
            and len(node.inputs[1].shape) == 1 and node.input(3) is not None and node.input(4) is not None]


def untie_running_statistics(graph: Graph) -> int:
    """Give every training BatchNormalization running mean and variance constants of its own,
    so updating them changes nothing else; returns how many inputs were rewired.

    PyTorch's exporter stores identical initializers once: an untrained BN's running variance
    (ones) becomes ``Identity(scale)`` and its running mean (zeros) ``Identity(bias)``, and
    two BNs may share one. Updating those in place would move the scale or the other BN.
    """
    rewired = 0
    for node in _trained_batch_norms(graph):
        for index, suffix in ((3, "running_mean"), (4, "running_var")):
            value = node.inputs[index]
            if value.const is not None and len(value.uses) == 1:
                continue
            root = _root_const(value)
            if root is None or root.const.dtype.kind != "f":
                continue  # computed at run time: left as it is, never updated
            array = np.array(root.const.to_numpy(), copy=True).reshape(node.inputs[1].shape)
            own = graph.add_const(f"{node.name or 'batchnorm'}_{suffix}", Dense(array))
            graph.set_input(node, index, own)
            _erase_if_dead(graph, value)
            rewired += 1
    return rewired


def _erase_if_dead(graph: Graph, value: Value) -> None:
    """Erase the pass-through chain that computed ``value`` once nothing reads it."""
    while value.producer is not None and not value.uses and not graph.is_output(value):
        node = value.producer
        if any(v.uses or graph.is_output(v) for v in node.outputs):
            return
        graph.erase_node(node)
        value = node.inputs[0]


def _batch_norm_states(graph: Graph) -> list[BatchNormState]:
    states = []
    for node in _trained_batch_norms(graph):
        mean, var = node.inputs[3], node.inputs[4]
        if mean.const is None or var.const is None or len(mean.uses) > 1 or len(var.uses) > 1:
            continue  # see untie_running_statistics
        states.append(BatchNormState(node, np.array(mean.const.to_numpy(), copy=True),
                                     np.array(var.const.to_numpy(), copy=True),
                                     float(node.attrs.get("momentum", 0.9))))
    return states


# --------------------------------------------------------------------------- the loss


def distillation_loss(logits: np.ndarray, labels: np.ndarray, teacher_logits: Optional[np.ndarray] = None,
                      *, alpha: float = 0.0, temperature: float = 4.0) -> tuple[float, np.ndarray]:
    """Hinton et al. (2015): ``(1 - alpha) * CE(labels) + alpha * T^2 * CE(soft at T)``, where
    the soft targets are ``softmax(teacher_logits / T)`` and the student's soft predictions
    ``softmax(logits / T)``; the T^2 keeps the soft gradients' scale independent of T
    (section 2). Returns the loss and its gradient with respect to ``logits``."""
    if teacher_logits is None or alpha == 0:
        return softmax_cross_entropy(logits, labels)
    temperature = float(temperature)
    hard_loss, hard_grad = softmax_cross_entropy(logits, labels) if alpha < 1 else (0.0, 0)
    targets = _softmax(np.asarray(teacher_logits, np.float64) / temperature).astype(logits.dtype)
    soft_loss, soft_grad = softmax_cross_entropy(logits / temperature, targets)
    loss = (1 - alpha) * hard_loss + alpha * temperature**2 * soft_loss
    # d(logits / T) / d(logits) = 1 / T, so T^2 * soft_grad / T.
    grad = (1 - alpha) * hard_grad + (alpha * temperature) * soft_grad
    return float(loss), np.asarray(grad, logits.dtype)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- running


class _TrainingTape(Tape):
    """A :class:`Tape` that runs only the nodes the loss reads (not a final Softmax, not other
    outputs) and reads constants from ``const_arrays`` (decoded once, then the trainer's
    current weights) instead of decoding every constant on every batch."""

    def __init__(self, graph: Graph, target: Value, *, training: bool):
        super().__init__(graph, training=training)
        self.target = target
        self.const_arrays = {id(v): v.const.to_numpy() for v in graph.consts.values()}
        self.nodes = _ancestors(graph, target)

    def run(self, feeds) -> np.ndarray:
        """The target's array for ``feeds``; every value computed stays in ``self.values``."""
        env = self.check_feeds(feeds)
        self.values = env
        env.update(self.const_arrays)
        for node in self.nodes:
            args = [None if v is None else env[id(v)] for v in node.inputs]
            for value, array in zip(node.outputs, self.run_node(node, args)):
                env[id(value)] = array
        return env[id(self.target)]


def _ancestors(graph: Graph, target: Value) -> list[Node]:
    """The nodes ``target`` depends on, in graph order."""
    needed = {id(target)}
    nodes = []
    for node in reversed(graph.nodes):
        if any(id(v) in needed for v in node.outputs):
            nodes.append(node)
            needed.update(id(v) for v in node.inputs if v is not None)
    return nodes[::-1]


class _LogitsReader(Interpreter):
    """The interpreter, also keeping the logits value (the input of a final Softmax)."""

    def __init__(self, graph: Graph):
        super().__init__(graph)
        self.logits = logits_of(graph)
        self._keep.add(id(self.logits))

    def logits_for(self, feeds) -> np.ndarray:
        self.run(feeds)
        return self.values[id(self.logits)]


def fit(graph: Graph, x: Feeds, y: np.ndarray, config: Optional[TrainConfig] = None, *,
        teacher: Optional[Graph] = None, val: Optional[tuple] = None) -> list[EpochRecord]:
    """Train ``graph``'s weights in place on ``x`` (input name -> array, samples on axis 0; a
    bare array for a one-input graph) and class labels ``y`` with ``config`` (default
    ``TrainConfig()``); one record per epoch.

    With ``config.distill > 0`` the teacher's logits (``teacher``, default: ``graph`` as it is
    before training) give soft targets. ``val = (x_val, y_val)`` adds validation accuracy to
    each record. The graph's weights are written back (with ``graph.set_const``, same
    representations) after every epoch. The one structural edit: BatchNormalization running
    statistics shared with other values get constants of their own
    (:func:`untie_running_statistics`).
    """
    config = TrainConfig() if config is None else config
    config.check()
    feeds, labels = _inputs(graph, x, y, "training data")
    total = len(labels)
    params, _ = trainable_parameters(graph, freeze_bn=config.freeze_bn)
    if not params:
        raise ModelError("nothing to train: the graph has no Conv/Gemm/MatMul weights, biases "
                         "or BatchNormalization parameters held as trainable constants")
    if val is not None:
        val = _inputs(graph, val[0], val[1], "validation data")
    logits = logits_of(graph)
    teacher_logits = None
    if config.distill > 0:
        teacher_logits = predict(teacher if teacher is not None else graph, feeds)
    if not config.freeze_bn:
        untie_running_statistics(graph)
    batch_norms = [] if config.freeze_bn else _batch_norm_states(graph)
    tape = _TrainingTape(graph, logits, training=not config.freeze_bn)
    for param in params:
        tape.const_arrays[id(param.value)] = param.forward()
    optimizer = make_optimizer(config.optimizer, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    size, fixed = _batch_size(graph, config.batch)
    stop = total - total % size if fixed else total
    if stop == 0:
        raise DataError(f"training data: {total} samples, the graph takes batches of {size}")
    rng = np.random.default_rng(config.seed)
    wrt = [p.value for p in params]
    records = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(total)
        loss_sum, correct = 0.0, 0
        begins = range(0, stop, size)
        for begin in track(begins, total=len(begins), desc=f"epoch {epoch}/{config.epochs}", unit="batch"):
            rows = order[begin:begin + size]
            out = tape.run({name: array[rows] for name, array in feeds.items()})
            loss, grad = distillation_loss(
                out, labels[rows], None if teacher_logits is None else teacher_logits[rows],
                alpha=config.distill, temperature=config.temperature)
            grads = backward(tape, {logits: grad}, wrt)
            optimizer.step([p.weights for p in params], [p.gradient(grads[p.value.name]) for p in params])
            for param in params:
                param.after_step()
                tape.const_arrays[id(param.value)] = param.forward()
            for state in batch_norms:
                mean, var = tape.batch_stats[state.node.name]
                count = tape.values[id(state.node.inputs[0])].size // len(mean)
                state.update(mean, var, count)
            loss_sum += loss * len(rows)
            correct += int(np.count_nonzero(out.argmax(axis=-1) == labels[rows]))
        _write_back(graph, params, batch_norms)
        val_accuracy = None if val is None else accuracy(graph, *val)
        record = EpochRecord(epoch, loss_sum / stop, correct / stop, val_accuracy,
                             time.perf_counter() - start)
        records.append(record)
        note(_describe(record, config.epochs))
    return records


def _describe(record: EpochRecord, epochs: int) -> str:
    text = (f"epoch {record.epoch}/{epochs}: loss {record.loss:.4f}, train accuracy "
            f"{100 * record.train_accuracy:.2f}%")
    if record.val_accuracy is not None:
        text += f", validation accuracy {100 * record.val_accuracy:.2f}%"
    return text + f" ({record.seconds:.1f} s)"


def _write_back(graph: Graph, params: Sequence[Parameter], batch_norms: Sequence[BatchNormState]) -> None:
    for param in params:
        graph.set_const(param.value, param.tensor())
    for state in batch_norms:
        graph.set_const(state.node.inputs[3], Dense(state.mean.copy()))
        graph.set_const(state.node.inputs[4], Dense(state.var.copy()))


def predict(graph: Graph, x: Feeds, batch: int = 256) -> np.ndarray:
    """The graph's logits (the input of a final Softmax, else its first output) for ``x``,
    run in batches of ``batch`` samples (or of the graph's fixed batch size)."""
    feeds = _feeds(graph, x, "data")
    total = _count(feeds, "data")
    reader = _LogitsReader(graph)
    size, fixed = _batch_size(graph, batch)
    chunks = []
    for begin in range(0, total, size):
        part = {name: array[begin:begin + size] for name, array in feeds.items()}
        rows = len(next(iter(part.values())))
        if fixed and rows < size:  # a graph with a fixed batch: pad the last one
            part = {name: _pad(array, size) for name, array in part.items()}
        chunks.append(reader.logits_for(part)[:rows])
    if not chunks:
        raise DataError("data: no samples")
    return np.concatenate(chunks)


def accuracy(graph: Graph, x: Feeds, y: np.ndarray, batch: int = 256) -> float:
    """Fraction of samples whose largest logit is at the label."""
    labels = _labels(y, "data")
    predicted = predict(graph, x, batch).argmax(axis=-1)
    if len(predicted) != len(labels):
        raise DataError(f"data: {len(predicted)} samples but {len(labels)} labels")
    return float(np.mean(predicted == labels))


# --------------------------------------------------------------------------- data


def _inputs(graph: Graph, x: Feeds, y, what: str) -> tuple[dict, np.ndarray]:
    feeds = _feeds(graph, x, what)
    labels = _labels(y, what)
    count = _count(feeds, what)
    if count != len(labels):
        raise DataError(f"{what}: {count} samples but {len(labels)} labels")
    if count == 0:
        raise DataError(f"{what}: no samples")
    return feeds, labels


def _feeds(graph: Graph, x: Feeds, what: str) -> dict:
    """``x`` keyed by the graph's input names, in each input's dtype (float32 for a float32
    model: no per-batch conversion)."""
    names = [v.name for v in graph.inputs]
    if not isinstance(x, Mapping):
        if len(names) != 1:
            raise DataError(f"{what}: the graph has inputs {', '.join(names)}; give one array per "
                            f"input by name")
        x = {names[0]: x}
    missing = [n for n in names if n not in x]
    unknown = sorted(set(x) - set(names))
    if missing or unknown:
        problem = f"no array for input {missing[0]!r}" if missing else f"array {unknown[0]!r} is not an input"
        raise DataError(f"{what}: {problem}; the graph's inputs are {', '.join(names)}")
    feeds = {}
    for value in graph.inputs:
        array = np.asarray(x[value.name])
        if value.dtype is not None and array.dtype != value.dtype:
            array = array.astype(value.dtype)
        feeds[value.name] = array
    return feeds


def _count(feeds: dict, what: str) -> int:
    counts = {len(a) if a.ndim else -1 for a in feeds.values()}
    if len(counts) != 1 or -1 in counts:
        raise DataError(f"{what}: every input array needs the same number of samples along axis 0; "
                        f"got {', '.join(f'{k}: {list(v.shape)}' for k, v in feeds.items())}")
    return counts.pop()


def _labels(y, what: str) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise DataError(f"{what}: labels must be one class index per sample (1-D), got shape "
                        f"{list(labels.shape)}")
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{what}: labels must be integer class indices, got {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _batch_size(graph: Graph, requested: int) -> tuple[int, bool]:
    """``(size, fixed)``: the graph's fixed batch dimension when its inputs have one."""
    fixed = {v.shape[0] for v in graph.inputs
             if v.shape and isinstance(v.shape[0], (int, np.integer)) and v.shape[0] > 0}
    if len(fixed) == 1:
        return int(fixed.pop()), True
    if len(fixed) > 1:
        raise DataError(f"the graph's inputs fix different batch sizes {sorted(fixed)}")
    return max(1, int(requested)), False


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, size - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad)
