"""circ.report_html and circ-opt --report-html: the page renders in headless Chromium with the
report's numbers, its sections follow the data, text is escaped, and the per-layer rows (also
in the JSON report) match an independent computation."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from onnx import helper

import circ
from circ.analysis.stats import graph_stats
from circ.cli.opt import main as opt_main
from circ.passmanager import compare_outputs, sample_inputs
from circ.printer import format_count
from circ.report_html import build_report_html, layer_rows, per_pe_lists
from opcheck import make_model

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
HAS_DOT = shutil.which("dot") is not None


def _mlp(path, names=("fc1", "fc2")):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name=names[0]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name=names[1])]
    consts = {"w1": rng.standard_normal((64, 96)).astype(np.float32) * 0.1,
              "b1": rng.standard_normal(96).astype(np.float32) * 0.1,
              "w2": rng.standard_normal((96, 10)).astype(np.float32) * 0.1,
              "b2": np.zeros(10, np.float32)}
    import onnx
    onnx.save(make_model(nodes, {"x": ["N", 64]}, ["y"], consts), str(path))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """circ-opt prune+cluster+huffman to a .circ with both reports."""
    folder = tmp_path_factory.mktemp("report")
    model = _mlp(folder / "mlp.onnx")
    paths = {"model": model, "out": folder / "mlp.circ", "json": folder / "r.json",
             "html": folder / "r.html"}
    code = opt_main(["--passes=prune(sparsity=0.75),cluster(bits=4),huffman", "--verify-numerics",
                     str(model), "-o", str(paths["out"]), "--report", str(paths["json"]),
                     "--report-html", str(paths["html"]), "-q"])
    assert code == 0
    paths["report"] = json.loads(paths["json"].read_text())
    return paths


# A probe appended to a copy of the page: it reads what the browser laid out (table cells,
# the size of every SVG) and writes it into the DOM, which --dump-dom then prints.
PROBE = """<pre id="probe"></pre><script>
const tables = {};
for (const t of document.querySelectorAll("table[id]"))
  tables[t.id] = [...t.querySelectorAll("tr")].map(r => [...r.cells].map(c => c.textContent));
const svgs = [...document.querySelectorAll("svg")].filter(s => !s.parentElement.closest("svg"))
  .map(s => { const b = s.getBoundingClientRect();
              return {cls: s.getAttribute("class") || "", w: b.width, h: b.height,
                      shapes: s.querySelectorAll("path,rect,polyline,polygon,ellipse,text").length}; });
document.getElementById("probe").textContent = JSON.stringify({tables, svgs,
  h2: [...document.querySelectorAll("h2")].map(h => h.textContent)});
</script>"""


def _rendered(page: str, folder) -> dict:
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    probe_page = folder / "probe.html"
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={folder / 'profile'}", "--dump-dom",
                           probe_page.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match and match.group(1), f"the probe did not run: {proc.stderr[-2000:]}"
    import html
    return json.loads(html.unescape(match.group(1)))


def test_page_renders_in_chromium_with_the_reports_numbers(run, tmp_path):
    page = run["html"].read_text()
    report = run["report"]
    # self-contained: nothing fetched, nothing executed
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    dom = _rendered(page, tmp_path)
    tables = dom["tables"]

    totals = {row[0]: row[1:] for row in tables["totals"][1:]}
    after = report["stats"]["after"]
    assert totals["non-zeros"][1] == format_count(after["nonzeros"])
    assert totals["bytes"][:2] == [format_count(report["stats"]["before"]["storage_bytes"]),
                                   format_count(after["storage_bytes"])]

    passes = tables["passes"]
    assert [row[1] for row in passes[1:]] == ["prune(sparsity=0.75)", "cluster(bits=4)", "huffman"]
    assert passes[0][-2:] == ["max abs change", "max rel change"]
    assert passes[3][-2:] == ["0", "0"]  # huffman is exact

    layers = {row[0]: row for row in tables["layers"][1:]}
    assert set(layers) == {"fc1", "fc2"}
    for row in report["layers"]:
        cells = layers[row["layer"]]
        assert cells[2:4] == [format_count(row["params"]), format_count(row["nonzeros"])]
        assert cells[8] == format_count(row["macs"])
        assert cells[11] == f"{row['output_max_rel']:.3g}"

    container = tables["container"]
    assert container[-1][0] == "total"
    assert container[-1][5] == format_count(run["out"].stat().st_size)

    charts = [s for s in dom["svgs"] if "chart" in s["cls"]]
    assert [s["cls"] for s in charts] == ["chart histogram"] * 2
    for svg in dom["svgs"]:  # laid out with a size and drawn content
        assert svg["w"] > 100 and svg["h"] > 100 and svg["shapes"] > 10, svg
    if HAS_DOT:
        assert len(dom["svgs"]) == 3  # and the graph drawing
    assert dom["h2"][:4] == ["Run", "Totals", "Passes", "Layers"]
    assert "Target: eie" not in dom["h2"] and "Pass results" not in dom["h2"]


def test_layer_rows_match_an_independent_computation(run):
    before = circ.load(str(run["model"]))
    after = circ.load(str(run["out"]))
    rows = {row["layer"]: row for row in layer_rows(before, after, seed=3)}
    stats = {r.name: r for r in graph_stats(after).per_node}
    feeds = sample_inputs(before, 3)
    computed = [_all_values(graph, feeds) for graph in (before, after)]
    for name, value in (("fc1", "h"), ("fc2", "y")):
        row = rows[name]
        assert row["status"] == "kept" and row["op"] == "Gemm"
        assert row["params_before"] == row["params"] == stats[name].params
        assert row["nonzeros"] == stats[name].nonzeros < row["params"]
        assert row["bytes"] == stats[name].storage_bytes < row["bytes_before"]
        expected = compare_outputs([computed[0][value]], [computed[1][value]])
        assert (row["output_max_abs"], row["output_max_rel"]) == pytest.approx(expected)
        assert row["output_max_rel"] > 0
    assert run["report"]["layers"] == layer_rows(before, after, seed=0)


def _all_values(graph, feeds) -> dict:
    """Value name -> array of every node output, from a keep_all interpreter run."""
    interpreter = circ.Interpreter(graph, keep_all=True)
    interpreter.run(feeds)
    return {v.name: interpreter.values[id(v)] for node in graph.nodes for v in node.outputs}


def test_exact_pipeline_has_zero_output_change(tmp_path):
    model = _mlp(tmp_path / "m.onnx")
    before = circ.load(str(model))
    after = circ.optimize(before, "huffman")
    for row in layer_rows(before, after):
        assert row["output_max_abs"] == 0.0 and row["output_max_rel"] == 0.0


def _page(report_extra: dict, names=("fc1", "fc2"), tmp_path=None) -> str:
    graph = circ.load(str(_mlp(tmp_path / "m.onnx", names)))
    report = {"input": "m.onnx", "output": "m.opt.onnx", "pipeline": "", "seed": 0, "passes": [],
              "stats": {"before": graph_stats(graph).totals(), "after": graph_stats(graph).totals()}}
    report.update(report_extra)
    return build_report_html(report, graph, graph.copy(), graph_svg="")


def test_pass_series_and_tables_get_charts(tmp_path):
    details = {"series": [{"label": "fc1", "x": [50, 90], "y": [97.0, 80.0]},
                          {"label": "fc2", "x": [50, 90], "y": [97.5, 96.0]}],
               "xlabel": "sparsity (%)", "ylabel": "accuracy (%)",
               "table": {"title": "sensitivity", "headers": ["layer", "50%", "90%"],
                         "rows": [["fc1", "97.00", "80.00"], ["fc2", "97.50", "96.00"]]}}
    entry = {"index": 0, "name": "sensitivity", "text": "sensitivity", "exact": True,
             "modified": False, "details": details, "stats": {}}
    page = _page({"passes": [entry]}, tmp_path=tmp_path)
    section = re.search(r'<section class="pass-details" id="pass-0">(.*?)</section>', page, re.S).group(1)
    assert section.count('class="series"') == 2 and "sparsity (%)" in section
    assert "<td>fc1</td><td class=\"num\">97.00</td><td class=\"num\">80.00</td>" in section


def test_target_per_pe_load_gets_bar_charts(tmp_path):
    target = {"name": "eie", "options": {"pes": 4}, "stats": {"cycles": 1234, "layers": [
        {"name": "fc1", "pe_nonzeros": [10, 12, 9, 11], "cycles": 40},
        {"name": "fc2", "pe_nonzeros": [3, 3, 2, 4]}]}}
    page = _page({"target": target}, tmp_path=tmp_path)
    assert "<h2>Target: eie</h2>" in page
    assert '<td>stats.cycles</td><td class="num">1,234</td>' in page
    charts = re.search(r'<div class="charts" id="pe-load">(.*?)</div>', page, re.S).group(1)
    assert charts.count("<svg") == 2
    assert "per-PE load: fc1/pe_nonzeros" in charts
    assert charts.count("<rect x=") == 8 and "<title>2: 9</title>" in charts


def test_per_pe_lists_finds_nested_lists_only_under_pe_keys():
    stats = {"pe_cycles": [1, 2], "speedup": [3.0, 4.0], "per_pe": {"load": [5, 6]},
             "layers": [{"layer": "a", "nonzeros_per_pe": [7, 8], "pes": 2}, {"pe_load": ["x"]}]}
    assert per_pe_lists(stats) == [("pe_cycles", [1, 2]), ("per_pe/load", [5, 6]),
                                   ("layers/a/nonzeros_per_pe", [7, 8])]


def test_sections_follow_the_data_and_text_is_escaped(tmp_path):
    page = _page({"pipeline": "x<y>"}, names=("fc<1>&", "fc2"), tmp_path=tmp_path)
    assert "fc&lt;1&gt;&amp;" in page and "fc<1>" not in page and "x&lt;y&gt;" in page
    for absent in ("Container size", "Target:", "Pass results", "Passes</h2>"):
        assert absent not in page
    assert page.count('class="chart histogram"') == 2


def test_report_html_refuses_to_overwrite_the_model(tmp_path, capsys):
    model = _mlp(tmp_path / "m.onnx")
    code = opt_main(["--passes=dce", str(model), "--report-html", str(model)])
    assert code == 2 and "m.onnx" in capsys.readouterr().err


def test_eie_target_per_pe_nonzeros_in_the_page(tmp_path):
    model = _mlp(tmp_path / "m.onnx")
    page_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    code = opt_main(["--passes=prune(sparsity=0.8),cluster(bits=4)", "--target=eie(pes=8)", str(model),
                     "-o", str(tmp_path / "m.eie"), "--report-html", str(page_path),
                     "--report", str(json_path), "-q"])
    assert code == 0
    layers = json.loads(json_path.read_text())["target"]["program"]["layers"]
    page = page_path.read_text()
    charts = re.search(r'<div class="charts" id="pe-load">(.*?)</div>', page, re.S).group(1)
    svgs = charts.split("</svg>")[:-1]
    assert len(svgs) == len(layers) == 2
    for svg, layer in zip(svgs, layers):
        assert f"per-PE load: {layer['layer']}/nonzeros_per_pe" in svg
        bars = re.findall(r"<title>(\d+): ([\d,]+)</title></rect>", svg)
        assert [int(pe) for pe, _ in bars] == list(range(8))
        assert sum(int(n.replace(",", "")) for _, n in bars) == layer["nonzeros"]
