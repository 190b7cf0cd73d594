"""`stdout`: a readable table for people, as wide as the terminal.

Generic: the columns are what the rule presents (Finding.title and evidence), never one rule's column
names. Findings are shown per rule, window by window, in the rule's own order (Finding.rank), so a
scheduled run lists them as a direct run does. When the table does not fit the terminal, long sets are
shortened ('a, b, ... (+28)'); when even that does not fit, each finding becomes a block of lines.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import TextIO

from detector.display import evidence_of, item_texts, printable, shorten, shorten_texts, title_of, value_text
from detector.errors import ConfigError
from detector.kql import format_datetime, plain_int
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
    width = plain_int(text, 6)
    return width if width else DEFAULT_WIDTH


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
    by_rule: dict[str, list[Finding]] = {}
    for finding in in_rule_order(findings):
        by_rule.setdefault(finding.rule_id, []).append(finding)
    out: list[str] = []
    for rule_findings in by_rule.values():
        out += _rule_table(rule_findings, width)
    rules = ", ".join(sorted({f.rule_name for f in findings}))
    out += wrap(f"{len(findings)} finding(s) of {rules}.", max(width, 20))
    return "\n".join(out) + "\n"


class _Value:
    """One value as the table and the blocks show it.

    A set keeps its values' texts, so it is shortened value by value; anything else is one text.
    """

    __slots__ = ("items", "length", "shortened", "text")

    def __init__(self, text: str, items: list[str] | None = None) -> None:
        self.text = text
        self.items = items
        self.length = len(text) if items is None else sum(map(len, items)) + 2 * max(len(items) - 1, 0)
        self.shortened: dict[int, str] = {}

    def fit(self, width: int) -> str:
        """The whole text when it fits `width`, else shortened to it."""
        if self.length > width:
            return self.shortened_to(width)
        return self.text if self.items is None else ", ".join(self.items)

    def shortened_to(self, limit: int) -> str:
        """A set shortened by value (shorten_list; once per limit, as a set is shared); anything else cut."""
        if self.items is None:
            return shorten(self.text, limit)
        text = self.shortened.get(limit)
        if text is None:
            text = self.shortened[limit] = shorten_texts(self.items, limit)
        return text


class _Values:
    """Values made text once per render: the findings of one scan share many sets (methods, statuses)."""

    def __init__(self) -> None:
        self._sets: dict[tuple[object, ...], _Value] = {}

    def of(self, value: object) -> _Value:
        if not isinstance(value, list | tuple):
            return _Value(value_text(value))
        # Only sets all of str or all of int are shared: there equal sets have one text, whereas
        # 1 == True == 1.0 and 0.0 == -0.0 print differently (and a str never equals an int).
        if set(map(type, value)) not in ({str}, {int}):
            return _Value("", item_texts(value))
        key = tuple(value)
        known = self._sets.get(key)
        if known is None:
            known = self._sets[key] = _Value("", item_texts(value))
        return known


class _Row:
    """A finding's texts for its rule's table (and its block, when the table does not fit)."""

    __slots__ = ("cells", "finding", "values")

    def __init__(self, finding: Finding, evidence: tuple[tuple[str, str], ...], values: _Values) -> None:
        self.finding = finding
        self.values = [values.of(finding.columns.get(column)) for _, column in evidence]
        self.cells = [_Value(_time(finding)), _Value(printable(title_of(finding))), *self.values, _Value(finding.id)]


def _rule_table(findings: list[Finding], width: int) -> list[str]:
    evidence = evidence_of(findings[0])
    headers = ["time", "finding", *(printable(label) for label, _ in evidence), "id"]
    values = _Values()
    rows = [_Row(f, evidence, values) for f in findings]
    widths = [max(len(h), *(r.cells[i].length for r in rows)) for i, h in enumerate(headers)]
    budget = width - len(GAP) * (len(headers) - 1)
    # Shorten the widest columns first, never below MIN_COLUMN (nor below the header).
    while sum(widths) > budget:
        index = max(range(len(widths)), key=lambda i: widths[i] if i not in (0, len(widths) - 1) else -1)
        floor = max(MIN_COLUMN, len(headers[index]))
        if index in (0, len(widths) - 1) or widths[index] <= floor:
            return _blocks(rows, evidence, values, width)
        widths[index] = max(floor, widths[index] - max(1, (sum(widths) - budget)))
    lines = [GAP.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [cell.fit(w) for cell, w in zip(row.cells, widths, strict=True)]
        lines.append(GAP.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return lines


def _time(finding: Finding) -> str:
    return format_datetime(finding.first_activity or finding.window.start)


def _blocks(rows: list[_Row], evidence: tuple[tuple[str, str], ...], values: _Values, width: int) -> list[str]:
    """One block per finding: time and title, then one line per evidence field, wrapped to the width."""
    width = max(width, 20)
    labels: dict[str, str] = {}
    wrapped: dict[str, list[str]] = {}  # many findings of a scan share a field's values (methods, statuses)
    lines: list[str] = []
    for row in rows:
        finding = row.finding
        lines += wrap(f"{row.cells[0].text} {row.cells[1].text}", width, "  ") or [""]
        own = evidence_of(finding)  # a finding stored by an older version may present other columns
        shown_values = row.values if own == evidence else [values.of(finding.columns.get(column)) for _, column in own]
        for (label, _), value in zip(own, shown_values, strict=True):
            # A long set gets two lines' worth; a single long value is wrapped whole.
            room = 2 * width - len(label) - 8
            text = value.text if value.items is None else value.shortened_to(max(room, MIN_COLUMN))
            shown = labels.get(label)
            if shown is None:
                shown = labels[label] = printable(label)
            line = f"  {shown}: {text}"
            field = wrapped.get(line)
            if field is None:
                field = wrapped[line] = wrap(line, width, "    ")
            lines += field
        lines += wrap(f"  id: {finding.id}", width, "    ")
    return lines


# How textwrap cuts text into chunks: runs of spaces, and words, split after some hyphens. Without a
# hyphen, words are simply the runs between spaces.
_WORD_OR_SPACES = textwrap.TextWrapper.wordsep_re
_SPACES = re.compile("( +)")
# Whitespace other than a plain space: textwrap turns some into spaces and drops runs of the others at
# line ends, so text holding any is left to textwrap itself.
_OTHER_WHITESPACE = re.compile(r"[^\S ]")


def wrap(text: str, width: int, subsequent_indent: str = "") -> list[str]:
    """The lines of textwrap.wrap(text, width, subsequent_indent=subsequent_indent), found quicker.

    textwrap looks at every chunk (word or run of spaces) in Python; here the chunk ends are added up
    once and each line is found with bisect and slices, so a line costs a few calls. Text that textwrap
    would change before wrapping (tabs, other whitespace) and widths with no room are left to textwrap.
    """
    room_after = width - len(subsequent_indent)
    if room_after < 1 or _OTHER_WHITESPACE.search(text) is not None:
        return textwrap.wrap(text, width, subsequent_indent=subsequent_indent)
    if len(text) <= width:  # one line; a trailing run of spaces is dropped
        line = text.rstrip(" ")
        return [line] if line else []
    # ends: where each chunk ends (textwrap's split also yields empty strings, which change no boundary)
    ends = list(accumulate(map(len, (_WORD_OR_SPACES if "-" in text else _SPACES).split(text))))
    lines: list[str] = []
    start, size = 0, len(text)
    while start < size:
        indent = subsequent_indent if lines else ""
        room = room_after if lines else width
        if lines and text[start] == " ":  # a line after the first does not start with spaces
            start = ends[bisect_right(ends, start)]
            if start >= size:
                break
        # The chunks that fit: up to the last chunk end within the room.
        stop = size
        if start + room < size:
            last = bisect_right(ends, start + room) - 1
            stop = ends[last] if last >= 0 and ends[last] > start else start
        line_end = stop
        trailing_spaces_dropped = True
        if stop < size:
            chunk_end = ends[bisect_right(ends, stop)]
            if chunk_end - stop > room:  # a chunk longer than any line: cut it to fill this one
                space_left = room - (stop - start)
                if space_left == 0:
                    # textwrap adds an empty piece of it and drops that piece, not the spaces before it
                    trailing_spaces_dropped = False
                else:
                    end = space_left
                    hyphen = text.rfind("-", stop, stop + space_left) - stop
                    if hyphen > 0 and text[stop : stop + hyphen].strip("-"):
                        end = hyphen + 1
                    if text[stop] != " ":
                        line_end = stop + end
                    # a piece of a run of spaces is dropped at the end of the line, the rest at the next start
                    stop += end
        line = text[start:line_end]
        if trailing_spaces_dropped:
            line = line.rstrip(" ")
        if line:
            lines.append(indent + line)
        start = stop
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
