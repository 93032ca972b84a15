from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from gateway.report.svg import (
    PALETTE,
    Series,
    bar_chart,
    line_chart,
    nice_ticks,
    number,
    percent,
    stacked_bar_chart,
)


def marks(svg: str) -> list[dict[str, str]]:
    root = ET.fromstring(svg)  # well-formed XML, so any browser parses it the same way
    return [el.attrib for el in root.iter() if "data-value" in el.attrib]


def test_stacked_bars_stack_each_series_in_its_colour() -> None:
    svg = stacked_bar_chart("Requests", ["a", "b"], [Series("x", [1, 2]), Series("y", [3, 0])])
    got = [(m["data-series"], m["data-label"], m["data-value"], m["fill"]) for m in marks(svg)]
    assert got == [("x", "a", "1", PALETTE[0]), ("y", "a", "3", PALETTE[1]),
                   ("x", "b", "2", PALETTE[0])]
    heights = {m["data-value"]: float(m["height"]) for m in marks(svg)}
    assert heights["3"] == pytest.approx(3 * heights["1"], rel=0.02)
    assert "<title>a · y: 3</title>" in svg and ">y</text>" in svg  # tooltip and legend


def test_horizontal_bars_scale_to_top_and_escape_labels() -> None:
    svg = bar_chart("Reasons", ["<script>", "b"], [0.5, 0.25], top=1.0, fmt=percent)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    widths = [float(m["width"]) for m in marks(svg)]
    assert widths[0] == pytest.approx(2 * widths[1], rel=0.02)
    assert ">50%</text>" in svg


def test_line_chart_breaks_at_missing_values() -> None:
    svg = line_chart("Coverage", ["1", "2", "3", "4", "5"],
                     [Series("c", [0.5, 0.6, float("nan"), 0.7, 0.8])], fmt=percent, top=1.0)
    assert len(re.findall(r'<polyline class="line"', svg)) == 2
    assert [m["data-value"] for m in marks(svg)] == ["0.5", "0.6", "0.7", "0.8"]
    ET.fromstring(svg)


@pytest.mark.parametrize("svg", [
    stacked_bar_chart("t", [], []), stacked_bar_chart("t", ["a"], [Series("x", [0])]),
    bar_chart("t", [], []), line_chart("t", ["a"], [Series("x", [float("nan")])]),
])
def test_empty_charts_say_so(svg: str) -> None:
    assert "chart-empty" in svg and "no data" in svg and not marks(svg)


def test_ticks_and_number_formats() -> None:
    assert nice_ticks(17) == [0, 5, 10, 15, 20]
    assert nice_ticks(1, integer=True) == [0, 1]
    assert nice_ticks(1) == [0, 0.5, 1.0]
    assert nice_ticks(0) == [0, 1]
    assert [number(3), number(2.5), number(12_345), number(2_500_000)] == \
        ["3", "2.50", "12k", "2.5M"]
    assert percent(float("nan")) == "n/a" and percent(0.756) == "76%"
