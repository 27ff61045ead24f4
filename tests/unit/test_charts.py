"""The dashboard's SVG charts (crm_automation/web/charts.py, issue #19): well-formed, true to the numbers, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from crm_automation.web.charts import HEIGHT, Series, bar_chart, grouped_bar_chart, line_chart

NS = {"s": "http://www.w3.org/2000/svg"}
DAYS = ("11-25", "11-26", "11-27", "11-28")


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def test_bars_are_one_per_day_and_proportional_to_the_values():
    svg = bar_chart("Sent per day", DAYS, Series("sent", (0, 5, 10, 2)))
    root = _parse(svg)
    bars = root.findall(".//s:rect[@class='bar']", NS)
    assert [b.get("data-value") for b in bars] == ["0", "5", "10", "2"]
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] == 0
    assert heights[2] == pytest.approx(2 * heights[1], abs=0.2)
    assert heights[2] == pytest.approx(5 * heights[3], abs=0.2)
    assert all(float(b.get("y")) + float(b.get("height")) <= HEIGHT for b in bars)
    assert [t.text for t in root.findall(".//s:rect/s:title", NS)][1] == "11-26: 5 sent"
    assert root.find("s:title", NS).text == "Sent per day"


def test_lines_draw_each_series_with_its_points_and_a_legend():
    series = (Series("replies", (1, 0, 3, 0), "#111111"), Series("退订", (0, 0, 1, 0), "#222222"))
    root = _parse(line_chart("Replies", DAYS, series))
    groups = root.findall(".//s:g[@class='series']", NS)
    assert [g.get("data-name") for g in groups] == ["replies", "退订"]
    assert [c.get("data-value") for c in groups[0].findall("s:circle", NS)] == ["1", "0", "3", "0"]
    assert groups[1].find("s:polyline", NS).get("stroke") == "#222222"
    legend = [t.text for t in root.findall(".//s:g[@class='legend']/s:text", NS)]
    assert legend == ["replies", "退订"]
    # the highest value touches the top grid line, a zero the bottom one
    ys = [float(c.get("cy")) for c in groups[0].findall("s:circle", NS)]
    assert ys[2] < ys[0] < ys[1] == ys[3]


def test_all_zero_and_empty_data_still_render():
    root = _parse(bar_chart("Sent", DAYS, Series("sent", (0, 0, 0, 0))))
    assert {b.get("height") for b in root.findall(".//s:rect[@class='bar']", NS)} == {"0.0"}
    root = _parse(line_chart("Nothing yet", (), ()))
    assert root.findall(".//s:circle", NS) == []


def test_text_from_data_is_escaped_not_markup():
    evil = "<script>alert(1)</script>"
    svg = line_chart(evil, (evil, "b"), (Series(evil, (1, 2)),))
    assert isinstance(svg, Markup)
    assert "<script>" not in svg
    root = _parse(svg)
    assert root.find("s:title", NS).text == evil  # shown as text
    assert root.findall(".//s:script", NS) == []
    assert root.find(".//s:g[@class='series']", NS).get("data-name") == evil


def test_values_that_do_not_match_the_labels_are_refused():
    with pytest.raises(ValueError, match=r"'sent': 3 values for 4 labels"):
        bar_chart("Sent", DAYS, Series("sent", (1, 2, 3)))
    with pytest.raises(ValueError, match="finite numbers of 0 or more"):
        line_chart("x", ("a",), (Series("sent", (-1,)),))


def test_many_days_get_a_thinned_axis():
    days = tuple(f"d{i}" for i in range(30))
    root = _parse(bar_chart("30 days", days, Series("sent", tuple(range(30)))))
    labels = [t.text for t in root.findall("s:text", NS) if (t.text or "").startswith("d")]
    assert 2 <= len(labels) <= 8
    assert labels[0] == "d0"
    assert len(root.findall(".//s:rect[@class='bar']", NS)) == 30


def test_grouped_bars_put_each_series_side_by_side_per_label():
    series = (Series("replied", (2, 0)), Series("bounced", (1, 4)))
    root = _parse(grouped_bar_chart("After each step", ("welcome/0", "welcome/1"), series))
    groups = root.findall(".//s:g[@class='series']", NS)
    assert [[b.get("data-value") for b in g.findall("s:rect", NS)] for g in groups] == [["2", "0"], ["1", "4"]]
    (r0, r1), (b0, b1) = ([float(b.get("x")) for b in g.findall("s:rect", NS)] for g in groups)
    assert r0 < b0 < r1 < b1  # per label: replied, then bounced; the second label's pair to the right
    assert float(groups[1].findall("s:rect", NS)[1].get("height")) == pytest.approx(
        4 * float(groups[1].findall("s:rect", NS)[0].get("height")), abs=0.2)
    with pytest.raises(ValueError, match="1 values for 2 labels"):
        grouped_bar_chart("x", ("a", "b"), (Series("s", (1,)),))


def test_the_dashboards_daily_charts_follow_the_days_in_order():
    """web.pages.daily_charts over app.reports.daily's JSON days (issue #19 item 6), in Chinese."""
    from crm_automation.web.i18n import ZH, Translator
    from crm_automation.web.pages import daily_charts

    days = [{"date": f"2026-11-{d:02d}", "start": None, "sent": d % 4, "replied": int(d == 28), "bounced": 0,
             "unsubscribed": int(d == 29), "clicked": 2 * int(d == 30)} for d in range(1, 31)]
    sent, responses = (_parse(svg) for svg in daily_charts(days, Translator("zh-CN")))
    assert [b.get("data-value") for b in sent.findall(".//s:rect[@class='bar']", NS)] == [str(d % 4) for d in
                                                                                            range(1, 31)]
    assert sent.find("s:title", NS).text == ZH["chart_sent_per_day"]
    groups = {g.get("data-name"): [c.get("data-value") for c in g.findall("s:circle", NS)]
              for g in responses.findall(".//s:g[@class='series']", NS)}
    assert set(groups) == {ZH["col_replied"], ZH["col_bounced"], ZH["col_unsubscribed"], ZH["col_clicked"]}
    assert groups[ZH["col_clicked"]][-1] == "2" and groups[ZH["col_replied"]][27] == "1"
    assert "11-01" in [t.text for t in sent.findall("s:text", NS)]
