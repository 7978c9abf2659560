"""The pass manager: analysis caching and invalidation, instruments, declines, the report."""

import json

import attrs
import numpy as np
import pytest

import circ
from circ.errors import ModelError, PipelineError, VerificationError
from circ.graph import Graph
from circ.passbase import STRUCTURE, WEIGHTS, Pass, PassResult, analysis
from circ.passmanager import PassManager, compare_outputs, sample_inputs
from circ.pipeline import parse_pipeline


def small_graph() -> Graph:
    """y = Relu(Identity(x * w + b)) with x: f32[N,4]."""
    rng = np.random.default_rng(1)
    graph = Graph()
    x = graph.add_input("x", np.float32, ("N", 4))
    w = graph.add_const("w", rng.standard_normal(4).astype(np.float32))
    b = graph.add_const("b", rng.standard_normal(4).astype(np.float32))
    mul = graph.add_node("Mul", [x, w], name="mul")
    add = graph.add_node("Add", [mul.output, b], name="add")
    ident = graph.add_node("Identity", [add.output], name="ident")
    relu = graph.add_node("Relu", [ident.output], name="relu")
    graph.outputs.append(relu.output)
    return graph


@attrs.define
class ScaleWeights(Pass):
    """Multiplies constant w by ``factor``; claims to be exact (a deliberately wrong claim)."""

    name = "scale_weights"
    exact = True
    factor: float = 2.0

    def run(self, graph, ctx):
        w = graph.consts["w"]
        graph.set_const(w, w.numpy() * np.float32(self.factor))
        return PassResult(True, {STRUCTURE})


@attrs.define
class ApproxScale(ScaleWeights):
    name = "approx_scale"
    exact = False


@attrs.define
class DropIdentity(Pass):
    """An honest exact pass: bypass Identity nodes."""

    name = "drop_identity"

    def run(self, graph, ctx):
        changed = False
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            graph.replace_all_uses_with(node.output, node.inputs[0])
            graph.erase_node(node)
            changed = True
        return PassResult(changed, {WEIGHTS})


@attrs.define
class BreakLinks(Pass):
    """Edits an input list by hand, leaving the use list stale: a bug verify-each must catch."""

    name = "break_links"

    def run(self, graph, ctx):
        node = graph.node("add")
        node.inputs[1] = graph.consts["w"]
        return PassResult(True)


@attrs.define
class Decliner(Pass):
    name = "decliner"

    def run(self, graph, ctx):
        for node in graph.nodes:
            if node.op == "Relu":
                ctx.decline(node, "relu is not my job")
        ctx.decline(None, "nothing else to do")
        return PassResult(False)


@attrs.define
class Raises(Pass):
    name = "raises"
    user_error: bool = True

    def run(self, graph, ctx):
        if self.user_error:
            raise PipelineError("scope 'fc9' matches no node")
        raise RuntimeError("a bug")


def test_runs_passes_in_place_and_reports():
    graph = small_graph()
    result = PassManager([DropIdentity(), Decliner()]).run(graph)
    assert result.graph is graph
    assert [n.op for n in graph.nodes] == ["Mul", "Add", "Relu"]
    report = result.report
    json.dumps(report, allow_nan=False)  # JSON-serialisable as it stands
    assert report["pipeline"] == "drop_identity,decliner"
    assert [p["modified"] for p in report["passes"]] == [True, False]
    assert report["passes"][0]["preserved"] == ["weights"]
    assert report["passes"][1]["preserved"] == ["structure", "weights"]  # unmodified keeps all
    assert report["stats"]["before"]["nodes"] == 4 and report["stats"]["after"]["nodes"] == 3
    assert report["passes"][0]["stats"]["params"] == 8


def test_declines_reach_result_and_report():
    result = PassManager([Decliner()]).run(small_graph())
    assert [str(d) for d in result.declines] == [
        "decliner: Relu node 'relu': relu is not my job", "decliner: graph: nothing else to do"]
    assert result.report["declines"][0] == {"pass": "decliner", "node": "Relu node 'relu'",
                                            "reason": "relu is not my job"}
    assert len(result.report["passes"][0]["declines"]) == 2


def test_report_pipeline_text_reproduces_the_run():
    registry = {cls.name: cls for cls in (ScaleWeights, DropIdentity)}
    manager = PassManager.from_pipeline("scale_weights(factor=0.5),drop_identity", registry=registry)
    first = manager.run(small_graph())
    again = PassManager.from_pipeline(first.report["pipeline"], registry=registry).run(small_graph())
    assert parse_pipeline(first.report["pipeline"], registry) == manager.passes
    x = sample_inputs(first.graph, seed=3)
    np.testing.assert_array_equal(circ.run(first.graph, x)["relu_out"], circ.run(again.graph, x)["relu_out"])


# ------------------------------------------------------------------------------ analyses

calls = {"structure": 0, "weights": 0}


@analysis(STRUCTURE)
def count_nodes(graph):
    calls["structure"] += 1
    return len(graph.nodes)


@analysis(WEIGHTS)
def weight_sum(graph):
    calls["weights"] += 1
    return float(sum(v.numpy().sum() for v in graph.consts.values()))


@attrs.define
class Probe(Pass):
    name = "probe"
    seen: list = attrs.field(factory=list, init=False)

    def run(self, graph, ctx):
        self.seen.append((ctx.analysis(count_nodes, graph), ctx.analysis(weight_sum, graph)))
        return PassResult(False)


@attrs.define
class Touch(Pass):
    """Claims a change that preserved ``keep``."""

    name = "touch"
    keep: str = "none"

    def run(self, graph, ctx):
        return PassResult(True, {"none": set(), "structure": {STRUCTURE}, "all": {STRUCTURE, WEIGHTS}}[self.keep])


def test_analyses_are_cached_until_a_pass_drops_them():
    calls.update(structure=0, weights=0)
    probe = Probe()
    pipeline = [probe, Touch("structure"), probe, Touch("all"), probe, Touch("none"), probe]
    PassManager(pipeline).run(small_graph())
    assert calls == {"structure": 2, "weights": 3}
    assert len(probe.seen) == 4 and len(set(probe.seen)) == 1


def test_real_edits_are_seen_after_invalidation():
    graph = small_graph()
    probe = Probe()
    PassManager([probe, DropIdentity(), probe, ScaleWeights(), probe], verify=False).run(graph)
    assert [s[0] for s in probe.seen] == [4, 3, 3]
    assert probe.seen[2][1] != probe.seen[1][1]


def test_context_helpers_cache_builtin_analyses():
    from circ.passbase import PassContext

    graph = small_graph()
    ctx = PassContext()
    stats = ctx.stats(graph)
    assert ctx.stats(graph) is stats and stats.params == 8
    assert ctx.shapes(graph)["relu_out"][1] == ("N", 4)
    assert ctx.groups(graph) == []  # no weighted (Conv/Gemm/MatMul) nodes
    ctx.invalidate(frozenset({STRUCTURE}))
    assert ctx.stats(graph) is not stats
    assert set(ctx.cached()) >= {circ.analysis.shapes.value_types}


# ------------------------------------------------------------------------------ instruments


def test_verify_each_names_the_pass_and_the_node():
    with pytest.raises(VerificationError) as err:
        PassManager([DropIdentity(), BreakLinks()]).run(small_graph())
    message = str(err.value)
    assert message.startswith("after pass 'break_links': ")
    assert "Add node 'add'" in message


def test_no_verify_lets_a_broken_graph_through():
    result = PassManager([BreakLinks()], verify=False).run(small_graph())
    assert "verify-each" not in result.report["instruments"]


def test_verify_each_checks_the_input_first():
    graph = small_graph()
    graph.node("add").inputs[1] = graph.consts["w"]
    with pytest.raises(VerificationError, match="input graph is invalid"):
        PassManager([DropIdentity()]).run(graph)


def test_verify_numerics_flags_an_exact_pass_that_changes_outputs():
    result = PassManager([DropIdentity(), ScaleWeights(), ApproxScale()], verify_numerics=True).run(small_graph())
    drop, scale, approx = result.report["passes"]
    assert drop["numerics"]["max_abs"] == 0.0 and not drop["numerics"]["flagged"]
    assert scale["numerics"]["flagged"] and scale["numerics"]["max_abs"] > 0.1
    assert not approx["numerics"]["flagged"] and approx["numerics"]["max_abs"] > 0.1
    assert approx["numerics"]["total_max_abs"] >= approx["numerics"]["max_abs"]
    assert result.report["numerics"]["flagged"] == ["scale_weights"]
    assert len(result.warnings) == 1 and "scale_weights" in result.warnings[0]


def test_verify_numerics_needs_kernels():
    graph = small_graph()
    graph.add_node("MyOp", [graph.outputs[0]], name="custom", domain="com.example")
    with pytest.raises(ModelError, match="custom"):
        PassManager([DropIdentity()], verify_numerics=True).run(graph)


def test_print_ir_after_named_pass_only():
    lines = []
    PassManager([DropIdentity(), Decliner()], print_ir_after="decliner", emit=lines.append).run(small_graph())
    assert len(lines) == 1
    assert lines[0].startswith("// ----- IR after pass 1: decliner")
    assert "Identity" not in lines[0] and "= Relu(%add_out)" in lines[0]


def test_print_ir_after_all_goes_to_the_log_by_default():
    result = PassManager([DropIdentity(), Decliner()], print_ir_after="all").run(small_graph())
    assert len(result.log) == 2 and "= Identity(" not in result.log[0]
    assert all(text.startswith("// ----- IR after pass") for text in result.log)


def test_print_ir_after_unknown_pass_is_rejected_before_running():
    with pytest.raises(PipelineError, match="'dce' is not in the pipeline; passes in it: drop_identity"):
        PassManager([DropIdentity()], print_ir_after="dce")


def test_time_passes_and_statistics_tables():
    lines = []
    result = PassManager([DropIdentity(), Decliner()], time_passes=True, pass_statistics=True,
                         emit=lines.append).run(small_graph())
    assert all(p["seconds"] >= 0 for p in result.report["passes"])
    timing = next(text for text in lines if text.startswith("time-passes"))
    assert timing.splitlines()[-1].endswith("total")
    table = next(text for text in lines if text.startswith("pass statistics")).splitlines()
    assert table[1].split() == ["after", "pass", "params", "non-zeros", "bytes", "MACs", "nodes"]
    assert table[2].split() == ["(input)", "8", "8", "32", "0", "4"]
    assert table[3].split() == ["drop_identity", "8", "8", "32", "0", "3"]
    assert len({len(row) for row in table[1:]}) == 1  # columns line up


def test_errors_in_a_pass_name_the_pass():
    with pytest.raises(PipelineError, match=r"^pass 'raises': scope 'fc9' matches no node$"):
        PassManager([Raises()]).run(small_graph())
    with pytest.raises(RuntimeError) as err:
        PassManager([Raises(user_error=False)]).run(small_graph())
    assert "while running pass 'raises(user_error=false)'" in err.value.__notes__


def test_optimize_leaves_the_input_alone():
    graph = small_graph()
    out = circ.optimize(graph, [DropIdentity()])
    assert len(graph.nodes) == 4 and len(out.nodes) == 3
    assert "dce" in circ.passes()


def test_sample_inputs_are_seeded_and_fill_symbolic_dims():
    graph = small_graph()
    graph.add_input("ids", np.int64, (3, "S"))
    first, again = sample_inputs(graph, seed=5), sample_inputs(graph, seed=5)
    assert first["x"].shape == (2, 4) and first["x"].dtype == np.float32
    assert first["ids"].shape == (3, 2) and first["ids"].min() >= 0
    np.testing.assert_array_equal(first["x"], again["x"])
    assert not np.array_equal(first["x"], sample_inputs(graph, seed=6)["x"])


def test_compare_outputs():
    a = [np.array([1.0, -4.0, np.nan])]
    assert compare_outputs(a, [np.array([1.0, -4.0, np.nan])]) == (0.0, 0.0)
    assert compare_outputs(a, [np.array([1.0, -3.0, np.nan])]) == (1.0, 0.25)
    assert compare_outputs(a, [np.zeros(2)])[0] == float("inf")
