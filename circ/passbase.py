"""What a pass is: the base class, its result, its context, and registration.

A pass is an ``attrs`` class whose fields are its typed options (with defaults), registered
by decorator::

    @register_pass
    class Prune(Pass):
        '''Magnitude pruning of Conv/Gemm/MatMul weights. Approximate.'''

        name = "prune"
        exact = False

        sparsity: float = attrs.field(default=0.5, metadata={"help": "fraction of zeros"})

        def run(self, graph, ctx):
            ...
            return PassResult(modified=True, preserved={STRUCTURE})

``run`` edits the graph in place through the graph's editing methods and returns a
:class:`PassResult`: whether it changed anything and which analysis categories are still
valid. A pass never prints; a case it cannot handle is declined with ``ctx.decline(node,
reason)`` (the reason reaches the report) and the graph is left valid.
"""

from __future__ import annotations

import keyword
import re
from typing import Any, Callable, ClassVar, Optional

import attrs
import numpy as np

from circ.graph import Graph, Node

# Analysis categories a pass may preserve. An analysis depends on one or both.
STRUCTURE = "structure"  # nodes, edges, shapes
WEIGHTS = "weights"  # constant values and their representations
ALL = frozenset({STRUCTURE, WEIGHTS})
NONE = frozenset()


@attrs.define
class Decline:
    """A case a pass left alone, and why."""

    pass_name: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pass_name}: {self.node}: {self.reason}"


@attrs.define
class PassResult:
    """What a pass did: ``modified`` and the analysis categories it kept valid."""

    modified: bool
    preserved: frozenset = attrs.field(default=NONE, converter=frozenset)
    # Free-form numbers a pass wants in the report (e.g. achieved sparsity per layer).
    details: dict = attrs.field(factory=dict)


@attrs.define(eq=False)
class PassContext:
    """Shared state of one pipeline run: analysis cache, declines, options, randomness.

    Passes reach everything they need through the context (never through globals).
    """

    seed: int = 0
    data: Optional[dict] = None  # calibration / training arrays (--data), name -> array
    labels: Optional[np.ndarray] = None  # class indices of the samples in ``data`` (array y)
    val: Optional[tuple] = None  # validation data (--val): (input name -> array, labels)
    # The graph as it was before the pipeline (a copy), made only when a pass's
    # ``wants_original()`` asks for it: the default teacher of distillation.
    original: Optional[Graph] = None
    declines: list = attrs.field(factory=list)
    current_pass: str = ""
    _analyses: dict = attrs.field(factory=dict)

    def decline(self, node: Optional[Node], reason: str) -> None:
        """Record that the running pass left ``node`` (or the whole graph) alone, and why."""
        where = node.describe() if node is not None else "graph"
        self.declines.append(Decline(self.current_pass, where, reason))

    def rng(self, salt: str = "") -> np.random.Generator:
        """A deterministic generator for the running pass (same seed -> same result)."""
        key = f"{self.seed}:{self.current_pass}:{salt}".encode()
        return np.random.default_rng(list(key))

    # ---- analyses -------------------------------------------------------------------------
    def analysis(self, fn: Callable[[Graph], Any], graph: Graph) -> Any:
        """The result of analysis ``fn`` on ``graph``, cached until a pass invalidates it.

        ``fn`` declares what it depends on with the :func:`analysis` decorator.
        """
        key = (id(graph), fn)
        if key not in self._analyses:
            self._analyses[key] = fn(graph)
        return self._analyses[key]

    def invalidate(self, preserved: frozenset) -> None:
        """Drop cached analyses that depend on a category not in ``preserved``."""
        for key in list(self._analyses):
            depends = getattr(key[1], "depends_on", ALL)
            if not depends <= preserved:
                del self._analyses[key]

    def cached(self) -> list:
        return [fn for _, fn in self._analyses]

    # The analyses circ ships, by name (imported lazily: analysis modules import the IR).
    def stats(self, graph: Graph):
        """Parameter, non-zero, storage and MAC counts (:mod:`circ.analysis.stats`)."""
        from circ.analysis.stats import graph_stats

        return self.analysis(graph_stats, graph)

    def shapes(self, graph: Graph):
        """Fresh dtypes and shapes of every value (:mod:`circ.analysis.shapes`)."""
        from circ.analysis.shapes import value_types

        return self.analysis(value_types, graph)

    def groups(self, graph: Graph):
        """Dependency groups of weighted nodes (:mod:`circ.analysis.groups`)."""
        from circ.analysis.groups import dependency_groups

        return self.analysis(dependency_groups, graph)


def analysis(*depends_on: str):
    """Mark a function ``graph -> result`` as an analysis depending on these categories."""

    def mark(fn):
        fn.depends_on = frozenset(depends_on) if depends_on else ALL
        return fn

    return mark


class Pass:
    """Base class of passes. Subclasses are ``attrs`` classes made by :func:`register_pass`."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True  # semantics-preserving (to float tolerance)?

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def wants_original(self) -> bool:
        """Whether this pass reads ``ctx.original`` (the pass manager then keeps a copy of the
        input graph for it)."""
        return False

    # The text that parses back to this pass with the same options (non-defaults only).
    def to_text(self) -> str:
        options = []
        for field in attrs.fields(type(self)):
            if not field.init:  # internal state, not an option
                continue
            value = getattr(self, field.name)
            if field.default is not attrs.NOTHING and _same(value, field.default):
                continue
            options.append(f"{option_name(field)}={format_option(value)}")
        return f"{self.name}({','.join(options)})" if options else self.name


def option_name(field: "attrs.Attribute") -> str:
    """The name pipeline text uses for an option field: its init name, without the trailing
    underscore that lets a Python keyword be a field (field ``global_`` is option ``global``)."""
    name = field.alias or field.name
    if name.endswith("_") and keyword.iskeyword(name[:-1]):
        return name[:-1]
    return name


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def format_option(value) -> str:
    """Pipeline-text form of an option value (parsed back by :mod:`circ.pipeline`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ":".join(format_option(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and (not _BARE_WORD.fullmatch(value) or _LITERAL.fullmatch(value)):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return str(value)


# Strings printed without quotes; anything else (commas, parentheses, spaces, quotes, the
# empty string) and words that read as another kind of value (numbers, true, none) are
# quoted, so the text parses back to the same value whatever the option's type.
_BARE_WORD = re.compile(r"[A-Za-z0-9_.\-+*/\[\]:]+")
_LITERAL = re.compile(r"(?i)true|false|none|[-+]?(inf|nan|[0-9.][0-9.e+\-:]*)")


_REGISTRY: dict[str, type] = {}


def register_pass(cls=None, *, name: Optional[str] = None, exact: Optional[bool] = None):
    """Class decorator: make ``cls`` an attrs class (its annotated fields are the options) and
    register it under ``cls.name`` (or ``name``). Usable bare or with arguments."""

    def wrap(klass):
        if name is not None:
            klass.name = name
        if exact is not None:
            klass.exact = exact
        if not klass.name:
            raise ValueError(f"pass class {klass.__name__} has no name")
        if not attrs.has(klass) or "__attrs_attrs__" not in klass.__dict__:
            klass = attrs.define(klass, slots=False)
        _REGISTRY[klass.name] = klass
        return klass

    return wrap(cls) if cls is not None else wrap


def builtin_registry() -> dict[str, type]:
    """Passes registered so far by decorator (built-ins and imported plugins)."""
    return _REGISTRY
