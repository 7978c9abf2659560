"""Pipeline text: ``prune(sparsity=0.9,scope=fc),quant(bits=8,pow2=true)`` <-> pass objects.

Grammar (whitespace between tokens is ignored)::

    pipeline := [ item { "," item } ]
    item     := NAME [ "(" [ option { "," option } ] ")" ]
    option   := NAME "=" value
    value    := bare word | "quoted string"      (\\" and \\\\ escape inside quotes)

A bare name takes every option's default. A value is typed by the annotation of the pass's
``attrs`` field: ``int``, ``float`` (``0.5``, ``1e-3``, ``inf``), ``bool`` (``true``/``false``),
``str`` (a bare word or a quoted string), ``tuple[int, int]`` written ``N:M`` (``nm=2:4``),
``Optional[X]`` (``none`` or an X), ``Literal[...]``; a field's ``metadata["choices"]``
restricts it further. Everything is checked before any pass runs: unknown passes and options,
missing required options and badly typed values raise :class:`~circ.errors.PipelineError`
naming the offender and listing what is valid.

:func:`pipeline_text` prints passes back (non-default options only); the text parses to an
equal pipeline, which is how a report makes any result reproducible.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Any, Iterable, Literal, Optional, Union

import attrs

from circ.errors import PipelineError
from circ.passbase import Pass, format_option, option_name


@attrs.define(frozen=True)
class RawValue:
    """An option value as written: its text and whether it was quoted."""

    text: str
    quoted: bool = False


@attrs.define
class PassSpec:
    """One parsed, not yet checked pipeline item: a pass name and its raw options."""

    name: str
    options: dict  # option name -> RawValue, in the order written
    column: int = 0


# ---------------------------------------------------------------------------- syntax

_TOKEN = re.compile(r'\s*(?:(?P<punct>[,()=])|"(?P<string>(?:\\.|[^"\\])*)"|(?P<word>[^\s,()="]+))')
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, column) triples; kind is 'punct', 'string' or 'word'."""
    out = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            column = position + len(text[position:]) - len(text[position:].lstrip()) + 1
            raise PipelineError(f"bad pipeline {text!r}: unexpected {text[column - 1]!r} at column {column}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value)
        out.append((kind, value, match.start(kind) + 1))
        position = match.end()
    return out


def parse_specs(text: str) -> list[PassSpec]:
    """Split pipeline text into :class:`PassSpec` items (syntax only, no registry lookup)."""
    tokens = _tokens(text)
    specs: list[PassSpec] = []
    i = 0

    def fail(message: str, at: Optional[int] = None) -> PipelineError:
        column = tokens[at][2] if at is not None and at < len(tokens) else len(text) + 1
        where = f"at column {column}" if at is not None and at < len(tokens) else "at the end"
        return PipelineError(f"bad pipeline {text!r}: {message} {where}")

    def expect_name(what: str) -> str:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != "word" or not _NAME.fullmatch(tokens[i][1]):
            raise fail(f"expected {what}", i)
        i += 1
        return tokens[i - 1][1]

    def at(punct: str) -> bool:
        return i < len(tokens) and tokens[i][0] == "punct" and tokens[i][1] == punct

    if not tokens:
        return specs
    while True:
        column = tokens[i][2] if i < len(tokens) else len(text) + 1
        spec = PassSpec(expect_name("a pass name"), {}, column)
        if at("("):
            i += 1
            while not at(")"):
                option = expect_name(f"an option name for pass {spec.name!r}")
                if not at("="):
                    raise fail(f"expected '=' after option {option!r} of pass {spec.name!r}", i)
                i += 1
                if i >= len(tokens) or tokens[i][0] == "punct":
                    raise fail(f"expected a value for option {option!r} of pass {spec.name!r}", i)
                if option in spec.options:
                    raise PipelineError(f"option {option!r} of pass {spec.name!r} is given twice")
                spec.options[option] = RawValue(tokens[i][1], tokens[i][0] == "string")
                i += 1
                if at(","):
                    i += 1
                    if at(")"):
                        raise fail("expected an option name", i)
                elif not at(")"):
                    raise fail(f"expected ',' or ')' in the options of pass {spec.name!r}", i)
            i += 1
        specs.append(spec)
        if i >= len(tokens):
            return specs
        if not at(","):
            raise fail("expected ',' between passes", i)
        i += 1


# ---------------------------------------------------------------------------- option types


class _BadValue(Exception):
    """A raw value does not fit a type; ``args[0]`` describes what was expected."""


_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"(?i)[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?|inf|infinity|nan)")
_NONE_TYPE = type(None)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, types.UnionType)


def describe_type(tp) -> str:
    """How help text and errors name a field type: ``float``, ``int:int``, ``int or none``."""
    if tp in (int, float, str):
        return {int: "int", float: "float", str: "word"}[tp]
    if tp is bool:
        return "true/false"
    origin = typing.get_origin(tp)
    if _is_union(tp):
        members = [describe_type(m) for m in typing.get_args(tp) if m is not _NONE_TYPE]
        text = " or ".join(members)
        return f"{text} or none" if _NONE_TYPE in typing.get_args(tp) else text
    if origin is Literal:
        return "one of " + "|".join(format_option(v) for v in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{describe_type(args[0])}:{describe_type(args[0])}:..."
        return ":".join(describe_type(a) for a in args)
    return "value"


def convert_value(tp, raw: RawValue) -> Any:
    """The typed value of ``raw`` for annotation ``tp``; raises _BadValue when it does not fit."""
    text = raw.text
    if tp is str:
        return text
    if raw.quoted and not (typing.get_origin(tp) is Literal or _is_union(tp) or tp is Any):
        raise _BadValue(describe_type(tp))
    if tp is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _BadValue("true/false")
    if tp is int:
        if _INT.fullmatch(text):
            return int(text)
        raise _BadValue("an int")
    if tp is float:
        if _FLOAT.fullmatch(text):
            return float(text)
        raise _BadValue("a float")
    origin = typing.get_origin(tp)
    if _is_union(tp):
        members = typing.get_args(tp)
        if _NONE_TYPE in members and not raw.quoted and text.lower() == "none":
            return None
        for member in members:
            if member is _NONE_TYPE:
                continue
            try:
                return convert_value(member, raw)
            except _BadValue:
                pass
        raise _BadValue(describe_type(tp))
    if origin is Literal:
        for allowed in typing.get_args(tp):
            try:
                if convert_value(type(allowed), raw) == allowed:
                    return allowed
            except _BadValue:
                pass
        raise _BadValue(describe_type(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        parts = text.split(":")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(parts)
        if len(parts) != len(args):
            raise _BadValue(describe_type(tp))
        try:
            return tuple(convert_value(a, RawValue(p)) for a, p in zip(args, parts))
        except _BadValue:
            raise _BadValue(describe_type(tp)) from None
    # Unannotated (or unresolvable) option: read the text as the most specific literal.
    if raw.quoted:
        return text
    for guess in (bool, int, float):
        try:
            return convert_value(guess, raw)
        except _BadValue:
            pass
    return text


# ---------------------------------------------------------------------------- pass options


@attrs.define
class Option:
    """One option of a pass: what ``--help-pass`` shows and what the parser converts to."""

    name: str
    type: Any
    default: Any  # attrs.NOTHING when required
    help: str = ""
    choices: Optional[tuple] = None
    param: str = ""  # the keyword argument of the pass class (when it differs from ``name``)

    @property
    def required(self) -> bool:
        return self.default is attrs.NOTHING

    def describe_type(self) -> str:
        if self.choices:
            return "one of " + "|".join(format_option(c) for c in self.choices)
        return describe_type(self.type)

    def describe_default(self) -> str:
        return "(required)" if self.required else format_option(self.default)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation naming something not importable: fall back per field
        return {}


def pass_options(cls: type) -> list[Option]:
    """The options of pass class ``cls`` (its init-able attrs fields), in declaration order."""
    hints = _type_hints(cls)
    options = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        tp = hints.get(field.name, field.type)
        if isinstance(tp, str) or tp is None:
            tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp, Any)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else attrs.NOTHING
        choices = field.metadata.get("choices")
        options.append(Option(option_name(field), tp, default, field.metadata.get("help", ""),
                              tuple(choices) if choices is not None else None,
                              param=field.alias or field.name))
    return options


def build_pass(cls: type, options: dict, *, name: Optional[str] = None) -> Pass:
    """Instantiate ``cls`` from raw options (name -> RawValue), checking names and types."""
    name = name or cls.name
    known = {option.name: option for option in pass_options(cls)}
    valid = ", ".join(known) or "(this pass has no options)"
    kwargs = {}
    for key, raw in options.items():
        option = known.get(key)
        if option is None:
            raise PipelineError(f"unknown option {key!r} for pass {name!r}; valid options: {valid}")
        try:
            value = convert_value(option.type, raw)
        except _BadValue as err:
            raise PipelineError(f"option {key!r} of pass {name!r} expects {err.args[0]}, "
                                f"got {raw.text!r}") from None
        if option.choices is not None and value not in option.choices:
            raise PipelineError(f"option {key!r} of pass {name!r} expects {option.describe_type()}, "
                                f"got {raw.text!r}")
        kwargs[option.param or key] = value
    for option in known.values():
        if option.required and option.name not in options:
            raise PipelineError(f"pass {name!r} needs option {option.name!r} "
                                f"({option.describe_type()})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # attrs validators and converters
        raise PipelineError(f"pass {name!r}: {err}") from None


def parse_pipeline(text: str, registry: Optional[dict] = None) -> list[Pass]:
    """Parse and check pipeline ``text`` against ``registry`` (default: every registered pass)."""
    if registry is None:
        from circ.plugins import registered_passes

        registry = registered_passes()
    passes = []
    for spec in parse_specs(text):
        cls = registry.get(spec.name)
        if cls is None:
            valid = ", ".join(sorted(registry)) or "(none registered)"
            raise PipelineError(f"unknown pass {spec.name!r}; valid passes: {valid}")
        passes.append(build_pass(cls, spec.options, name=spec.name))
    return passes


def pipeline_text(passes: Iterable[Pass]) -> str:
    """The text that parses back to ``passes`` (each printed with its non-default options)."""
    return ",".join(p.to_text() for p in passes)


def as_passes(pipeline, registry: Optional[dict] = None) -> list[Pass]:
    """A pipeline given as text, a pass object, or a list of pass objects/classes -> pass objects."""
    if isinstance(pipeline, str):
        return parse_pipeline(pipeline, registry)
    if isinstance(pipeline, Pass):
        return [pipeline]
    passes = []
    for item in pipeline:
        if isinstance(item, type) and issubclass(item, Pass):
            item = build_pass(item, {})
        if not isinstance(item, Pass):
            raise PipelineError(f"a pipeline holds passes, not {type(item).__name__} {item!r}")
        passes.append(item)
    return passes
