"""auto_prune: per-layer sparsities chosen from sensitivity curves to meet an accuracy budget.

Han et al. (2015, sec. 4 and Fig. 5) set each layer's pruning rate by hand from its
sensitivity curve. This pass does it by rule: measure the curves, pick per-layer sparsities
greedily so the summed predicted drops stay within the budget, then check the combined model
and back off until the measured drop does too.
"""

from __future__ import annotations

import attrs
from circ.errors import PipelineError
from circ.graph import Graph
from circ.passbase import STRUCTURE, Pass, PassContext, PassResult, format_option, register_pass
from circ.weights import WeightRef, select_layers
from passes.prune import prune_layer
from passes.sensitivity import (Evaluation, check_sparsities, evaluation_data, model_accuracy, percent,
                                sensitivity_curves, sensitivity_details)

DEFAULT_SPARSITIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)

# A move that costs no predicted accuracy is scored as if it cost this many points, so among
# free moves the one removing the most weights goes first.
FREE_MOVE_COST = 1e-3


def _check_budget(instance, attribute, value):
    if not value >= 0:
        raise PipelineError(f"option 'max_drop' of pass 'auto_prune' must be >= 0 points, got {value}")


@attrs.define
class Plan:
    """Per-layer choice: an index into the sparsity grid, -1 for dense."""

    levels: dict  # layer name -> grid index or -1

    def sparsity(self, name: str, grid) -> float:
        level = self.levels[name]
        return 0.0 if level < 0 else float(grid[level])


def predicted_drops(baseline: float, curves: dict) -> dict[str, list[float]]:
    """Layer -> accuracy drop in points (never below 0) at each grid sparsity, pruned alone."""
    return {name: [max(0.0, 100.0 * (baseline - a)) for a in accuracies] for name, accuracies in curves.items()}


def greedy_plan(drops: dict, sizes: dict, grid, max_drop: float) -> Plan:
    """Raise layer sparsities one move at a time, always taking the move that removes the
    most weights per point of predicted drop, while the summed predicted drops of the chosen
    levels stay within ``max_drop``. A move may jump several grid levels of one layer (curves
    are noisy, so a costly level can sit below a free one)."""
    levels = {name: -1 for name in drops}

    def drop(name, level):
        return 0.0 if level < 0 else drops[name][level]

    def sparsity(level):
        return 0.0 if level < 0 else grid[level]

    total = 0.0
    while True:
        best = None
        for name, current in levels.items():
            for level in range(current + 1, len(grid)):
                cost = drop(name, level) - drop(name, current)
                if total + cost > max_drop:
                    continue
                gain = sizes[name] * (sparsity(level) - sparsity(current))
                score = gain / max(cost, FREE_MOVE_COST)
                if best is None or score > best[0]:
                    best = (score, name, level, cost)
        if best is None:
            return Plan(levels)
        _, name, level, cost = best
        levels[name] = level
        total += cost


def back_off_order(plan: Plan, drops: dict, grid) -> str:
    """The layer to step down when the combined drop is over budget: the one whose current
    level costs most alone, then the most pruned."""
    candidates = [name for name, level in plan.levels.items() if level >= 0]
    return max(candidates, key=lambda name: (drops[name][plan.levels[name]], grid[plan.levels[name]]))


def apply_plan(graph: Graph, refs: list[WeightRef], plan: Plan, grid, ctx: PassContext) -> dict:
    """Prune every layer of ``plan`` to its sparsity; returns the original tensors by name."""
    originals = {}
    for ref in refs:
        sparsity = plan.sparsity(ref.name, grid)
        if sparsity > 0:
            originals[ref.name] = ref.value.const
            graph.set_const(ref.value, prune_layer(ref, sparsity, ctx))
    return originals


def restore(graph: Graph, refs: list[WeightRef], originals: dict) -> None:
    for ref in refs:
        if ref.name in originals:
            graph.set_const(ref.value, originals[ref.name])


@register_pass
class AutoPrune(Pass):
    """Prune each layer to the sparsity its sensitivity allows within an accuracy budget.

    1. Sensitivity curves (as the ``sensitivity`` pass measures them): validation accuracy
       with each selected layer alone pruned to each of ``sparsities``.
    2. Greedy choice: every layer starts dense; repeatedly take the move (one layer to a
       higher grid sparsity) that removes the most weights per point of predicted accuracy
       drop, where the predicted drop of a plan is the sum of its layers' drops alone, kept
       within ``max_drop`` (percentage points of top-1 accuracy).
    3. Verification: the combined model runs on the validation set; while its measured drop
       exceeds ``max_drop``, the layer whose chosen level costs most alone steps down one
       grid level (to dense below the first), and the model is measured again. Ends within
       budget (all dense at worst).

    Data: ``--val VAL.npz`` (x and y), else the labelled training data. The budget holds on
    the data it was measured on; with few samples the test accuracy can move by more.
    Approximate. ``details``: per-layer ``layers`` (chosen sparsity), ``baseline`` and
    ``accuracy`` (fractions), measured ``drop`` and ``predicted_drop`` (points),
    ``backoffs``, the sensitivity ``series``, a printable ``table``, and ``prune``: the
    ``prune(layers=...)`` text that reproduces the choice. Layers are pruned as
    ``prune(sparsity=s)`` prunes them, so weights pruned before stay pruned.
    """

    name = "auto_prune"
    exact = False

    max_drop: float = attrs.field(default=0.5, validator=_check_budget, metadata={
        "help": "largest accepted drop of validation top-1 accuracy, in percentage points"})
    sparsities: tuple[float, ...] = attrs.field(
        default=DEFAULT_SPARSITIES, converter=tuple, validator=check_sparsities,
        metadata={"help": "sparsities a layer may get, e.g. 0.5:0.8:0.9"})
    scope: str = attrs.field(default="all", metadata={"help": "layers to prune: all, conv, fc or a name pattern"})
    batch: int = attrs.field(default=256, metadata={"help": "samples per interpreter run"})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = evaluation_data(ctx, self.name)
        refs = select_layers(graph, self.scope, [], ctx)
        if not refs:
            return PassResult(False)
        grid = sorted(self.sparsities)
        baseline = model_accuracy(graph, data, self.batch)
        curves = sensitivity_curves(graph, refs, grid, data, ctx, self.batch)
        refs = [ref for ref in refs if ref.name in curves]
        drops = predicted_drops(baseline, curves)
        sizes = {ref.name: ref.value.const.size for ref in refs}
        plan = greedy_plan(drops, sizes, grid, self.max_drop)
        accuracy, backoffs = self._verify(graph, refs, plan, drops, grid, data, baseline, ctx)
        predicted = sum(drops[name][level] for name, level in plan.levels.items() if level >= 0)
        chosen = {ref.name: plan.sparsity(ref.name, grid) for ref in refs}
        details = self._details(baseline, accuracy, predicted, backoffs, chosen, drops, plan, sizes,
                                sensitivity_details(baseline, grid, curves, refs, data), data)
        return PassResult(any(chosen.values()), preserved={STRUCTURE}, details=details)

    def _verify(self, graph, refs, plan: Plan, drops: dict, grid, data: Evaluation, baseline: float, ctx):
        """Prune by ``plan``, stepping layers down until the measured drop is within budget.
        Leaves the graph pruned by the final plan; returns (accuracy, back-off steps)."""
        backoffs = 0
        while True:
            originals = apply_plan(graph, refs, plan, grid, ctx)
            accuracy = model_accuracy(graph, data, self.batch) if originals else baseline
            if 100.0 * (baseline - accuracy) <= self.max_drop or not originals:
                return accuracy, backoffs
            restore(graph, refs, originals)
            name = back_off_order(plan, drops, grid)
            plan.levels[name] -= 1
            backoffs += 1

    def _details(self, baseline, accuracy, predicted, backoffs, chosen, drops, plan, sizes,
                 sensitivity: dict, data: Evaluation) -> dict:
        rows = []
        for name, sparsity in chosen.items():
            level = plan.levels[name]
            alone = drops[name][level] if level >= 0 else 0.0
            rows.append([name, f"{sizes[name]:,}", f"{100 * sparsity:g}%", f"{alone:.2f}"])
        total = sum(sizes.values())
        pruned = sum(sizes[name] * s for name, s in chosen.items())
        rows.append(["total", f"{total:,}", f"{100 * pruned / max(1, total):.1f}%", f"{predicted:.2f}"])
        drop = 100.0 * (baseline - accuracy)
        table = {"title": f"auto_prune: top-1 accuracy on {data.count} {data.source} samples "
                          f"{percent(baseline)}% -> {percent(accuracy)}% (drop {drop:.2f} points, "
                          f"budget {self.max_drop:g}; {backoffs} back-off steps)",
                 "headers": ["layer", "weights", "sparsity", "drop alone (points)"],
                 "rows": rows}
        overrides = ";".join(f"{name}:{s:g}" for name, s in chosen.items())
        return {"layers": chosen, "baseline": baseline, "accuracy": accuracy, "drop": drop,
                "predicted_drop": predicted, "max_drop": self.max_drop, "backoffs": backoffs,
                "sparsity": pruned / max(1, total), "samples": data.count, "data": data.source,
                "series": sensitivity["series"], "table": table,
                "prune": f"prune(layers={format_option(overrides)})"}
