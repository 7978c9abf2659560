"""circ.viz and circ-viz: what the drawing says, SVG rendering, pipelines, collapsing, fallbacks."""

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import zoo

import circ
from circ import viz
from circ.analysis.stats import NodeStats, graph_stats
from circ.cli.viz import main
from circ.container import save_circ
from circ.graph import Graph, format_type
from circ.printer import format_count

SVG = "{http://www.w3.org/2000/svg}"
NODE_LINE = re.compile(r'^\t+(\w+) \[label=(?:"((?:[^"\\]|\\.)*)"|<)', re.MULTILINE)
EDGE_LINE = re.compile(r'^\t+(\w+) -> (\w+) \[label="([^"]*)"', re.MULTILINE)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return zoo.Zoo(tmp_path_factory.mktemp("viz_zoo"))


@pytest.fixture(scope="module")
def resnet8(models):
    return circ.load(models.path("resnet8"))


def labels(source: str) -> dict:
    """DOT node id -> label text (lines split); HTML-like labels give ''."""
    return {m.group(1): (m.group(2) or "").split("\\n") for m in NODE_LINE.finditer(source)}


def edges(source: str) -> list:
    return EDGE_LINE.findall(source)


def data_edges(graph: Graph) -> set:
    """(producer or input, consumer or output) pairs with the value name, as viz should draw them."""
    out = set()
    for node in graph.nodes:
        for value in node.inputs:
            if value is not None and value.const is None:
                out.add((value.producer.name if value.producer else value.name, node.name, value.name))
    for value in graph.outputs:
        out.add((value.producer.name, "output", value.name))
    return out


def _chain(ops=("Conv", "Relu", "Conv", "Relu")) -> Graph:
    """A hand-built chain without joins: Conv/Relu layers on a 1x2x4x4 input."""
    graph = Graph()
    x = graph.add_input("x", np.float32, (1, 2, 4, 4))
    rng = np.random.default_rng(0)
    for i, op in enumerate(ops):
        inputs = [x]
        if op == "Conv":
            inputs.append(graph.add_const(f"w{i}", rng.standard_normal((2, 2, 1, 1)).astype(np.float32)))
        x = graph.add_node(op, inputs, name=f"{op.lower()}{i}").output
    graph.outputs.append(x)
    return graph


# ----------------------------------------------------------------------------- DOT content


def test_boxes_carry_op_name_shape_params_and_macs(resnet8):
    source = viz.graph_to_dot(resnet8).source
    boxes = labels(source)
    stats = graph_stats(resnet8)
    for i, (node, row) in enumerate(zip(resnet8.nodes, stats.per_node)):
        lines = boxes[f"n{i}"]
        assert lines[0] == node.op
        assert lines[1] == viz.short_name(node.name)
        assert lines[2] == format_type(node.output.dtype, node.output.shape)
        if row.params:
            assert f"params {format_count(row.params)}" in lines[3]
        if row.macs:
            assert f"MACs {format_count(row.macs)}" in lines[3]
        assert not any("sparsity" in line for line in lines)  # nothing is compressed yet
    assert boxes["in0"] == ["input input", "f32[N,3,32,32]"]
    assert boxes["out0"][0] == "output output"
    assert "legend" in boxes and "uncompressed" in source and "no parameters" in source


def test_every_data_edge_is_drawn_once_with_its_type(resnet8):
    source = viz.graph_to_dot(resnet8).source
    names = {f"n{i}": n.name for i, n in enumerate(resnet8.nodes)}
    names.update(in0=resnet8.inputs[0].name, out0="output")
    drawn = [(names[a], names[b], label) for a, b, label in edges(source)]
    types = {v.name: format_type(v.dtype, v.shape) for v in resnet8.values()}
    expected = data_edges(resnet8)
    assert len(drawn) == len(expected)
    assert sorted(drawn) == sorted((a, b, types[v]) for a, b, v in expected)


def test_prune_and_cluster_show_sparsity_bits_codebook_and_colour(resnet8):
    pruned = circ.optimize(resnet8, "prune(sparsity=0.75)")
    clustered = circ.optimize(pruned, "cluster(bits=4)")
    for graph, bits, codebook in ((pruned, "32 bits", None), (clustered, "4 bits", "codebook 16")):
        source = viz.graph_to_dot(graph).source
        boxes = labels(source)
        stats = graph_stats(graph)
        weighted = [(i, row) for i, (n, row) in enumerate(zip(graph.nodes, stats.per_node))
                    if n.op in ("Conv", "Gemm")]
        assert len(weighted) == 10
        for i, row in weighted:
            line = boxes[f"n{i}"][-1]
            assert line.startswith(f"sparsity {100 * (1 - row.nonzeros / row.params):.1f}%")
            assert bits in line
            assert codebook is None or codebook in line
            # about a quarter of the weights left -> not the uncompressed colour
            fill = re.search(rf'^\tn{i} \[.*fillcolor="([^"]+)"', source, re.MULTILINE).group(1)
            assert fill in (viz.BUCKETS[0][1], viz.BUCKETS[1][1], viz.BUCKETS[2][1])
        batchnorm = next(i for i, n in enumerate(graph.nodes) if n.op == "BatchNormalization")
        assert not any("sparsity" in line for line in boxes[f"n{batchnorm}"])


def test_remaining_fraction_and_buckets():
    dense = NodeStats("a", "Conv", params=100, nonzeros=100, storage_bytes=400, weight_bits=3200)
    pruned = NodeStats("b", "Conv", params=100, nonzeros=10, storage_bytes=400, weight_bits=3200)
    shared = NodeStats("c", "Conv", params=100, nonzeros=100, storage_bytes=63 + 64, weight_bits=500)
    assert viz.remaining_fraction(dense) == 1.0
    assert viz.remaining_fraction(pruned) == pytest.approx(0.1)
    assert viz.remaining_fraction(shared) == pytest.approx(5 / 32)
    assert viz.remaining_fraction(NodeStats("d", "Relu")) is None
    assert viz.fill_colour(None) == viz.NO_PARAMS_COLOUR
    assert viz.fill_colour(1.0) == viz.BUCKETS[-1][1]
    assert viz.fill_colour(0.05) == viz.BUCKETS[0][1]
    assert viz.fill_colour(5 / 32) == viz.BUCKETS[1][1]


def test_model_text_cannot_break_the_dot_source(tmp_path):
    graph = _chain(("Relu",))
    graph.nodes[0].name = 'say "hi"\\n {x} <b>'
    source = viz.graph_to_dot(graph).source
    svg = ET.fromstring(viz.render(viz.graph_to_dot(graph), "svg"))
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert 'say "hi"\\n {x} <b>' in texts
    assert source.count("->") == 2


# ----------------------------------------------------------------------------- rendering (CLI)


def test_svg_of_a_torch_model_has_one_box_per_node(models, resnet8, tmp_path, capsys):
    out = tmp_path / "resnet8.svg"
    assert main([str(models.path("resnet8")), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    svg = ET.parse(out).getroot()
    groups = [g for g in svg.iter(f"{SVG}g") if g.get("class") in ("node", "edge")]
    titles = {g.find(f"{SVG}title").text for g in groups if g.get("class") == "node"}
    # every node, the input, the output and the legend
    assert titles == {f"n{i}" for i in range(len(resnet8.nodes))} | {"in0", "out0", "legend"}
    assert sum(g.get("class") == "edge" for g in groups) == len(data_edges(resnet8))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_png_and_pdf_follow_the_extension(models, tmp_path):
    for name, magic in (("g.png", b"\x89PNG"), ("g.pdf", b"%PDF")):
        assert main([str(models.path("lenet5")), "-o", str(tmp_path / name), "-q"]) == 0
        assert (tmp_path / name).read_bytes().startswith(magic)


def test_side_by_side_marks_what_the_pipeline_changed(models, resnet8, tmp_path):
    out = tmp_path / "pipe.dot"
    assert main([str(models.path("resnet8")), "-o", str(out), "-q", "--pipeline", "prune(sparsity=0.5)"]) == 0
    source = out.read_text()
    assert "subgraph cluster_before" in source and "subgraph cluster_after" in source
    assert "prune(sparsity=0.5)" in source  # the title names the pipeline
    boxes = labels(source)
    assert {k for k in boxes if k.startswith("b_n")} == {f"b_n{i}" for i in range(len(resnet8.nodes))}
    changed = sorted(k for k, lines in boxes.items() if lines[0].startswith("[changed]"))
    weighted = [i for i, n in enumerate(resnet8.nodes) if n.op in ("Conv", "Gemm")]
    assert changed == sorted([f"a_n{i}" for i in weighted] + [f"b_n{i}" for i in weighted])
    assert all("weights" in boxes[k][0] for k in changed)
    assert all(any("sparsity" in line for line in boxes[f"a_n{i}"]) for i in weighted)
    assert "removed by the pipeline" in source  # the legend explains the marks


def test_diff_marks_removed_and_changed_nodes(models, resnet8, tmp_path):
    out = tmp_path / "diff.dot"
    assert main([str(models.path("resnet8")), "-o", str(out), "-q", "--pipeline", "fold_bn,dce", "--diff"]) == 0
    source = out.read_text()
    assert "cluster_before" not in source
    boxes = labels(source)
    removed = {k for k, lines in boxes.items() if lines[0] == "[removed]"}
    batchnorms = {f"r_n{i}" for i, n in enumerate(resnet8.nodes) if n.op == "BatchNormalization"}
    assert removed == batchnorms
    after = circ.optimize(resnet8, "fold_bn,dce")
    assert {k for k in boxes if re.fullmatch(r"n\d+", k)} == {f"n{i}" for i in range(len(after.nodes))}
    convs = [i for i, n in enumerate(after.nodes) if n.op == "Conv"]
    assert all(boxes[f"n{i}"][0].startswith("[changed]") and "weights" in boxes[f"n{i}"][0] for i in convs)
    # the removed nodes keep their edges, dashed: each BN had one edge in and one out
    dashed = re.findall(r"^\t+(\w+) -> (\w+) \[.*style=dashed", source, re.MULTILINE)
    assert len(dashed) == 2 * len(batchnorms)
    assert all(a in batchnorms or b in batchnorms for a, b in dashed)


def test_diff_marks_added_removed_changed_by_hand():
    before = _chain()
    after = before.copy()
    extra = after.add_node("Sigmoid", [after.node("relu3").output], name="added")
    after.outputs.append(extra.output)
    after.replace_all_uses_with(after.node("relu1").output, after.node("conv0").output)
    after.erase_node(after.node("relu1"))
    weight = after.node("conv2").input(1)
    after.set_const(weight, weight.numpy() * 2)
    old, new = viz.diff_marks(before, after)
    by_name = {n.name: old[id(n)] for n in before.nodes if id(n) in old}
    assert {k: m.status for k, m in by_name.items()} == {"relu1": "removed", "conv2": "changed"}
    assert by_name["conv2"].reasons == ["inputs", "weights"]
    marks = {n.name: new[id(n)] for n in after.nodes if id(n) in new}
    assert {k: m.status for k, m in marks.items()} == {"added": "added", "conv2": "changed"}


# ----------------------------------------------------------------------------- collapsing


def _node_count(source: str) -> int:
    return len(NODE_LINE.findall(source))


def test_collapse_shrinks_densenet121_and_covers_every_node(models):
    graph = circ.load(models.path("light_densenet121"))
    blocks = viz.collapse_blocks(graph)
    members = [id(n) for block in blocks for nodes in block.instances for n in nodes]
    assert sorted(members) == sorted(id(n) for n in graph.nodes)  # a partition of the nodes
    runs = [b for b in blocks if b.count > 1]
    # DenseNet-121's four dense blocks (6, 12, 24, 16 layers); each block's first layer
    # follows a pooling layer, so it starts a block of its own
    assert [b.count for b in runs] == [5, 11, 23, 15]
    full = viz.graph_to_dot(graph).source
    collapsed_dot = viz.graph_to_dot(graph, collapse=True)
    collapsed = collapsed_dot.source
    assert _node_count(full) == len(graph.nodes) + 3
    # past INLINE_LABEL_LIMIT boxes edge types are external labels, which keep dot fast
    arrows = re.findall(r"^\t+\w+ -> \w+ \[(\w+)=", full, re.MULTILINE)
    assert len(arrows) > len(graph.nodes) and set(arrows) == {"xlabel"}
    assert set(re.findall(r"^\t+\w+ -> \w+ \[(\w+)=", collapsed, re.MULTILINE)) == {"label"}
    assert _node_count(collapsed) < _node_count(full) / 4
    assert collapsed.count("subgraph cluster_") == 4
    svg = ET.fromstring(viz.render(collapsed_dot, "svg"))
    assert sum(g.get("class") == "node" for g in svg.iter(f"{SVG}g")) == _node_count(collapsed)
    # the summary boxes carry the totals of the blocks they stand for
    stats = graph_stats(graph)
    rows = {id(n): row for n, row in zip(graph.nodes, stats.per_node)}
    hidden = sum(rows[id(n)].params for nodes in runs[0].instances[1:] for n in nodes)
    summary = labels(collapsed)[f"block{blocks.index(runs[0])}"]
    assert f"params {format_count(hidden)}" in summary[2]


def test_collapse_cuts_a_chain_without_joins_at_weighted_layers():
    graph = _chain(("Conv", "Relu") * 4)
    blocks = viz.collapse_blocks(graph)
    assert [(b.signature, b.count) for b in blocks] == [(("Conv", "Relu"), 4)]
    source = viz.graph_to_dot(graph, collapse=True).source
    assert _node_count(source) == 2 + 1 + 3  # first block, summary, input/output/legend


def test_collapse_in_a_diff_keeps_edges_on_drawn_boxes(models, tmp_path):
    out = tmp_path / "d.dot"
    assert main([str(models.path("light_resnet50")), "-o", str(out), "-q", "--collapse",
                 "--pipeline", "fold_bn,dce", "--diff"]) == 0
    source = out.read_text()
    drawn = set(labels(source))
    assert all(a in drawn and b in drawn for a, b in re.findall(r"^\t+(\w+) -> (\w+)", source, re.MULTILINE))


# ----------------------------------------------------------------------------- inputs and failures


def test_circ_container_input_shows_coded_weights(resnet8, tmp_path):
    coded = circ.optimize(resnet8, "prune(sparsity=0.9),cluster(bits=4),huffman")
    save_circ(coded, tmp_path / "m.circ")
    assert main([str(tmp_path / "m.circ"), "-q", "-o", str(tmp_path / "m.dot")]) == 0
    boxes = labels((tmp_path / "m.dot").read_text())
    conv = next(i for i, n in enumerate(coded.nodes) if n.op == "Conv")
    assert boxes[f"n{conv}"][-1].startswith("sparsity 90.0%") and "codebook 16" in boxes[f"n{conv}"][-1]


def test_without_dot_the_source_is_written_with_install_advice(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "g.svg"
    assert main([str(models.path("lenet5")), "-o", str(out)]) == 0
    assert not out.exists()
    assert (tmp_path / "g.dot").read_text().startswith("digraph circ {")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("circ-viz: warning:")
    assert "apt-get install graphviz" in err and f"dot -Tsvg {tmp_path / 'g.dot'} -o {out}" in err


@pytest.mark.parametrize("args, message", [
    (["{missing}", "-o", "{tmp}/x.svg"], "no such file"),
    (["{garbage}", "-o", "{tmp}/x.svg"], "not a valid ONNX file"),
    (["{model}", "-o", "{tmp}/x.jpg"], "cannot tell the drawing's format"),
    (["{model}", "-o", "{tmp}/x.svg", "--diff"], "--diff needs --pipeline"),
    (["{missing}", "-o", "{tmp}/x.svg", "--pipeline", "nonsense"], "unknown pass 'nonsense'"),
    (["{model}", "-o", "{tmp}/no/such/folder/x.svg"], "does not exist"),
    (["{model}", "--bogus"], "unrecognized arguments"),
    (["{model}", "-o", "{tmp}/x.svg", "--data", "{tmp}/d.npz"], "--data needs --pipeline"),
])
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, capsys, args, message):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model")
    fill = {"missing": tmp_path / "missing.onnx", "garbage": garbage, "tmp": tmp_path,
            "model": models.path("lenet5")}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("circ-viz: error:") and message in err
    assert not list(tmp_path.glob("*.svg")) and not list(tmp_path.glob("*.jpg"))


def test_a_failing_dot_is_one_line_and_keeps_the_old_output(models, tmp_path, monkeypatch, capsys):
    import subprocess

    def fail(dot, fmt):
        raise subprocess.CalledProcessError(1, ["dot"], stderr=b"Error: syntax error in line 1\nmore")

    out = tmp_path / "g.svg"
    out.write_text("old drawing")
    monkeypatch.setattr(viz, "render", fail)
    assert main([str(models.path("lenet5")), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"circ-viz: error: {out}: Graphviz dot failed: Error: syntax error in line 1; more\n"
    assert out.read_text() == "old drawing"
