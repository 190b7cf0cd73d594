"""`simulate`: counts per hour or day for several thresholds, from one read; the HTML report says the same."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from detector.cli import main
from detector.kql import bin_datetime, format_datetime, parse_datetime
from detector.models import Row, Window
from detector.report import render_html
from detector.simulate import counts_by_label, simulate
from detector.sources import ReadRequest
from detector.sources.file import FileSource
from tests.helpers import DAY, FILES, ROOT, RULE, expected_findings

EXAMPLE = ROOT / "docs" / "simulation-example.html"
PORT_RULE_ID = "44a555d8-ecee-4a25-95ce-055879b4b14b"
EXAMPLE_ARGS = [
    "simulate",
    "--rule",
    PORT_RULE_ID,
    "--source",
    "file:tests/files/w3ciislog.jsonl",
    "--start",
    "2026-11-26T00:00:00Z",
    "--end",
    "2026-11-27T00:00:00Z",
    "--threshold",
    "20,30,50",
]
THRESHOLDS = (20, 30, 50)


def independent_counts(window: Window, bucket: timedelta) -> dict[int, Counter[str]]:
    """Groups (10-minute bin, cIP, Computer, sIP) and their distinct ports, straight from the fixture file."""
    ports: dict[tuple[datetime, str, str, str], set[int]] = {}
    for line in (FILES / "w3ciislog.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        moment = parse_datetime(row["TimeGenerated"])
        if window.contains(moment) and row.get("sPort") is not None:
            key = (bin_datetime(moment, timedelta(minutes=10)), row["cIP"], row["Computer"], row["sIP"])
            ports.setdefault(key, set()).add(row["sPort"])
    label = format_datetime if bucket < timedelta(days=1) else (lambda m: m.strftime("%Y-%m-%d"))
    return {
        t: Counter(label(bin_datetime(key[0], bucket)) for key, p in ports.items() if min(len(p), 128) >= t) for t in THRESHOLDS
    }


class CountingSource(FileSource):
    reads: int = 0

    def read(self, request: ReadRequest) -> Iterator[Row]:
        type(self).reads += 1
        return super().read(request)


@pytest.mark.parametrize(
    ("start", "end", "bucket"),
    [
        ("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z", timedelta(hours=1)),
        ("2026-11-20T00:00:00Z", "2026-11-30T00:00:00Z", timedelta(days=1)),
    ],
)
def test_counts_match_an_independent_count_in_one_read_per_period(start: str, end: str, bucket: timedelta) -> None:
    window = Window(parse_datetime(start), parse_datetime(end))
    CountingSource.reads = 0
    sim = simulate(RULE, CountingSource(FILES / "w3ciislog.jsonl"), window, [50, 20, 30])
    assert sim.thresholds == THRESHOLDS and sim.bucket == bucket
    assert CountingSource.reads == (window.end - window.start) // RULE.query_period  # once per queryPeriod piece
    expected = independent_counts(window, bucket)
    for threshold, per_bucket in counts_by_label(sim).items():
        assert {k: v for k, v in per_bucket.items() if v} == dict(expected[threshold])
        assert sum(per_bucket.values()) == len(sim.findings[threshold])


def test_the_rule_threshold_gives_the_rule_findings() -> None:
    sim = simulate(RULE, FileSource(FILES / "w3ciislog.jsonl"), DAY, [30])
    assert len(sim.findings[30]) == len(expected_findings())


class ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[dict[str, str | None]] = []
        self.cells: dict[int, list[int]] = {}
        self.totals: dict[int, int] = {}
        self._in: tuple[str, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        self.attrs.append(found)
        if found.get("class") in ("count", "total"):
            self._in = (found["class"] or "", int(found["data-threshold"] or 0))

    def handle_data(self, data: str) -> None:
        if self._in:
            kind, threshold = self._in
            if kind == "count":
                self.cells.setdefault(threshold, []).append(int(data))
            else:
                self.totals[threshold] = int(data)
            self._in = None


def test_html_report_numbers_chart_and_safety() -> None:
    sim = simulate(RULE, FileSource(FILES / "w3ciislog.jsonl"), DAY, THRESHOLDS)
    html = render_html(sim)
    expected = independent_counts(DAY, timedelta(hours=1))
    hours = [format_datetime(DAY.start + timedelta(hours=h)) for h in range(24)]

    parsed = ReportParser()
    parsed.feed(html)
    for t in THRESHOLDS:
        assert parsed.cells[t] == [expected[t][h] for h in hours]
        assert parsed.totals[t] == sum(expected[t].values())

    chart = html[html.index("<svg") : html.index("</svg>") + len("</svg>")]
    svg = ET.fromstring(chart)  # noqa: S314 - our own output, parsed to check it
    bars = svg.findall("{http://www.w3.org/2000/svg}rect")
    assert len(bars) == 24 * len(THRESHOLDS)
    peak = max(int(b.get("data-count") or 0) for b in bars)
    for bar in bars:
        count, threshold, hour = int(bar.get("data-count") or 0), int(bar.get("data-threshold") or 0), bar.get("data-bucket")
        assert count == expected[threshold][hour or ""]
        assert float(bar.get("height") or 0) == pytest.approx(240 * count / peak, abs=0.01)  # drawn to scale

    # Self-contained and inert: no script, no external reference, and data values escaped.
    assert "script" not in parsed.tags and not {"link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert all(not (k in ("src", "href") or k.startswith("on")) for a in parsed.attrs for k in a)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # a query string of the fixture, shown as text


def test_html_report_shows_bidi_and_control_characters_as_escapes(tmp_path: Path) -> None:
    """A client IP that would display reversed (U+202E then "9.311.0.302" reads 203.0.113.9) is shown escaped."""
    hostile = "\u202e9.311.0.302\u2066\x1b[31m"
    lines = (FILES / "w3ciislog.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    scanner = next(e["cIP"] for e in expected_findings())
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({**r, "cIP": hostile if r["cIP"] == scanner else r["cIP"]}) + "\n" for r in rows))
    html = render_html(simulate(RULE, FileSource(path), DAY, THRESHOLDS))
    assert "\\u202e9.311.0.302\\u2066\\x1b[31m" in html
    assert not any(c in html for c in "\u202e\u2066\x1b")


def test_the_example_report_in_docs_is_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "report.html"
    assert main([*EXAMPLE_ARGS, "--html", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8"), (
        "regenerate: python -m detector " + " ".join(EXAMPLE_ARGS) + " --html docs/simulation-example.html"
    )


def test_bad_thresholds_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "simulate",
        "--rule",
        PORT_RULE_ID,
        "--source",
        f"file:{FILES / 'w3ciislog.jsonl'}",
        "--start",
        "2026-11-26T00:00:00Z",
        "--end",
        "2026-11-27T00:00:00Z",
    ]
    assert main([*base, "--threshold", "20,x"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: setting --threshold: 'x' is not a positive whole number; write e.g. --threshold 20,30,50"
    )
    for odd in ("\u00b2", "9" * 5000, "\x1b[31m"):  # isdigit() takes "²"; int() refuses 4,300 digits
        assert main([*base, "--threshold", odd]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: setting --threshold: '") and error.endswith("write e.g. --threshold 20,30,50")
        assert "\x1b" not in error and len(error) < 300
    assert main([*base, "--threshold", "500"]) == 2
    assert "portThreshold=500: portThreshold above maxSetSize" in capsys.readouterr().err
    assert main([*base, "--parameter", "timeBin"]) == 2
    assert "has no integer parameter 'timeBin'" in capsys.readouterr().err
