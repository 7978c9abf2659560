import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from circ.graph import Graph
from circ.interpreter import run
from circ.passbase import PassContext
from circ.rewrite import (Declined, Rewriter, Rule, apply_rules, const_array, produced_by,
                          sole_user)
from circ.tensors import Dense
from circ.verifier import verify

X = np.array([[-2.0, 0.5, 3.0]], np.float32)


def graph_with_input():
    graph = Graph(opsets={"": 17})
    return graph, graph.add_input("x", np.float32, (1, 3))


def test_replace_value_hands_a_graph_output_name_to_a_node_value():
    graph, x = graph_with_input()
    relu = graph.add_node("Relu", [x])
    neg = graph.add_node("Neg", [relu.output], outputs=["y"])
    graph.outputs.append(neg.output)
    rewriter = Rewriter(graph)
    rewriter.replace_node(neg, [relu.output])
    verify(graph)
    assert [n.op for n in graph.nodes] == ["Relu"]
    assert graph.outputs == [relu.output] and relu.output.name == "y"
    np.testing.assert_array_equal(run(graph, {"x": X})["y"], np.maximum(X, 0))


@pytest.mark.parametrize("source", ["input", "constant"])
def test_replace_value_keeps_the_name_with_an_identity_when_it_must(source):
    graph, x = graph_with_input()
    value = x if source == "input" else graph.add_const("c", X)
    neg = graph.add_node("Neg", [x], outputs=["y"])
    graph.outputs.append(neg.output)
    Rewriter(graph).replace_node(neg, [value])
    verify(graph)
    assert [n.op for n in graph.nodes] == ["Identity"]
    assert graph.outputs[0].name == "y" and graph.nodes[0].input(0) is value
    np.testing.assert_array_equal(run(graph, {"x": X})["y"], X)


def test_erase_dead_follows_inputs_upward_and_stops_at_live_values():
    graph, x = graph_with_input()
    c = graph.add_const("c", np.ones(3, np.float32))
    shared = graph.add_node("Relu", [x])
    chain = graph.add_node("Add", [shared.output, c])
    chain = graph.add_node("Neg", [chain.output])
    keep = graph.add_node("Exp", [shared.output])
    graph.outputs.append(keep.output)
    erased = Rewriter(graph).erase_dead([chain.output])
    verify(graph)
    assert erased == 3  # Neg, Add and the constant; Relu is still read by Exp
    assert [n.op for n in graph.nodes] == ["Relu", "Exp"] and not graph.consts
    assert graph.inputs == [x]


def test_set_const_input_updates_in_place_or_copies_when_shared():
    graph, x = graph_with_input()
    weight = graph.add_const("w", Dense(np.array([1.0, 0.0, 2.0], np.float32),
                                        mask=np.array([True, False, True])))
    first = graph.add_node("Mul", [x, weight])
    rewriter = Rewriter(graph)
    same = rewriter.set_const_input(first, 1, np.array([3.0, 0.0, 4.0], np.float32))
    assert same is weight and weight.name == "w"
    assert weight.const.mask is not None  # the pruned zero survived, so the mask does too
    second = graph.add_node("Mul", [first.output, weight])
    graph.outputs.append(second.output)
    copy = rewriter.set_const_input(second, 1, np.array([5.0, 6.0, 7.0], np.float32))
    verify(graph)
    assert copy is not weight and first.input(1) is weight and second.input(1) is copy
    np.testing.assert_array_equal(weight.numpy(), [3.0, 0.0, 4.0])
    np.testing.assert_array_equal(copy.numpy(), [5.0, 6.0, 7.0])


def test_predicates():
    graph, x = graph_with_input()
    relu = graph.add_node("Relu", [x])
    neg = graph.add_node("Neg", [relu.output])
    c = graph.add_const("c", X)
    graph.outputs.append(neg.output)
    assert sole_user(relu.output, graph) is neg
    assert sole_user(neg.output, graph) is None  # graph output
    assert produced_by(neg.input(0), "Relu", "Sigmoid") is relu
    assert produced_by(neg.input(0), "Sigmoid") is None and produced_by(x, "Relu") is None
    assert const_array(x) is None and np.array_equal(const_array(c), X)


# A toy rule set: Neg(Neg(a)) -> a, and a declined look-alike.
def match_double_neg(node):
    inner = produced_by(node.input(0), "Neg")
    if inner is None:
        return None
    if sole_user(inner.output, node.graph) is not node:
        return Declined("the inner Neg is shared")
    return inner.input(0)


def rewrite_double_neg(rewriter, node, source):
    rewriter.replace_node(node, [source])


DOUBLE_NEG = Rule("double_neg", ("Neg",), match_double_neg, rewrite_double_neg)


def test_rules_run_to_a_fixed_point_and_declines_are_reported_once():
    graph, x = graph_with_input()
    value = x
    for _ in range(6):
        value = graph.add_node("Neg", [value]).output
    shared_inner = graph.add_node("Neg", [x])
    outer = graph.add_node("Neg", [shared_inner.output])
    graph.outputs.extend([value, outer.output, shared_inner.output])
    before = run(graph, {"x": X})
    ctx = PassContext(current_pass="toy")
    count = apply_rules(graph, [DOUBLE_NEG], ctx)
    verify(graph)
    assert count == 3
    assert sorted(n.op for n in graph.nodes) == ["Identity", "Neg", "Neg"]  # x itself is an output
    assert len(ctx.declines) == 1 and ctx.declines[0].reason == "the inner Neg is shared"
    after = run(graph, {"x": X})
    assert [v.name for v in graph.outputs] == list(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["Neg", "Relu", "Abs"]), min_size=1, max_size=12))
def test_random_chains_keep_their_output_under_the_rule(chain):
    graph, x = graph_with_input()
    value = x
    for op in chain:
        value = graph.add_node(op, [value]).output
    graph.outputs.append(value)
    name = value.name
    before = run(graph, {"x": X})[name]
    apply_rules(graph, [DOUBLE_NEG], PassContext())
    verify(graph)
    assert graph.outputs[0].name == name
    np.testing.assert_allclose(run(graph, {"x": X})[name], before, rtol=1e-6)
    ops = [n.op for n in graph.nodes]
    assert not any(a == b == "Neg" for a, b in zip(ops, ops[1:]))
