"""Small server-side charts as inline SVG strings: bars, stacked bars, lines.

No scripts, no fonts or styles fetched: the SVG is self-contained and drawn by any browser
offline. Every mark carries `data-series`, `data-label` and `data-value` attributes and a
<title> tooltip, so the numbers stay readable (and testable) without the picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
OTHER = "#999999"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
Fmt = Callable[[float], str]


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def number(v: float) -> str:
    if v != v:  # NaN: no data in that bucket
        return "n/a"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"


def percent(v: float) -> str:
    return "n/a" if v != v else f"{v:.0%}"


def nice_ticks(top: float, count: int = 4, integer: bool = False) -> list[float]:
    """0 and round steps (1, 2, 5 x 10^k; at least 1 for counts) up to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(step, 1)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


@dataclass(frozen=True, slots=True)
class _Frame:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


def _open(title: str, frame: _Frame, kind: str) -> list[str]:
    t = escape(title)
    return [f'<svg class="chart chart-{kind}" role="img" aria-label="{t}" '
            f'width="{frame.width}" height="{frame.height}" '
            f'viewBox="0 0 {frame.width} {frame.height}" {FONT}>',
            f"<title>{t}</title>",
            f'<rect width="{frame.width}" height="{frame.height}" fill="#ffffff"/>']


def _empty(title: str, width: int, height: int) -> str:
    frame = _Frame(width, height, 0, 0, 0, 0)
    parts = _open(title, frame, "empty")
    parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                 f'fill="#666">no data in this period</text></svg>')
    return "".join(parts)


def _y_axis(frame: _Frame, ticks: list[float], fmt: Fmt) -> list[str]:
    parts = []
    top = ticks[-1]
    for tick in ticks:
        y = frame.top + frame.plot_h * (1 - tick / top)
        parts.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                     f'fill="#444">{escape(fmt(tick))}</text>')
    return parts


def _x_labels(frame: _Frame, labels: Sequence[str], slot: float) -> list[str]:
    every = max(1, math.ceil(len(labels) / max(1, frame.plot_w // 60)))
    parts = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = frame.left + slot * (i + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{frame.height - frame.bottom + 15}" '
                     f'text-anchor="middle" fill="#444">{escape(label)}</text>')
    return parts


def _legend(frame: _Frame, names: Sequence[str]) -> list[str]:
    parts, x = [], float(frame.left)
    y = frame.height - 12
    for i, name in enumerate(names):
        parts.append(f'<rect x="{x:.1f}" y="{y - 9}" width="10" height="10" '
                     f'fill="{color(i)}"/>')
        parts.append(f'<text x="{x + 14:.1f}" y="{y}" fill="#222">{escape(name)}</text>')
        x += 24 + 6.5 * len(name)
    return parts


def _mark(name: str, label: str, value: float, fmt: Fmt) -> str:
    return (f'data-series="{escape(name)}" data-label="{escape(label)}" '
            f'data-value="{value:g}"><title>{escape(label)} · {escape(name)}: '
            f"{escape(fmt(value))}</title>")


def stacked_bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
                      width: int = 560, height: int = 260, fmt: Fmt = number) -> str:
    """One column per label, one coloured segment per series (a single series: plain bars)."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    if not labels or not any(totals):
        return _empty(title, width, height)
    legend = len(series) > 1
    frame = _Frame(width, height, 48, 12, 12, 44 if legend else 24)
    ticks = nice_ticks(max(totals), integer=fmt is number)
    slot = frame.plot_w / len(labels)
    bar_w = max(1.0, slot * 0.75)
    parts = _open(title, frame, "bar") + _y_axis(frame, ticks, fmt)
    scale = frame.plot_h / ticks[-1]
    for i, label in enumerate(labels):
        x = frame.left + slot * i + (slot - bar_w) / 2
        y = frame.top + frame.plot_h
        for j, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            h = value * scale
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{color(j)}" '
                         + _mark(s.name, label, value, fmt) + "</rect>")
    parts += _x_labels(frame, labels, slot)
    if legend:
        parts += _legend(frame, [s.name for s in series])
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *,
              width: int = 560, fmt: Fmt = number, series: str = "count",
              top: float | None = None) -> str:
    """Horizontal bars, one per label (long labels such as refusal reasons read well);
    bar length is relative to `top`, or to the largest value."""
    if not labels or not any(values):
        return _empty(title, width, 80)
    label_w = min(220, 16 + int(6.2 * max(len(label) for label in labels)))
    row = 22
    frame = _Frame(width, 24 + row * len(labels), label_w, 56, 8, 16)
    top = top or max(values)
    parts = _open(title, frame, "hbar")
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = frame.top + i * row
        w = frame.plot_w * value / top if top and value == value else 0
        shown = label if len(label) <= 34 else label[:33] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" '
                     f'fill="#222">{escape(shown)}</text>')
        parts.append(f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" '
                     f'height="{row - 6}" fill="{color(0)}" '
                     + _mark(series, label, value, fmt) + "</rect>")
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" '
                     f'fill="#444">{escape(fmt(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], *,
               width: int = 560, height: int = 260, fmt: Fmt = number,
               top: float | None = None) -> str:
    """One polyline per series over the labels; NaN values leave a gap."""
    finite = [v for s in series for v in s.values if v == v]
    if not labels or not finite or not any(finite):
        return _empty(title, width, height)
    frame = _Frame(width, height, 48, 12, 12, 44)
    ticks = nice_ticks(top if top is not None else max(finite), integer=fmt is number)
    slot = frame.plot_w / len(labels)
    scale = frame.plot_h / ticks[-1]
    parts = _open(title, frame, "line") + _y_axis(frame, ticks, fmt)
    points: list[str] = []
    for j, s in enumerate(series):
        runs: list[list[str]] = [[]]
        for i, value in enumerate(s.values):
            if value != value:
                runs.append([])
                continue
            x = frame.left + slot * (i + 0.5)
            y = frame.top + frame.plot_h - value * scale
            runs[-1].append(f"{x:.1f},{y:.1f}")
            points.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" '
                          f'fill="{color(j)}" ' + _mark(s.name, labels[i], value, fmt)
                          + "</circle>")
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline class="line" data-series="{escape(s.name)}" '
                             f'points="{" ".join(run)}" fill="none" stroke="{color(j)}" '
                             f'stroke-width="2"/>')
    parts += points
    parts += _x_labels(frame, labels, slot)
    parts += _legend(frame, [s.name for s in series])
    parts.append("</svg>")
    return "".join(parts)
