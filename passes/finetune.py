"""finetune: retrain the weights on labelled data to win back the accuracy compression cost."""

from __future__ import annotations

from typing import Literal, Optional

import attrs

from circ.errors import DataError
from circ.graph import Graph
from circ.passbase import NONE, STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.train import TrainConfig, accuracy, fit, trainable_parameters, untie_running_statistics


def _positive(instance, attribute, value):
    if not value > 0:
        raise ValueError(f"option {attribute.name!r} must be > 0, got {value}")


def _non_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"option {attribute.name!r} must be >= 0, got {value}")


def _fraction(instance, attribute, value):
    if not 0 <= value <= 1:
        raise ValueError(f"option {attribute.name!r} must be in [0, 1], got {value}")


def _momentum(instance, attribute, value):
    if not 0 <= value < 1:
        raise ValueError(f"option {attribute.name!r} must be in [0, 1), got {value}")


@register_pass
class Finetune(Pass):
    """Retrain the weights on the run's labelled data (``--data TRAIN.npz`` with a ``y`` array,
    optional ``--val VAL.npz``), keeping every weight's representation (:mod:`circ.train`).

    Trains Conv/ConvTranspose/Gemm/MatMul weights and biases and BatchNormalization's scale
    and bias (BN on batch statistics, running statistics updated; ``freeze_bn`` keeps BN as
    it is) with mini-batch SGD (momentum, weight decay) or Adam on the softmax cross-entropy
    of the logits (a final Softmax is trained through its input). Pruned weights stay exactly
    zero (masked gradients), clustered weights train their centroids with the indices fixed
    (Deep Compression), quantized weights train through a straight-through estimator and stay
    on their grid. Entropy-coded weights (after ``huffman``) do not train and are declined:
    fine-tune before coding.

    ``distill`` > 0 mixes in Hinton et al.'s soft-target loss: ``(1 - distill) * CE(labels) +
    distill * T^2 * CE(teacher's softmax at T)``, the teacher being the model as it was
    before the pipeline. A BatchNormalization whose running statistics are shared with
    another value (PyTorch exports an untrained BN's running variance as ``Identity(scale)``)
    gets constants of its own first. Seeded (``seed``, default the run's ``--seed``): the same seed gives
    the same weights. ``details["epochs"]`` holds loss, training and validation accuracy and
    seconds per epoch; with ``--val``, ``details["val_accuracy_before"]`` too.

    Approximate: the weights change (that is the point).
    """

    name = "finetune"
    exact = False

    epochs: int = attrs.field(default=1, validator=_non_negative, metadata={
        "help": "passes over the training data"})
    lr: float = attrs.field(default=0.01, validator=_positive, metadata={"help": "learning rate"})
    batch: int = attrs.field(default=64, validator=_positive, metadata={"help": "samples per step"})
    optimizer: Literal["sgd", "adam"] = attrs.field(default="sgd", metadata={
        "help": "sgd (with momentum and weight decay) or adam"})
    momentum: float = attrs.field(default=0.9, validator=_momentum, metadata={"help": "SGD momentum"})
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative, metadata={
        "help": "L2 weight decay added to the gradient"})
    distill: float = attrs.field(default=0.0, validator=_fraction, metadata={
        "help": "weight of the teacher's soft-target loss (0 = off); teacher: the input model"})
    temperature: float = attrs.field(default=4.0, validator=_positive, metadata={
        "help": "softmax temperature of distillation"})
    freeze_bn: bool = attrs.field(default=False, metadata={
        "help": "keep BatchNormalization frozen (running statistics, scale and bias)"})
    seed: Optional[int] = attrs.field(default=None, metadata={
        "help": "shuffling seed (default: the run's --seed)"})

    def wants_original(self) -> bool:
        return self.distill > 0

    def config(self, ctx: PassContext) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch=self.batch, optimizer=self.optimizer,
                           momentum=self.momentum, weight_decay=self.weight_decay,
                           distill=self.distill, temperature=self.temperature,
                           seed=ctx.seed if self.seed is None else self.seed, freeze_bn=self.freeze_bn)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.data is None or ctx.labels is None:
            what = "has no y array" if ctx.data is not None else "was not given"
            raise DataError(f"finetune needs labelled training data and --data {what}: give "
                            f"--data TRAIN.npz with arrays x (or one per model input) and y "
                            f"(class indices)")
        config = self.config(ctx)
        _, frozen = trainable_parameters(graph, freeze_bn=self.freeze_bn)
        for value, reason in frozen:
            ctx.decline(value.users[0] if value.users else None, f"{value.name}: {reason}")
        teacher = None
        details: dict = {}
        if self.distill > 0:
            teacher = ctx.original
            details["teacher"] = ("the input model" if teacher is not None
                                  else "the model as finetune found it")
        if ctx.val is not None:
            details["val_accuracy_before"] = accuracy(graph, *ctx.val)
        rewired = 0 if self.freeze_bn else untie_running_statistics(graph)
        if rewired:
            details["untied_running_statistics"] = rewired
        records = fit(graph, ctx.data, ctx.labels, config, teacher=teacher, val=ctx.val)
        details["epochs"] = [attrs.asdict(r) for r in records]
        details["table"] = epoch_table(records, details.get("val_accuracy_before"))
        return PassResult(modified=bool(records) or bool(rewired),
                          preserved=NONE if rewired else {STRUCTURE}, details=details)


def epoch_table(records, val_before=None) -> dict:
    """The epochs as a table for circ-opt's summary and the HTML report (``details["table"]``)."""
    def percent(x):
        return "" if x is None else f"{100.0 * x:.2f}%"

    rows = [["before", "", "", percent(val_before), ""]] if val_before is not None else []
    rows += [[str(r.epoch), f"{r.loss:.4f}", percent(r.train_accuracy), percent(r.val_accuracy),
              f"{r.seconds:.1f}"] for r in records]
    return {"title": "finetune: loss and accuracy per epoch",
            "headers": ["epoch", "loss", "train acc", "val acc", "seconds"], "rows": rows}
