"""circ-opt: run a pass pipeline on an ONNX model (or a .circ container).

::

    circ-opt --passes='fold_bn,dce' model.onnx [-o out.onnx] [--report out.json]
    circ-opt --passes='prune(sparsity=0.9),cluster,huffman' model.onnx -o model.circ
    circ-opt model.circ -o model.onnx
    circ-opt --passes=prune,quant --data calib.npz model.onnx
    circ-opt --passes='prune(sparsity=0.9),cluster(bits=4)' --target=eie mlp.onnx -o mlp.eie

``--data FILE.npz`` gives passes calibration or training arrays (input name -> array, samples
along axis 0; a single array, e.g. ``x``, is accepted for a one-input model): ``quant`` uses
them to quantize activations. An array ``y`` (that is not a model input) holds the samples'
class labels, which ``finetune`` trains on; ``--val VAL.npz`` (same layout, with ``y``) is
validation data for the passes that measure accuracy.

Without ``-o`` the result goes to ``MODEL.opt.onnx`` beside the input; the input itself is
never overwritten. With ``--target=eie|dpu[(options)]`` the optimized graph is lowered to
that backend's program (``MODEL.eie`` by default; ``-o`` must end in the target's extension)
and the summary adds the program's figures. An output named ``*.circ`` is a container (docs/circ-format.md) and the
summary then adds Deep Compression's per-layer size table. The pipeline is checked before the model is read. A before/after table
(params, non-zeros, bytes, MACs, nodes) is printed unless ``-q``; ``--report`` writes the
same figures, every pass's record, the printed pipeline and per-layer rows (figures before and
after, output change on a seeded sample) as JSON; ``--report-html`` shows all of it as one
self-contained page with weight histograms and the graph drawn before and after
(:mod:`circ.report_html`). Progress bars go to stderr when it is a terminal, unless ``-q``. Instrument output
(``--print-ir-after``, ``--time-passes``, ``--pass-stats``) goes to stdout as it happens,
warnings (an exact pass flagged by ``--verify-numerics``) to stderr.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Optional, Sequence

from circ.cli.common import ArgumentParser, check_writable, require_file, run_tool, warning
from circ.errors import DataError, ModelError, PipelineError

PROG = "circ-opt"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Run a pass pipeline on an ONNX model.")
    parser.add_argument("model", nargs="?", metavar="MODEL.onnx", help="the model to optimize")
    parser.add_argument("--passes", default="", metavar="PIPELINE",
                        help="passes to run, e.g. 'prune(sparsity=0.9,scope=fc),dce'")
    parser.add_argument("-o", "--output", metavar="OUT.onnx",
                        help="where to write the result: ONNX, or a .circ container when the "
                             "name ends in .circ (default: MODEL.opt.onnx)")
    parser.add_argument("--report", metavar="OUT.json", help="write the run's report as JSON")
    parser.add_argument("--target", metavar="TARGET",
                        help="lower to an accelerator program after the passes: eie or dpu, "
                             "with options as eie(pes=32,fifo_depth=16)")
    parser.add_argument("--report-html", metavar="OUT.html",
                        help="write the run's report as one self-contained HTML page (tables, "
                             "weight histograms, graph before and after)")
    parser.add_argument("--list-passes", action="store_true", help="list the registered passes")
    parser.add_argument("--help-pass", metavar="NAME", help="describe one pass and its options")
    parser.add_argument("--print-ir-after", action="append", metavar="PASS|all",
                        help="print the IR after this pass (repeatable) or after all passes")
    parser.add_argument("--time-passes", action="store_true", help="print the time of each pass")
    parser.add_argument("--pass-stats", action="store_true",
                        help="print params/non-zeros/bytes/MACs/nodes after each pass")
    parser.add_argument("--verify-numerics", action="store_true",
                        help="run a seeded sample input after each pass and report output changes")
    parser.add_argument("--no-verify", action="store_true", help="skip the IR verifier after passes")
    parser.add_argument("--load-pass-plugin", action="append", default=[], metavar="FILE.py",
                        help="import passes from a Python file (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for passes and sample inputs")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="calibration or training data for passes (input name -> array, "
                             "or x; labels as y), e.g. for quant and finetune")
    parser.add_argument("--val", metavar="VAL.npz",
                        help="validation data with labels (arrays x or input names, and y)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no summary and no progress")
    return parser


def default_output(model: str, target=None) -> str:
    """``dir/net.onnx`` (or ``net.circ``) -> ``dir/net.opt.onnx``, or ``dir/net.eie`` for a
    target with extension ``.eie``."""
    root, ext = os.path.splitext(model)
    root = root if ext.lower() in (".onnx", ".circ") else model
    return root + (target.extension if target is not None else ".opt.onnx")


# ----------------------------------------------------------------------------- --target


def parse_output_target(text, output):
    """The configured Target of ``--target`` (or None); refuses an ``-o`` whose extension
    does not match, and a program extension without ``--target``."""
    from backends import TARGETS, parse_target

    extension = os.path.splitext(output)[1].lower() if output else ""
    if text is None:
        for name in TARGETS:
            if extension == "." + name:
                raise PipelineError(f"-o {output}: a .{name} program is written by --target={name}")
        return None
    target = parse_target(text)
    if output and extension != target.extension:
        raise PipelineError(f"-o {output}: --target={target.name} writes {target.extension} "
                            f"programs; name the output *{target.extension}")
    return target


def lower_to_target(target, graph, report: dict, data) -> tuple:
    """(program, warning messages) for the optimized ``graph``; adds ``report["target"]``
    (name, options and the program's figures)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = target.lower(graph, data=data) if data is not None else target.lower(graph)
    report["target"] = {"name": target.name, "options": target.option_values(),
                        "program": target.program_stats(program)}
    return program, [str(w.message) for w in caught]


def program_summary(target: dict) -> str:
    """Two lines on a lowered program: the target and options, then its scalar figures."""
    options = ",".join(f"{k}={v}" for k, v in target["options"].items())
    figures = ", ".join(f"{k} {v}" for k, v in target["program"].items()
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool))
    return f"target: {target['name']}({options})\nprogram: {figures or '(no figures)'}"


def _body(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from circ import progress
    from circ.passmanager import PassManager
    from circ.plugins import load_pass_plugin, registered_passes

    progress.enable(progress.want_progress(args.quiet))

    for plugin in args.load_pass_plugin:
        load_pass_plugin(plugin)
    if args.list_passes:
        print(list_passes(registered_passes()))
        return 0
    if args.help_pass:
        print(help_pass(args.help_pass, registered_passes()))
        return 0
    if not args.model:
        raise PipelineError("no input model given (usage: circ-opt --passes=PIPELINE MODEL.onnx)")

    print_ir = args.print_ir_after
    if print_ir and "all" in print_ir:
        print_ir = "all"
    manager = PassManager.from_pipeline(
        args.passes, verify=not args.no_verify, print_ir_after=print_ir,
        time_passes=args.time_passes, pass_statistics=args.pass_stats,
        verify_numerics=args.verify_numerics, seed=args.seed, emit=_emit)

    model = args.model
    require_file(model, "an ONNX model or .circ container", ModelError)
    target = parse_output_target(args.target, args.output)
    output = args.output or default_output(model, target)
    check_writable(output, protect=[model])
    if args.report:
        check_writable(args.report, protect=[model, output])
    if args.report_html:
        check_writable(args.report_html, protect=[model, output, args.report])
    data = read_data(args.data) if args.data else None
    val = read_data(args.val) if args.val else None

    import circ
    from circ.fileio import atomic_write

    graph = circ.load(model)
    inputs = [v.name for v in graph.inputs]
    if data is not None:
        manager.data, manager.labels = split_labels(args.data, data, inputs)
    if val is not None:
        manager.val = split_labels(args.val, val, inputs)
        if manager.val[1] is None:
            raise DataError(f"{args.val}: validation data needs a y array (class labels)")
    before = graph.copy() if args.report or args.report_html else None
    result = manager.run(graph)
    report = dict(result.report, input=model, output=output)
    program, lowering_warnings = (lower_to_target(target, graph, report, manager.data) if target
                                  else (None, []))
    if before is not None:  # per-layer figures and output change, for both reports
        from circ.report_html import layer_rows

        report["layers"] = layer_rows(before, graph, seed=args.seed)
    report_text = json.dumps(report, indent=2) + "\n" if args.report else None

    saved = circ.save(graph, output, protect=[model]) if target is None else target.write(program, output)
    if saved is not None:  # a .circ container: Deep Compression's per-layer size table
        from circ.container import compression_report

        report["container"] = compression_report(graph, saved)
        report_text = json.dumps(report, indent=2) + "\n" if args.report else None
    if report_text is not None:
        atomic_write(args.report, report_text, protect=[model, output])
    if args.report_html:
        from circ.report_html import write_report_html

        write_report_html(args.report_html, report, before, graph,
                          protect=[p for p in (model, output, args.report) if p])

    for message in list(result.warnings) + lowering_warnings:
        warning(PROG, message)
    if not args.quiet:
        print(summary(report))
        if "container" in report:
            print(size_table(report["container"]))
        if "target" in report:
            print(program_summary(report["target"]))
    return 0


def read_data(path: str) -> dict:
    """The arrays of an ``.npz`` file, name -> array."""
    from circ.errors import DataError
    from circ.npzio import read_arrays

    require_file(path, "an .npz file", DataError)
    return read_arrays(path)


def match_data(path: str, arrays: dict, inputs: list) -> dict:
    """``arrays`` keyed by the graph's input names (one array fits a one-input graph)."""
    from circ.errors import DataError

    if len(inputs) == 1 and len(arrays) == 1:
        return {inputs[0]: next(iter(arrays.values()))}
    missing = [n for n in inputs if n not in arrays]
    unknown = sorted(set(arrays) - set(inputs))
    if missing or unknown:
        problem = (f"has no array for input {missing[0]!r}" if missing
                   else f"has array {unknown[0]!r}, which is not an input")
        raise DataError(f"{path}: {problem}; the model's inputs are {', '.join(inputs)}")
    return {n: arrays[n] for n in inputs}


def split_labels(path: str, arrays: dict, inputs: list) -> tuple:
    """``(arrays keyed by input name, labels or None)``: the array ``y`` is the labels unless
    the model has an input called ``y``."""
    arrays = dict(arrays)
    labels = arrays.pop("y") if "y" in arrays and "y" not in inputs else None
    if not arrays:
        raise DataError(f"{path}: has labels y but no input arrays; the model's inputs are "
                        f"{', '.join(inputs)}")
    return match_data(path, arrays, inputs), labels


def _emit(text: str) -> None:
    print(text, flush=True)


SUMMARY_ROWS = [("params", "params"), ("nonzeros", "non-zeros"), ("storage_bytes", "bytes"),
                ("macs", "MACs"), ("nodes", "nodes")]


def summary(report: dict) -> str:
    """The before/after table (and the declines) of a report."""
    from circ.printer import format_change, format_count, format_table

    before, after = report["stats"]["before"], report["stats"]["after"]
    rows = []
    for key, title in SUMMARY_ROWS:
        rows.append([title, format_count(before[key]), format_count(after[key]),
                     format_change(before[key], after[key])])
    lines = [f"{report['input']} -> {report['output']}",
             f"pipeline: {report['pipeline'] or '(empty)'}",
             format_table(["", "before", "after", "change"], rows)]
    if not after.get("macs_complete", True):
        lines.append("(MACs cover only the nodes whose shapes are known)")
    if "numerics" in report:
        lines.append(numerics_table(report))
    lines += pass_tables(report)
    declines = report["declines"]
    if declines:
        lines.append(f"declined ({len(declines)}):")
        lines += [f"  {d['pass']}: {d['node']}: {d['reason']}" for d in declines]
    return "\n".join(lines)


def pass_tables(report: dict) -> list:
    """The tables passes recorded for display (``details["table"]``: title, headers, rows),
    e.g. sensitivity's accuracy per layer and sparsity, aligned."""
    from circ.printer import format_table

    tables = []
    for entry in report["passes"]:
        table = entry.get("details", {}).get("table")
        if isinstance(table, dict) and table.get("rows"):
            tables.append(f"{table.get('title') or entry['text']}:\n"
                          + format_table(table["headers"], table["rows"]))
    return tables


def size_table(container: dict) -> str:
    """Deep Compression's per-layer table (Han et al. 2016, Table 2) for a written .circ."""
    from circ.printer import format_count, format_table

    rows = []
    for row in container["layers"]:
        kept = 100.0 * row["kept"] / row["weights"] if row["weights"] else 0.0
        rows.append([row["layer"], format_count(row["weights"]), f"{kept:.1f}%",
                     f"{row['weight_bits']:.2f}", f"{row['index_bits']:.2f}",
                     format_count(row["bytes"]), _ratio(row["ratio"])])
    rows.append(["(other)", "", "", "", "", format_count(container["other_bytes"]), ""])
    rows.append(["total", format_count(container["params"]), "", "", "",
                 format_count(container["file_bytes"]), _ratio(container["ratio"])])
    headers = ["layer", "weights", "kept", "weight bits", "index bits", "bytes", "ratio"]
    return "\n".join([
        "container size per layer (bits per kept weight; ratio vs float32 = 4 bytes per weight):",
        format_table(headers, rows),
        f"(other): graph, biases, small constants, framing. Total ratio: file size vs the "
        f"float32 model, {format_count(container['params'])} params x 4 = "
        f"{format_count(container['baseline_bytes'])} bytes."])


def _ratio(x) -> str:
    return "?" if x is None else f"{x:.1f}x"


def numerics_table(report: dict) -> str:
    """Per pass: the largest output change on the seeded sample (--verify-numerics)."""
    from circ.printer import format_table

    rows = []
    for entry in report["passes"]:
        numerics = entry.get("numerics")
        if numerics is None:
            continue
        rows.append([entry["text"], "exact" if entry.get("exact", True) else "approx",
                     _float(numerics["max_abs"]), _float(numerics["max_rel"]),
                     "FLAGGED" if numerics["flagged"] else "ok"])
    total = report["numerics"]
    rows.append(["total", "", _float(total["max_abs"]), _float(total["max_rel"]), ""])
    header = f"output change on a seeded sample (seed {total['seed']}):"
    return header + "\n" + format_table(["pass", "kind", "max abs", "max rel", ""], rows)


def _float(x) -> str:
    return "inf" if x is None else f"{x:.3g}"


def list_passes(registry: dict) -> str:
    """Name, exact/approximate and the first docstring line of every pass."""
    from circ.printer import format_table

    rows = [[name, "exact" if cls.exact else "approximate", _first_line(cls)]
            for name, cls in sorted(registry.items())]
    if not rows:
        return "(no passes registered)"
    return format_table(["pass", "kind", "description"], rows, align="lll")


def help_pass(name: str, registry: dict) -> str:
    """A pass's docstring and every option with type, default and help."""
    from circ.pipeline import pass_options
    from circ.printer import format_table

    cls = registry.get(name)
    if cls is None:
        raise PipelineError(f"unknown pass {name!r}; valid passes: {', '.join(sorted(registry))}")
    kind = "exact" if cls.exact else "approximate"
    lines = [f"{name} ({kind})", "", _doc(cls) or "(no description)", ""]
    options = pass_options(cls)
    if options:
        rows = [[o.name, o.describe_type(), o.describe_default(), o.help] for o in options]
        lines += ["options:", format_table(["option", "type", "default", "help"], rows, align="llll")]
    else:
        lines.append("options: none")
    return "\n".join(lines)


def _doc(cls) -> str:
    # The class's own docstring: inspect.getdoc would fall back to the Pass base class's.
    return inspect.cleandoc(cls.__dict__.get("__doc__") or "")


def _first_line(cls) -> str:
    doc = _doc(cls)
    return doc.splitlines()[0] if doc else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
