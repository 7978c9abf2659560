"""The pass manager: runs a pipeline of passes on a graph, with instruments around each pass.

::

    manager = PassManager.from_pipeline("fold_bn,dce", verify_numerics=True, seed=0)
    result = manager.run(graph)          # edits graph in place
    result.graph, result.report, result.declines

What the manager does for every pass, in order:

1. sets ``ctx.current_pass`` and calls the instruments' ``before_pass`` hooks;
2. runs the pass; a :class:`~circ.errors.CircError` it raises is re-raised with the pass named;
3. drops cached analyses the pass did not preserve (``PassResult.preserved``; a pass that did
   not modify the graph preserves everything);
4. calls the ``after_pass`` hooks in reverse order (instruments nest like brackets: the
   timer is innermost, the verifier runs before the numerics check and the statistics).

Instruments (:class:`Instrument` subclasses) observe from outside; a pass never prints.
Text they produce goes to ``emit`` (the CLI prints it; the library keeps it in
``result.log``). Built-in instruments: :class:`VerifyEach` (on by default),
:class:`PrintIRAfter`, :class:`TimePasses`, :class:`PassStatistics`,
:class:`VerifyNumerics`. Their findings land in the report, a JSON-ready dict that records
the printed pipeline text so any result can be reproduced.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

import attrs
import numpy as np

import circ
from circ.errors import CircError, DataError, PipelineError, VerificationError
from circ.graph import Graph
from circ.passbase import ALL, Pass, PassContext, PassResult
from circ.pipeline import as_passes, pipeline_text
from circ.plugins import load_pass_plugin, registered_passes  # noqa: F401  (re-exported API)
from circ.printer import format_count, format_table, print_graph
from circ.verifier import verify


@attrs.define(eq=False)
class Run:
    """One pipeline run as the instruments see it."""

    graph: Graph
    ctx: PassContext
    report: dict
    emit: Callable[[str], None]


class Instrument:
    """Hooks around a pipeline run; override the ones you need. ``entry`` is the pass's record
    in ``report["passes"]``, filled by the manager (name, modified, ...) and by instruments."""

    name = "instrument"

    def before_pipeline(self, run: Run) -> None:
        pass

    def before_pass(self, run: Run, pass_: Pass, entry: dict) -> None:
        pass

    def after_pass(self, run: Run, pass_: Pass, entry: dict) -> None:
        pass

    def after_pipeline(self, run: Run) -> None:
        pass


class VerifyEach(Instrument):
    """Run the IR verifier on the input and after every pass; the error names the pass."""

    name = "verify-each"

    def before_pipeline(self, run):
        try:
            verify(run.graph)
        except VerificationError as err:
            raise VerificationError(f"input graph is invalid: {err}") from None

    def after_pass(self, run, pass_, entry):
        try:
            verify(run.graph)
        except VerificationError as err:
            raise VerificationError(f"after pass {entry['text']!r}: {err}") from None


class PrintIRAfter(Instrument):
    """Emit the IR text (:mod:`circ.printer`) after the named passes, or after all of them."""

    name = "print-ir-after"

    def __init__(self, names="all"):
        self.names = "all" if names == "all" else frozenset([names] if isinstance(names, str) else names)

    def after_pass(self, run, pass_, entry):
        if self.names == "all" or pass_.name in self.names:
            run.emit(f"// ----- IR after pass {entry['index']}: {entry['text']} -----\n"
                     + print_graph(run.graph))


class TimePasses(Instrument):
    """Wall time of each pass (``entry["seconds"]``); emits a table at the end if ``table``."""

    name = "time-passes"

    def __init__(self, table: bool = True):
        self.table = table
        self._start = 0.0

    def before_pass(self, run, pass_, entry):
        self._start = time.perf_counter()

    def after_pass(self, run, pass_, entry):
        entry["seconds"] = time.perf_counter() - self._start

    def after_pipeline(self, run):
        passes = run.report["passes"]
        total = sum(p["seconds"] for p in passes)
        run.report["seconds"] = total
        if not self.table:
            return
        rows = [[f"{p['seconds']:.4f}", f"{100 * p['seconds'] / total:.1f}%" if total else "-", p["text"]]
                for p in passes]
        rows.append([f"{total:.4f}", "100.0%" if total else "-", "total"])
        run.emit("time-passes:\n" + format_table(["seconds", "share", "pass"], rows, align="rrl"))


STAT_COLUMNS = [("params", "params"), ("nonzeros", "non-zeros"), ("storage_bytes", "bytes"),
                ("macs", "MACs"), ("nodes", "nodes")]


class PassStatistics(Instrument):
    """Parameters, non-zeros, storage bytes, MACs and nodes before the pipeline and after each
    pass (``report["stats"]``, ``entry["stats"]``); emits a table at the end if ``table``.
    Uses the cached statistics analysis, so a pass that preserved everything costs nothing."""

    name = "pass-statistics"

    def __init__(self, table: bool = False):
        self.table = table

    def before_pipeline(self, run):
        run.report["stats"] = {"before": run.ctx.stats(run.graph).totals()}

    def after_pass(self, run, pass_, entry):
        entry["stats"] = run.ctx.stats(run.graph).totals()

    def after_pipeline(self, run):
        run.report["stats"]["after"] = run.ctx.stats(run.graph).totals()
        if not self.table:
            return
        rows = [["(input)"] + [format_count(run.report["stats"]["before"][k]) for k, _ in STAT_COLUMNS]]
        for entry in run.report["passes"]:
            rows.append([entry["text"]] + [format_count(entry["stats"][k]) for k, _ in STAT_COLUMNS])
        run.emit("pass statistics:\n" + format_table(["after pass"] + [t for _, t in STAT_COLUMNS], rows))


def sample_inputs(graph: Graph, seed: int = 0, *, dim: int = 2) -> dict[str, np.ndarray]:
    """Seeded sample feeds for every graph input: standard normal floats, small non-negative
    integers (safe as indices), random booleans. Symbolic and unknown dims become ``dim``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph.inputs:
        if value.shape is None:
            raise DataError(f"cannot make a sample input for {value.name!r}: its rank is unknown")
        shape = [d if isinstance(d, (int, np.integer)) and d >= 0 else dim for d in value.shape]
        dtype = np.dtype(value.dtype or np.float32)
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            feeds[value.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            raise DataError(f"cannot make a sample input for {value.name!r} of type {dtype}")
    return feeds


def compare_outputs(before: list, after: list) -> tuple[float, float]:
    """(max absolute change, change relative to the largest reference magnitude), over all
    outputs matched by position. A shape or count mismatch is an infinite change."""
    if len(before) != len(after):
        return math.inf, math.inf
    worst_abs = worst_rel = 0.0
    for ref, new in zip(before, after):
        ref = np.asarray(ref, dtype=np.float64)
        new = np.asarray(new, dtype=np.float64)
        if ref.shape != new.shape:
            return math.inf, math.inf
        same_nan = np.isnan(ref) & np.isnan(new)
        diff = np.where(same_nan, 0.0, np.abs(ref - new))
        diff = np.where(np.isnan(diff), math.inf, diff)
        change = float(diff.max()) if diff.size else 0.0
        scale = float(np.nanmax(np.abs(np.where(np.isinf(ref), 0, ref)))) if ref.size else 0.0
        # Relative to the output's largest magnitude, not per element: near-zero elements
        # would turn float rounding into huge per-element ratios.
        relative = change / scale if scale > 0 else (0.0 if change == 0 else math.inf)
        worst_abs, worst_rel = max(worst_abs, change), max(worst_rel, relative)
    return worst_abs, worst_rel


class VerifyNumerics(Instrument):
    """Run the interpreter on a seeded sample input before the pipeline and after each pass;
    record the max absolute and relative output change per pass and in total, and flag an
    exact pass whose change exceeds ``atol + rtol * max|output|`` (a warning in the report).

    The default tolerance allows float32 re-association (folding BN into a conv changes the
    rounding of every output by a few ulps), and nothing more."""

    name = "verify-numerics"

    def __init__(self, seed: int = 0, *, atol: float = 1e-5, rtol: float = 1e-4):
        self.seed, self.atol, self.rtol = seed, atol, rtol

    def _outputs(self, graph: Graph) -> list:
        names = {v.name for v in graph.inputs}
        missing = names - set(self.feeds)
        if missing:
            extra = sample_inputs(graph, self.seed)
            self.feeds.update({k: extra[k] for k in missing})
        outputs = circ.run(graph, {k: v for k, v in self.feeds.items() if k in names})
        return list(outputs.values())

    def before_pipeline(self, run):
        self.feeds = sample_inputs(run.graph, self.seed)
        self.reference = self.previous = self._outputs(run.graph)

    def after_pass(self, run, pass_, entry):
        if entry["modified"]:
            outputs = self._outputs(run.graph)
        else:
            outputs = self.previous
        step_abs, step_rel = compare_outputs(self.previous, outputs)
        total_abs, total_rel = compare_outputs(self.reference, outputs)
        scale = max((float(np.max(np.abs(o))) for o in self.previous if np.size(o)), default=0.0)
        flagged = bool(pass_.exact and step_abs > self.atol + self.rtol * scale)
        entry["numerics"] = {"max_abs": _finite(step_abs), "max_rel": _finite(step_rel),
                             "total_max_abs": _finite(total_abs), "total_max_rel": _finite(total_rel),
                             "flagged": flagged}
        if flagged:
            run.report["warnings"].append(
                f"pass {entry['text']!r} is exact but changed the outputs: max abs change "
                f"{step_abs:.3g}, relative {step_rel:.3g} (tolerance {self.atol:g} + {self.rtol:g} * max|y|)")
        self.previous = outputs

    def after_pipeline(self, run):
        total_abs, total_rel = compare_outputs(self.reference, self.previous)
        run.report["numerics"] = {"seed": self.seed, "max_abs": _finite(total_abs),
                                  "max_rel": _finite(total_rel),
                                  "flagged": [p["text"] for p in run.report["passes"]
                                              if p.get("numerics", {}).get("flagged")]}


def _finite(x: float) -> Optional[float]:
    """JSON has no infinity: an infinite change is reported as null."""
    return float(x) if math.isfinite(x) else None


@attrs.define(eq=False)
class PipelineResult:
    """What a pipeline run produced: the graph (edited in place), the report, the declines."""

    graph: Graph
    report: dict
    declines: list
    log: list  # text the instruments emitted when no ``emit`` callback was given

    @property
    def warnings(self) -> list:
        return self.report["warnings"]


class PassManager:
    """Runs passes in order with instruments; see the module docstring.

    Options: ``verify`` (verify-each, default True), ``print_ir_after`` (a pass name, a list
    of names, or ``"all"``), ``time_passes`` and ``pass_statistics`` (emit their tables),
    ``verify_numerics``, ``seed`` (for passes and the sample input), ``data`` (calibration
    or training arrays for passes), ``labels`` (class indices of ``data``'s samples), ``val``
    (validation ``(arrays, labels)``), ``instruments`` (extra :class:`Instrument` objects,
    outermost), and ``emit`` (a callable receiving instrument text; default: kept in ``result.log``).
    """

    def __init__(self, passes: Iterable[Pass], *, verify: bool = True, print_ir_after=None,
                 time_passes: bool = False, pass_statistics: bool = False,
                 verify_numerics: bool = False, seed: int = 0, data: Optional[dict] = None,
                 instruments: Iterable[Instrument] = (), emit: Optional[Callable[[str], None]] = None,
                 labels: Optional[np.ndarray] = None, val: Optional[tuple] = None):
        self.passes = as_passes(passes)
        self.seed = seed
        self.data = data
        self.labels = labels
        self.val = val
        self.emit = emit
        self.instruments = list(instruments)
        if verify_numerics:
            self.instruments.append(VerifyNumerics(seed))
        self.instruments.append(PassStatistics(table=pass_statistics))
        if verify:
            self.instruments.append(VerifyEach())
        if print_ir_after:
            self._check_print_ir_after(print_ir_after)
            self.instruments.append(PrintIRAfter(print_ir_after))
        self.instruments.append(TimePasses(table=time_passes))  # innermost: times the pass only

    @classmethod
    def from_pipeline(cls, pipeline, *, registry: Optional[dict] = None, **options) -> "PassManager":
        """A manager for ``pipeline``: text (parsed and checked now against ``registry``,
        default every registered pass) or pass objects."""
        return cls(as_passes(pipeline, registry), **options)

    @property
    def text(self) -> str:
        """The pipeline as text that parses back to the same passes."""
        return pipeline_text(self.passes)

    def _check_print_ir_after(self, names) -> None:
        if names == "all":
            return
        in_pipeline = [p.name for p in self.passes]
        for name in [names] if isinstance(names, str) else names:
            if name not in in_pipeline:
                valid = ", ".join(dict.fromkeys(in_pipeline)) or "(none)"
                raise PipelineError(f"print-ir-after: pass {name!r} is not in the pipeline; "
                                    f"passes in it: {valid} (or 'all')")

    def run(self, graph: Graph) -> PipelineResult:
        """Run every pass on ``graph`` (in place) and return the result with its report."""
        log: list[str] = []
        ctx = PassContext(seed=self.seed, data=self.data, labels=self.labels, val=self.val)
        if any(p.wants_original() for p in self.passes):
            ctx.original = graph.copy()
        report = {"circ_version": circ.__version__, "pipeline": self.text, "seed": self.seed,
                  "instruments": [i.name for i in self.instruments], "passes": [],
                  "declines": [], "warnings": []}
        run = Run(graph, ctx, report, self.emit or log.append)
        for instrument in self.instruments:
            instrument.before_pipeline(run)
        for index, pass_ in enumerate(self.passes):
            entry = {"index": index, "name": pass_.name, "text": pass_.to_text(), "exact": pass_.exact}
            ctx.current_pass = pass_.name
            first_decline = len(ctx.declines)
            for instrument in self.instruments:
                instrument.before_pass(run, pass_, entry)
            result = self._run_pass(pass_, graph, ctx, entry["text"])
            preserved = result.preserved if result.modified else ALL
            ctx.invalidate(preserved)
            entry.update(modified=bool(result.modified), preserved=sorted(preserved),
                         details=jsonable(result.details),
                         declines=[{"node": d.node, "reason": d.reason}
                                   for d in ctx.declines[first_decline:]])
            for instrument in reversed(self.instruments):
                instrument.after_pass(run, pass_, entry)
            report["passes"].append(entry)
        ctx.current_pass = ""
        for instrument in reversed(self.instruments):
            instrument.after_pipeline(run)
        report["declines"] = [{"pass": d.pass_name, "node": d.node, "reason": d.reason}
                              for d in ctx.declines]
        return PipelineResult(graph, jsonable(report), list(ctx.declines), log)

    @staticmethod
    def _run_pass(pass_: Pass, graph: Graph, ctx: PassContext, text: str) -> PassResult:
        try:
            result = pass_.run(graph, ctx)
        except CircError as err:
            # Same error class, with the pass named, so the CLI's one line says where it came from.
            raise type(err)(f"pass {text!r}: {err}") from err
        except Exception as err:  # a bug in the pass: keep the traceback, add which pass
            err.add_note(f"while running pass {text!r}")
            raise
        if result is None:  # a pass that forgot to say: assume it changed everything
            result = PassResult(modified=True)
        return result


def jsonable(obj):
    """``obj`` with NumPy scalars/arrays, tuples and sets turned into JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def optimize(graph: Graph, pipeline, **options) -> PipelineResult:
    """Run ``pipeline`` on ``graph`` in place; the full result (see :func:`circ.optimize`)."""
    return PassManager.from_pipeline(pipeline, **options).run(graph)
