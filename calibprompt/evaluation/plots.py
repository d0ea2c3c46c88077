"""Plotly figures for judging whether a model's confidence can be trusted.

Every figure function here is pure: it takes numbers (usually
:class:`~calibprompt.evaluation.report.CalibrationReport` objects, one per method) and
returns a :class:`plotly.graph_objects.Figure`. Nothing is read or written (except by
:func:`export_figure`, which writes the one file it is given), nothing random is drawn,
and the same input always gives the same figure (``fig.to_json()`` is equal).
This module never imports a UI toolkit; the web app embeds the figures it returns.

Figures
-------
* :func:`reliability_diagram` - one method: per-bin accuracy bars, the gap to mean
  confidence shaded (red = overconfident, blue = underconfident), the dashed
  perfect-calibration diagonal, and the number of samples above each bar.
* :func:`reliability_grid` - one such diagram per method, side by side, each titled with
  the method's name and its ECE; temperature-scaled methods (``"<name> + TS"``) get their
  own row, under their raw counterparts (or pass ``rows=``).
* :func:`reliability_overlay` - all methods on one axis (accuracy vs mean confidence per
  non-empty bin; marker area grows with the bin count).
* :func:`confidence_histogram` - distribution of top-label confidence per method, or
  correct/incorrect stacked for one method, with the mean confidence marked.
* :func:`loss_curve` - live training loss (one or several named series).
* :func:`classwise_ece_bars` - grouped bars of per-class ECE per method.

Figures out: :func:`export_figure` writes a PNG, SVG or PDF (kaleido, headless Chromium);
:func:`figure_html` builds one self-contained HTML document of figures and tables.

Conventions
-----------
* Probabilities stay in ``[0, 1]`` in the data; axes and hover texts show them as
  percentages. Empty bins are not drawn at all (never as a zero-height bar); bins with
  fewer than ``min_count`` samples (default :data:`DEFAULT_MIN_COUNT` = 10) are drawn
  faded and cross-hatched, and their hover says so.
* Every method has one colour everywhere (:func:`method_colour`): :data:`METHOD_COLOURS`
  for the three main methods, otherwise a colour of :data:`FALLBACK_PALETTE` chosen from
  a checksum of the name (stable across runs and processes). Within one figure
  :func:`method_colours` moves a fallback colour along the palette if it is taken.
* Reports are typed: the figures read :class:`~calibprompt.evaluation.report.CalibrationReport`
  fields. For compatibility a plain ``calibration_report(...)`` dict (or a
  :class:`~calibprompt.evaluation.report.Evaluation`) is accepted wherever a report is,
  and converted once, at the entry, by :func:`~calibprompt.evaluation.report.as_calibration_report`;
  bare reliability bins (a :class:`ReliabilityBins` or its ``to_dict()``) by
  :func:`~calibprompt.evaluation.report.parse_reliability`. All checks of report and
  reliability dicts live there, not here.
* Invalid input (wrong shapes, unknown or missing keys, values outside ``[0, 1]``) raises
  ``ValueError`` with a message naming what is wrong.
* One shared layout (``_base_layout``) keeps every figure legible on a phone and in either colour
  scheme: transparent backgrounds, translucent grey grid and axis lines, near-black text (the app's
  CSS draws it light in dark mode), a horizontal legend below the plot, at most :data:`MAX_TICKS`
  ticks per numeric axis, and ``layout.meta["responsive"]``: the ``"narrow"`` layout the app's page
  script applies below ``"below"`` px (taller, long titles on two lines, a grid's panels stacked) and
  the ``"wide"`` one that undoes it. Files are exported on white (:func:`on_white`).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from calibprompt import defaults
from calibprompt.evaluation import validation as V
from calibprompt.evaluation.metrics import ReliabilityBins
from calibprompt.evaluation.report import CalibrationReport, Evaluation, as_calibration_report, parse_reliability

#: What the figures accept per method: a typed report, or (converted once at the entry)
#: a ``calibration_report(...)`` dict or an :class:`Evaluation`.
ReportLike = Union[CalibrationReport, Mapping[str, Any], Evaluation]

__all__ = [
    "risk_coverage_curves",
    "FALLBACK_PALETTE",
    "FIGURE_HEIGHT",
    "METHOD_COLOURS",
    "OVERCONFIDENT_COLOUR",
    "UNDERCONFIDENT_COLOUR",
    "classwise_ece_bars",
    "confidence_histogram",
    "loss_curve",
    "method_colour",
    "method_colours",
    "reliability_diagram",
    "reliability_grid",
    "reliability_overlay",
    "DEFAULT_MIN_COUNT",
    "EXPORT_FORMATS",
    "TS_SUFFIX",
    "export_figure",
    "on_white",
    "figure_html",
]

# ---------------------------------------------------------------------------
# Style
# ---------------------------------------------------------------------------
#: One colour per main method (keys are normalised names, see :func:`method_colour`).
METHOD_COLOURS: dict[str, str] = {
    "zero-shot": "#7f7f7f",  # grey: the untuned baseline
    "coop": "#ff7f0e",  # orange
    "calibprompt": "#2ca02c",  # green
}
#: Colours for every other method name (no pure red or blue: those mark the gap).
FALLBACK_PALETTE: tuple[str, ...] = (
    "#9467bd",  # purple
    "#8c564b",  # brown
    "#e377c2",  # pink
    "#bcbd22",  # olive
    "#17becf",  # cyan
    "#637939",  # moss
    "#7b4173",  # plum
    "#b8860b",  # dark gold
    "#393b79",  # navy
    "#6b6ecf",  # periwinkle
)
#: Gap shading of the reliability diagram (translucent fill, solid outline).
OVERCONFIDENT_COLOUR = "rgba(214, 39, 40, 0.35)"
OVERCONFIDENT_LINE = "rgb(214, 39, 40)"
UNDERCONFIDENT_COLOUR = "rgba(31, 119, 180, 0.35)"
UNDERCONFIDENT_LINE = "rgb(31, 119, 180)"
#: Accuracy-bar colour of a single diagram drawn without a method colour.
DEFAULT_BAR_COLOUR = "#5f6b7a"
#: Mid grey: 3.9:1 on white and on the app's dark blocks, so the diagonal shows in both colour schemes.
DIAGONAL_COLOUR = "#808080"
CORRECT_COLOUR = "#4e9a50"
INCORRECT_COLOUR = "#d9534f"
#: Colours of loss series (by position).
SERIES_PALETTE: tuple[str, ...] = (
    "#1f3b73", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
)

TEMPLATE = "plotly_white"
#: Text colour of every figure: near-black, for white paper (exports, the HTML report, the app in light
#: mode). In the app's dark mode the page's style sheet draws the figures' text light instead
#: (``calibprompt.app.theme.CSS``): plotly cannot take a CSS colour, and no single grey reads well on both.
TEXT_COLOUR = "#222222"
FONT = dict(family="Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif", size=13, color=TEXT_COLOUR)
#: Figures have no background of their own: in the app they take the page's (light or dark);
#: :func:`export_figure` paints exported files white (:data:`EXPORT_BACKGROUND`).
TRANSPARENT = "rgba(0, 0, 0, 0)"
EXPORT_BACKGROUND = "#ffffff"
#: Grid and axis lines: translucent grey, seen on white and on a dark page alike.
GRID_COLOUR = "rgba(128, 128, 128, 0.28)"
AXIS_LINE_COLOUR = "rgba(128, 128, 128, 0.75)"
#: The ECE note's box: a faint grey wash over whatever is behind it.
NOTE_BACKGROUND = "rgba(128, 128, 128, 0.12)"
NOTE_BORDER = "rgba(128, 128, 128, 0.5)"
#: At most this many ticks on a numeric axis (plotly picks "nice" steps up to it): on a phone's
#: 300 px axis the percentage labels stay apart.
MAX_TICKS = 6
#: Below this plot width (px) the app's page script (``calibprompt.app.theme.PLOT_SCRIPT``) applies a
#: figure's narrow layout, ``layout.meta["responsive"]``: taller (the legend below wraps into more
#: rows) and, for a grid, its panels stacked in one column.
NARROW_WIDTH = 500
#: A grid stacks its panels below this many px per column (or :data:`NARROW_WIDTH`, if wider).
_GRID_COLUMN_WIDTH = 240
_NARROW_EXTRA_HEIGHT = 40
#: Plot width (px) the legend's rows are estimated for in the narrow layout: a phone's plot.
_NARROW_PLOT_WIDTH = 300
_LEGEND_ROW_HEIGHT = 22
#: The most characters of a title (16 px) and of an axis title (13 px) on one line of a phone's plot.
_NARROW_TITLE_CHARS = 30
_NARROW_AXIS_CHARS = 34
#: Height (px) a character of a slanted (wide figure) and of an upright (phone) category label takes.
_SLANTED_CHAR_HEIGHT = 4
_UPRIGHT_CHAR_HEIGHT = 7
#: A stacked grid panel's share of height in px, and the gap for its title and the x axis above.
_STACKED_PANEL_HEIGHT = 320
_STACKED_GAP = 80
#: Height in pixels of every single-panel figure (a grid row is about this tall too).
FIGURE_HEIGHT = 400
_GRID_ROW_HEIGHT = 340
_GRID_EXTRA_HEIGHT = 80  # title and legend

#: Bins with fewer samples than this are drawn faded in reliability diagrams (``min_count``).
DEFAULT_MIN_COUNT = defaults.PLOT_MIN_COUNT
#: Top of the y axis of reliability diagrams: the band above 100 % holds the bin counts.
RELIABILITY_Y_TOP = 1.1
#: Bin counts above the bars.
COUNT_FONT_SIZE = 11
COUNT_COLOUR = "#333333"
#: The veil over bins with too few samples: translucent white, grey cross-hatching.
_FEW_VEIL = "rgba(255, 255, 255, 0.6)"
_FEW_LINE = "rgba(110, 110, 110, 0.8)"

_BINS_KEYS = ("edges", "counts")  # a mapping with one of these (and no "reliability") is bare bins


# ---------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------
def _normalise_name(name: str) -> str:
    return "-".join(name.strip().lower().replace("_", " ").split())


def method_colour(name: str) -> str:
    """The colour of a method, the same in every figure.

    ``"zero-shot"``, ``"coop"`` and ``"calibprompt"`` (case-insensitive; ``_`` and spaces
    count as ``-``) get :data:`METHOD_COLOURS`; any other name gets the entry of
    :data:`FALLBACK_PALETTE` at ``crc32(normalised name) % len(palette)``.
    """
    if not isinstance(name, str):
        raise ValueError(f"a method name must be a str, but got {name!r} (type {type(name).__name__}).")
    key = _normalise_name(name)
    if key in METHOD_COLOURS:
        return METHOD_COLOURS[key]
    return FALLBACK_PALETTE[zlib.crc32(key.encode("utf-8")) % len(FALLBACK_PALETTE)]


def method_colours(names: Iterable[str]) -> dict[str, str]:
    """Colours for the methods of one figure: :func:`method_colour`, kept distinct.

    A fallback colour already used (by a main method or an earlier name) moves to the
    next free palette entry, as long as one is free. Deterministic for a given order.
    """
    names = list(names)
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:  # main methods first, so they always keep their colour
        colour = method_colour(name)
        if _normalise_name(name) in METHOD_COLOURS:
            out[name] = colour
            used.add(colour)
    for name in names:
        if name in out:
            continue
        colour = method_colour(name)
        if colour in used:
            start = FALLBACK_PALETTE.index(colour)
            for step in range(1, len(FALLBACK_PALETTE)):
                candidate = FALLBACK_PALETTE[(start + step) % len(FALLBACK_PALETTE)]
                if candidate not in used:
                    colour = candidate
                    break
        out[name] = colour
        used.add(colour)
    return {name: out[name] for name in names}


# ---------------------------------------------------------------------------
# Formatting and validation helpers
# ---------------------------------------------------------------------------
def _pct(x: float, digits: int = 1) -> str:
    return f"{100.0 * x:.{digits}f} %"


def _edge_pct(x: float) -> str:
    """A bin edge as a short percentage: 30 %, 6.67 %, 100 %."""
    return f"{100.0 * x:.3g} %"


_is_real = V.is_real
_check_int = V.check_int
_check_mapping = V.check_mapping


def _check_fraction(value: Any, name: str) -> float:
    """A fraction in ``[0, 1]`` (``VALUE_ATOL`` slack, clipped)."""
    return V.check_range(value, name, 0.0, 1.0)


# ---------------------------------------------------------------------------
# Reports and bins (converted once, at the entry of each public figure)
# ---------------------------------------------------------------------------
class _Panel(NamedTuple):
    """What one reliability diagram draws: the bins, the ECE to show and its interval."""

    bins: ReliabilityBins
    ece: float | None
    interval: tuple[float, float] | None


def _is_bins(obj: Any) -> bool:
    """A :class:`ReliabilityBins` or its ``to_dict()`` (not a whole report)."""
    if isinstance(obj, ReliabilityBins):
        return True
    return isinstance(obj, Mapping) and "reliability" not in obj and any(k in obj for k in _BINS_KEYS)


def _report(obj: Any, name: str) -> CalibrationReport:
    if not isinstance(obj, (CalibrationReport, Evaluation, Mapping)):
        raise ValueError(
            f"`{name}` must be a CalibrationReport, a calibration_report(...) dict, a ReliabilityBins "
            f"or its to_dict() dict, but got {type(obj).__name__}."
        )
    return as_calibration_report(obj, name)


def _nonempty(bins: ReliabilityBins) -> np.ndarray:
    return bins.counts > 0


def _total(bins: ReliabilityBins) -> int:
    return int(bins.counts.sum())


def _bins_error(bins: ReliabilityBins) -> float | None:
    """``sum_b n_b / N * |acc_b - conf_b|`` (ECE for uniform bins, ACE for quantile)."""
    total = _total(bins)
    if total == 0:
        return None
    m = _nonempty(bins)
    return float(np.sum(bins.counts[m] / total * np.abs(bins.accuracy[m] - bins.confidence[m])))


def _panel(obj: Any, name: str) -> _Panel:
    """The panel of a report (its own ECE and ECE interval) or of bare bins (the ECE,
    or ACE for quantile bins, computed from the bins; no interval)."""
    if _is_bins(obj):
        bins = parse_reliability(obj, name)
        return _Panel(bins, _bins_error(bins), None)
    report = _report(obj, name)
    return _Panel(report.reliability, report.ece, report.interval("ece"))


def _ce_label(bins: ReliabilityBins) -> str:
    return "ACE" if bins.strategy == "quantile" else "ECE"


def _count_text(n: int) -> str:
    """A bin count as drawn above its bar: exact below 10 000, else ``12k``."""
    return str(n) if n < 10_000 else f"{n / 1000:.0f}k"


def _few_label(min_count: int) -> str:
    """Legend name of the marking of bins with fewer than ``min_count`` samples."""
    return f"n < {min_count}: too few samples"


def _few_note(n: int, min_count: int) -> str:
    return f"<br><i>Only {n} sample{'s' if n != 1 else ''} (fewer than {min_count}): too few to judge this bin</i>"


class _BinData(NamedTuple):
    """The non-empty bins of one reliability diagram, as drawn (each array ``(B,)``)."""

    centres: np.ndarray
    widths: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray
    gaps: np.ndarray  # confidence - accuracy: > 0 overconfident
    few: np.ndarray  # bool: fewer than min_count samples
    hover: list[str]


def _bin_data(bins: ReliabilityBins, method: str | None, min_count: int) -> _BinData:
    """The drawn quantities and hover texts of the non-empty bins."""
    prefix = f"<b>{method}</b><br>" if method else ""
    m = _nonempty(bins)
    lo, hi = bins.edges[:-1][m], bins.edges[1:][m]
    acc, conf, counts = bins.accuracy[m], bins.confidence[m], bins.counts[m]
    total = max(_total(bins), 1)
    gaps = conf - acc
    few = counts < min_count
    hover = []
    for a, c, n, l, h, g, f in zip(acc, conf, counts, lo, hi, gaps, few):
        state = "overconfident" if g > 0 else ("underconfident" if g < 0 else "calibrated")
        hover.append(
            f"{prefix}Confidence bin {_edge_pct(l)} - {_edge_pct(h)}<br>"
            f"Samples: {int(n)} ({_pct(n / total)} of all)<br>"
            f"Accuracy: {_pct(a)}<br>Mean confidence: {_pct(c)}<br>"
            f"Gap: {abs(100 * g):.1f} points ({state})" + (_few_note(int(n), min_count) if f else "")
        )
    return _BinData((lo + hi) / 2.0, hi - lo, acc, conf, counts, gaps, few, hover)


def _masked_bar(d: _BinData, sel: np.ndarray, y: np.ndarray, base: Any, marker: dict, legend: dict) -> go.Bar:
    """Bars over the selected bins ``sel`` with their hover texts."""
    return go.Bar(
        x=d.centres[sel].tolist(), y=y[sel].tolist(), base=base, width=d.widths[sel].tolist(), marker=marker,
        hovertext=[h for h, s in zip(d.hover, sel) if s], hovertemplate="%{hovertext}<extra></extra>", **legend,
    )


def _reliability_traces(
    bins: ReliabilityBins,
    colour: str,
    *,
    shown: set[str] | None = None,
    method: str | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
) -> list[go.BaseTraceType]:
    """Traces of one reliability diagram.

    ``shown`` collects the legend entries already drawn (a grid shows each once). With a
    ``method`` (grid panels, each in its own colour) the accuracy bars get no legend
    entry, since one swatch cannot stand for all panels' colours. Non-empty bins with
    fewer than ``min_count`` samples are faded by a translucent white, cross-hatched veil
    drawn over their bars (one extra trace, so the other traces and their legend swatches
    stay as they are), and their hover says so.
    """
    shown = set() if shown is None else shown

    def legend(label: str) -> dict:
        first = label not in shown and not (method and label == "Accuracy")
        shown.add(label)
        return dict(name=label, legendgroup=label, showlegend=first)

    d = _bin_data(bins, method, min_count)
    top = np.maximum(d.accuracy, d.confidence)
    traces: list[go.BaseTraceType] = [
        go.Scatter(
            x=[0.0, 1.0], y=[0.0, 1.0], mode="lines",
            line=dict(color=DIAGONAL_COLOUR, dash="dash", width=1.5),
            hoverinfo="skip", **legend("Perfect calibration"),
        ),
        _masked_bar(d, np.ones(len(d.hover), dtype=bool), d.accuracy, None,
                    dict(color=colour, line=dict(color="white", width=1)), legend("Accuracy")),
    ]
    for label, sel, fill, line in (
        ("Gap: overconfident", d.gaps > 0, OVERCONFIDENT_COLOUR, OVERCONFIDENT_LINE),
        ("Gap: underconfident", d.gaps < 0, UNDERCONFIDENT_COLOUR, UNDERCONFIDENT_LINE),
    ):
        if sel.any():
            marker = dict(color=fill, line=dict(color=line, width=1.2), pattern=dict(shape="/", fgcolor=line, size=6))
            base = np.minimum(d.accuracy, d.confidence)[sel].tolist()
            traces.append(_masked_bar(d, sel, np.abs(d.gaps), base, marker, legend(label)))
    if d.few.any():
        marker = dict(color=_FEW_VEIL, line=dict(color=_FEW_LINE, width=1),
                      pattern=dict(shape="x", fgcolor=_FEW_LINE, size=8, solidity=0.15))
        traces.append(_masked_bar(d, d.few, top, [0.0] * int(d.few.sum()), marker, legend(_few_label(min_count))))
    traces.append(
        go.Scatter(
            x=d.centres.tolist(), y=top.tolist(), mode="text",
            text=[_count_text(int(n)) for n in d.counts],
            # always above the bar: the y axis runs to RELIABILITY_Y_TOP, leaving a band
            # above 100 % for the counts of the tallest bars
            textposition="top center",
            textfont=dict(size=COUNT_FONT_SIZE, color=COUNT_COLOUR), cliponaxis=False,
            hovertext=d.hover, hovertemplate="%{hovertext}<extra></extra>",
            **legend("Samples per bin (n)"),
        )
    )
    return traces


def _style_reliability_axes(fig: go.Figure, row: int | None = None, col: int | None = None,
                            anchor: str = "x", y_title: bool = True) -> None:
    where = {} if row is None else dict(row=row, col=col)
    fig.update_xaxes(
        range=[0, 1], tickformat=".0%", title_text="Confidence", constrain="domain",
        showline=True, mirror=True, zeroline=False, **where,
    )
    fig.update_yaxes(
        range=[0, RELIABILITY_Y_TOP], tickformat=".0%", title_text="Accuracy" if y_title else None,
        scaleanchor=anchor, scaleratio=1, constrain="domain",
        showline=True, mirror=True, zeroline=False, **where,
    )


def _style_axes(fig: go.Figure) -> None:
    """Every axis of ``fig``: translucent grey lines and grid (seen on light and dark pages), and at
    most :data:`MAX_TICKS` ticks on numeric axes."""
    for update in (fig.update_xaxes, fig.update_yaxes):
        update(gridcolor=GRID_COLOUR, linecolor=AXIS_LINE_COLOUR, zerolinecolor=GRID_COLOUR,
               tickcolor=AXIS_LINE_COLOUR, tickfont=dict(size=12), title_standoff=8, automargin=True)
        update(tickmode="auto", nticks=MAX_TICKS, dtick=None, tick0=None, selector=lambda a: a.type != "category")


def _base_layout(fig: go.Figure, title: str, height: int = FIGURE_HEIGHT, narrow: dict | None = None,
                 below: int = NARROW_WIDTH) -> go.Figure:
    """The layout every figure shares: what keeps it legible on a phone's 390 px and in either colour
    scheme. Transparent backgrounds (:data:`TRANSPARENT`); a horizontal legend below the plot, left
    aligned, that wraps into rows on a narrow screen (plotly reserves its height under the x axis; the
    narrow layout is taller by the rows it needs); tight margins; at most :data:`MAX_TICKS` ticks per
    numeric axis; and, for the app's page script, ``layout.meta["responsive"]``: below ``below`` px
    (:data:`NARROW_WIDTH`) the figure's ``"narrow"`` layout (taller, for the legend's extra rows, plus
    ``narrow``: more changes, e.g. a grid's stacked panels, whose ``"height"`` is then the base), and
    ``"wide"``, which undoes it. An untitled figure has no ``layout.title`` at all (Gradio reserves
    100 px above a figure with one)."""
    fig.update_layout(
        template=TEMPLATE,
        font=FONT,
        paper_bgcolor=TRANSPARENT,
        plot_bgcolor=TRANSPARENT,
        margin=dict(l=56, r=16, t=56 if title else 30, b=10, autoexpand=True),
        hoverlabel=dict(font_size=12, bgcolor="white", font_color=TEXT_COLOUR),
        legend=dict(orientation="h", x=0.0, xanchor="left", yref="container", y=0.0, yanchor="bottom",
                    bgcolor=TRANSPARENT, font=dict(size=12), itemsizing="constant", traceorder="normal"),
        modebar=dict(bgcolor=TRANSPARENT, color="rgba(128, 128, 128, 0.8)", activecolor="rgba(128, 128, 128, 1)"),
    )
    if title:
        fig.update_layout(title=dict(text=title, x=0.0, xanchor="left", font=dict(size=16)))
    _style_axes(fig)
    fig.update_layout(height=height)
    narrow = {**_narrow_titles(fig), **(narrow or {})}
    narrow["height"] = (narrow.get("height", height) + _NARROW_EXTRA_HEIGHT
                        + _LEGEND_ROW_HEIGHT * _legend_rows(fig, _NARROW_PLOT_WIDTH))
    wide = {key: _layout_value(fig, key) for key in narrow}
    fig.update_layout(meta={"responsive": {"below": below, "narrow": narrow, "wide": wide}})
    return fig


def _narrow_titles(fig: go.Figure) -> dict:
    """``Plotly.relayout`` changes that put ``fig``'s long title and axis titles on several lines (plotly
    never wraps them; a phone's plot is about 300 px wide and would cut them off)."""
    changes: dict[str, str] = {}
    title = fig.layout.title.text
    if title and len(title) > _NARROW_TITLE_CHARS:
        changes["title.text"] = _wrap(title, _NARROW_TITLE_CHARS)
    for key in fig.layout:
        if key.startswith(("xaxis", "yaxis")):
            text = fig.layout[key].title.text
            if text and len(text) > _NARROW_AXIS_CHARS:
                changes[f"{key}.title.text"] = _wrap(text, _NARROW_AXIS_CHARS)
    return changes


def _legend_rows(fig: go.Figure, width: int) -> int:
    """About how many rows ``fig``'s horizontal legend takes in a plot ``width`` px wide (entries
    packed left to right; an entry is its text at about 7 px a character plus 45 px of swatch and gap)."""
    if fig.layout.showlegend is False:
        return 0
    names = [t.name or "" for t in fig.data if t.showlegend is not False and t.name]
    rows, used = 0, width
    for name in names:
        need = 45 + 7 * len(name)
        if used + need > width:
            rows, used = rows + 1, 0
        used += need
    return rows


def _layout_value(fig: go.Figure, key: str) -> Any:
    """The value of a ``Plotly.relayout`` key (``"height"``, ``"xaxis2.domain"``, ``"annotations[3].y"``)
    in ``fig``'s layout, as JSON."""
    node: Any = fig.layout
    for part in key.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    return list(node) if isinstance(node, tuple) else node


def _ece_text(label: str, ece: float, interval: Sequence[float] | None = None, long: bool = False) -> str:
    text = f"{label} {_pct(ece)}"
    if interval is not None:
        lo, hi = 100 * interval[0], 100 * interval[1]
        text += f"<br>(95 % CI {lo:.1f}–{hi:.1f} %)" if long else f" [{lo:.1f}–{hi:.1f}]"
    return text


# ---------------------------------------------------------------------------
# Public figures
# ---------------------------------------------------------------------------
def reliability_diagram(
    reliability: ReportLike | ReliabilityBins,
    title: str = "",
    colour: str | None = None,
    ece: float | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
) -> go.Figure:
    """Reliability diagram of one method.

    Args:
        reliability: a :class:`~calibprompt.evaluation.metrics.ReliabilityBins`, its ``to_dict()``
            (as in ``calibration_report(...)["reliability"]``), or a whole report: a
            :class:`~calibprompt.evaluation.report.CalibrationReport` or its dict (its
            ``reliability`` is drawn and, when ``ece`` is not given, its ``ece`` and ECE
            interval annotated).
        title: figure title.
        colour: colour of the accuracy bars (default: a neutral slate).
        ece: an ECE in ``[0, 1]`` to annotate in the top-left corner; none if ``None``.
        min_count: int >= 0; non-empty bins with fewer samples are faded by a
            translucent, cross-hatched veil over their bars (trace ``"n < {min_count}: too
            few samples"``), and their hover says "Only n samples (fewer than min_count)".
            ``0`` marks nothing.

    Returns:
        a figure with traces, in order: the dashed diagonal ``"Perfect calibration"``, the
        ``"Accuracy"`` bars (one per non-empty bin, at the bin centre, as wide as the bin),
        ``"Gap: overconfident"`` / ``"Gap: underconfident"`` bars from accuracy to mean
        confidence (each only when some bin is so), ``"n < {min_count}: too few
        samples"`` (only when some bin is so: bars from 0 to the top of those bins'
        bars), and ``"Samples per bin (n)"``, the bin counts as text (11 px) just above
        the top of each bin's bars. Empty bins draw nothing. The y axis runs to
        ``RELIABILITY_Y_TOP`` (110 %) so that the counts of full bars sit above them,
        never on them; the ECE note sits in the top-left corner of the axes. The legend is below the
        plot (see :func:`_base_layout`).
    """
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise ValueError(f"`title` must be a str, but got {title!r}.")
    if colour is not None and (not isinstance(colour, str) or not colour.strip()):
        raise ValueError(f"`colour` must be a CSS colour string or None, but got {colour!r}.")
    min_count = _check_int(min_count, "min_count", 0)
    interval = None
    if _is_bins(reliability):
        bins = parse_reliability(reliability)
    else:
        report = _report(reliability, "reliability")
        bins = report.reliability
        if ece is None:
            ece, interval = report.ece, report.interval("ece")
    if ece is not None:
        ece = _check_fraction(ece, "ece")

    fig = go.Figure(_reliability_traces(bins, colour or DEFAULT_BAR_COLOUR, min_count=min_count))
    fig.update_layout(barmode="overlay", bargap=0)
    _style_reliability_axes(fig)
    _base_layout(fig, title)
    if ece is not None:
        fig.add_annotation(
            # in the top-left corner of the axes, where bars (low confidence, rarely right) stay short
            text=_ece_text(_ce_label(bins), ece, interval, long=True), xref="x domain", yref="y domain",
            x=0.02, y=0.98, xanchor="left", yanchor="top", showarrow=False, align="left",
            font=dict(size=12, color=TEXT_COLOUR), bgcolor=NOTE_BACKGROUND,
            bordercolor=NOTE_BORDER, borderwidth=1, borderpad=4,
        )
    return fig


#: Suffix of temperature-scaled method names; :func:`reliability_grid` gives them their own row.
TS_SUFFIX = " + TS"


def _auto_layout(names: list[str], n_cols: int) -> list[list[str | None]]:
    """Grid cells (row-major, ``None`` = blank) for :func:`reliability_grid` without ``rows``."""
    ts = [n for n in names if n.endswith(TS_SUFFIX)]
    raw = [n for n in names if not n.endswith(TS_SUFFIX)]
    if not ts or not raw:  # one kind only: fill rows of n_cols in method order
        cols = min(n_cols, len(names))
        return [
            names[i : i + cols] + [None] * (cols - len(names[i : i + cols])) for i in range(0, len(names), cols)
        ]
    # one column per raw method with its "<name> + TS" underneath, then unmatched TS ones
    columns: list[tuple[str | None, str | None]] = []
    for r in raw:
        partner = r + TS_SUFFIX
        columns.append((r, partner if partner in ts else None))
    matched = {c[1] for c in columns}
    columns += [(None, t) for t in ts if t not in matched]
    cols = min(n_cols, len(columns))
    layout: list[list[str | None]] = []
    for i in range(0, len(columns), cols):
        block = columns[i : i + cols]
        for part in (0, 1):
            row = [c[part] for c in block] + [None] * (cols - len(block))
            if any(cell is not None for cell in row):
                layout.append(row)
    return layout


def _explicit_layout(rows: Any, names: list[str]) -> list[list[str | None]]:
    """Validate ``rows=`` of :func:`reliability_grid`: every method exactly once."""
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence) or not rows:
        raise ValueError(
            f"`rows` must be a non-empty list of rows, each a list of method names (None = a blank cell), "
            f"but got {rows!r}."
        )
    layout: list[list[str | None]] = []
    seen: list[str] = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
            raise ValueError(f"`rows[{i}]` must be a non-empty list of method names, but got {row!r}.")
        for cell in row:
            if cell is not None and cell not in names:
                raise ValueError(f"`rows[{i}]` names {cell!r}, which is not a method of `reports` ({names}).")
            if cell is not None:
                seen.append(cell)
        layout.append(list(row))
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ValueError(f"`rows` lists {dup} more than once; give every method one cell.")
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"`rows` leaves out {missing}; give every method of `reports` one cell.")
    cols = max(len(r) for r in layout)
    return [r + [None] * (cols - len(r)) for r in layout]


def reliability_grid(
    reports: Mapping[str, ReportLike | ReliabilityBins],
    n_cols: int = defaults.GRID_COLUMNS,
    *,
    rows: Sequence[Sequence[str | None]] | None = None,
    min_count: int = DEFAULT_MIN_COUNT,
) -> go.Figure:
    """One reliability diagram per method, in a grid.

    Layout: with ``rows`` given, one grid row per entry, each a list of method names
    (``None`` = a blank cell; every method exactly once; ``n_cols`` is then unused).
    Otherwise raw and temperature-scaled panels are never mixed in one row: when some
    names end in ``" + TS"`` (:data:`TS_SUFFIX`) and some do not, the raw methods fill one
    row and the TS ones the row below, ``"<name> + TS"`` straight under ``"<name>"``
    (a TS method without its raw one goes to a column of its own, a raw one without TS
    leaves a blank below); with more than ``n_cols`` columns the pair of rows wraps.
    When all names are of one kind the panels fill rows of ``n_cols`` in method order.

    Args:
        reports: ``{method: CalibrationReport}`` (or ``calibration_report(...)`` dicts,
            converted once; a reliability dict or
            :class:`~calibprompt.evaluation.metrics.ReliabilityBins` per method also works; the ECE is
            then computed from the bins).
        n_cols: most panels per row (int >= 1); fewer when there are fewer methods.
        rows: an explicit layout (see above), or None.
        min_count: bins with fewer samples are drawn faded (see :func:`reliability_diagram`).

    Returns:
        a figure with ``len(reports)`` subplots (blank cells have no axes); subplot titles
        in row-major order of the cells are ``"<method> · ECE x.x %"`` (plus the 95 %
        interval when the report has one), and each panel draws the traces of
        :func:`reliability_diagram` in the method's colour. Shared legend entries appear once.
    """
    reports = _check_mapping(reports, "reports", "method names to calibration reports")
    n_cols = _check_int(n_cols, "n_cols", 1)
    min_count = _check_int(min_count, "min_count", 0)
    names = list(reports)
    layout = _auto_layout(names, n_cols) if rows is None else _explicit_layout(rows, names)
    parsed = {n: _panel(reports[n], f"reports[{n!r}]") for n in names}
    colours = method_colours(names)
    n_rows, cols = len(layout), len(layout[0])
    titles = []
    for row in layout:
        for name in row:
            if name is None:
                continue
            bins, ece, interval = parsed[name]
            t = f"<b>{name}</b>"
            if ece is not None:
                t += f" · {_ece_text(_ce_label(bins), ece, interval)}"
            titles.append(t)
    fig = make_subplots(
        rows=n_rows, cols=cols, subplot_titles=titles,
        specs=[[({} if cell is not None else None) for cell in row] for row in layout],
        horizontal_spacing=min(0.08, 0.9 / max(cols - 1, 1)), vertical_spacing=min(0.14, 0.9 / max(n_rows - 1, 1)),
    )
    shown: set[str] = set()
    for r, row in enumerate(layout, start=1):
        first_col = next(c for c, cell in enumerate(row, start=1) if cell is not None)
        for c, name in enumerate(row, start=1):
            if name is None:
                continue
            for trace in _reliability_traces(parsed[name].bins, colours[name], shown=shown, method=name,
                                             min_count=min_count):
                fig.add_trace(trace, row=r, col=c)
            anchor = "x" + fig.get_subplot(r, c).xaxis.plotly_name[len("xaxis"):]
            _style_reliability_axes(fig, row=r, col=c, anchor=anchor, y_title=(c == first_col))
    panels = [fig.get_subplot(r, c) for r, row in enumerate(layout, start=1)
              for c, name in enumerate(row, start=1) if name is not None]
    _base_layout(fig, "", height=_GRID_EXTRA_HEIGHT + _GRID_ROW_HEIGHT * n_rows,
                 narrow=_stacked(panels) if cols > 1 else None, below=max(NARROW_WIDTH, _GRID_COLUMN_WIDTH * cols))
    fig.update_layout(barmode="overlay", bargap=0, margin=dict(t=50))  # the panel titles clear Gradio's label
    fig.update_annotations(font_size=13)
    return fig


def _stacked(panels: list) -> dict:
    """``Plotly.relayout`` changes that stack a grid's panels (subplot references in row-major
    order, their titles being ``layout.annotations`` in the same order) in one full-width column:
    its layout below :data:`NARROW_WIDTH` px, where side-by-side panels would be too small to read."""
    n = len(panels)
    total = n * _STACKED_PANEL_HEIGHT + (n - 1) * _STACKED_GAP
    share, gap = _STACKED_PANEL_HEIGHT / total, _STACKED_GAP / total
    changes: dict[str, Any] = {"height": total + _GRID_EXTRA_HEIGHT + _NARROW_EXTRA_HEIGHT}
    for i, panel in enumerate(panels):
        top = 1.0 - i * (share + gap)
        bottom = max(0.0, top - share)
        changes[f"{panel.xaxis.plotly_name}.domain"] = [0.0, 1.0]
        changes[f"{panel.yaxis.plotly_name}.domain"] = [round(bottom, 6), round(top, 6)]
        changes[f"{panel.yaxis.plotly_name}.title.text"] = "Accuracy"
        changes[f"annotations[{i}].x"] = 0.5
        changes[f"annotations[{i}].y"] = round(top, 6)
    return changes


def reliability_overlay(
    reports: Mapping[str, ReportLike | ReliabilityBins], min_count: int = DEFAULT_MIN_COUNT
) -> go.Figure:
    """All methods' reliability curves on one axis.

    Args:
        reports: ``{method: CalibrationReport}`` (or ``calibration_report(...)`` dicts,
            reliability dicts or bins; see :func:`reliability_grid`).
        min_count: bins with fewer samples say so in their hover, and one more trace,
            ``"n < {min_count}: too few samples"`` (only when some bin is so), marks them
            with a grey cross over their markers.

    Returns:
        a figure with the dashed ``"Perfect calibration"`` diagonal first, then one
        ``lines+markers`` trace per method (named ``"<method> · ECE x.x %"``) through
        ``(mean confidence, accuracy)`` of its non-empty bins; a marker's diameter grows
        with the square root of the bin's count (largest bin of all methods = 22 px); last,
        when some bin has fewer than ``min_count`` samples, the marking trace.
    """
    reports = _check_mapping(reports, "reports", "method names to calibration reports")
    min_count = _check_int(min_count, "min_count", 0)
    names = list(reports)
    parsed = [_panel(reports[n], f"reports[{n!r}]") for n in names]
    colours = method_colours(names)
    max_count = max([int(b.counts.max()) for b, _, _ in parsed] + [1])
    fig = go.Figure(
        go.Scatter(
            x=[0.0, 1.0], y=[0.0, 1.0], mode="lines", name="Perfect calibration",
            line=dict(color=DIAGONAL_COLOUR, dash="dash", width=1.5), hoverinfo="skip",
        )
    )
    few_points: tuple[list, list, list] = ([], [], [])
    for name, (bins, ece, _) in zip(names, parsed):
        m = _nonempty(bins)
        conf, acc, counts = bins.confidence[m], bins.accuracy[m], bins.counts[m]
        lo, hi = bins.edges[:-1][m], bins.edges[1:][m]
        total = max(_total(bins), 1)
        sizes = 6.0 + 16.0 * np.sqrt(counts / max_count)
        few = counts < min_count
        hover = [
            f"<b>{name}</b><br>Confidence bin {_edge_pct(l)} - {_edge_pct(h)}<br>"
            f"Samples: {int(n)} ({_pct(n / total)} of all)<br>Accuracy: {_pct(a)}<br>"
            f"Mean confidence: {_pct(c)}<br>Gap: {100 * (c - a):+.1f} points"
            + (_few_note(int(n), min_count) if f else "")
            for a, c, n, l, h, f in zip(acc, conf, counts, lo, hi, few)
        ]
        label = name if ece is None else f"{name} · {_ece_text(_ce_label(bins), ece)}"
        if few.any():
            few_points[0].extend(conf[few].tolist())
            few_points[1].extend(acc[few].tolist())
            few_points[2].extend([h for h, f in zip(hover, few) if f])
        fig.add_trace(
            go.Scatter(
                x=conf.tolist(), y=acc.tolist(), mode="lines+markers", name=label,
                line=dict(color=colours[name], width=2),
                marker=dict(size=sizes.tolist(), color=colours[name], line=dict(color="white", width=1)),
                customdata=counts.tolist(), hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
                cliponaxis=False,
            )
        )
    if few_points[0]:
        fig.add_trace(
            go.Scatter(
                x=few_points[0], y=few_points[1], mode="markers", name=_few_label(min_count),
                marker=dict(symbol="x-thin-open", size=11, color=DIAGONAL_COLOUR, line=dict(width=1.5, color=DIAGONAL_COLOUR)),
                hovertext=few_points[2], hovertemplate="%{hovertext}<extra></extra>", cliponaxis=False,
            )
        )
    _style_reliability_axes(fig)
    fig.update_yaxes(title_text="Accuracy")
    fig.update_xaxes(title_text="Mean confidence")
    return _base_layout(fig, "Reliability (all methods)")


def _check_correct(correct: Any, data: Mapping[str, np.ndarray]) -> np.ndarray:
    """``correct`` of :func:`confidence_histogram`: one method's 0/1 outcomes, one per confidence."""
    names = list(data)
    if not isinstance(correct, Mapping):
        raise ValueError(f"`correct` must be a dict {{method: 0/1 array}} or None, but got {type(correct).__name__}.")
    unknown = sorted(str(k) for k in correct if k not in data)
    if unknown:
        raise ValueError(f"`correct` has key(s) {unknown} that are not in `confidences` ({names}).")
    if len(names) != 1 or len(correct) != 1:
        raise ValueError(
            "`correct` is supported for a single method only: pass one method in `confidences` "
            f"and the same key in `correct` (got {len(names)} method(s) and {len(correct)} key(s))."
        )
    name = names[0]
    return V.check_outcomes(correct[name], f"correct[{name!r}]", data[name].shape[0])


def _histogram_bar(method: str, label: str, counts: np.ndarray, share: np.ndarray, bin_text: list[str],
                   total: int | None, **bar: Any) -> go.Bar:
    """One histogram series of ``method`` (``label``: its legend name): ``y`` the share of samples per bin,
    ``customdata`` the counts; ``total`` None: shares of all samples (the correct/incorrect split)."""
    what = f"<b>{method}</b>" + (f" - {label.lower()}" if total is None else "")
    of = "all" if total is None else str(total)
    return go.Bar(
        y=share.tolist(), customdata=counts.tolist(),
        hovertext=[f"{what}<br>Confidence {b}<br>Samples: {int(c)} ({_pct(s)} of {of})"
                   for b, c, s in zip(bin_text, counts, share)],
        hovertemplate="%{hovertext}<extra></extra>", **bar,
    )


def _correct_histogram(fig: go.Figure, name: str, conf: np.ndarray, ok: np.ndarray, edges: np.ndarray,
                       bin_text: list[str]) -> float:
    """Stacked correct / incorrect bars of one method and its accuracy line; returns the tallest bin."""
    centres, width, total = ((edges[:-1] + edges[1:]) / 2.0).tolist(), 1.0 / (len(edges) - 1), conf.shape[0]
    for label, sel, colour in (("Correct", ok, CORRECT_COLOUR), ("Incorrect", ~ok, INCORRECT_COLOUR)):
        counts, _ = np.histogram(conf[sel], bins=edges)
        fig.add_trace(_histogram_bar(name, label, counts, counts / total, bin_text, None, x=centres, width=width,
                                     name=label, marker=dict(color=colour, line=dict(color="white", width=1))))
    y_max = float(np.histogram(conf, bins=edges)[0].max() / total)
    acc = float(ok.mean())
    fig.add_trace(_vertical_line(acc, y_max, f"{name}: accuracy {_pct(acc)}", DIAGONAL_COLOUR, "dot"))
    return y_max


def _overlaid_histograms(fig: go.Figure, data: Mapping[str, np.ndarray], edges: np.ndarray,
                         bin_text: list[str], colours: Mapping[str, str]) -> float:
    """Translucent overlaid bars, one series per method; returns the tallest bin."""
    centres, width = ((edges[:-1] + edges[1:]) / 2.0).tolist(), 1.0 / (len(edges) - 1)
    y_max = 0.0
    for name, conf in data.items():
        counts, _ = np.histogram(conf, bins=edges)
        share = counts / conf.shape[0]
        y_max = max(y_max, float(share.max()))
        fig.add_trace(_histogram_bar(
            name, name, counts, share, bin_text, conf.shape[0], x=centres, width=width, name=name, legendgroup=name,
            opacity=0.85 if len(data) == 1 else 0.5,
            marker=dict(color=colours[name], line=dict(color=colours[name], width=1))))
    return y_max


def confidence_histogram(
    confidences: Mapping[str, Any],
    correct: Mapping[str, Any] | None = None,
    n_bins: int = defaults.N_BINS,
) -> go.Figure:
    """Distribution of top-label confidence.

    Args:
        confidences: ``{method: confidences}``, each a 1-D array of top-label confidences
            in ``[0, 1]`` or an ``(N, K)`` probability array (its row maxima are used).
        correct: optional ``{method: 0/1 or bool array}`` of the same length, for exactly
            one method (the same key as ``confidences``): then the correct and incorrect
            predictions are stacked and the accuracy is marked next to the mean confidence.
        n_bins: number of equal-width bins on ``[0, 1]`` (``numpy.histogram`` semantics,
            a confidence of 1.0 in the last bin, as in the metrics).

    Returns:
        a figure of bars (``x`` = bin centres, ``width`` = ``1 / n_bins``, ``y`` = share of
        the method's samples; ``customdata`` = counts) overlaid translucently per method,
        or stacked ``"Correct"`` / ``"Incorrect"``; and for each method a vertical dashed
        line at its mean confidence named ``"<method>: mean confidence x.x %"``.
    """
    confidences = V.check_mapping(confidences, "confidences", "method names to confidence arrays")
    n_bins = V.check_int(n_bins, "n_bins", 1)
    data = {n: V.check_confidences(confidences[n], f"confidences[{n!r}]") for n in confidences}
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_text = [f"{_edge_pct(lo)} - {_edge_pct(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    colours = method_colours(list(data))
    fig = go.Figure()
    if correct is not None:
        ok = _check_correct(correct, data)
        name = next(iter(data))
        y_max = _correct_histogram(fig, name, data[name], ok, edges, bin_text)
        barmode, title = "stack", f"Confidence of {name}: correct vs incorrect"
    else:
        y_max = _overlaid_histograms(fig, data, edges, bin_text, colours)
        barmode, title = "overlay", "Top-label confidence"
    for name, conf in data.items():
        mean = float(conf.mean())
        colour = DIAGONAL_COLOUR if correct is not None else colours[name]
        fig.add_trace(
            _vertical_line(mean, y_max, f"{name}: mean confidence {_pct(mean)}", colour, "dash", group=name)
        )
    fig.update_layout(barmode=barmode, bargap=0)
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title_text="Top-label confidence", showline=True, zeroline=False)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", title_text="Share of samples",
                     range=[0, max(y_max, 1e-9) * 1.12], showline=True)
    return _base_layout(fig, title)


def _vertical_line(x: float, y_max: float, label: str, colour: str, dash: str, group: str | None = None) -> go.Scatter:
    top = max(y_max, 1e-9) * 1.08
    return go.Scatter(
        x=[x, x], y=[0.0, top], mode="lines", name=label, legendgroup=group,
        line=dict(color=colour, dash=dash, width=2),
        hovertemplate=f"{label}<extra></extra>",
    )


def _as_points(series: Any, name: str) -> tuple[list[float], list[float | None]]:
    if isinstance(series, (str, bytes, Mapping)) or not isinstance(series, (Sequence, np.ndarray)):
        raise ValueError(f"`{name}` must be a list of (step, loss) pairs, but got {type(series).__name__}.")
    steps: list[float] = []
    losses: list[float | None] = []
    for i, point in enumerate(series):
        if isinstance(point, (str, bytes)) or not isinstance(point, (Sequence, np.ndarray)) or len(point) != 2:
            raise ValueError(f"`{name}[{i}]` must be a (step, loss) pair, but got {point!r}.")
        step, loss = point[0], point[1]
        if isinstance(step, np.generic):
            step = step.item()
        if isinstance(loss, np.generic):
            loss = loss.item()
        if not _is_real(step) or not math.isfinite(float(step)):
            raise ValueError(f"`{name}[{i}]`: the step must be a finite number, but got {step!r}.")
        if loss is not None and not _is_real(loss):
            raise ValueError(f"`{name}[{i}]`: the loss must be a number, but got {loss!r}.")
        steps.append(int(step) if float(step).is_integer() else float(step))
        # a diverged (NaN/inf) or missing loss is a gap in the line, not an error
        losses.append(float(loss) if loss is not None and math.isfinite(float(loss)) else None)
    return steps, losses


def loss_curve(
    points: Sequence[tuple[int, float]] | Mapping[str, Sequence[tuple[int, float]]],
    title: str = "Training loss",
) -> go.Figure:
    """Training loss against optimisation step, for a live chart.

    Args:
        points: ``[(step, loss), ...]`` (one series named ``"loss"``), or
            ``{series name: [(step, loss), ...]}`` for several (e.g. the total and the
            parts of a composite loss). Points are drawn in the order given; a NaN/inf
            loss (diverged step) leaves a gap in the line.
        title: figure title.

    Returns:
        one ``Scatter`` per non-empty series; with no points at all, a figure without
        traces that says "No steps yet". ``layout.uirevision`` is fixed so that redrawing
        with more points keeps the user's zoom.
    """
    if not isinstance(title, str):
        raise ValueError(f"`title` must be a str, but got {title!r}.")
    if isinstance(points, Mapping):
        for key in points:
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"every key of `points` must be a non-empty str (a series name), but got {key!r}.")
        series = {k: _as_points(v, f"points[{k!r}]") for k, v in points.items()}
    elif points is None:
        series = {}
    else:
        series = {"loss": _as_points(points, "points")}
    fig = go.Figure()
    for i, (name, (steps, losses)) in enumerate(series.items()):
        if not steps:
            continue
        colour = SERIES_PALETTE[i % len(SERIES_PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=steps, y=losses, mode="lines+markers" if len(steps) <= 60 else "lines", name=name,
                line=dict(color=colour, width=2.5 if i == 0 else 1.8), marker=dict(size=5, color=colour),
                connectgaps=False, hovertemplate=f"<b>{name}</b><br>step %{{x}}<br>loss %{{y:.4f}}<extra></extra>",
            )
        )
    fig.update_layout(uirevision="loss-curve", showlegend=len(fig.data) > 1)
    fig.update_xaxes(title_text="Step", showline=True, zeroline=False)
    fig.update_yaxes(title_text="Loss", showline=True, zeroline=False)
    _base_layout(fig, title)
    if not fig.data:
        fig.update_xaxes(range=[0, 1], showticklabels=False)
        fig.update_yaxes(range=[0, 1], showticklabels=False)
        fig.add_annotation(
            text="No steps yet", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
            font=dict(size=16, color="#888888"),
        )
    return fig


def _classwise_values(value: Any, name: str) -> np.ndarray:
    """The classwise ECE of a report (already validated), or a plain list of fractions."""
    if isinstance(value, (CalibrationReport, Evaluation, Mapping)):
        return np.array(as_calibration_report(value, name).classwise_ece, dtype=np.float64)
    return np.array([_check_fraction(v, name) for v in V.check_vector(value, name).tolist()], dtype=np.float64)


def classwise_ece_bars(
    classwise: Mapping[str, ReportLike | Sequence[float]], classnames: Sequence[str]
) -> go.Figure:
    """Grouped bars of the classwise ECE of each method.

    Args:
        classwise: ``{method: CalibrationReport}`` (its ``classwise_ece`` is drawn; a
            ``calibration_report(...)`` dict is converted once), or, as before,
            ``{method: report["classwise_ece"]}``, each a list of one value in ``[0, 1]``
            per class.
        classnames: the class names, in the order of the values (unique, non-empty).

    Returns:
        one ``Bar`` trace per method (``x`` = class names, ``y`` = classwise ECE), named
        ``"<method> (mean x.x %)"``, grouped.
    """
    classwise = _check_mapping(classwise, "classwise", "method names to per-class ECE lists")
    if isinstance(classnames, (str, bytes)) or not isinstance(classnames, (Sequence, np.ndarray)):
        raise ValueError(f"`classnames` must be a list of str, but got {classnames!r}.")
    classnames = list(classnames)
    if not classnames or not all(isinstance(c, str) and c.strip() for c in classnames):
        raise ValueError(f"`classnames` must be a non-empty list of non-empty str, but got {classnames!r}.")
    if len(set(classnames)) != len(classnames):
        dup = sorted({c for c in classnames if classnames.count(c) > 1})
        raise ValueError(f"`classnames` must be unique, but {dup} repeat.")
    k = len(classnames)
    names = list(classwise)
    colours = method_colours(names)
    fig = go.Figure()
    for name in names:
        vals = _classwise_values(classwise[name], f"classwise[{name!r}]")
        if vals.shape[0] != k:
            raise ValueError(
                f"`classwise[{name!r}]` has {vals.shape[0]} values but there are {k} classnames; "
                "pass one classwise ECE per class, in the order of `classnames`."
            )
        fig.add_trace(
            go.Bar(
                x=classnames, y=vals.tolist(), name=f"{name} (mean {_pct(float(vals.mean()))})",
                marker=dict(color=colours[name]),
                hovertext=[f"<b>{name}</b><br>{c}: classwise ECE {_pct(v)}" for c, v in zip(classnames, vals)],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    # plotly slants long class names under their bars, or on a phone stands them upright: room for the longest
    longest = max(len(c) for c in classnames)
    fig.update_xaxes(type="category", title_text="Class", showline=True)
    _base_layout(fig, "Classwise ECE", height=FIGURE_HEIGHT + _SLANTED_CHAR_HEIGHT * longest,
                 narrow={"height": FIGURE_HEIGHT + _UPRIGHT_CHAR_HEIGHT * longest})
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.05)
    fig.update_yaxes(title_text="Classwise ECE", tickformat=".1%", rangemode="tozero", showline=True)
    return fig


def _wrap(text: str, width: int = 14) -> str:
    """``text`` on lines of at most ``width`` characters (words kept whole), joined by ``<br>``."""
    import textwrap

    return "<br>".join(textwrap.wrap(text, width)) or text


def risk_coverage_curves(curves: Mapping[str, Mapping[str, Any]], threshold: float | None = None) -> go.Figure:
    """Selective risk against coverage, one line per method (most confident answers kept first).

    Args:
        curves: ``{method: risk_coverage(probs, labels)}`` (keys ``coverage``, ``risk``, ``thresholds``,
            ``aurc``); the legend shows each method's AURC (lower is better).
        threshold: a confidence threshold to mark on each curve (the answers at or above it are kept).
    """
    fig = go.Figure()
    colours = method_colours(curves)
    for name, curve in curves.items():
        coverage = np.asarray(curve["coverage"], dtype=float)
        risk = np.asarray(curve["risk"], dtype=float)
        fig.add_trace(go.Scatter(
            x=100 * coverage, y=100 * risk, mode="lines", name=f"{name} (AURC {100 * float(curve['aurc']):.1f} %)",
            line=dict(color=colours[name], width=2.2),
            hovertemplate=f"<b>{name}</b><br>coverage %{{x:.1f}} %<br>error %{{y:.1f}} %<extra></extra>"))
        if threshold is not None:
            kept = np.asarray(curve["thresholds"], dtype=float) >= threshold
            if kept.any():
                k = int(np.flatnonzero(kept)[-1])
                fig.add_trace(go.Scatter(
                    x=[100 * coverage[k]], y=[100 * risk[k]], mode="markers", showlegend=False,
                    marker=dict(size=10, color=colours[name], symbol="diamond", line=dict(color="#111111", width=1)),
                    hovertemplate=f"<b>{name}</b> at confidence >= {threshold:.2f}<br>coverage %{{x:.1f}} %"
                                  "<br>error %{y:.1f} %<extra></extra>"))
    fig.update_xaxes(title_text="Coverage (% of cases answered, most confident first)", range=[0, 100],
                     showline=True)
    fig.update_yaxes(title_text="Error among answered cases (%)", rangemode="tozero", showline=True)
    return _base_layout(fig, "Risk-coverage: error among the answers kept")


# ---------------------------------------------------------------------------
# Figures out: image files and a self-contained HTML document
# ---------------------------------------------------------------------------
#: File suffixes :func:`export_figure` writes, and the kaleido format of each.
EXPORT_FORMATS: dict[str, str] = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: The Debian/Ubuntu Chromium, used by :func:`export_figure` when present.
DEBIAN_CHROMIUM = "/usr/bin/chromium"


def _browser_path(browser_path: str | None) -> str | None:
    """The browser kaleido should drive: the argument, else ``$BROWSER_PATH``, else
    Debian's chromium when installed, else ``None`` (kaleido's own search)."""
    if browser_path is not None:
        return str(browser_path)
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    if os.path.isfile(DEBIAN_CHROMIUM) and os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    return None


def _export_width(fig: go.Figure) -> int:
    """Layout width of an export: the figure's own, else 700 px per single panel, or
    380 px per column of a grid (at most 1600)."""
    if fig.layout.width:
        return int(fig.layout.width)
    domains = set()
    for key in fig.layout:
        if key.startswith("xaxis"):
            dom = fig.layout[key].domain
            if dom is not None:
                domains.add(tuple(round(float(v), 6) for v in dom))
    n_cols = len(domains)
    return 700 if n_cols <= 1 else min(1600, 380 * n_cols)


def export_figure(
    fig: go.Figure,
    path: Any,
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float | None = None,
    browser_path: str | None = None,
) -> Path:
    """Write a figure to a PNG, SVG or PDF file, chosen by the path's suffix, via kaleido.

    kaleido (>= 1) renders in a headless Chrome-family browser. The browser is, in order:
    ``browser_path``; the ``BROWSER_PATH`` environment variable; Debian's
    ``/usr/bin/chromium`` when it exists; otherwise kaleido's own search (a Chrome it
    downloaded with ``kaleido_get_chrome``, or one on ``PATH``). Missing parent folders
    are created. This is the one function of this module that writes anything. The file is
    drawn on white (:func:`on_white`), whatever the app's colour scheme.

    Args:
        fig: the figure.
        path: target file; its suffix (case-insensitive) is ``.png``, ``.svg`` or ``.pdf``.
        width, height: layout size in px (default: the figure's own; else 700 px wide per
            single panel or 380 px per grid column, and its ``layout.height`` or 400 px).
        scale: pixel density of PNGs (default 2, for sharp text); vector formats use 1.
        browser_path: the browser executable to drive (see above).

    Returns:
        the path written, as a :class:`pathlib.Path`.

    Raises:
        ValueError: an unsupported suffix (the message names the allowed ones) or a
            non-figure.
        RuntimeError: kaleido is not installed or could not start the browser (the message
            says which browser was tried).
    """
    if not isinstance(fig, go.Figure):
        raise ValueError(f"`fig` must be a plotly.graph_objects.Figure, but got {type(fig).__name__}.")
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(
            f"`path` must end in one of {sorted(EXPORT_FORMATS)} (the image format), but got {str(target)!r}."
        )
    fmt = EXPORT_FORMATS[suffix]
    for value, name in ((width, "width"), (height, "height")):
        if value is not None:
            _check_int(value, name, 1)
    if scale is not None and (not _is_real(scale) or not 0 < float(scale) <= 10):
        raise ValueError(f"`scale` must be a number in (0, 10], but got {scale!r}.")
    try:
        import kaleido
    except ImportError as exc:
        raise RuntimeError(f"export_figure needs kaleido >= 1 (pip install kaleido): {exc}") from None
    opts = dict(
        format=fmt,
        width=int(width or _export_width(fig)),
        height=int(height or fig.layout.height or FIGURE_HEIGHT),
        scale=float(scale if scale is not None else (2 if fmt == "png" else 1)),
    )
    browser = _browser_path(browser_path)
    kopts = {"path": browser} if browser else {}
    try:
        data = kaleido.calc_fig_sync(on_white(fig), opts=opts, kopts=kopts)
    except Exception as exc:  # ChromeNotFoundError, a browser that fails to start, ...
        where = browser or "kaleido's default search"
        raise RuntimeError(
            f"kaleido could not render the figure as {fmt.upper()} with the browser {where!r} "
            f"({type(exc).__name__}: {exc}). Install Chromium (apt-get install chromium) or set "
            "BROWSER_PATH to a Chrome-family browser."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def on_white(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` painted on white (:data:`EXPORT_BACKGROUND`): figures are transparent so that in
    the app they take the page's colour, but a file may be opened anywhere (a dark image viewer, a slide),
    so what :func:`export_figure` writes is always dark text on white."""
    out = go.Figure(fig)
    out.update_layout(paper_bgcolor=EXPORT_BACKGROUND, plot_bgcolor=EXPORT_BACKGROUND)
    return out


_HTML_STYLE = """
body { font-family: Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif; color: #222; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table.calibprompt-table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0 1.5rem; }
table.calibprompt-table th, table.calibprompt-table td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem;
       text-align: right; }
table.calibprompt-table th { background: #f4f5f7; }
dl.calibprompt-details { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; margin: 1rem 0 2rem; }
dl.calibprompt-details dt { font-weight: 600; } dl.calibprompt-details dd { margin: 0; }
"""


def _check_html_inputs(figs: Any, title: Any, tables: Any, details: Any) -> tuple[Mapping, Mapping]:
    """The arguments of :func:`figure_html`, checked; returns ``(tables, details)`` with ``None`` as ``{}``."""
    import pandas as pd

    if not isinstance(title, str):
        raise ValueError(f"`title` must be a str, but got {title!r}.")
    if not isinstance(figs, Mapping):
        raise ValueError(f"`figs` must be a dict mapping headings to figures, but got {type(figs).__name__}.")
    tables = {} if tables is None else tables
    if not isinstance(tables, Mapping):
        raise ValueError(f"`tables` must be a dict mapping headings to DataFrames or None, but got {type(tables).__name__}.")
    for what, items, kind in (("figs", figs, go.Figure), ("tables", tables, pd.DataFrame)):
        for key, value in items.items():
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"every key of `{what}` must be a non-empty str (a heading), but got {key!r}.")
            if not isinstance(value, kind):
                raise ValueError(
                    f"`{what}[{key!r}]` must be a {kind.__module__.split('.')[0]}.{kind.__name__}, "
                    f"but got {type(value).__name__}."
                )
    if not figs and not tables:
        raise ValueError("`figs` and `tables` are both empty; pass at least one figure or table.")
    details = {} if details is None else details
    if not isinstance(details, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in details.items()):
        raise ValueError(f"`details` must be a dict of str labels to str texts, or None, but got {details!r}.")

    return tables, details


def figure_html(
    figs: Mapping[str, go.Figure],
    title: str = "Calibration report",
    tables: Mapping[str, Any] | None = None,
    details: Mapping[str, str] | None = None,
) -> str:
    """A self-contained HTML document of figures and tables, for study reports.

    The plotly.js bundle is inlined once, in the ``<head>`` (so the file works offline);
    each figure is a ``<div id="figure-i">`` with its own small ``Plotly.newPlot`` call,
    under an ``<h2>`` with its name, in mapping order; then each table as an HTML
    ``<table class="calibprompt-table">`` (``DataFrame.to_html``; the index is left out when
    it is the default range index) under an ``<h2>``. With ``details``, a
    ``<dl class="calibprompt-details">`` of what the report is about (model, dataset, settings,
    date, version, ...) comes first, under the title. Names, details, cells and the title are
    HTML-escaped. Deterministic: the same input gives the same string.

    Args:
        figs: ``{heading: Figure}`` (may be empty when there are tables).
        title: the document's ``<title>`` and ``<h1>``.
        tables: ``{heading: pandas.DataFrame}``, or None.
        details: ``{label: text}`` (both str), in order, or None.

    Returns:
        the HTML document as a str.
    """
    import html

    import pandas as pd
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    tables, details = _check_html_inputs(figs, title, tables, details)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_HTML_STYLE}</style>",
    ]
    if figs:
        parts.append(f'<script type="text/javascript">{get_plotlyjs()}</script>')
    parts += ["</head>", "<body>", f"<h1>{html.escape(title)}</h1>"]
    if details:
        items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in details.items())
        parts.append(f'<dl class="calibprompt-details">{items}</dl>')
    for i, (name, fig) in enumerate(figs.items()):
        div = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=f"figure-{i}",
            config={"displaylogo": False, "responsive": True},
        )
        parts.append(f'<section class="figure"><h2>{html.escape(name)}</h2>\n{div}\n</section>')
    for name, df in tables.items():
        table = df.to_html(
            classes="calibprompt-table", border=0, na_rep="–", escape=True,
            index=not isinstance(df.index, pd.RangeIndex),
        )
        parts.append(f'<section class="table"><h2>{html.escape(name)}</h2>\n{table}\n</section>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
