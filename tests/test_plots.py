"""circ.plots: SVG charts parse as XML, hold the expected elements, escape text, and are
deterministic; tick helpers cover their ranges with round steps."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circ.plots import bar_chart_svg, histogram_svg, line_chart_svg, log_ticks, nice_ticks, tick_label

SVG = "{http://www.w3.org/2000/svg}"


def _parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg"
    return root


def _texts(root) -> list[str]:
    return [t.text for t in root.iter(SVG + "text")]


def _series(root) -> list:
    return [e for e in root.iter() if "series" in e.get("class", "").split()]


def test_histogram_overlays_series_with_legend_axes_and_title():
    rng = np.random.default_rng(0)
    before = rng.standard_normal(2000)
    after = np.where(np.abs(before) < 0.5, 0.0, before)
    text = histogram_svg({"before": before, "after": after}, bins=20, title="fc1 weights",
                         xlabel="weight", skip_zeros=True)
    root = _parse(text)
    series = _series(root)
    assert [s.get("data-label") for s in series] == ["before", "after"]
    texts = _texts(root)
    assert "fc1 weights" in texts and "weight" in texts and "count" in texts
    assert "before" in texts and "after" in texts  # the legend
    assert root.find(SVG + "title").text == "fc1 weights"
    # 20 bins: move to the base, 2 corners per bin, back to the base
    assert series[0].get("d").count("L") == 2 * 20 + 1


def test_histogram_heights_follow_counts():
    values = np.array([0.0, 0.0, 0.0, 1.0])  # bin 1 holds 3, bin 2 holds 1
    root = _parse(histogram_svg({"w": values}, bins=2, value_range=(0.0, 1.0)))
    path = _series(root)[0].get("d")
    ys = [float(p.split(",")[1]) for p in path.replace("M", "L").replace("Z", "").split("L") if p]
    base, first, second = ys[0], ys[1], ys[3]
    assert base > second > first  # svg y grows downwards
    assert (base - first) == pytest.approx(3 * (base - second), rel=1e-3)


def test_histogram_log_axis_ticks_are_powers_of_ten():
    values = np.concatenate([np.zeros(5000), np.ones(3)])
    texts = _texts(_parse(histogram_svg({"w": values}, bins=4, log=True)))
    assert {"1", "10", "100", "1,000", "10,000"} <= set(texts)


def test_text_is_escaped():
    text = line_chart_svg({"a<b & \"c\"": ([0, 1], [0, 1]), "d": ([0, 1], [1, 0])},
                          title="<script>alert(1)</script>", xlabel="x & y")
    assert "<script>" not in text
    root = _parse(text)
    assert "<script>alert(1)</script>" in _texts(root)
    assert _series(root)[0].get("data-label") == 'a<b & "c"'


def test_line_chart_points_and_lines():
    series = {"conv1": ([0.0, 0.5, 0.9], [0.98, 0.97, 0.5]),
              "fc1": ([0.0, 0.5, 0.9, float("nan")], [0.98, 0.98, 0.96, 0.1])}
    root = _parse(line_chart_svg(series, title="sensitivity", xlabel="sparsity",
                                 ylabel="accuracy", y_range=(0, 1)))
    groups = _series(root)
    assert [g.get("data-label") for g in groups] == ["conv1", "fc1"]
    for group in groups:  # the NaN point is left out
        assert len(group.findall(SVG + "circle")) == 3
        assert len(group.find(SVG + "polyline").get("points").split()) == 3
    assert {"0", "0.2", "1.0", "sparsity", "accuracy"} <= set(_texts(root))


def test_line_chart_rejects_mismatched_series():
    with pytest.raises(ValueError, match="'a'"):
        line_chart_svg({"a": ([0, 1, 2], [0, 1])})


def test_bar_chart_bars_reference_and_sparse_labels():
    loads = np.arange(64) + 100
    root = _parse(bar_chart_svg({"non-zeros": loads}, title="per-PE load", xlabel="PE",
                                reference=("mean", float(loads.mean()))))
    bars = _series(root)[0].findall(SVG + "rect")
    assert len(bars) == 64
    heights = [float(b.get("height")) for b in bars]
    assert heights == sorted(heights) and heights[-1] > heights[0]
    assert bars[5].find(SVG + "title").text == "5: 105"
    assert any(e.get("class") == "reference" for e in root.iter(SVG + "line"))
    labels = [t for t in _texts(root) if t.isdigit()]
    assert "0" in labels and "63" not in labels and len(labels) <= 32  # categories thinned out


def test_bar_chart_grouped_with_categories():
    root = _parse(bar_chart_svg({"a": [1, 2], "b": [3, 4]}, categories=["x", "y"]))
    assert [len(g.findall(SVG + "rect")) for g in _series(root)] == [2, 2]
    with pytest.raises(ValueError, match="categories"):
        bar_chart_svg({"a": [1, 2, 3]}, categories=["x", "y"])


@pytest.mark.parametrize("make", [
    lambda: histogram_svg({"w": []}),
    lambda: histogram_svg({"w": [0.0, 0.0]}, skip_zeros=True),
    lambda: line_chart_svg({}),
    lambda: bar_chart_svg({"a": [float("nan")]}),
])
def test_empty_data_says_so(make):
    assert "no data" in _texts(_parse(make()))


def test_constant_data_gets_a_range():
    root = _parse(histogram_svg({"w": np.full(10, 0.25)}, bins=5))
    assert _series(root)


def test_output_is_deterministic():
    rng = np.random.default_rng(1)
    values = rng.standard_normal(1000)
    make = lambda: (histogram_svg({"a": values, "b": values * 2}, log=True)  # noqa: E731
                    + line_chart_svg({"s": (values[:10], values[10:20])})
                    + bar_chart_svg({"x": values[:8]}))
    assert make() == make()


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(0, 1e6))
def test_nice_ticks_cover_the_range_with_round_steps(low, span):
    high = low + span
    ticks = nice_ticks(low, high)
    steps = np.diff(ticks)
    slack = 1e-9 * steps[0]
    assert ticks[0] <= low + slack and ticks[-1] >= high - slack
    assert 2 <= len(ticks) <= 12
    assert np.allclose(steps, steps[0], rtol=1e-6)
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]) + 1e-6)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))


def test_log_ticks_and_labels():
    assert log_ticks(3, 4000) == [1, 10, 100, 1000, 10000]
    assert tick_label(0.30000000000000004, 0.1) == "0.3"
    assert tick_label(2_500_000, 500_000) == "2.5M"
    assert tick_label(12000, 2000) == "12,000"
    assert tick_label(-0.0, 1) == "0"
