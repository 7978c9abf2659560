"""Accelerator backends (EIE, DPU): each a folder with isa, lower, asm, encode, sim and target.

A backend is exposed to the tools as a :class:`Target`: an ``attrs`` class whose fields are its
typed options (parsed like a pass's, so ``--target='eie(pes=32)'`` works), with the program
file extension it writes and the five things the CLI needs — lower a graph, write and read a
program file, print its assembly, and run it on a batch with statistics. ``circ-opt --target``
and ``circ-run PROG.eie|PROG.dpu`` go through :func:`parse_target` and :func:`target_for_file`
only, so a new backend is one more entry in :data:`TARGETS`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, ClassVar, Mapping

from circ.errors import BackendError

# name -> "module:Class", imported on first use so that importing circ stays cheap.
TARGETS: dict[str, str] = {
    "eie": "backends.eie.target:EIETarget",
    "dpu": "backends.dpu.target:DPUTarget",
}


class Target:
    """What a backend gives the tools. Subclasses are ``attrs`` classes; fields are options."""

    name: ClassVar[str] = ""
    extension: ClassVar[str] = ""  # e.g. ".eie"

    def lower(self, graph, data: Mapping[str, Any] | None = None) -> Any:
        """A program for ``graph`` (a compressed circ Graph), or BackendError naming the node.
        ``data`` is calibration arrays by input name (``circ-opt --data``); the CLI passes it
        only when given, so a target that needs none may omit the parameter."""
        raise NotImplementedError

    def write(self, program, path: str) -> None:
        """Write ``program`` to ``path`` (atomically, through circ.fileio.atomic_write)."""
        raise NotImplementedError

    def read(self, path: str) -> Any:
        """The program in ``path``; a CircError naming the file when it is damaged."""
        raise NotImplementedError

    def asm(self, program) -> str:
        """The program's textual assembly (parses back to an equal program)."""
        raise NotImplementedError

    def inputs(self, program) -> list[str]:
        """The names of the arrays the program reads, in order."""
        raise NotImplementedError

    def run(self, program, feeds: Mapping[str, Any]) -> tuple[dict, Any]:
        """Run on a whole batch (axis 0 of each feed): (outputs by name, statistics)."""
        raise NotImplementedError

    def format_stats(self, stats) -> str:
        """Per-layer statistics as an aligned text table (what ``circ-run --stats`` prints)."""
        raise NotImplementedError

    def stats_dict(self, stats) -> dict:
        """The same statistics as JSON-ready data (for reports)."""
        raise NotImplementedError

    def program_stats(self, program) -> dict:
        """JSON-ready figures of a lowered program (layers, storage, ...) that ``circ-opt
        --target`` prints and puts in its report; empty unless a target says more."""
        return {}

    def option_values(self) -> dict:
        """The target's options as JSON-ready data (its attrs fields)."""
        import attrs

        return attrs.asdict(self) if attrs.has(type(self)) else {}


def target_class(name: str) -> type:
    """The Target class registered as ``name``."""
    where = TARGETS.get(name)
    if where is None:
        raise BackendError(f"unknown target {name!r}; valid targets: {', '.join(sorted(TARGETS))}")
    module, _, cls = where.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as err:
        if err.name is None or not module.startswith(err.name):
            raise  # a dependency of the backend is missing: a broken install, not a user error
        raise BackendError(f"target {name!r} is not available in this build of circ") from None


def parse_target(text: str) -> Target:
    """``"eie"`` or ``"eie(pes=32,v_bits=4)"`` -> a configured Target (options checked)."""
    from circ.pipeline import build_pass, parse_specs

    specs = parse_specs(text)
    if len(specs) != 1:
        raise BackendError(f"--target expects one target such as 'eie' or 'dpu(mac_rows=16)', "
                           f"got {text!r}")
    return build_pass(target_class(specs[0].name), specs[0].options, name=specs[0].name)


def target_for_file(path: str) -> Target:
    """The target (with default options) whose programs end like ``path``, or None."""
    extension = os.path.splitext(path)[1].lower()
    for name in TARGETS:
        cls = target_class(name)
        if cls.extension == extension:
            return cls()
    return None
