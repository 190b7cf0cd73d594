"""`stdout`: a readable table for people, as wide as the terminal.

Generic: the columns are what the rule presents (Finding.title and evidence), never one rule's column
names. Findings are shown per rule, window by window, in the rule's own order (Finding.rank), so a
scheduled run lists them as a direct run does. When the table does not fit the terminal, long sets are
shortened ('a, b, ... (+28)'); when even that does not fit, each finding becomes a block of lines.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import TextIO

from detector.display import evidence_of, printable, shorten, shorten_list, title_of, value_text
from detector.errors import ConfigError
from detector.kql import format_datetime
from detector.models import Finding
from detector.sinks import Sink, register_sink

GAP = "  "
MIN_COLUMN = 12  # a shortened column keeps at least this many characters
DEFAULT_WIDTH = 100  # when the output is not a terminal and COLUMNS is not set


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal (COLUMNS wins, as shutil does); DEFAULT_WIDTH for a pipe or a file."""
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns if stream.isatty() else _columns_env()


def _columns_env() -> int:
    from detector.config import environment

    text = environment().get("COLUMNS", "")
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_WIDTH


def in_rule_order(findings: Sequence[Finding]) -> list[Finding]:
    """Rules in order of first appearance; within a rule, window by window, each in the rule's order."""
    first_seen: dict[str, int] = {}
    for index, finding in enumerate(findings):
        first_seen.setdefault(finding.rule_id, index)
    return sorted(findings, key=lambda f: (first_seen[f.rule_id], f.window.start, f.window.end, f.rank))


def render(findings: Sequence[Finding], width: int) -> str:
    """The text the sink writes for these findings, fitted to `width` columns."""
    if not findings:
        return "No findings.\n"
    ordered = in_rule_order(findings)
    out: list[str] = []
    for rule_id in dict.fromkeys(f.rule_id for f in ordered):
        out += _rule_table([f for f in ordered if f.rule_id == rule_id], width)
    rules = ", ".join(sorted({f.rule_name for f in findings}))
    out += textwrap.wrap(f"{len(findings)} finding(s) of {rules}.", max(width, 20))
    return "\n".join(out) + "\n"


def _rule_table(findings: list[Finding], width: int) -> list[str]:
    evidence = evidence_of(findings[0])
    headers = ["time", "finding", *(printable(label) for label, _ in evidence), "id"]
    rows = [
        [
            _time(f),
            printable(title_of(f)),
            *(value_text(f.columns.get(column)) for _, column in evidence),
            f.id,
        ]
        for f in findings
    ]
    raw = [
        [None, None, *(f.columns.get(column) for _, column in evidence), None] for f in findings
    ]  # the values before text, so sets can be shortened by value
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    budget = width - len(GAP) * (len(headers) - 1)
    # Shorten the widest columns first, never below MIN_COLUMN (nor below the header).
    while sum(widths) > budget:
        index = max(range(len(widths)), key=lambda i: widths[i] if i not in (0, len(widths) - 1) else -1)
        floor = max(MIN_COLUMN, len(headers[index]))
        if index in (0, len(widths) - 1) or widths[index] <= floor:
            return _blocks(findings, width)
        widths[index] = max(floor, widths[index] - max(1, (sum(widths) - budget)))
    lines = [GAP.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row, values in zip(rows, raw, strict=True):
        cells = [_fit(text, value, w) for text, value, w in zip(row, values, widths, strict=True)]
        lines.append(GAP.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return lines


def _fit(text: str, value: object, width: int) -> str:
    if len(text) <= width:
        return text
    if isinstance(value, list | tuple):
        return shorten_list(value, width)
    return shorten(text, width)


def _time(finding: Finding) -> str:
    return format_datetime(finding.first_activity or finding.window.start)


def _blocks(findings: list[Finding], width: int) -> list[str]:
    """One block per finding: time and title, then one line per evidence field, wrapped to the width."""
    width = max(width, 20)
    lines: list[str] = []
    for finding in findings:
        lines += textwrap.wrap(f"{_time(finding)} {printable(title_of(finding))}", width, subsequent_indent="  ") or [""]
        for label, column in evidence_of(finding):
            value = finding.columns.get(column)
            # A long set gets two lines' worth; a single long value is wrapped whole.
            room = 2 * width - len(label) - 8
            text = shorten_list(value, max(room, MIN_COLUMN)) if isinstance(value, list | tuple) else value_text(value)
            lines += textwrap.wrap(f"  {printable(label)}: {text}", width, subsequent_indent="    ", break_long_words=True)
        lines += textwrap.wrap(f"  id: {finding.id}", width, subsequent_indent="    ", break_long_words=True)
    return lines


class StdoutSink(Sink):
    """Prints the findings as a table fitted to the terminal (see module doc)."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None, width: int | None = None) -> None:
        self.stream = stream
        self.width = width

    def deliver(self, findings: Sequence[Finding]) -> None:
        out = self.stream or sys.stdout
        out.write(render(findings, self.width or terminal_width(out)))
        out.flush()


@register_sink("stdout")
def _open(argument: str, settings: object) -> Sink:
    if argument:
        raise ConfigError("--sink", "stdout takes no argument; write 'stdout'")
    return StdoutSink()
