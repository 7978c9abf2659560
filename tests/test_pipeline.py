"""Pipeline text: parsing, typed options, errors before anything runs, print -> parse round trip."""

from typing import Literal, Optional

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circ.errors import PipelineError
from circ.passbase import Pass, PassResult
from circ.pipeline import describe_type, parse_pipeline, parse_specs, pass_options, pipeline_text


@attrs.define
class Prune(Pass):
    """Test pruning pass with the options of the foundation issue's example."""

    name = "prune"
    exact = False
    sparsity: float = attrs.field(default=0.5, metadata={"help": "fraction of zeros"})
    quality: Optional[float] = None
    scope: str = "all"

    def run(self, graph, ctx):
        return PassResult(False)


@attrs.define
class Quant(Pass):
    name = "quant"
    exact = False
    bits: int = 8
    pow2: bool = False
    nm: Optional[tuple[int, int]] = None
    mode: Literal["minmax", "mse"] = "minmax"
    granularity: str = attrs.field(default="tensor", metadata={"choices": ("tensor", "channel")})
    shape: tuple[int, ...] = (1,)

    def run(self, graph, ctx):
        return PassResult(False)


@attrs.define
class Needs(Pass):
    name = "needs"
    k: int = attrs.field(validator=attrs.validators.ge(1))

    def run(self, graph, ctx):
        return PassResult(False)


@attrs.define
class Plain(Pass):
    name = "plain"

    def run(self, graph, ctx):
        return PassResult(False)


REGISTRY = {cls.name: cls for cls in (Prune, Quant, Needs, Plain)}


def parse(text):
    return parse_pipeline(text, REGISTRY)


def test_bare_names_take_defaults():
    assert parse("prune,plain") == [Prune(), Plain()]
    assert parse("") == []
    assert parse("  prune ( ) ") == [Prune()]


def test_values_are_typed_from_annotations():
    (prune, quant) = parse("prune(sparsity=0.9,scope=fc),quant(bits=4,pow2=true,nm=2:4,mode=mse)")
    assert prune == Prune(sparsity=0.9, scope="fc")
    assert isinstance(prune.sparsity, float)
    assert quant == Quant(bits=4, pow2=True, nm=(2, 4), mode="mse")
    assert parse("prune(sparsity=1e-3)")[0].sparsity == pytest.approx(1e-3)
    assert parse("prune(sparsity=1)")[0].sparsity == 1.0 and isinstance(parse("prune(sparsity=1)")[0].sparsity, float)
    assert parse("prune(quality=none)")[0].quality is None
    assert parse("prune(quality=2.5)")[0].quality == 2.5
    assert parse("quant(shape=3:3:1)")[0].shape == (3, 3, 1)
    assert parse("quant(granularity=channel)")[0].granularity == "channel"
    assert parse('prune(scope="conv,fc (all)")')[0].scope == "conv,fc (all)"
    assert parse('prune(scope="say \\"hi\\"")')[0].scope == 'say "hi"'


def test_unknown_option_names_offender_and_lists_valid():
    with pytest.raises(PipelineError) as err:
        parse("prune(sparsty=0.9)")
    assert str(err.value) == "unknown option 'sparsty' for pass 'prune'; valid options: sparsity, quality, scope"


def test_unknown_pass_lists_valid_passes():
    with pytest.raises(PipelineError, match=r"unknown pass 'prun'; valid passes: needs, plain, prune, quant"):
        parse("plain,prun")


@pytest.mark.parametrize("text, message", [
    ("prune(sparsity=abc)", "option 'sparsity' of pass 'prune' expects a float, got 'abc'"),
    ("quant(bits=2.5)", "option 'bits' of pass 'quant' expects an int, got '2.5'"),
    ("quant(pow2=yes)", "option 'pow2' of pass 'quant' expects true/false, got 'yes'"),
    ("quant(nm=2)", "option 'nm' of pass 'quant' expects int:int or none, got '2'"),
    ("quant(nm=2:x)", "option 'nm' of pass 'quant' expects int:int or none, got '2:x'"),
    ("quant(mode=max)", "option 'mode' of pass 'quant' expects one of minmax|mse, got 'max'"),
    ("quant(granularity=row)", "option 'granularity' of pass 'quant' expects one of tensor|channel, got 'row'"),
    ('quant(bits="8")', "option 'bits' of pass 'quant' expects int, got '8'"),
    ("needs", "pass 'needs' needs option 'k' (int)"),
    ("needs(k=0)", "pass 'needs': 'k' must be >= 1: 0"),
    ("prune(sparsity=0.1,sparsity=0.2)", "option 'sparsity' of pass 'prune' is given twice"),
    ("plain(x=1)", "unknown option 'x' for pass 'plain'; valid options: (this pass has no options)"),
])
def test_bad_values_are_rejected(text, message):
    with pytest.raises(PipelineError) as err:
        parse(text)
    assert str(err.value) == message


@pytest.mark.parametrize("text, where", [
    ("prune(", "at the end"),
    ("prune(sparsity)", "expected '=' after option 'sparsity' of pass 'prune' at column 15"),
    ("prune(sparsity=)", "expected a value for option 'sparsity' of pass 'prune' at column 16"),
    ("prune,,plain", "expected a pass name at column 7"),
    ("prune plain", "expected ',' between passes at column 7"),
    ("prune(sparsity=0.5 scope=fc)", "expected ',' or ')'"),
    ("prune,", "expected a pass name at the end"),
    ("9lives", "expected a pass name at column 1"),
    ('prune(scope="open)', "unexpected '\"' at column 13"),
])
def test_syntax_errors_say_where(text, where):
    with pytest.raises(PipelineError, match="bad pipeline") as err:
        parse_specs(text)
    assert where in str(err.value)


def test_errors_come_before_anything_runs():
    ran = []

    @attrs.define
    class Recorder(Pass):
        name = "recorder"

        def run(self, graph, ctx):
            ran.append(1)
            return PassResult(False)

    from circ.passmanager import PassManager

    with pytest.raises(PipelineError):
        PassManager.from_pipeline("recorder,prune(sparsity=x)", registry={**REGISTRY, "recorder": Recorder})
    assert ran == []


def test_options_describe_themselves():
    options = {o.name: o for o in pass_options(Quant)}
    assert options["nm"].describe_type() == "int:int or none"
    assert options["granularity"].describe_type() == "one of tensor|channel"
    assert options["bits"].describe_default() == "8"
    assert pass_options(Prune)[0].help == "fraction of zeros"
    assert pass_options(Needs)[0].describe_default() == "(required)"
    assert describe_type(Optional[tuple[int, int]]) == "int:int or none"


def test_printing_skips_defaults_and_quotes_when_needed():
    assert pipeline_text([Prune(), Quant(bits=4, nm=(2, 4), pow2=True)]) == "prune,quant(bits=4,pow2=true,nm=2:4)"
    assert Prune(scope="a,b").to_text() == 'prune(scope="a,b")'
    assert Prune(scope="8").to_text() == 'prune(scope="8")'
    assert Prune(scope="").to_text() == 'prune(scope="")'
    assert Prune(quality=None).to_text() == "prune"


# --------------------------------------------------------------------- round trip (hypothesis)

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
floats = st.floats(allow_nan=False, width=64)
prunes = st.builds(Prune, sparsity=floats, quality=st.none() | floats, scope=words)
quants = st.builds(
    Quant, bits=st.integers(-2**40, 2**40), pow2=st.booleans(),
    nm=st.none() | st.tuples(st.integers(0, 64), st.integers(0, 64)),
    mode=st.sampled_from(["minmax", "mse"]), granularity=st.sampled_from(["tensor", "channel"]),
    shape=st.lists(st.integers(-5, 99), min_size=1, max_size=4).map(tuple))
pipelines = st.lists(st.one_of(prunes, quants, st.just(Plain()), st.builds(Needs, k=st.integers(1, 9))),
                     max_size=5)


@settings(max_examples=150, deadline=None)
@given(pipelines)
def test_print_then_parse_gives_the_same_pipeline(passes):
    text = pipeline_text(passes)
    parsed = parse(text)
    assert parsed == passes
    assert pipeline_text(parsed) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('prunequant(),=:.0123456789e-" \\plainxyz')), max_size=40))
def test_any_text_parses_or_raises_pipeline_error(text):
    try:
        passes = parse(text)
    except PipelineError as err:
        assert "\n" not in str(err)
    else:
        assert parse(pipeline_text(passes)) == passes
