"""Server-rendered SVG charts for the dashboard (issue #19): numbers in, an inline ``<svg>`` string out.

Why SVG written here rather than a charting library: the dashboard must
ship everything it shows (no CDN) and its Content-Security-Policy allows no
inline script, so a JavaScript chart would need a bundled library and a
script file for a handful of bars. Inline SVG needs neither, prints, scales
with the page and is readable by screen readers through ``<title>`` (SVG 1.1
§5.4, WAI-ARIA ``role="img"``).

Pure: values in, text out; no I/O, no clock. Every piece of text that
reaches the SVG (titles, day labels, series names) is escaped with
:func:`markupsafe.escape` — names may come from the sheet or a campaign id —
and the result is a :class:`markupsafe.Markup`, so a Jinja2 template with
autoescape inserts it as it is without a ``|safe`` that could hide a hole.
Colours are SVG presentation attributes, which a CSP without
``'unsafe-inline'`` still allows (CSP3 restricts ``style`` attributes, not
presentation attributes).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 560  # viewBox units; the page's CSS scales the SVG to its box (about its own size on a laptop)
HEIGHT = 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 40, 8, 44, 26  # margins: y-axis numbers left, title and legend on top, labels below
_MAX_X_LABELS = 8  # at most this many day labels under the axis; every value still has its <title>
PALETTE = ("#2f6fb0", "#2e9a5b", "#c0392b", "#b7791f", "#7b4fa0")  # sent, replies, bounces, unsubscribes, clicks


@dataclass(frozen=True, slots=True)
class Series:
    """One named row of numbers, one per label (day), drawn in ``colour``."""

    name: str
    values: tuple[float, ...]
    colour: str = PALETTE[0]


def _nice_max(top: float) -> float:
    """The axis' top: ``top`` rounded up to 1, 2 or 5 times a power of ten (at least 1), so grid lines read well."""
    if top <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 5, 10):
        if top <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")


def _text_width(text: str) -> float:
    """Roughly how wide ``text`` is at 12 units: wide (CJK) characters count about twice a Latin one (UAX #11)."""
    return sum(12.0 if unicodedata.east_asian_width(c) in "WF" else 7.0 for c in text)


def _frame(title: str, labels: Sequence[str], top: float) -> list[str]:
    """The title, the y-axis grid (0, half, top) and a thinned row of x labels."""
    plot_h = HEIGHT - _TOP - _BOTTOM
    parts = [f'<text class="chart-title" x="0" y="16" font-size="15" font-weight="600" fill="#1f2328">'
             f"{escape(title)}</text>"]
    for frac in (0.0, 0.5, 1.0):
        y = _TOP + plot_h * (1 - frac)
        parts.append(f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" font-size="12" text-anchor="end" fill="#59636e">'
                     f"{_number(top * frac)}</text>")
    n = len(labels)
    every = max(1, math.ceil(n / _MAX_X_LABELS))
    slot = (WIDTH - _LEFT - _RIGHT) / max(n, 1)
    for i in range(0, n, every):
        x = _LEFT + slot * (i + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" font-size="12" text-anchor="middle" fill="#59636e">'
                     f"{escape(labels[i])}</text>")
    return parts


def _legend(series: Sequence[Series]) -> list[str]:
    """A colour key under the title, right-aligned: a square and the name for each series."""
    parts = []
    x = WIDTH - _RIGHT - sum(18 + _text_width(s.name) for s in series)
    for s in series:
        parts.append(f'<g class="legend"><rect x="{x:.1f}" y="24" width="10" height="10" '
                     f'fill="{escape(s.colour)}"/><text x="{x + 13:.1f}" y="33" font-size="12" fill="#1f2328">'
                     f"{escape(s.name)}</text></g>")
        x += 18 + _text_width(s.name)
    return parts


def _svg(title: str, body: list[str], css: str) -> Markup:
    return Markup(  # noqa: S704 - every text piece in ``body`` went through escape() above
        f'<svg class="chart {escape(css)}" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(body)}</svg>')


def _check(labels: Sequence[str], series: Sequence[Series]) -> None:
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"chart series {s.name!r}: {len(s.values)} values for {len(labels)} labels "
                             "(expected one value per label)")
        if any(v < 0 or not math.isfinite(v) for v in s.values):
            raise ValueError(f"chart series {s.name!r}: values must be finite numbers of 0 or more")


def bar_chart(title: str, labels: Sequence[str], series: Series, *, css: str = "bars") -> Markup:
    """One bar per label (e.g. messages sent per day), each with a ``<title>`` "label: value" tooltip.

    Raises ValueError when the values do not match the labels one to one
    or one is negative (a caller's bug, never a user's).
    """
    _check(labels, (series,))
    top = _nice_max(max(series.values, default=0))
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT - _RIGHT) / max(len(labels), 1)
    body = _frame(title, labels, top)
    for i, (label, v) in enumerate(zip(labels, series.values, strict=True)):
        h = plot_h * v / top
        body.append(f'<rect class="bar" x="{_LEFT + slot * i + slot * 0.15:.1f}" y="{_TOP + plot_h - h:.1f}" '
                    f'width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{escape(series.colour)}" '
                    f'data-value="{_number(v)}"><title>{escape(label)}: {_number(v)} {escape(series.name)}'
                    "</title></rect>")
    return _svg(title, body, css)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], *, css: str = "lines") -> Markup:
    """One polyline per series over the labels (replies, bounces, unsubscribes, clicks per day) and a legend.

    Each point is a small circle with a ``<title>`` tooltip, so a single day
    with a value is visible and every number is readable without script.
    Raises ValueError as :func:`bar_chart` does.
    """
    _check(labels, series)
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT - _RIGHT) / max(len(labels), 1)
    body = _frame(title, labels, top)
    body += _legend(series)
    for s in series:
        points = [(_LEFT + slot * (i + 0.5), _TOP + plot_h * (1 - v / top)) for i, v in enumerate(s.values)]
        colour = escape(s.colour)
        body.append(f'<g class="series" data-name="{escape(s.name)}">')
        if len(points) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                        + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        for (x, y), label, v in zip(points, labels, s.values, strict=True):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}" data-value="{_number(v)}">'
                        f"<title>{escape(label)}: {_number(v)} {escape(s.name)}</title></circle>")
        body.append("</g>")
    return _svg(title, body, css)


def grouped_bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], *, css: str = "groups") -> Markup:
    """Side-by-side bars, one per series, for each label (replies, bounces, unsubscribes per campaign step).

    For categories that are not a sequence (campaign steps) a line between
    them would suggest a trend that is not there; bars do not. Raises
    ValueError as :func:`bar_chart` does.
    """
    _check(labels, series)
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT - _RIGHT) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    body = _frame(title, labels, top) + _legend(series)
    for j, s in enumerate(series):
        body.append(f'<g class="series" data-name="{escape(s.name)}">')
        for i, (label, v) in enumerate(zip(labels, s.values, strict=True)):
            h = plot_h * v / top
            body.append(f'<rect class="bar" x="{_LEFT + slot * (i + 0.1) + bar * j:.1f}" '
                        f'y="{_TOP + plot_h - h:.1f}" width="{bar * 0.9:.1f}" height="{h:.1f}" '
                        f'fill="{escape(s.colour)}" data-value="{_number(v)}"><title>{escape(label)}: '
                        f"{_number(v)} {escape(s.name)}</title></rect>")
        body.append("</g>")
    return _svg(title, body, css)
