"""sensitivity: how much validation accuracy each layer loses when it alone is pruned.

Han et al. (Learning both Weights and Connections, 2015, Fig. 5) prune one layer at a time
over a range of sparsities to see which layers tolerate pruning; the curves set the per-layer
sparsities of the later pipeline (and :mod:`passes.auto_prune` picks them automatically).
"""

from __future__ import annotations

import itertools
from typing import Optional

import attrs
import numpy as np

from circ.errors import DataError, PipelineError
from circ.graph import Graph
from circ.passbase import Pass, PassContext, PassResult, register_pass
from circ.progress import track
from circ.weights import WeightRef, select_layers
from passes.prune import prune_layer

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def check_sparsities(instance, attribute, value):
    if not value or any(not 0.0 <= s <= 1.0 for s in value):
        raise PipelineError(f"option {attribute.name!r} of pass {instance.name!r} needs fractions in "
                            f"[0, 1], written 0.5:0.7:0.9; got {value}")


@attrs.define
class Evaluation:
    """Labelled samples a pass measures accuracy on, and where they came from."""

    x: dict  # graph input name -> array, samples along axis 0
    y: np.ndarray  # class indices
    source: str  # "validation" or "training"

    @property
    def count(self) -> int:
        return len(self.y)


def evaluation_data(ctx: PassContext, pass_name: str) -> Evaluation:
    """The validation set of the run (``--val``), else the labelled training data (``--data``
    with a ``y`` array). Raises DataError naming the pass when there are no labels."""
    val = getattr(ctx, "val", None)
    if val is not None:
        return Evaluation(dict(val[0]), np.asarray(val[1]), "validation")
    labels = getattr(ctx, "labels", None)
    if ctx.data is not None and labels is not None:
        return Evaluation(dict(ctx.data), np.asarray(labels), "training")
    raise DataError(f"pass {pass_name!r} measures accuracy and needs labelled data: give --val VAL.npz "
                    f"(arrays x and y) or --data TRAIN.npz with a y array")


def model_accuracy(graph: Graph, data: Evaluation, batch: int = 256) -> float:
    """Top-1 accuracy of ``graph``'s first output on ``data``, as a fraction."""
    from circ.train import accuracy

    return float(accuracy(graph, data.x, data.y, batch=batch))


def accuracy_with_pruned(graph: Graph, ref: WeightRef, sparsity: float, data: Evaluation,
                         ctx: PassContext, batch: int = 256) -> Optional[float]:
    """Accuracy with ``ref``'s layer alone pruned to ``sparsity``; the graph is restored
    before returning (None when the layer's weights cannot be pruned)."""
    original = ref.value.const
    pruned = prune_layer(ref, sparsity, ctx)
    if pruned is None:
        return None
    graph.set_const(ref.value, pruned)
    try:
        return model_accuracy(graph, data, batch)
    finally:
        graph.set_const(ref.value, original)


def sensitivity_curves(graph: Graph, refs: list[WeightRef], sparsities, data: Evaluation,
                       ctx: PassContext, batch: int = 256) -> dict[str, list[float]]:
    """Layer name -> accuracy at each of ``sparsities`` with that layer alone pruned.
    Layers whose weights cannot be pruned are left out (declined once)."""
    curves: dict[str, list[float]] = {}
    skipped: set[str] = set()
    grid = list(itertools.product(refs, sparsities))
    for ref, sparsity in track(grid, total=len(grid), desc="sensitivity", unit="model"):
        if ref.name in skipped:
            continue
        value = accuracy_with_pruned(graph, ref, sparsity, data, ctx, batch)
        if value is None:
            skipped.add(ref.name)
            curves.pop(ref.name, None)
            continue
        curves.setdefault(ref.name, []).append(value)
    return curves


def percent(fraction: float) -> str:
    return f"{100.0 * fraction:.2f}"


@register_pass
class Sensitivity(Pass):
    """Prune each selected layer alone to each of ``sparsities`` and measure the accuracy.

    For every Conv/ConvTranspose/Gemm/MatMul weight in ``scope`` (:mod:`circ.weights`) and
    every sparsity, the layer is pruned as ``prune(sparsity=s)`` prunes it (the smallest
    magnitudes; weights already pruned stay pruned and count), the whole model runs on the
    validation set (``--val VAL.npz``; without it the labelled training data, ``--data``
    with ``y``), and the top-1 accuracy is recorded; then the layer's weights are put back.

    Exact: an analysis, the graph is left as it was. ``details`` holds ``baseline`` (the
    unpruned accuracy), ``sparsities``, ``layers`` (name -> accuracy per sparsity, fractions),
    ``series`` (one ``{label, x, y}`` curve per layer, accuracy in percent) and ``table``
    (what circ-opt prints). ``plot=FILE.svg`` also draws the curves (:mod:`circ.plots`).
    Cost: one evaluation per layer and sparsity.
    """

    name = "sensitivity"
    exact = True

    sparsities: tuple[float, ...] = attrs.field(
        default=DEFAULT_SPARSITIES, converter=tuple, validator=check_sparsities,
        metadata={"help": "sparsities tried per layer, e.g. 0.5:0.8:0.9"})
    scope: str = attrs.field(default="all", metadata={"help": "layers to analyse: all, conv, fc or a name pattern"})
    plot: str = attrs.field(default="", metadata={"help": "write the curves as an SVG chart to this file"})
    batch: int = attrs.field(default=256, metadata={"help": "samples per interpreter run"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = evaluation_data(ctx, self.name)
        refs = select_layers(graph, self.scope, [], ctx)
        if not refs:
            return PassResult(False)
        baseline = model_accuracy(graph, data, self.batch)
        curves = sensitivity_curves(graph, refs, self.sparsities, data, ctx, self.batch)
        details = sensitivity_details(baseline, self.sparsities, curves, refs, data)
        if self.plot:
            write_plot(self.plot, details)
            details["plot"] = self.plot
        return PassResult(False, details=details)


def sensitivity_details(baseline: float, sparsities, curves: dict, refs: list[WeightRef],
                        data: Evaluation) -> dict:
    """The report record of a sensitivity run: numbers, curves and a printable table."""
    sizes = {ref.name: ref.value.const.size for ref in refs}
    rows = [[name, f"{sizes[name]:,}", percent(baseline)] + [percent(a) for a in accuracies]
            for name, accuracies in curves.items()]
    table = {"title": f"sensitivity: top-1 accuracy (%) on {data.count} {data.source} samples "
                      f"with one layer pruned",
             "headers": ["layer", "weights", "dense"] + [f"{100 * s:g}%" for s in sparsities],
             "rows": rows}
    series = [{"label": name, "x": [100.0 * s for s in sparsities], "y": [100.0 * a for a in accuracies]}
              for name, accuracies in curves.items()]
    return {"baseline": baseline, "samples": data.count, "data": data.source,
            "sparsities": list(sparsities), "layers": curves, "series": series, "table": table}


def write_plot(path: str, details: dict) -> None:
    """The curves of ``details`` as an SVG line chart at ``path`` (written atomically)."""
    from circ.fileio import atomic_write
    from circ.plots import line_chart_svg

    series = {s["label"]: (s["x"], s["y"]) for s in details["series"]}
    svg = line_chart_svg(series, title="Accuracy with one layer pruned", xlabel="sparsity (%)",
                         ylabel=f"top-1 accuracy on {details['data']} set (%)")
    atomic_write(path, svg)
