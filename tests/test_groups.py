"""Dependency groups and the channel-flow analysis behind them, on hand-built graphs and zoo nets.

Each coupling rule (residual Add, Concat offsets, Split/Slice pieces, Flatten column blocks,
depthwise and grouped convs) is checked two ways: the analysis says what it should, and
pruning through it is exact on zeroed channels and gives a valid graph.
"""

from __future__ import annotations

import numpy as np
import pytest
import zoo
from test_channel_prune import assert_close, feeds_for, ort_outputs, zero_channels

import circ
from circ.analysis.channels import channel_flow
from circ.analysis.groups import channel_groups, dependency_groups
from circ.graph import Graph
from circ.passbase import PassContext
from circ.passmanager import PassManager
from passes.channel_prune import ChannelPrune

RNG = np.random.default_rng(0)


def conv(graph, x, cin, cout, *, group=1, kernel=3, name):
    weight = graph.add_const(f"{name}_w", RNG.standard_normal((cout, cin // group, kernel, kernel)).astype(np.float32))
    bias = graph.add_const(f"{name}_b", RNG.standard_normal(cout).astype(np.float32))
    return graph.add_node("Conv", [x, weight, bias], {"group": group, "pads": [kernel // 2] * 4}, name=name).output


def relu(graph, x):
    return graph.add_node("Relu", [x]).output


def new_graph(channels=3, size=6):
    graph = Graph(opsets={"": 17})
    return graph, graph.add_input("x", np.float32, ("N", channels, size, size))


def prune_exactly(graph, tmp_path, text="channel_prune(ratio=0.5)"):
    """Zero what the pass would remove, prune, and compare (circ and onnxruntime)."""
    circ.verify(graph)
    _, removed = PassManager.from_pipeline(text).passes[0].choose(graph, PassContext())
    assert removed.any()
    zero_channels(graph, removed)
    result = PassManager.from_pipeline(text).run(graph.copy())
    pruned = result.graph
    feeds = feeds_for(graph)
    expected = circ.run(graph, feeds)
    assert_close(circ.run(pruned, feeds), expected, "pruned vs original (circ)")
    assert_close(ort_outputs(pruned, feeds, tmp_path / "pruned.onnx"), expected, "pruned in onnxruntime")
    return pruned, result.report["passes"][-1]["details"]


def test_concat_offsets_and_split_slice_pieces(tmp_path):
    graph, x = new_graph()
    a = relu(graph, conv(graph, x, 3, 4, name="a"))
    b = relu(graph, conv(graph, x, 3, 6, name="b"))
    cat = graph.add_node("Concat", [a, b], {"axis": 1}).output
    split = graph.add_node("Split", [cat, graph.add_const("sizes", np.array([3, 7]))], {"axis": 1}, outputs=2)
    piece = graph.add_node("Slice", [cat, graph.add_const("starts", np.array([2])), graph.add_const("ends", np.array([8])),
                                     graph.add_const("axes", np.array([1]))]).output
    outs = [conv(graph, split.outputs[0], 3, 2, name="c"), conv(graph, split.outputs[1], 7, 2, name="d"),
            conv(graph, piece, 6, 2, name="e")]
    total = graph.add_node("Sum", outs).output
    graph.outputs.append(total)

    flow = channel_flow(graph)
    atoms_a, atoms_b = flow.atoms[id(a)], flow.atoms[id(b)]
    np.testing.assert_array_equal(flow.atoms[id(cat)], np.concatenate([atoms_a, atoms_b]))
    np.testing.assert_array_equal(flow.atoms[id(piece)], np.concatenate([atoms_a, atoms_b])[2:8])
    groups = [{n.name for n in g} for g in dependency_groups(graph)]
    assert {"a"} in groups and {"b"} in groups  # concat does not couple its inputs
    assert {"c", "d", "e"} in groups  # the Sum does

    pruned, details = prune_exactly(graph, tmp_path, "channel_prune(ratio=0.5,layers=c:0;d:0;e:0)")
    assert details["layers"] == {"a": [4, 2], "b": [6, 3]}
    sizes = pruned.node(split.name).input(1).numpy().tolist()
    assert sum(sizes) == 5 and all(s >= 1 for s in sizes)


def test_flatten_prunes_blocks_of_gemm_columns(tmp_path):
    graph, x = new_graph(size=4)
    y = relu(graph, conv(graph, x, 3, 8, name="a"))
    flat = graph.add_node("Flatten", [y], {"axis": 1}).output
    weight = graph.add_const("fc_w", RNG.standard_normal((5, 8 * 16)).astype(np.float32))
    out = graph.add_node("Gemm", [flat, weight, graph.add_const("fc_b", np.zeros(5, np.float32))],
                         {"transB": 1}, name="fc").output
    graph.outputs.append(out)
    flow = channel_flow(graph)
    np.testing.assert_array_equal(flow.atoms[id(flat)], np.repeat(flow.atoms[id(y)], 16))
    pruned, _details = prune_exactly(graph, tmp_path)
    assert pruned.node("fc").input(1).shape == (5, 4 * 16)


def test_depthwise_with_multiplier_is_tied_to_its_input(tmp_path):
    graph, x = new_graph()
    y = relu(graph, conv(graph, x, 3, 4, name="a"))
    d = relu(graph, conv(graph, y, 4, 8, group=4, name="dw"))
    graph.outputs.append(conv(graph, d, 8, 2, kernel=1, name="pw"))
    groups = [{n.name for n in g} for g in dependency_groups(graph)]
    assert {"a", "dw"} in groups
    pruned, _details = prune_exactly(graph, tmp_path)
    dw = pruned.node("dw")
    assert dw.attrs["group"] == 2 and dw.input(1).shape[0] == 4


def test_grouped_conv_keeps_equal_groups(tmp_path):
    graph, x = new_graph()
    y = relu(graph, conv(graph, x, 3, 8, name="a"))
    g = relu(graph, conv(graph, y, 8, 8, group=2, name="grouped"))
    graph.outputs.append(conv(graph, g, 8, 2, kernel=1, name="out"))
    flow = channel_flow(graph)
    roots = flow.root[flow.atoms[id(y)]]
    np.testing.assert_array_equal(roots[:4], roots[4:])  # local position j is one class
    pruned, details = prune_exactly(graph, tmp_path)
    grouped = pruned.node("grouped")
    assert grouped.attrs["group"] == 2
    assert grouped.input(1).shape == (4, 2, 3, 3)
    assert details["layers"] == {"a": [8, 4], "grouped": [8, 4]}


def test_rounding_counts_grouped_conv_channels_per_group(tmp_path):
    graph, x = new_graph()
    y = relu(graph, conv(graph, x, 3, 32, name="a"))
    g = relu(graph, conv(graph, y, 32, 32, group=2, name="grouped"))
    d = relu(graph, conv(graph, g, 32, 32, group=32, name="dw"))
    graph.outputs.append(conv(graph, d, 32, 2, kernel=1, name="out"))
    # Both sides of the grouped conv are 16 classes of 2 channels (one per group). 30% of 16
    # is 5, rounded to 8: 8 classes stay, 8 channels in each group.
    pruned, details = prune_exactly(graph, tmp_path, "channel_prune(ratio=0.3,round_to=8)")
    assert details["layers"] == {"a": [32, 16], "grouped": [32, 16]}
    assert pruned.node("grouped").input(1).shape == (16, 8, 3, 3)
    assert pruned.node("dw").attrs["group"] == 16 and pruned.node("dw").input(1).shape[0] == 16
    # without rounding the same ratio keeps 11 per group
    _, plain = prune_exactly(graph, tmp_path, "channel_prune(ratio=0.3)")
    assert plain["layers"] == {"a": [32, 22], "grouped": [32, 22]}


def test_residual_add_unites_branches_and_graph_output_freezes(tmp_path):
    graph, x = new_graph()
    stem = relu(graph, conv(graph, x, 3, 6, name="stem"))
    body = conv(graph, relu(graph, conv(graph, stem, 6, 4, name="inner")), 4, 6, name="body")
    joined = graph.add_node("Add", [stem, body]).output
    graph.outputs.append(conv(graph, relu(graph, joined), 6, 2, name="head"))
    groups = {frozenset(n.name for n in g) for g in dependency_groups(graph)}
    assert groups == {frozenset({"stem", "body"}), frozenset({"inner"}), frozenset({"head"})}
    head = next(g for g in channel_groups(graph) if g.name == "head")
    assert not head.classes and "graph output" in head.reason
    _pruned, details = prune_exactly(graph, tmp_path)
    assert details["layers"]["stem"] == details["layers"]["body"] == [6, 3]


def test_channel_shuffle_and_lrn_are_frozen_with_reasons():
    graph, x = new_graph()
    y = conv(graph, x, 3, 6, name="a")
    shuffled = graph.add_node("Reshape", [y, graph.add_const("s", np.array([0, 2, 3, 6, 6]))]).output
    back = graph.add_node("Transpose", [shuffled], {"perm": [0, 2, 1, 3, 4]}).output
    flat = graph.add_node("Reshape", [back, graph.add_const("t", np.array([0, 6, 6, 6]))]).output
    z = conv(graph, flat, 6, 4, name="b")
    lrn = graph.add_node("LRN", [z], {"size": 3}).output
    graph.outputs.append(conv(graph, lrn, 4, 2, name="c"))
    groups = {g.name: g for g in channel_groups(graph)}
    assert not groups["a"].classes and "Reshape that mixes channels" in groups["a"].reason
    assert not groups["b"].classes and "LRN" in groups["b"].reason
    result = PassManager.from_pipeline("channel_prune").run(graph.copy())
    assert not result.report["passes"][-1]["modified"]
    assert len(result.declines) >= 3


@pytest.mark.parametrize("name", ["resnet8", "mobilenet_v2", "densenet_small", "shufflenet_small"])
def test_every_weighted_node_is_in_one_group(name, tmp_path_factory):
    graph = circ.load(zoo.Zoo(tmp_path_factory.mktemp("zoo_groups")).path(name))
    groups = dependency_groups(graph)
    members = [node for group in groups for node in group]
    weighted = [n for n in graph.nodes if n.op in ("Conv", "Gemm", "MatMul") and n.input(1).const is not None]
    assert sorted(map(id, members)) == sorted(map(id, weighted))
    if name == "resnet8":
        names = [{n.name for n in g} for g in groups]
        last = next(g for g in names if "/blocks/blocks.2/shortcut/shortcut.0/Conv" in g)
        assert "/blocks/blocks.2/body/body.1/body.1.0/Conv" in last
    if name == "mobilenet_v2":  # every depthwise conv sits with the expansion feeding it
        for group in groups:
            for node in group:
                if node.attrs.get("group", 1) > 1:
                    feeding = node.input(0).producer
                    while feeding.op != "Conv":
                        feeding = feeding.input(0).producer
                    assert feeding in group


def test_pass_context_caches_groups():
    graph, x = new_graph()
    graph.outputs.append(conv(graph, relu(graph, conv(graph, x, 3, 4, name="a")), 4, 2, name="b"))
    ctx = PassContext()
    assert ctx.groups(graph) is ctx.groups(graph)
    assert [{n.name for n in g} for g in ctx.groups(graph)] == [{"a"}, {"b"}]
    _, removed = ChannelPrune(ratio=0.5).choose(graph, ctx)
    assert removed.sum() == 2
