"""schedule: iterative pruning, alternating prune and fine-tune with a rising sparsity.

Han et al. (Learning both Weights and Connections, 2015, sec. 3.3) prune and retrain in
turns: each round removes a few more weights and retraining recovers the accuracy, which
reaches higher sparsity than one prune followed by retraining. This pass runs those rounds
itself — ``prune`` at the round's sparsity, then ``finetune`` — rather than teaching the pass
manager to repeat part of a pipeline.
"""

from __future__ import annotations

from typing import Literal, Optional

import attrs

from circ.errors import PipelineError
from circ.graph import Graph
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, register_pass
from circ.weights import parse_layer_values
from passes.finetune import Finetune
from passes.prune import Prune

def ramp_fraction(step: int, steps: int, ramp: str) -> float:
    """The fraction of the target sparsity reached after round ``step`` (1..steps).

    ``linear``: ``step / steps`` (equal increments). ``cubic`` (Zhu & Gupta, To prune, or
    not to prune, 2017): ``1 - (1 - step / steps) ** 3`` — large steps first, while many
    weights are redundant, and small ones near the target. Both reach exactly 1 at the last
    round."""
    if step >= steps:
        return 1.0
    progress = step / steps
    return progress if ramp == "linear" else 1.0 - (1.0 - progress) ** 3


def _sparsity_value(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def _check_fraction(instance, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise PipelineError(f"option {attribute.name!r} of pass 'schedule' must be in [0, 1], got {value}")


def _check_steps(instance, attribute, value):
    if value < 1:
        raise PipelineError(f"option 'steps' of pass 'schedule' must be >= 1, got {value}")


def _check_layers(instance, attribute, value):
    parse_layer_values(value, "layers", "schedule", _sparsity_value)


@register_pass
class Schedule(Pass):
    """Alternate magnitude pruning and fine-tuning for ``steps`` rounds, the sparsity rising
    to ``sparsity`` (Han et al. 2015, iterative pruning).

    Round ``k`` of ``n`` (k = 1..n) runs ``prune(sparsity=s_k, scope=..., layers=...)`` with
    every target (``sparsity`` and each ``layers`` override) scaled by the ramp
    (``ramp=cubic``: ``1 - (1 - k/n)^3``, Zhu & Gupta 2017; ``ramp=linear``: ``k/n``), then
    ``finetune`` with the training options (``epochs`` per round, ``lr``, ``batch``,
    ``optimizer``, ``momentum``, ``weight_decay``, ``distill``, ``temperature``; see
    ``--help-pass finetune``) on the run's ``--data``/``--val``. The last round prunes to the
    targets themselves, so the final sparsity of every layer is exactly what a single
    ``prune`` with these options gives (pruned weights stay pruned through fine-tuning, so
    the rounds compose). ``epochs=0`` prunes in rounds without training.

    Approximate. ``details["rounds"]``: per round the target, the achieved sparsity and the
    fine-tune record; ``details["layers"]``: the final sparsity per layer.
    """

    name = "schedule"
    exact = False

    sparsity: float = attrs.field(default=0.9, validator=_check_fraction,
                                  metadata={"help": "final fraction of weights pruned per layer"})
    steps: int = attrs.field(default=4, validator=_check_steps,
                             metadata={"help": "prune/fine-tune rounds"})
    ramp: Literal["cubic", "linear"] = attrs.field(default="cubic", metadata={
        "help": "how the sparsity rises: cubic (big steps first) or linear"})
    scope: str = attrs.field(default="all", metadata={"help": "layers to prune: all, conv, fc or a name pattern"})
    layers: str = attrs.field(default="", validator=_check_layers, metadata={
        "help": "per-layer final sparsities: pattern:sparsity;... (first match wins), as prune's"})
    epochs: int = attrs.field(default=1, metadata={"help": "fine-tuning epochs after each pruning round"})
    lr: float = attrs.field(default=0.01, metadata={"help": "learning rate"})
    batch: int = attrs.field(default=64, metadata={"help": "mini-batch size"})
    optimizer: Literal["sgd", "adam"] = attrs.field(default="sgd", metadata={"help": "sgd or adam"})
    momentum: float = attrs.field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = attrs.field(default=0.0, metadata={"help": "L2 weight decay"})
    distill: float = attrs.field(default=0.0, metadata={
        "help": "weight of the teacher's soft targets (the model before the pipeline); 0 = off"})
    temperature: float = attrs.field(default=4.0, metadata={"help": "distillation temperature"})
    freeze_bn: bool = attrs.field(default=False, metadata={
        "help": "keep BatchNormalization frozen while fine-tuning"})

    def wants_original(self) -> bool:
        return self.distill > 0 and self.epochs > 0

    def round_prune(self, step: int) -> Prune:
        """The prune pass of round ``step`` (1..steps)."""
        fraction = ramp_fraction(step, self.steps, self.ramp)
        overrides = parse_layer_values(self.layers, "layers", self.name, _sparsity_value)
        layers = ";".join(f"{pattern}:{fraction * value!r}" for pattern, value in overrides)
        return Prune(sparsity=fraction * self.sparsity, scope=self.scope, layers=layers)

    def __attrs_post_init__(self):
        self.finetune_pass()  # the training options are checked when the pipeline is parsed

    def finetune_pass(self) -> Optional[Finetune]:
        """The fine-tune pass run after each round (None when ``epochs=0``)."""
        if self.epochs == 0:
            return None
        return Finetune(epochs=self.epochs, lr=self.lr, batch=self.batch, optimizer=self.optimizer,
                        momentum=self.momentum, weight_decay=self.weight_decay, distill=self.distill,
                        temperature=self.temperature, freeze_bn=self.freeze_bn)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        finetune = self.finetune_pass()
        rounds = []
        modified = False
        for step in range(1, self.steps + 1):
            prune = self.round_prune(step)
            pruned = prune.run(graph, ctx)
            modified |= pruned.modified
            record = {"round": step, "target": prune.sparsity, "sparsity": pruned.details.get("sparsity"),
                      "layers": pruned.details.get("layers", {})}
            if finetune is not None and pruned.details.get("layers"):
                trained = finetune.run(graph, ctx)
                modified |= trained.modified
                record["finetune"] = trained.details
            rounds.append(record)
        final = rounds[-1]
        details = {"rounds": rounds, "layers": final["layers"], "sparsity": final["sparsity"],
                   "table": _table(rounds)}
        return PassResult(modified, preserved={STRUCTURE}, details=details)


def _table(rounds: list) -> dict:
    """One row per round: target, achieved sparsity and what fine-tuning reported last."""
    rows = []
    for record in rounds:
        epochs = (record.get("finetune") or {}).get("epochs") or []
        last = epochs[-1] if epochs else {}
        rows.append([record["round"], f"{100 * record['target']:.2f}%",
                     "?" if record["sparsity"] is None else f"{100 * record['sparsity']:.2f}%",
                     _maybe(last.get("loss"), "{:.4f}"), _maybe(last.get("val_accuracy"), "{:.2%}")])
    return {"title": "schedule: prune and fine-tune rounds",
            "headers": ["round", "target", "sparsity", "loss", "val accuracy"], "rows": rows}


def _maybe(value, form: str) -> str:
    return "-" if value is None else form.format(value)
