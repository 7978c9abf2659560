"""circ-viz: draw a model (and what a pipeline does to it) with Graphviz.

::

    circ-viz model.onnx -o graph.svg                  # also .png, .pdf, .dot (.gv)
    circ-viz model.circ -o graph.pdf --collapse        # repeated blocks as clusters
    circ-viz model.onnx -o prune.svg --pipeline 'prune(sparsity=0.9),cluster(bits=5)'
    circ-viz model.onnx -o prune.svg --pipeline prune --diff

The output format follows the extension of ``-o`` (default: ``MODEL.svg`` beside the model).
``--pipeline`` runs the pipeline on a copy of the model and draws before and after side by
side, or with ``--diff`` as one graph with removed, added and changed nodes marked; the
pipeline is checked before the model is read. What the boxes, colours and marks mean is in
:mod:`circ.viz` and in the drawing's legend.

Rendering needs the Graphviz ``dot`` program. Without it circ-viz writes the DOT source
(``OUT.dot`` beside the requested output), says on stderr how to install Graphviz and how to
render the file afterwards, and exits 0. Outputs are written atomically. The pipeline's
progress bars go to stderr when it is a terminal, unless ``-q``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional, Sequence

import circ
from circ.cli.common import (
    ArgumentParser,
    UsageError,
    check_writable,
    require_file,
    run_tool,
    warning,
)
from circ.errors import CircError, ModelError

PROG = "circ-viz"
EXTENSIONS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
                "graphviz; see https://graphviz.org/download/)")


class RenderError(CircError):
    """The ``dot`` program failed on a drawing."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Draw a model's graph with Graphviz.")
    parser.add_argument("model", metavar="MODEL", help="the model to draw (.onnx or .circ)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="the drawing: .svg, .png, .pdf or .dot (default: MODEL.svg)")
    parser.add_argument("--pipeline", metavar="PIPELINE",
                        help="draw the model before and after this pipeline, e.g. 'prune(sparsity=0.9)'")
    parser.add_argument("--diff", action="store_true",
                        help="with --pipeline: one graph with removed/added/changed nodes marked")
    parser.add_argument("--collapse", action="store_true",
                        help="draw runs of repeated blocks as one cluster (large models)")
    parser.add_argument("--load-pass-plugin", action="append", default=[], metavar="FILE.py",
                        help="import passes from a Python file (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the pipeline's passes")
    parser.add_argument("--data", metavar="FILE.npz", help="calibration data for the pipeline's passes")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success, and no progress")
    return parser


def output_format(path: str) -> str:
    """The format named by ``path``'s extension; :class:`UsageError` for any other."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        known = ", ".join(EXTENSIONS)
        raise UsageError(f"{path}: cannot tell the drawing's format from {extension or 'no extension'!r}; "
                         f"use one of {known}")
    return EXTENSIONS[extension]


def default_output(model: str) -> str:
    """``dir/net.onnx`` -> ``dir/net.svg``."""
    return os.path.splitext(model)[0] + ".svg"


def _body(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from circ import progress

    progress.enable(progress.want_progress(args.quiet))
    if args.diff and not args.pipeline:
        raise UsageError("--diff needs --pipeline (what should the diff compare?)")
    if args.data and not args.pipeline:
        raise UsageError("--data needs --pipeline (only passes read calibration data)")
    output = args.output or default_output(args.model)
    fmt = output_format(output)

    manager = None
    if args.pipeline is not None:
        from circ.passmanager import PassManager
        from circ.plugins import load_pass_plugin

        for plugin in args.load_pass_plugin:
            load_pass_plugin(plugin)
        manager = PassManager.from_pipeline(args.pipeline, seed=args.seed)

    require_file(args.model, "a model", ModelError)
    check_writable(output, protect=[args.model])
    graph = circ.load(args.model)

    from circ import viz

    if manager is None:
        dot = viz.graph_to_dot(graph, collapse=args.collapse)
    else:
        if args.data:
            from circ.cli.opt import match_data, read_data

            manager.data = match_data(args.data, read_data(args.data), [v.name for v in graph.inputs])
        after = graph.copy()
        result = manager.run(after)
        for message in result.warnings:
            warning(PROG, message)
        dot = viz.pipeline_to_dot(graph, after, diff=args.diff, collapse=args.collapse,
                                  pipeline=manager.text)
    written = write_drawing(dot, output, fmt, protect=[args.model])
    if not args.quiet:
        print(f"wrote {written}")
    return 0


def write_drawing(dot, output: str, fmt: str, *, protect=()) -> str:
    """Render ``dot`` to ``output`` atomically and return the path written; without the ``dot``
    program, write the DOT source beside it instead, warn, and return that path."""
    import graphviz

    from circ import viz
    from circ.fileio import atomic_write

    try:
        data = viz.render(dot, fmt)
    except graphviz.ExecutableNotFound:
        source_path = os.path.splitext(output)[0] + ".dot"
        check_writable(source_path, protect=protect)
        atomic_write(source_path, dot.source, protect=protect)
        warning(PROG, f"the Graphviz 'dot' program was not found, so {source_path} holds the DOT source "
                      f"instead of {output}; {INSTALL_HINT}, then run: dot -T{fmt} {source_path} -o {output}")
        return source_path
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or b"").decode("utf-8", "replace").strip() or f"exit code {err.returncode}"
        raise RenderError(f"{output}: Graphviz dot failed: {detail}") from None
    atomic_write(output, data, protect=protect)
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
