"""Where passes come from: the built-in ``passes`` package, installed plugins, plugin files.

- Built-ins register themselves (``@register_pass``) when the ``passes`` package is imported.
- An installed distribution adds passes through the ``circ.passes`` entry-point group; each
  entry point names a pass class (registered under its ``name`` if it is not already) or a
  module whose import registers its passes.
- ``circ-opt --load-pass-plugin FILE.py`` imports a Python file by path
  (:func:`load_pass_plugin`); its ``@register_pass`` classes join the registry.

A failure to import any of these is a :class:`~circ.errors.PipelineError` naming the file or
entry point; the pipeline never runs half-registered.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback

from circ.errors import PipelineError
from circ.passbase import Pass, builtin_registry, register_pass

ENTRY_POINT_GROUP = "circ.passes"

_loaded_entry_points = False


def _load_builtins() -> None:
    importlib.import_module("passes")


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry.load()
        except Exception as err:  # a broken plugin is the user's setup, reported by name
            raise PipelineError(f"cannot load pass plugin entry point {entry.name!r} "
                                f"({entry.value}) of group {ENTRY_POINT_GROUP!r}: "
                                f"{type(err).__name__}: {err}") from err
        if inspect.isclass(target) and issubclass(target, Pass):
            if builtin_registry().get(target.name) is not target:
                register_pass(target)
    _loaded_entry_points = True  # only once all loaded: a broken plugin fails every time


def registered_passes() -> dict[str, type]:
    """Every pass circ knows: name -> pass class, sorted by name."""
    _load_builtins()
    _load_entry_points()
    return dict(sorted(builtin_registry().items()))


def load_pass_plugin(path) -> list[str]:
    """Import the Python file at ``path``; returns the names of the passes it registered."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PipelineError(f"pass plugin {path}: no such file")
    before = dict(builtin_registry())
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    module_name = f"circ_plugin_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PipelineError(f"pass plugin {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the plugin's own bug, reported as the user's file at fault
        del sys.modules[module_name]
        line = _plugin_line(err, path)
        where = f" (line {line})" if line else ""
        raise PipelineError(f"pass plugin {path}: cannot import{where}: "
                            f"{type(err).__name__}: {err}") from err
    after = builtin_registry()
    return [name for name, cls in after.items() if before.get(name) is not cls]


def _plugin_line(err: BaseException, path: str):
    """The line of the plugin file where ``err`` arose (the innermost frame in that file)."""
    if isinstance(err, SyntaxError) and err.filename and os.path.abspath(err.filename) == os.path.abspath(path):
        return err.lineno
    line = None
    for frame, lineno in traceback.walk_tb(err.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path):
            line = lineno
    return line
