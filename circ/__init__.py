"""circ — a compression compiler for neural networks.

The public API::

    import circ
    g = circ.load("model.onnx")                 # ONNX (and .circ containers) -> Graph
    outs = circ.run(g, {"input": x})            # reference interpreter: name -> array
    g2 = circ.optimize(g, "fold_bn,dce")        # run a pipeline; g is left as it was
    circ.save(g2, "out.onnx")                   # Graph -> ONNX
    circ.passes()                               # registered passes: name -> pass class

Every error caused by input is a :class:`CircError` (see :mod:`circ.errors`).
"""

from __future__ import annotations

from circ.errors import BackendError, CircError, DataError, ModelError, PipelineError, VerificationError
from circ.graph import Graph, Node, Value
from circ.interpreter import Interpreter, run
from circ.tensors import Clustered, Dense, Quantized, Tensor
from circ.verifier import verify

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CircError", "DataError", "ModelError", "PipelineError", "VerificationError",
    "Graph", "Node", "Value", "Interpreter", "run", "verify", "load", "save", "optimize", "passes",
    "Tensor", "Dense", "Clustered", "Quantized",
]


def load(path, **options) -> Graph:
    """Load a model file into a Graph: a ``.circ`` container (by its suffix), else ONNX."""
    from circ.container import is_circ_path, load_circ

    if is_circ_path(path):
        return load_circ(path, **options)
    from circ.onnx_import import load_onnx

    return load_onnx(path, **options)


def save(graph: Graph, path, **options):
    """Write ``graph`` to ``path`` atomically: a ``.circ`` container (by its suffix; returns
    what went where, :class:`circ.container.CircInfo`), else ONNX."""
    from circ.container import is_circ_path, save_circ

    if is_circ_path(path):
        return save_circ(graph, path, **options)
    from circ.onnx_export import save_onnx

    save_onnx(graph, path, **options)


def optimize(graph: Graph, pipeline, **options) -> Graph:
    """Run ``pipeline`` (text such as ``"fold_bn,dce"`` or a list of pass objects) on a copy
    of ``graph`` and return the result; ``graph`` itself is left unchanged."""
    from circ.passmanager import PassManager

    manager = PassManager.from_pipeline(pipeline, **options)
    return manager.run(graph.copy()).graph


def passes() -> dict:
    """The registered passes: name -> pass class (built-in, plugins and entry points)."""
    from circ.passmanager import registered_passes

    return registered_passes()
