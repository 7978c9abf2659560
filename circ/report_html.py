"""The HTML report of a ``circ-opt`` run (``--report-html report.html``): one self-contained page.

The page has no scripts and no external resources (inline CSS, inline SVG), so it opens the
same from a mail attachment, a CI artifact or a file system. Its sections, in order:

1. the run: input, output, pipeline (the text that reproduces it), seed, circ version;
2. the totals before and after (:mod:`circ.analysis.stats`) and, for a ``.circ`` output, the
   file size and ratio;
3. one row per pass: kind, whether it changed the graph, time, figures after it, and the
   output change on the seeded sample when ``--verify-numerics`` ran; declines and warnings;
4. one row per layer (:func:`layer_rows`, the same rows ``--report`` writes under ``layers``):
   parameters, non-zeros, bits, bytes and MACs before and after, and how much the layer's
   output moved on a seeded sample;
5. Deep Compression's container table for a ``.circ`` output;
6. weight histograms before and after for the largest layers (Han et al. 2016, Figure 5);
7. what passes recorded for display: any pass whose ``details`` hold ``series`` (a list of
   ``{label, x, y}`` curves, with optional ``xlabel``/``ylabel``/``title``) gets a line
   chart, and any ``table`` (``{title, headers, rows}``) is shown as a table — the
   ``sensitivity`` pass records both;
8. the target (``--target``): its options, its figures, and a bar chart of every per-PE list
   of numbers its statistics hold (EIE's per-PE non-zeros, the load balance);
9. the graph before and after, drawn by :mod:`circ.viz` (collapsed past
   :data:`COLLAPSE_NODES` nodes); without Graphviz the section says how to get it.

Sections whose data is absent are left out. The page is deterministic for a given report and
graphs, except for the times the report itself holds.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from typing import Optional

import numpy as np

from circ.analysis.stats import MAC_OPS, graph_stats
from circ.graph import Graph, Node
from circ.interpreter import Interpreter
from circ.printer import format_change, format_count

HISTOGRAM_LAYERS = 4  # the largest layers get weight histograms
COLLAPSE_NODES = 150  # graphs with more nodes (before + after) are drawn with repeated blocks collapsed
MAX_PE_CHARTS = 12
GENERIC_KEYS = ("program", "stats", "layers")  # left out of chart titles: the layer name says it

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; }
code, .pipeline { font-family: Menlo, Consolas, monospace; background: #f4f4f4; padding: 1px 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f0f3f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.removed td { color: #a33; text-decoration: line-through; }
tr.added td { color: #272; }
.note { color: #666; font-size: 13px; }
.warning { color: #a33; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.graph { overflow: auto; border: 1px solid #ddd; max-height: 1200px; }
""".strip()


# ------------------------------------------------------------------------------ numbers


def _count(n) -> str:
    return format_count(n)


def _float(x, digits: int = 3) -> str:
    if x is None:
        return "?"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return f"{x:.{digits}g}"


def _percent(part, whole) -> str:
    if part is None or not whole:
        return "?"
    return f"{100.0 * part / whole:.1f}%"


# --------------------------------------------------------------------------- layer rows


class _Recorder(Interpreter):
    """The interpreter, keeping the first output of the nodes named in ``wanted``."""

    def __init__(self, graph: Graph, wanted: set[str]):
        super().__init__(graph)
        self.wanted, self.outputs = wanted, {}

    def run_node(self, node: Node, args):
        results = super().run_node(node, args)
        if node.name in self.wanted:
            self.outputs[node.name] = results[0]
        return results


def layer_outputs_change(before: Graph, after: Graph, names: set[str], seed: int = 0) -> dict:
    """Layer name -> (max abs change, change relative to the largest reference magnitude) of
    the layer's output between ``before`` and ``after`` on the seeded sample input that
    ``--verify-numerics`` uses; (None, None) when the shapes differ. Empty when no sample
    can be made (an input of unknown rank) or the graphs' inputs differ."""
    from circ.errors import CircError
    from circ.passmanager import compare_outputs, sample_inputs

    try:
        feeds = sample_inputs(before, seed)
        if sorted(v.name for v in after.inputs) != sorted(feeds):
            return {}
        runs = []
        for graph in (before, after):
            recorder = _Recorder(graph, names)
            recorder.run(feeds)
            runs.append(recorder.outputs)
    except CircError:
        return {}
    changes = {}
    for name in names:
        if name in runs[0] and name in runs[1]:
            absolute, relative = compare_outputs([runs[0][name]], [runs[1][name]])
            changes[name] = (_finite(absolute), _finite(relative))
    return changes


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def layer_rows(before: Graph, after: Graph, seed: int = 0) -> list[dict]:
    """One row per layer (a node with parameters or MACs) of ``before`` and ``after``,
    matched by node name: ``status`` (kept, removed or added), ``op``, ``params``,
    ``nonzeros``, ``bits``, ``bytes`` and ``macs`` before and after (``*_before`` keys),
    ``effective_macs`` (MACs scaled by weight density), and ``output_max_abs`` /
    ``output_max_rel``: the change of the layer's output on the seeded sample (None when
    not measurable). Rows follow ``before``'s order, then the added layers."""
    from circ.viz import node_keys

    rows: dict[str, dict] = {}
    for side, graph in (("before", before), ("after", after)):
        stats, keys = graph_stats(graph), node_keys(graph)
        for node, figures in zip(graph.nodes, stats.per_node):
            if not figures.params and not figures.macs and node.op not in MAC_OPS:
                continue
            key = keys[id(node)]
            row = rows.setdefault(key, {"layer": key, "op": node.op, "status": "added"})
            values = {"params": figures.params, "nonzeros": figures.nonzeros,
                      "bits": round(figures.bits, 4), "bytes": figures.storage_bytes,
                      "macs": figures.macs, "effective_macs": figures.effective_macs}
            if side == "before":
                row.update({f"{k}_before": v for k, v in values.items() if k != "effective_macs"})
                row["status"] = "removed"
            else:
                row.update(values, op=node.op)
                row["status"] = "kept" if "params_before" in row else "added"
    kept = {name for name, row in rows.items() if row["status"] == "kept"}
    changes = layer_outputs_change(before, after, kept, seed)
    for name, row in rows.items():
        row["output_max_abs"], row["output_max_rel"] = changes.get(name, (None, None))
    return list(rows.values())


# --------------------------------------------------------------------------- the page


def build_report_html(report: Mapping, before: Graph, after: Graph, *,
                      layers: Optional[list] = None, graph_svg: Optional[str] = None) -> str:
    """The page for ``report`` (circ-opt's JSON report) and the graphs before and after the
    pipeline. ``layers`` defaults to ``report["layers"]`` or :func:`layer_rows`;
    ``graph_svg`` (the drawing) defaults to :func:`graph_drawing`."""
    if layers is None:
        layers = report.get("layers") or layer_rows(before, after, report.get("seed", 0))
    if graph_svg is None:
        graph_svg = graph_drawing(before, after, report.get("pipeline", ""))
    title = f"circ report: {report.get('input', before.name)}"
    parts = [f"<h1>{_e(title)}</h1>", _run_section(report), _totals_section(report),
             _passes_section(report), _layers_section(layers), _container_section(report),
             _histogram_section(before, after), _pass_details_section(report),
             _target_section(report), _graph_section(graph_svg)]
    body = "\n".join(p for p in parts if p)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_report_html(path: str, report: Mapping, before: Graph, after: Graph, *,
                      protect=(), layers: Optional[list] = None) -> None:
    """Write the page (see :func:`build_report_html`) to ``path`` atomically."""
    from circ.fileio import atomic_write

    atomic_write(path, build_report_html(report, before, after, layers=layers), protect=protect)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


TIMING_HEADERS = {"time", "time (s)", "seconds"}


def _table(headers: Optional[list], rows: list, *, numeric: str = "", css_id: str = "",
           row_classes: Optional[list] = None) -> str:
    """An HTML table (no header row when ``headers`` is None); ``numeric`` has one letter per
    column, ``r`` for right-aligned numbers (default: every column but the first)."""
    width = len(headers) if headers is not None else max(len(row) for row in rows)
    numeric = numeric or "l" + "r" * (width - 1)
    # Wall-clock cells are marked, so that a reader (and the determinism test) can tell them
    # from the figures that must not change between runs.
    timing = {i for i, h in enumerate(headers or ()) if str(h) in TIMING_HEADERS}
    out = [f'<table id="{css_id}">' if css_id else "<table>"]
    if headers is not None:
        out += ["<thead><tr>"] + [f"<th>{_e(h)}</th>" for h in headers] + ["</tr></thead>"]
    out.append("<tbody>")
    for index, row in enumerate(rows):
        css = row_classes[index] if row_classes else ""
        out.append(f'<tr class="{css}">' if css else "<tr>")
        for column, (cell, align) in enumerate(zip(row, numeric)):
            classes = ["num"] if align == "r" else []
            if column in timing or (headers is None and column > 0 and row[0] in TIMING_HEADERS):
                classes.append("timing")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f"<td{attr}>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _run_section(report: Mapping) -> str:
    rows = [["input", report.get("input", "?")], ["output", report.get("output", "?")],
            ["pipeline", report.get("pipeline") or "(empty)"], ["seed", report.get("seed", 0)],
            ["circ", report.get("circ_version", "?")]]
    if "seconds" in report:
        rows.append(["time", f"{report['seconds']:.2f} s"])
    return "<h2>Run</h2>" + _table(None, rows, numeric="ll", css_id="run")


TOTALS = [("params", "parameters"), ("nonzeros", "non-zeros"), ("storage_bytes", "bytes"),
          ("bits", "bits per parameter"), ("macs", "MACs"), ("effective_macs", "effective MACs"),
          ("nodes", "nodes")]


def _totals_section(report: Mapping) -> str:
    stats = report.get("stats")
    if not stats:
        return ""
    before, after = stats["before"], stats["after"]
    rows = []
    for key, title in TOTALS:
        if key not in before:
            continue
        show = _float if key == "bits" else _count
        rows.append([title, show(before[key]), show(after.get(key)),
                     format_change(before[key], after.get(key))])
    out = ["<h2>Totals</h2>", _table(["", "before", "after", "change"], rows, css_id="totals")]
    if not after.get("macs_complete", True):
        out.append('<p class="note">MACs cover only the nodes whose shapes are known.</p>')
    container = report.get("container")
    if container:
        out.append(f'<p id="file-size">.circ file: {_count(container["file_bytes"])} bytes, '
                   f'{_float(container.get("ratio"))}x smaller than the float32 model '
                   f'({_count(container["baseline_bytes"])} bytes).</p>')
    return "\n".join(out)


def _passes_section(report: Mapping) -> str:
    entries = report.get("passes") or []
    if not entries:
        return ""
    numerics = any("numerics" in e for e in entries)
    headers = ["#", "pass", "kind", "changed", "time (s)", "non-zeros", "bytes", "bits", "declines"]
    if numerics:
        headers += ["max abs change", "max rel change"]
    rows = []
    for entry in entries:
        stats = entry.get("stats", {})
        row = [entry["index"], entry["text"], "exact" if entry.get("exact", True) else "approx",
               "yes" if entry.get("modified") else "no", _float(entry.get("seconds")),
               _count(stats.get("nonzeros")), _count(stats.get("storage_bytes")),
               _float(stats.get("bits")), len(entry.get("declines", []))]
        if numerics:
            change = entry.get("numerics", {})
            row += [_float(change.get("max_abs")), _float(change.get("max_rel"))]
        rows.append(row)
    out = ["<h2>Passes</h2>", _table(headers, rows, numeric="rllll" + "r" * (len(headers) - 5),
                                     css_id="passes")]
    declines = report.get("declines") or []
    if declines:
        out.append("<h3>Declined</h3>")
        out.append(_table(["pass", "node", "reason"], [[d["pass"], d["node"], d["reason"]] for d in declines],
                          numeric="lll", css_id="declines"))
    for message in report.get("warnings") or []:
        out.append(f'<p class="warning">warning: {_e(message)}</p>')
    return "\n".join(out)


def _layers_section(layers: list) -> str:
    if not layers:
        return ""
    headers = ["layer", "op", "params", "non-zeros", "kept", "bits", "bytes before", "bytes after",
               "MACs", "effective MACs", "output max abs change", "output max rel change"]
    rows, classes = [], []
    for row in layers:
        present = row["status"] != "removed"
        rows.append([row["layer"], row["op"],
                     _count(row.get("params" if present else "params_before")),
                     _count(row.get("nonzeros")) if present else "-",
                     _percent(row.get("nonzeros"), row.get("params")) if present else "-",
                     _float(row.get("bits"), 4) if present else "-",
                     _count(row.get("bytes_before")) if "bytes_before" in row else "-",
                     _count(row.get("bytes")) if present else "-",
                     _count(row.get("macs" if present else "macs_before")),
                     _count(row.get("effective_macs")) if present else "-",
                     _float(row.get("output_max_abs")), _float(row.get("output_max_rel"))])
        classes.append("" if row["status"] == "kept" else row["status"])
    return ("<h2>Layers</h2>\n" + _table(headers, rows, numeric="ll" + "r" * 10, css_id="layers",
                                        row_classes=classes)
            + '\n<p class="note">Output change: the layer\'s output after the pipeline against '
              "before, on the seeded sample input of --verify-numerics (cumulative: it includes "
              "what earlier layers changed); relative to the largest output magnitude.</p>")


def _container_section(report: Mapping) -> str:
    container = report.get("container")
    if not container:
        return ""
    rows = []
    for row in container["layers"]:
        rows.append([row["layer"], _count(row["weights"]), _percent(row["kept"], row["weights"]),
                     f"{row['weight_bits']:.2f}", f"{row['index_bits']:.2f}", _count(row["bytes"]),
                     f"{_float(row['ratio'])}x"])
    rows.append(["(other)", "", "", "", "", _count(container["other_bytes"]), ""])
    rows.append(["total", _count(container["params"]), "", "", "", _count(container["file_bytes"]),
                 f"{_float(container['ratio'])}x"])
    return ("<h2>Container size per layer</h2>\n"
            + _table(["layer", "weights", "kept", "weight bits", "index bits", "bytes", "ratio"], rows,
                     css_id="container")
            + '\n<p class="note">Bits per kept weight; ratio against float32 (4 bytes per weight); '
              "(other) is the graph, biases, small constants and framing.</p>")


def _histogram_section(before: Graph, after: Graph) -> str:
    from circ.plots import histogram_svg
    from circ.weights import weight_refs

    old = {ref.name: ref for ref in weight_refs(before)}
    new = {ref.name: ref for ref in weight_refs(after, float_only=False)}
    largest = sorted(old.values(), key=lambda ref: -ref.value.const.size)[:HISTOGRAM_LAYERS]
    if not largest:
        return ""
    charts = []
    for ref in largest:
        arrays = {f"before ({_count(np.count_nonzero(ref.array))} non-zero)": ref.array}
        if ref.name in new:
            after_array = new[ref.name].array
            arrays[f"after ({_count(np.count_nonzero(after_array))} non-zero)"] = after_array
        charts.append(histogram_svg(arrays, bins=80, title=f"{ref.name}: {_count(ref.value.const.size)} weights",
                                    xlabel="weight value", skip_zeros=True, width=560, height=300))
    return ("<h2>Weight distributions</h2>\n"
            '<p class="note">The largest layers; exact zeros (pruned weights) are left out, as in '
            "Deep Compression's figure of the weight distribution before and after pruning and "
            "clustering.</p>\n" + f'<div class="charts" id="histograms">{"".join(charts)}</div>')


def _pass_details_section(report: Mapping) -> str:
    from circ.plots import line_chart_svg

    out = []
    for entry in report.get("passes") or []:
        details = entry.get("details")
        if not isinstance(details, Mapping):
            continue
        pieces = []
        series = details.get("series")
        if isinstance(series, list) and series:
            curves = {str(s.get("label", i)): (s.get("x", []), s.get("y", []))
                      for i, s in enumerate(series) if isinstance(s, Mapping)}
            pieces.append(line_chart_svg(curves, title=str(details.get("title", entry["text"])),
                                         xlabel=str(details.get("xlabel", "x")),
                                         ylabel=str(details.get("ylabel", "y")), width=720, height=360))
        table = details.get("table")
        if isinstance(table, Mapping) and table.get("rows"):
            if table.get("title"):
                pieces.append(f"<p>{_e(table['title'])}</p>")
            pieces.append(_table(list(table.get("headers", [])), list(table["rows"])))
        if pieces:
            out.append(f'<section class="pass-details" id="pass-{entry["index"]}">'
                       f'<h3>{_e(entry["text"])}</h3>{"".join(pieces)}</section>')
    return "<h2>Pass results</h2>\n" + "\n".join(out) if out else ""


def _target_section(report: Mapping) -> str:
    from circ.plots import bar_chart_svg

    target = report.get("target")
    if not isinstance(target, Mapping):
        return ""
    name = target.get("name", "target")
    out = [f"<h2>Target: {_e(name)}</h2>"]
    scalars = [[key, _scalar(value)] for key, value in _flat_scalars(target)]
    if scalars:
        out.append(_table(None, scalars, numeric="lr", css_id="target"))
    charts = []
    contents = {key: value for key, value in target.items() if key != "name"}
    for label, values in per_pe_lists(contents)[:MAX_PE_CHARTS]:
        mean = float(np.mean(values)) if values else 0.0
        short = "/".join(part for part in label.split("/") if part not in GENERIC_KEYS) or label
        charts.append(bar_chart_svg({label: values}, title=f"per-PE load: {short}", xlabel="PE",
                                    ylabel="non-zeros" if "nonzero" in label.lower() or "nnz" in label.lower()
                                    else label.split("/")[-1], reference=("mean", round(mean, 1)),
                                    width=560, height=280))
    if charts:
        out.append('<p class="note">The dashed line is the mean; the tallest bar sets the '
                   "layer's cycles (EIE's load imbalance).</p>")
        out.append(f'<div class="charts" id="pe-load">{"".join(charts)}</div>')
    return "\n".join(out)


def _scalar(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return _count(value)
    if isinstance(value, float):
        return _float(value, 4)
    return str(value)


def _flat_scalars(obj: Mapping, prefix: str = "", depth: int = 0) -> list[tuple[str, object]]:
    """``(dotted key, value)`` of the scalars of a nested dict (lists are left out)."""
    out = []
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < 2:
            out += _flat_scalars(value, path + ".", depth + 1)
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out.append((path, value))
    return out


_PE_KEY = re.compile(r"(^|[_\W])pes?($|[_\W])|per_pe", re.I)


def per_pe_lists(obj, label: str = "", depth: int = 0, *, per_pe: bool = False) -> list[tuple[str, list]]:
    """Every list of numbers under a key that names PEs (``pe_nonzeros``, ``nonzeros_per_pe``,
    ``per_pe: {load: [...]}``...) in a target's nested statistics, with a label made of the
    keys and the ``name``/``layer`` of the enclosing records."""
    found = []
    if depth > 5:
        return found
    if isinstance(obj, Mapping):
        here = obj.get("name") or obj.get("layer")
        base = f"{label}/{here}" if here and label else (str(here) if here else label)
        for key, value in obj.items():
            path = f"{base}/{key}" if base else str(key)
            names_pes = per_pe or bool(_PE_KEY.search(str(key)))
            if isinstance(value, list) and value and names_pes and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                found.append((path, value))
            elif isinstance(value, (Mapping, list)):
                found += per_pe_lists(value, path, depth + 1, per_pe=names_pes)
    elif isinstance(obj, list):
        for index, item in enumerate(obj):
            if isinstance(item, (Mapping, list)):
                named = isinstance(item, Mapping) and (item.get("name") or item.get("layer"))
                found += per_pe_lists(item, label if named else f"{label}[{index}]", depth + 1,
                                      per_pe=per_pe)
    return found


def graph_drawing(before: Graph, after: Graph, pipeline: str = "") -> str:
    """The graph before and after as inline SVG (or a note saying why there is none)."""
    import subprocess

    import graphviz

    from circ import viz

    collapse = len(before.nodes) + len(after.nodes) > COLLAPSE_NODES
    dot = viz.pipeline_to_dot(before, after, collapse=collapse, pipeline=pipeline)
    try:
        svg = viz.render(dot, "svg").decode("utf-8")
    except graphviz.ExecutableNotFound:
        return ('<p class="note" id="no-graphviz">The graph drawing needs the Graphviz <code>dot</code> '
                "program (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz).</p>")
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or b"").decode("utf-8", "replace").strip() or f"exit code {err.returncode}"
        return f'<p class="note">Graphviz dot failed on the drawing: {_e(detail)}</p>'
    # Inline SVG in HTML takes no XML prolog or DOCTYPE: keep from the <svg> element on.
    start = svg.find("<svg")
    note = " (repeated blocks collapsed)" if collapse else ""
    return f'<p class="note">Drawn by circ.viz{note}.</p><div class="graph">{svg[start:]}</div>'


def _graph_section(svg: str) -> str:
    return f"<h2>Graph before and after</h2>\n{svg}" if svg else ""
