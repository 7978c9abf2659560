"""circ — a compression compiler for neural networks.

The public API (documented with examples in ``docs/api.md``)::

    import circ
    g = circ.load("model.onnx")                 # ONNX (and .circ containers) -> Graph
    outs = circ.run(g, {"input": x})            # reference interpreter: name -> array
    g2 = circ.optimize(g, "fold_bn,dce")        # run a pipeline; g is left as it was
    result = circ.run_pipeline(g, "prune(sparsity=0.9),cluster,huffman")  # + report, declines
    circ.save(result.graph, "out.circ")         # Graph -> .circ container (or ONNX)
    circ.stats(g).totals()                      # params, non-zeros, bytes, bits, MACs
    circ.passes()                               # registered passes: name -> pass class

Writing a pass: subclass :class:`Pass`, decorate with :func:`register_pass`, return a
:class:`PassResult` (see ``docs/writing-passes.md``). Every error caused by input is a
:class:`CircError` (see :mod:`circ.errors`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Optional, Union

from circ.errors import BackendError, CircError, DataError, ModelError, PipelineError, VerificationError
from circ.graph import Graph, Node, Value
from circ.interpreter import Interpreter, run
from circ.passbase import STRUCTURE, WEIGHTS, Pass, PassContext, PassResult, register_pass
from circ.tensors import Clustered, Dense, Quantized, Tensor
from circ.verifier import verify

if TYPE_CHECKING:
    from circ.analysis.stats import GraphStats
    from circ.container import CircInfo
    from circ.passmanager import PipelineResult

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CircError", "DataError", "ModelError", "PipelineError", "VerificationError",
    "Graph", "Node", "Value", "Interpreter", "run", "verify", "load", "save", "optimize", "passes",
    "Tensor", "Dense", "Clustered", "Quantized",
    "Pass", "PassContext", "PassResult", "register_pass", "STRUCTURE", "WEIGHTS",
    "run_pipeline", "parse_pipeline", "load_pass_plugin", "stats",
]

PathLike = Union[str, "os.PathLike[str]"]
# Text such as "prune(sparsity=0.9),dce", one pass object, or a list of pass objects/classes.
Pipeline = Union[str, Pass, Iterable[Union[Pass, type]]]


def load(path: PathLike, **options) -> Graph:
    """Load a model file into a Graph: a ``.circ`` container (by its suffix), else ONNX.

    Raises :class:`ModelError` naming the file when it is missing, damaged or uses an
    operator circ does not know."""
    from circ.container import is_circ_path, load_circ

    if is_circ_path(path):
        return load_circ(path, **options)
    from circ.onnx_import import load_onnx

    return load_onnx(path, **options)


def save(graph: Graph, path: PathLike, **options) -> Optional["CircInfo"]:
    """Write ``graph`` to ``path`` atomically: a ``.circ`` container (by its suffix; returns
    what went where, :class:`circ.container.CircInfo`), else ONNX (returns None)."""
    from circ.container import is_circ_path, save_circ

    if is_circ_path(path):
        return save_circ(graph, path, **options)
    from circ.onnx_export import save_onnx

    save_onnx(graph, path, **options)
    return None


def optimize(graph: Graph, pipeline: Pipeline, **options) -> Graph:
    """Run ``pipeline`` (text such as ``"fold_bn,dce"`` or a list of pass objects) on a copy
    of ``graph`` and return the result; ``graph`` itself is left unchanged. ``options`` are
    those of :func:`run_pipeline`."""
    return run_pipeline(graph, pipeline, **options).graph


def run_pipeline(graph: Graph, pipeline: Pipeline, *, copy: bool = True, seed: int = 0,
                 data: Optional[dict] = None, verify: bool = True,
                 verify_numerics: bool = False, **options) -> "PipelineResult":
    """Run ``pipeline`` and return the whole result: ``.graph``, ``.report`` (the dict
    ``circ-opt --report`` writes: pipeline text, every pass's record and timing, statistics
    before and after, declines, warnings) and ``.declines``.

    The pipeline is parsed and checked before anything runs (:class:`PipelineError`
    otherwise). With ``copy`` (the default) the passes edit a copy and ``graph`` is left as
    it was. ``seed`` makes passes and sample inputs deterministic; ``data`` gives calibration
    arrays (input name -> array, samples on axis 0); ``verify`` runs the IR verifier after
    each pass; ``verify_numerics`` compares outputs on a seeded sample after each pass.
    Other ``options`` go to :class:`circ.passmanager.PassManager` (``time_passes``,
    ``print_ir_after``, ``instruments``, ``emit``...)."""
    from circ.passmanager import PassManager

    manager = PassManager.from_pipeline(pipeline, seed=seed, data=data, verify=verify,
                                        verify_numerics=verify_numerics, **options)
    return manager.run(graph.copy() if copy else graph)


def parse_pipeline(text: str) -> list[Pass]:
    """The pass objects of pipeline ``text`` (checked against every registered pass);
    ``",".join(p.to_text() for p in passes)`` prints them back."""
    from circ.pipeline import parse_pipeline as parse

    return parse(text)


def passes() -> dict[str, type]:
    """The registered passes: name -> pass class (built-in, plugins and entry points)."""
    from circ.passmanager import registered_passes

    return registered_passes()


def load_pass_plugin(path: PathLike) -> list[str]:
    """Import passes from the Python file at ``path`` (what ``--load-pass-plugin`` does);
    returns the names it registered."""
    from circ.plugins import load_pass_plugin as load_plugin

    return load_plugin(path)


def stats(graph: Graph) -> "GraphStats":
    """Parameters, non-zeros, storage bytes, bits and MACs of ``graph``, in total
    (``.totals()``) and per node (``.per_node``); see :mod:`circ.analysis.stats`."""
    from circ.analysis.stats import graph_stats

    return graph_stats(graph)
