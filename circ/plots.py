"""Charts as inline SVG text, with no plotting library: histograms, line charts, bar charts.

Each function returns one ``<svg>`` element as a string that works both inside an HTML page
(the report of ``circ-opt --report-html``) and as a ``.svg`` file of its own. A chart has a
title, axes with ticks and labels, a light grid and — when it shows more than one series — a
legend to the right of the plot.

- :func:`histogram_svg`: overlaid histograms on shared bins, e.g. a layer's weights before and
  after pruning and clustering (the picture of Deep Compression, Han et al. 2016, Figure 5);
  ``log=True`` draws counts on a log axis, ``skip_zeros=True`` leaves out exact zeros (pruned
  weights, which would otherwise be one bar towering over the rest).
- :func:`line_chart_svg`: lines with point markers, e.g. accuracy against sparsity per layer.
- :func:`bar_chart_svg`: grouped bars per category, e.g. non-zeros per EIE processing
  element, with an optional reference line (the mean load).

The output is deterministic: the same data gives the same bytes (coordinates are written with
a fixed number of decimals, nothing depends on the time or on dict order beyond the order the
caller gives). Every piece of text is XML-escaped. Non-finite values (NaN, inf) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional
from xml.sax.saxutils import escape, quoteattr

import numpy as np

# Matplotlib's "tab10" colours: distinct, and readable for the common colour-vision deficiencies.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

FONT = "font-family:Helvetica,Arial,sans-serif"
CHAR_WIDTH = 6.5  # average glyph width at 11 px, to size the legend without measuring text
MAX_LABEL = 32  # longer legend labels keep their tail: the end of a layer name says the most

# Space around the plot area: left holds the y tick labels and axis title.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 34, 48


def _num(x: float) -> str:
    """A coordinate with two decimals (fixed, so output is byte-for-byte reproducible)."""
    text = f"{x:.2f}"
    return "0.00" if text == "-0.00" else text


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


def _short(label: str, limit: int = MAX_LABEL) -> str:
    return label if len(label) <= limit else "\u2026" + label[-(limit - 1):]


# ------------------------------------------------------------------------------- ticks


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten)
    covering ``[low, high]``: the first tick is <= low and the last >= high, up to a
    billionth of a step (so float noise such as 1e-17 does not add a whole step)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got [{low}, {high}]")
    if high < low:
        low, high = high, low
    if high - low <= max(1e-9 * max(abs(low), abs(high)), 1e-200):  # one value, up to float noise
        pad = abs(low) * 0.5 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    # Ticks as multiples of the step, rounded to the decimals the step has: 3 * 0.1 is
    # 0.30000000000000004, which would print and compare badly.
    decimals = max(0, 2 - math.floor(math.log10(step)))
    return [round(i * step, decimals) for i in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten covering ``[low, high]`` (both > 0)."""
    first = math.floor(math.log10(low) + 1e-9)
    last = math.ceil(math.log10(high) - 1e-9)
    if last == first:
        last += 1
    return [10.0 ** e for e in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as ``step`` needs; thousands separated; 1.5M past 1e6."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
            if magnitude >= scale:
                return f"{value / scale:.3g}{suffix}"
    if magnitude < 1e-3:
        return f"{value:.0e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:,.{min(decimals, 6)}f}"


class _Axis:
    """One axis: data range -> pixel range, linear or log10, with its ticks."""

    def __init__(self, low: float, high: float, start: float, end: float, *, log: bool = False,
                 ticks: Optional[list[float]] = None):
        self.log = log
        if log:
            self.ticks = ticks or log_ticks(low, high)
        else:
            self.ticks = ticks or nice_ticks(low, high)
        self.low, self.high = self.ticks[0], self.ticks[-1]
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, self.low))
            low, high = math.log10(self.low), math.log10(self.high)
        else:
            low, high = self.low, self.high
        return self.start + (value - low) / (high - low) * (self.end - self.start)

    def labels(self) -> list[str]:
        if self.log:
            return [tick_label(t, t) for t in self.ticks]
        step = self.ticks[1] - self.ticks[0] if len(self.ticks) > 1 else 1.0
        return [tick_label(t, step) for t in self.ticks]


# ------------------------------------------------------------------------------ canvas


class _Canvas:
    """An SVG being written: a plot area, axes, and a legend column when needed."""

    def __init__(self, width: int, height: int, title: str, legend: Sequence[str]):
        self.parts: list[str] = []
        legend = [_short(str(label)) for label in legend]
        self.legend = legend if len(legend) > 1 else []
        legend_width = (30 + CHAR_WIDTH * max(len(s) for s in self.legend)) if self.legend else 0
        # The plot keeps at least half the width; long legends get taller, not wider.
        legend_width = min(legend_width, width * 0.45)
        height = max(height, MARGIN_TOP + 16 * len(self.legend) + 20)
        self.width, self.height, self.title = width, height, title
        self.left, self.top = MARGIN_LEFT, MARGIN_TOP
        self.right = width - MARGIN_RIGHT - legend_width
        self.bottom = height - MARGIN_BOTTOM

    def text(self, x: float, y: float, text: str, *, size: int = 11, anchor: str = "middle",
             extra: str = "") -> None:
        if text == "":
            return
        self.parts.append(f'<text x="{_num(x)}" y="{_num(y)}" font-size="{size}" '
                          f'text-anchor="{anchor}"{extra}>{escape(str(text))}</text>')

    def axes(self, xaxis: _Axis, yaxis: _Axis, xlabel: str, ylabel: str,
             xlabels: Optional[Sequence[tuple[float, str]]] = None) -> None:
        """Grid, ticks, tick labels and axis titles. ``xlabels`` overrides the x ticks
        (categories of a bar chart: (pixel x, text))."""
        out = self.parts
        out.append('<g class="grid" stroke="#e4e4e4" stroke-width="1">')
        for tick in yaxis.ticks:
            y = _num(yaxis(tick))
            out.append(f'<line x1="{_num(self.left)}" y1="{y}" x2="{_num(self.right)}" y2="{y}"/>')
        out.append("</g>")
        out.append('<g class="axes" stroke="#333" stroke-width="1" fill="none">')
        out.append(f'<line class="x-axis" x1="{_num(self.left)}" y1="{_num(self.bottom)}" '
                   f'x2="{_num(self.right)}" y2="{_num(self.bottom)}"/>')
        out.append(f'<line class="y-axis" x1="{_num(self.left)}" y1="{_num(self.top)}" '
                   f'x2="{_num(self.left)}" y2="{_num(self.bottom)}"/>')
        if xlabels is None:
            xlabels = [(xaxis(t), s) for t, s in zip(xaxis.ticks, xaxis.labels())]
        for x, _ in xlabels:
            out.append(f'<line x1="{_num(x)}" y1="{_num(self.bottom)}" x2="{_num(x)}" '
                       f'y2="{_num(self.bottom + 4)}"/>')
        for tick in yaxis.ticks:
            y = yaxis(tick)
            out.append(f'<line x1="{_num(self.left - 4)}" y1="{_num(y)}" x2="{_num(self.left)}" y2="{_num(y)}"/>')
        out.append("</g>")
        out.append('<g class="tick-labels" fill="#333">')
        for x, label in xlabels:
            self.text(x, self.bottom + 16, label, size=10)
        for tick, label in zip(yaxis.ticks, yaxis.labels()):
            self.text(self.left - 7, yaxis(tick) + 3.5, label, size=10, anchor="end")
        out.append("</g>")
        middle_x, middle_y = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        self.text(middle_x, self.height - 10, xlabel, extra=' class="xlabel"')
        self.text(14, middle_y, ylabel,
                  extra=f' class="ylabel" transform="rotate(-90 14 {_num(middle_y)})"')

    def draw_legend(self, kinds: Sequence[str]) -> None:
        """The legend column: a swatch (``box`` or ``line``) and label per series."""
        if not self.legend:
            return
        x = self.right + 14
        self.parts.append('<g class="legend">')
        for index, (label, kind) in enumerate(zip(self.legend, kinds)):
            y = self.top + 6 + 16 * index
            colour = PALETTE[index % len(PALETTE)]
            if kind == "line":
                self.parts.append(f'<line x1="{_num(x)}" y1="{_num(y)}" x2="{_num(x + 16)}" '
                                  f'y2="{_num(y)}" stroke="{colour}" stroke-width="2"/>')
            else:
                self.parts.append(f'<rect x="{_num(x)}" y="{_num(y - 5)}" width="16" height="10" '
                                  f'fill="{colour}" fill-opacity="0.5" stroke="{colour}"/>')
            self.text(x + 22, y + 4, label, anchor="start")
        self.parts.append("</g>")

    def message(self, text: str) -> None:
        self.text((self.left + self.right) / 2, (self.top + self.bottom) / 2, text,
                  extra=' class="no-data" fill="#777"')

    def svg(self, kind: str) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" '
                f'width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" style="{FONT}">')
        title = escape(self.title)
        body = [head, f"<title>{title}</title>",
                f'<rect width="{self.width}" height="{self.height}" fill="#fff"/>']
        if self.title:
            body.append(f'<text class="title" x="{_num(self.width / 2)}" y="20" font-size="13" '
                        f'font-weight="bold" text-anchor="middle">{title}</text>')
        return "\n".join(body + self.parts + ["</svg>"]) + "\n"


# ---------------------------------------------------------------------------- histogram


def histogram_svg(arrays_by_label: Mapping[str, object], *, bins: int = 60, title: str = "",
                  xlabel: str = "value", ylabel: str = "count", log: bool = False,
                  skip_zeros: bool = False, value_range: Optional[tuple[float, float]] = None,
                  width: int = 640, height: int = 320) -> str:
    """Overlaid histograms of the arrays (flattened), one colour per label, on shared bins.

    ``bins`` equal-width bins span ``value_range`` (default: min to max over all arrays).
    ``log`` puts counts on a log10 axis (empty bins are not drawn); ``skip_zeros`` drops
    values equal to 0 before counting. Each series is a filled step outline, translucent
    so overlaps stay visible.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    labels = [str(label) for label in arrays_by_label]
    data = [_finite(values) for values in arrays_by_label.values()]
    if skip_zeros:
        data = [values[values != 0] for values in data]
    canvas = _Canvas(width, height, title, labels)
    everything = np.concatenate(data) if data else np.zeros(0)
    if value_range is None and everything.size:
        value_range = (float(everything.min()), float(everything.max()))
    if not everything.size or value_range is None:
        canvas.axes(_Axis(0, 1, canvas.left, canvas.right), _Axis(0, 1, canvas.bottom, canvas.top),
                    xlabel, ylabel)
        canvas.message("no data")
        return canvas.svg("histogram")
    low, high = value_range
    if high <= low:
        pad = abs(low) * 0.05 or 0.5
        low, high = low - pad, high + pad
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(values, bins=edges)[0] for values in data]
    peak = max(int(c.max()) if c.size else 0 for c in counts)
    xaxis = _Axis(low, high, canvas.left, canvas.right)
    if log:
        yaxis = _Axis(1, max(peak, 10), canvas.bottom, canvas.top, log=True)
    else:
        yaxis = _Axis(0, max(peak, 1), canvas.bottom, canvas.top)
    canvas.axes(xaxis, yaxis, xlabel, ylabel)
    for index, (label, count) in enumerate(zip(labels, counts)):
        colour = PALETTE[index % len(PALETTE)]
        canvas.parts.append(f'<path class="series" data-label={quoteattr(label)} '
                            f'd="{_step_path(edges, count, xaxis, yaxis, log)}" fill="{colour}" '
                            f'fill-opacity="0.35" stroke="{colour}" stroke-width="1.2"/>')
    canvas.draw_legend(["box"] * len(labels))
    return canvas.svg("histogram")


def _step_path(edges: np.ndarray, counts: np.ndarray, xaxis: _Axis, yaxis: _Axis, log: bool) -> str:
    """A closed outline over the bars; on a log axis an empty bin drops to the axis floor."""
    base = yaxis(yaxis.low)
    commands = [f"M{_num(xaxis(edges[0]))},{_num(base)}"]
    for left, right, count in zip(edges[:-1], edges[1:], counts):
        y = base if (log and count == 0) else yaxis(float(count))
        commands.append(f"L{_num(xaxis(left))},{_num(y)}L{_num(xaxis(right))},{_num(y)}")
    commands.append(f"L{_num(xaxis(edges[-1]))},{_num(base)}Z")
    return "".join(commands)


# --------------------------------------------------------------------------- line chart


def line_chart_svg(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                   title: str = "", xlabel: str = "", ylabel: str = "",
                   y_range: Optional[tuple[float, float]] = None, log_x: bool = False,
                   width: int = 640, height: int = 320) -> str:
    """One line with round markers per series (``label -> (xs, ys)``, same length), drawn in
    the caller's order of points. Points with a non-finite coordinate (or x <= 0 on a log
    x axis) are left out. ``y_range`` fixes the y axis (e.g. (0, 1) for accuracy)."""
    labels = [str(label) for label in series]
    points = []
    for label, (xs, ys) in series.items():
        xs = np.asarray(xs, dtype=np.float64).ravel()
        ys = np.asarray(ys, dtype=np.float64).ravel()
        if xs.shape != ys.shape:
            raise ValueError(f"series {label!r}: {xs.size} x values but {ys.size} y values")
        keep = np.isfinite(xs) & np.isfinite(ys) & ((xs > 0) if log_x else True)
        points.append((xs[keep], ys[keep]))
    canvas = _Canvas(width, height, title, labels)
    all_x = np.concatenate([p[0] for p in points]) if points else np.zeros(0)
    all_y = np.concatenate([p[1] for p in points]) if points else np.zeros(0)
    if not all_x.size:
        canvas.axes(_Axis(0, 1, canvas.left, canvas.right), _Axis(0, 1, canvas.bottom, canvas.top),
                    xlabel, ylabel)
        canvas.message("no data")
        return canvas.svg("line-chart")
    xaxis = _Axis(float(all_x.min()), float(all_x.max()), canvas.left, canvas.right, log=log_x)
    low, high = y_range if y_range is not None else (float(all_y.min()), float(all_y.max()))
    yaxis = _Axis(low, high, canvas.bottom, canvas.top)
    canvas.axes(xaxis, yaxis, xlabel, ylabel)
    for index, (label, (xs, ys)) in enumerate(zip(labels, points)):
        colour = PALETTE[index % len(PALETTE)]
        coords = [(xaxis(x), yaxis(y)) for x, y in zip(xs, ys)]
        path = " ".join(f"{_num(x)},{_num(y)}" for x, y in coords)
        canvas.parts.append(f'<g class="series" data-label={quoteattr(label)}>')
        canvas.parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in coords:
            canvas.parts.append(f'<circle cx="{_num(x)}" cy="{_num(y)}" r="2.5" fill="{colour}"/>')
        canvas.parts.append("</g>")
    canvas.draw_legend(["line"] * len(labels))
    return canvas.svg("line-chart")


# ---------------------------------------------------------------------------- bar chart


def bar_chart_svg(series: Mapping[str, Sequence[float]], *, categories: Optional[Sequence[str]] = None,
                  title: str = "", xlabel: str = "", ylabel: str = "",
                  reference: Optional[tuple[str, float]] = None,
                  width: int = 640, height: int = 320) -> str:
    """Grouped bars: for each category (default ``0, 1, ...``), one bar per series
    (``label -> values``, one value per category). ``reference=(label, value)`` draws a
    dashed horizontal line, e.g. the mean load. The y axis starts at 0 (or below, for
    negative values). With many categories only every k-th label is written."""
    labels = [str(label) for label in series]
    columns = [np.asarray(values, dtype=np.float64).ravel() for values in series.values()]
    count = max((c.size for c in columns), default=0)
    if categories is None:
        categories = [str(i) for i in range(count)]
    categories = [str(c) for c in categories]
    for label, column in zip(labels, columns):
        if column.size != len(categories):
            raise ValueError(f"series {label!r} has {column.size} values for {len(categories)} categories")
    canvas = _Canvas(width, height, title, labels)
    finite = np.concatenate(columns) if columns else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    if not categories or not finite.size:
        canvas.axes(_Axis(0, 1, canvas.left, canvas.right), _Axis(0, 1, canvas.bottom, canvas.top),
                    xlabel, ylabel)
        canvas.message("no data")
        return canvas.svg("bar-chart")
    low = min(0.0, float(finite.min()))
    high = max(float(finite.max()), reference[1] if reference else 0.0, low + 1e-12)
    yaxis = _Axis(low, high, canvas.bottom, canvas.top)
    slot = (canvas.right - canvas.left) / len(categories)
    bar = slot * 0.8 / max(len(columns), 1)
    every = max(1, math.ceil(len(categories) * 40 / (canvas.right - canvas.left)))
    xlabels = [(canvas.left + slot * (i + 0.5), name) for i, name in enumerate(categories) if i % every == 0]
    canvas.axes(None, yaxis, xlabel, ylabel, xlabels=xlabels)
    zero = yaxis(0.0)
    for index, (label, column) in enumerate(zip(labels, columns)):
        colour = PALETTE[index % len(PALETTE)]
        canvas.parts.append(f'<g class="series" data-label={quoteattr(label)} fill="{colour}">')
        for position, value in enumerate(column):
            if not math.isfinite(value):
                continue
            x = canvas.left + slot * position + slot * 0.1 + bar * index
            top = yaxis(value)
            y, h = min(top, zero), abs(zero - top)
            canvas.parts.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(bar)}" height="{_num(h)}">'
                                f'<title>{escape(categories[position])}: {escape(_value_text(value))}</title></rect>')
        canvas.parts.append("</g>")
    if reference is not None:
        name, value = reference
        y = yaxis(float(value))
        canvas.parts.append(f'<line class="reference" x1="{_num(canvas.left)}" y1="{_num(y)}" '
                            f'x2="{_num(canvas.right)}" y2="{_num(y)}" stroke="#333" '
                            f'stroke-dasharray="5,3"/>')
        canvas.text(canvas.right - 4, y - 4, f"{name} {_value_text(value)}", size=10, anchor="end",
                    extra=' class="reference-label"')
    canvas.draw_legend(["box"] * len(labels))
    return canvas.svg("bar-chart")


def _value_text(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"
