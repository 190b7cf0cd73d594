"""The HTML report of a simulation: one self-contained file, an inline SVG chart and the top findings.

No network and no script: styles are inline, the chart is SVG drawn here. Every value that comes from
the data or the rule is escaped (html.escape, quotes included), so a query string such as
`<script>` shows as text, and control and bidi characters are shown as escapes, as on the terminal.
The numbers carry data- attributes so tests (and people) can read them back.
"""

from __future__ import annotations

from datetime import timedelta
from html import escape

from detector.display import evidence_of, printable, shorten_list, summary_of, title_of, value_text
from detector.kql import format_datetime
from detector.simulate import Simulation, activity_start, counts_by_label

# One colour per threshold, lowest first (colour-blind safe palette, Okabe-Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CHART_HEIGHT = 240
BAR_WIDTH = 10
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 48, 64, 16


def _e(value: object) -> str:
    """Text for HTML: controls and bidi controls escaped as the terminal shows them, then HTML-escaped."""
    return escape(printable(str(value)), quote=True)


def render_chart(sim: Simulation) -> str:
    """An SVG bar chart: for every day (or hour), one bar per threshold with its count of findings."""
    counts = counts_by_label(sim)
    labels = list(counts[sim.thresholds[0]])
    peak = max([1, *(n for per in counts.values() for n in per.values())])
    group = BAR_WIDTH * len(sim.thresholds) + 8
    width = MARGIN_LEFT + group * len(labels) + 16
    height = MARGIN_TOP + CHART_HEIGHT + MARGIN_BOTTOM
    unit = "hour" if sim.bucket < timedelta(days=1) else "day"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="findings per {unit} for each threshold" font-family="sans-serif" font-size="10">',
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP + CHART_HEIGHT}" x2="{width - 8}" y2="{MARGIN_TOP + CHART_HEIGHT}" '
        'stroke="#333"/>',
        f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{MARGIN_TOP + CHART_HEIGHT}" stroke="#333"/>',
        f'<text x="{MARGIN_LEFT - 4}" y="{MARGIN_TOP + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{MARGIN_LEFT - 4}" y="{MARGIN_TOP + CHART_HEIGHT}" text-anchor="end">0</text>',
    ]
    for index, label in enumerate(labels):
        x0 = MARGIN_LEFT + 4 + index * group
        for offset, threshold in enumerate(sim.thresholds):
            count = counts[threshold][label]
            bar = round(CHART_HEIGHT * count / peak, 2)
            colour = COLOURS[offset % len(COLOURS)]
            parts.append(
                f'<rect class="bar" x="{x0 + offset * BAR_WIDTH}" y="{round(MARGIN_TOP + CHART_HEIGHT - bar, 2)}" '
                f'width="{BAR_WIDTH - 1}" height="{bar}" fill="{colour}" '
                f'data-bucket="{_e(label)}" data-threshold="{threshold}" data-count="{count}">'
                f"<title>{_e(label)}: {count} finding(s) at {_e(sim.parameter)} {threshold}</title></rect>"
            )
        if len(labels) <= 31 or index % max(1, len(labels) // 24) == 0:
            short = label[5:10] if unit == "day" else label[11:16]
            y = MARGIN_TOP + CHART_HEIGHT + 12
            parts.append(f'<text x="{x0}" y="{y}" transform="rotate(45 {x0} {y})">{_e(short)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(sim: Simulation, top: int = 10) -> str:
    """The whole report as one HTML document."""
    counts = counts_by_label(sim)
    rule = sim.rule
    unit = "hour" if sim.bucket < timedelta(days=1) else "day"
    legend = "".join(
        f'<li><span style="display:inline-block;width:10px;height:10px;background:{COLOURS[i % len(COLOURS)]}"></span> '
        f"{_e(sim.parameter)} = {t}{' (the rule’s value)' if t == sim.rule_threshold else ''}: "
        f'<span class="total" data-threshold="{t}">{len(sim.findings[t])}</span> finding(s)</li>'
        for i, t in enumerate(sim.thresholds)
    )
    head = "".join(f"<th>{_e(sim.parameter)} = {t}</th>" for t in sim.thresholds)
    body = "".join(
        f"<tr><td>{_e(label)}</td>"
        + "".join(f'<td class="count" data-threshold="{t}">{counts[t][label]}</td>' for t in sim.thresholds)
        + "</tr>"
        for label in counts[sim.thresholds[0]]
    )
    shown = sim.rule_threshold if sim.rule_threshold in sim.findings else sim.thresholds[0]
    findings = sim.findings[shown][:top]
    items = []
    for finding in findings:
        evidence = "".join(
            f"<tr><th>{_e(label)}</th><td>{_e(_evidence_text(finding.columns.get(column)))}</td></tr>"
            for label, column in evidence_of(finding)
        )
        items.append(
            f'<li class="finding" data-id="{_e(finding.id)}"><b>{_e(format_datetime(activity_start(finding, sim.window)))}'
            f"</b> {_e(title_of(finding))}<br>{_e(summary_of(finding))}"
            f'<table class="evidence">{evidence}</table><small>FindingId {_e(finding.id)}</small></li>'
        )
    listed = "".join(items) or "<li>No findings.</li>"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Simulation of {_e(rule.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }}
td.count {{ text-align: right; }}
ul.legend {{ list-style: none; padding: 0; }}
li.finding {{ margin-bottom: 1em; }}
table.evidence {{ margin-top: 4px; font-size: 90%; }}
</style>
</head>
<body>
<h1>Simulation of {_e(rule.name)}</h1>
<p>Rule <code>{_e(rule.id)}</code> v{_e(rule.version)}, over
<span id="range-start">{_e(format_datetime(sim.window.start))}</span> to
<span id="range-end">{_e(format_datetime(sim.window.end))}</span>:
findings per {unit} for each value of <code>{_e(sim.parameter)}</code>, from one read of
<span id="rows-read">{sim.rows_read}</span> rows.</p>
<ul class="legend">{legend}</ul>
{render_chart(sim)}
<h2>Findings per {unit}</h2>
<table id="counts"><tr><th>{unit}</th>{head}</tr>{body}</table>
<h2>Top findings at {_e(sim.parameter)} = {shown}</h2>
<p>In the rule's order, first {len(findings)} of {len(sim.findings[shown])}.</p>
<ol id="top">{listed}</ol>
</body>
</html>
"""


def _evidence_text(value: object) -> str:
    if isinstance(value, list | tuple):
        return shorten_list(value, 400)
    return value_text(value)
