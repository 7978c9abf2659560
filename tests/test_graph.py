"""The IR's editing methods keep use-def links consistent."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from circ.errors import ModelError
from circ.graph import Graph, iter_nodes_safe
from circ.interpreter import run
from circ.verifier import verify


def _chain():
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, ("N", 4))
    w = g.add_const("w", np.full((4,), 2.0, np.float32))
    mul = g.add_node("Mul", [x, w], name="mul")
    relu = g.add_node("Relu", [mul.output], name="relu")
    g.outputs.append(relu.output)
    return g, x, w, mul, relu


def test_add_node_links_uses_and_infers_types():
    g, x, w, mul, relu = _chain()
    assert x.uses == [(mul, 0)] and w.uses == [(mul, 1)]
    assert mul.output.producer is mul and mul.output.uses == [(relu, 0)]
    assert relu.output.shape == ("N", 4) and relu.output.dtype == np.float32
    verify(g)


def test_replace_all_uses_with_moves_users_and_graph_outputs():
    g, x, w, mul, relu = _chain()
    g.replace_all_uses_with(relu.output, mul.output)
    assert g.outputs == [mul.output] and relu.output.uses == []
    g.erase_node(relu)
    verify(g)
    out = run(g, {"x": np.array([[-1, 0, 1, 2]], np.float32)})
    np.testing.assert_array_equal(out[mul.output.name], [[-2, 0, 2, 4]])


def test_erase_refuses_a_node_still_in_use():
    g, x, w, mul, relu = _chain()
    with pytest.raises(ValueError, match="still used"):
        g.erase_node(mul)
    with pytest.raises(ValueError, match="still used"):
        g.erase_node(relu)  # feeds a graph output
    with pytest.raises(ValueError, match="still used"):
        g.erase_const(w)


def test_set_input_rewires_one_use():
    g, x, w, mul, relu = _chain()
    neg = g.add_node("Neg", [x], before=mul)
    g.set_input(mul, 0, neg.output)
    assert x.uses == [(neg, 0)] and neg.output.uses == [(mul, 0)]
    verify(g)
    g.set_input(mul, 1, None)  # omitting an input drops its use
    assert w.uses == [] and mul.inputs[1] is None


def test_insert_before_and_after_keeps_topological_order():
    g, x, w, mul, relu = _chain()
    neg = g.add_node("Neg", [x], after=mul)
    g.set_input(relu, 0, neg.output)
    assert [n.op for n in g.nodes] == ["Mul", "Neg", "Relu"]
    verify(g)
    early = g.add_node("Abs", [x], before=mul)
    assert g.nodes[0] is early


def test_topological_sort_repairs_order_and_names_a_cycle():
    g, x, w, mul, relu = _chain()
    g.nodes.reverse()
    with pytest.raises(ModelError, match="produced later"):
        verify(g)
    g.topological_sort()
    verify(g)
    g.set_input(mul, 0, relu.output)  # relu -> mul -> relu
    with pytest.raises(ModelError, match="cycle"):
        g.topological_sort()


def test_copy_is_deep_and_independent():
    g, x, w, mul, relu = _chain()
    c = g.copy()
    verify(c)
    c.set_const(c.consts["w"], np.zeros(4, np.float32))
    feed = {"x": np.ones((1, 4), np.float32)}
    assert run(g, feed)[relu.output.name].sum() == 8
    assert run(c, feed)[relu.output.name].sum() == 0
    assert all(n.graph is c for n in c.nodes)


def test_names_are_made_unique():
    g = Graph()
    a = g.add_input("x", np.float32, (1,))
    b = g.add_const("x", np.zeros(1, np.float32))
    n1 = g.add_node("Relu", [a], name="r")
    n2 = g.add_node("Relu", [b], name="r")
    names = [a.name, b.name, n1.name, n2.name, n1.output.name, n2.output.name]
    assert len(set(names)) == len(names)


def test_iterating_while_erasing_is_safe():
    g, x, w, mul, relu = _chain()
    dead = [g.add_node("Neg", [x]) for _ in range(3)]
    seen = []
    for node in iter_nodes_safe(g):
        seen.append(node.op)
        if node is dead[0]:
            g.erase_node(dead[1])
    assert seen.count("Neg") == 2


def test_nx_view_is_derived_and_dropped_on_edit():
    g, x, w, mul, relu = _chain()
    view = g.nx()
    assert list(view.edges) == [(mul, relu)] and g.nx() is view
    g.add_node("Neg", [relu.output])
    assert g.nx() is not view and g.nx().number_of_nodes() == 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=12), st.data())
def test_random_edits_keep_links_consistent(ops, data):
    """Random chains of add/replace/erase always leave a graph the verifier accepts."""
    g = Graph(opsets={"": 17})
    x = g.add_input("x", np.float32, (2,))
    values = [x]
    for op in ops:
        if op < 3 or len(g.nodes) < 2:
            a = data.draw(st.sampled_from(values))
            b = data.draw(st.sampled_from(values))
            node = g.add_node(["Add", "Mul", "Sub"][op % 3], [a, b])
            values.append(node.output)
        elif op == 3:
            old = data.draw(st.sampled_from(values[1:]))
            new = data.draw(st.sampled_from([v for v in values if v is not old]))
            if new.producer is None or g.nodes.index(new.producer) < min(
                    [g.nodes.index(u) for u in old.users] or [len(g.nodes)]):
                g.replace_all_uses_with(old, new)
        else:
            for node in reversed(list(g.nodes)):
                if not node.output.uses and not g.is_output(node.output):
                    g.erase_node(node)
                    values.remove(node.output)
                    break
    verify(g)
