"""The stdout text made quickly is the text the straightforward code made: the same bytes for any findings
(hostile values, huge values, empty sets, older findings without presentation) at any width.

The reference below is the sink and display code as it was before it was made quick (textwrap per line,
each value escaped and joined on its own, each set shortened by joining its values again and again).
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.display import evidence_of, item_texts, printable, shorten_list, title_of, value_text
from detector.kql import format_datetime
from detector.models import Entity, Finding, Window
from detector.sinks.stdout import GAP, MIN_COLUMN, in_rule_order, render, wrap
from tests.sink_support import findings as fixture_findings

# --- the reference: the code before it was made quick -------------------------------------------------

_REFERENCE_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def reference_printable(text: str) -> str:
    return _REFERENCE_UNSAFE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def reference_value_text(value: Any) -> str:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(reference_value_text(v) for v in value)
    return "" if value is None else reference_printable(str(value))


def reference_shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..." if limit >= 3 else text[:limit]


def reference_shorten_list(values: list[Any] | tuple[Any, ...], limit: int) -> str:
    items = [reference_value_text(v) for v in values]
    full = ", ".join(items)
    if len(full) <= limit:
        return full
    shown: list[str] = []
    for index, item in enumerate(items):
        rest = len(items) - index - 1
        candidate = ", ".join([*shown, item]) + (f", ... (+{rest})" if rest else "")
        if len(candidate) > limit:
            break
        shown.append(item)
    left = len(items) - len(shown)
    if not shown:
        suffix = f" (+{left - 1})" if left > 1 else ""
        return reference_shorten(items[0], max(limit - len(suffix), 3)) + suffix
    text = ", ".join(shown) + f", ... (+{left})"
    return text if len(text) <= limit else reference_shorten(text, limit)


def reference_render(findings: Sequence[Finding], width: int) -> str:
    if not findings:
        return "No findings.\n"
    ordered = in_rule_order(findings)
    out: list[str] = []
    for rule_id in dict.fromkeys(f.rule_id for f in ordered):
        out += _reference_table([f for f in ordered if f.rule_id == rule_id], width)
    rules = ", ".join(sorted({f.rule_name for f in findings}))
    out += textwrap.wrap(f"{len(findings)} finding(s) of {rules}.", max(width, 20))
    return "\n".join(out) + "\n"


def _reference_time(finding: Finding) -> str:
    return format_datetime(finding.first_activity or finding.window.start)


def _reference_table(findings: list[Finding], width: int) -> list[str]:
    evidence = evidence_of(findings[0])
    headers = ["time", "finding", *(reference_printable(label) for label, _ in evidence), "id"]
    rows = [
        [
            _reference_time(f),
            reference_printable(title_of(f)),
            *(reference_value_text(f.columns.get(column)) for _, column in evidence),
            f.id,
        ]
        for f in findings
    ]
    raw = [[None, None, *(f.columns.get(column) for _, column in evidence), None] for f in findings]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    budget = width - len(GAP) * (len(headers) - 1)
    while sum(widths) > budget:
        index = max(range(len(widths)), key=lambda i: widths[i] if i not in (0, len(widths) - 1) else -1)
        floor = max(MIN_COLUMN, len(headers[index]))
        if index in (0, len(widths) - 1) or widths[index] <= floor:
            return _reference_blocks(findings, width)
        widths[index] = max(floor, widths[index] - max(1, (sum(widths) - budget)))
    lines = [GAP.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row, values in zip(rows, raw, strict=True):
        cells = [_reference_fit(text, value, w) for text, value, w in zip(row, values, widths, strict=True)]
        lines.append(GAP.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return lines


def _reference_fit(text: str, value: object, width: int) -> str:
    if len(text) <= width:
        return text
    if isinstance(value, list | tuple):
        return reference_shorten_list(value, width)
    return reference_shorten(text, width)


def _reference_blocks(findings: list[Finding], width: int) -> list[str]:
    width = max(width, 20)
    lines: list[str] = []
    for finding in findings:
        lines += textwrap.wrap(
            f"{_reference_time(finding)} {reference_printable(title_of(finding))}", width, subsequent_indent="  "
        ) or [""]
        for label, column in evidence_of(finding):
            value = finding.columns.get(column)
            room = 2 * width - len(label) - 8
            text = (
                reference_shorten_list(value, max(room, MIN_COLUMN))
                if isinstance(value, list | tuple)
                else reference_value_text(value)
            )
            lines += textwrap.wrap(
                f"  {reference_printable(label)}: {text}", width, subsequent_indent="    ", break_long_words=True
            )
        lines += textwrap.wrap(f"  id: {finding.id}", width, subsequent_indent="    ", break_long_words=True)
    return lines


# --- what findings hold: what scanners and attackers put in requests -----------------------------------

# Terminal escapes, bidi controls, every whitespace textwrap or str.strip treats specially, hyphens and
# em-dashes (textwrap splits words after some), wide and astral characters, a lone surrogate.
SPECIAL = (
    " ", " ", " ", "-", "-", "--", "a", "Z", "9", "_", ".", ",", "!", '"', "'", "&", "?", "/", "(", ")", ":",
    "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x07", "\x1b", "\x1b[2J", "\x1b]0;pwned\x07",
    "\x7f", "\x85", "\x9b", "\xa0", "\u1680", "\u2003", "\u200e", "\u202e", "\u2028", "\u2029", "\u061c", "\u2066",
    "\u2069",
    "\u3000", "é", "中文", "\U0001f600", "\udcff",
)  # fmt: skip
pieces = st.one_of(st.sampled_from(SPECIAL), st.characters())
hostile_text = st.one_of(
    st.lists(pieces, max_size=60).map("".join),
    st.builds(lambda piece, count: piece * count, st.sampled_from(["A", "ab ", "x-y", "\x1b[", " "]), st.integers(0, 3000)),
)
DAY_WINDOW = Window(datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC))
# hypothesis takes naive bounds and gives each datetime the zone
instants = st.datetimes(DAY_WINDOW.start.replace(tzinfo=None), DAY_WINDOW.end.replace(tzinfo=None), timezones=st.just(UTC))
scalars = st.one_of(st.none(), st.integers(-(10**6), 10**20), st.booleans(), st.floats(allow_nan=True), hostile_text, instants)
set_values = st.one_of(
    st.lists(hostile_text, max_size=8),
    st.lists(st.integers(0, 65535), max_size=130),
    st.lists(scalars, max_size=6),
    st.lists(st.sampled_from(["GET", "POST", "404 Not Found", "200 OK"]), max_size=4),  # shared between findings
    st.lists(st.lists(hostile_text, max_size=3), max_size=3),  # nested sets are joined too
    st.tuples(hostile_text, st.integers()),
    st.frozensets(st.sampled_from(["a", "b-c", "\x1bd"]), max_size=3),
)
COLUMNS = ("cIP", "set_sPort", "set_csUserAgent", "set_csMethod", "Computer", "n\x1b[31m", "ConnectionsCount")
column_values = st.fixed_dictionaries({}, optional={name: st.one_of(scalars, set_values) for name in COLUMNS})
evidences = st.one_of(
    st.just(()),  # a finding stored before presentation: every column, labelled by its name
    st.lists(
        st.tuples(st.sampled_from(["Ports", "User agents", "Decoded URI queries"]) | hostile_text, st.sampled_from(COLUMNS)),
        max_size=5,
    ).map(tuple),
)


@st.composite
def finding_lists(draw: st.DrawFn) -> list[Finding]:
    rules = draw(st.lists(st.sampled_from(["rule-a", "rule-b", "rule-c"]), min_size=1, max_size=3, unique=True))
    rule_evidence = {rule: draw(evidences) for rule in rules}
    made = []
    for _ in range(draw(st.integers(1, 8))):
        rule = draw(st.sampled_from(rules))
        # Usually the rule's own evidence; sometimes another (a finding stored by another version).
        evidence = rule_evidence[rule] if draw(st.integers(0, 4)) else draw(evidences)
        entities = tuple(Entity("IP", {"Address": text}) for text in draw(st.lists(hostile_text, max_size=2)))
        made.append(
            Finding(
                id=str(draw(st.uuids())),
                rule_id=rule,
                rule_name=f"Rule {rule}",
                rule_version="1",
                severity="High",
                tactics=(),
                techniques=(),
                window=DAY_WINDOW,
                columns=draw(column_values),
                entities=entities,
                first_activity=draw(st.none() | instants),
                title=draw(st.just("") | hostile_text),
                evidence=evidence,
                rank=draw(st.integers(0, 5)),
            )
        )
    return made


widths = st.one_of(st.integers(1, 260), st.sampled_from([40, 80, 100, 200, 100_000]))


def outcome(function: Any, *arguments: Any, **keywords: Any) -> tuple[str, Any]:
    """The result, or the kind of error: both codes must agree on either."""
    try:
        return ("result", function(*arguments, **keywords))
    except Exception as error:  # the two codes are compared on whatever they raise
        return ("error", type(error))


# --- the properties -------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(finding_lists(), widths)
def test_render_gives_the_text_the_straightforward_code_gave(findings: list[Finding], width: int) -> None:
    text = render(findings, width)
    assert text == reference_render(findings, width)
    # Every value came from a request: nothing in it may act on the terminal.
    assert all(_REFERENCE_UNSAFE.search(line) is None for line in text.split("\n"))


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.lists(st.sampled_from((*SPECIAL[:24], "abc", "de-fg", "h--i", "-j", "k-", "   ")), max_size=40).map("".join),
        st.text(alphabet=st.sampled_from(" -ab1.\u3000\t"), max_size=300),
        hostile_text,
    ),
    st.integers(1, 60),
    st.sampled_from(["", " ", "  ", "    ", "x", "-" * 8]),
)
def test_wrap_gives_the_lines_textwrap_gives(text: str, width: int, indent: str) -> None:
    assert outcome(wrap, text, width, indent) == outcome(textwrap.wrap, text, width, subsequent_indent=indent)


def test_wrap_keeps_textwraps_corner_cases() -> None:
    cases = [
        ("aaa bbbbbbbbbbbbb", 4, ""),  # a full line before a long word keeps its trailing space
        ("          abc", 5, ""),  # leading spaces of the first lines are kept, then dropped as empty lines
        ("aaaa     b", 6, "  "),
        ("   ", 2, ""),
        ("", 10, ""),
        ("well-known self-evident x-ray", 7, " "),
        ("a--b ab-cd-ef -- x", 5, ""),
        ("x" * 10, 3, "    "),  # no room after the indent: textwrap decides
    ]
    for text, width, indent in cases:
        assert outcome(wrap, text, width, indent) == outcome(textwrap.wrap, text, width, subsequent_indent=indent), (text, width)


@settings(max_examples=1500, deadline=None)
@given(set_values, st.integers(-5, 400))
def test_shorten_list_gives_what_the_straightforward_code_gave(values: Any, limit: int) -> None:
    if not isinstance(values, list | tuple):
        values = list(values)
    assert outcome(shorten_list, values, limit) == outcome(reference_shorten_list, values, limit)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(scalars, set_values))
def test_value_text_and_printable_give_what_the_straightforward_code_gave(value: Any) -> None:
    assert value_text(value) == reference_value_text(value)
    if isinstance(value, list | tuple | set | frozenset):
        assert item_texts(value) == [reference_value_text(v) for v in value]
    if isinstance(value, str):
        assert printable(value) == reference_printable(value)


# --- cases the properties would rarely draw ---------------------------------------------------------------

FIXTURE_FINDINGS = fixture_findings()


@pytest.mark.parametrize("width", [*range(1, 261), 400, 1000, 100_000])
def test_the_fixture_days_findings_at_every_width(width: int) -> None:
    assert render(FIXTURE_FINDINGS, width) == reference_render(FIXTURE_FINDINGS, width)


def _with_columns(finding: Finding, **columns: Any) -> Finding:
    return dataclasses.replace(finding, columns={**finding.columns, **columns}, id=str(uuid.uuid4()))


@pytest.mark.parametrize("width", [40, 80, 100, 200, 100_000])
def test_equal_sets_of_other_types_keep_their_own_text(width: int) -> None:
    # Sets are made text once and shared between findings that hold an equal set; 1 == True == 1.0 and
    # 0.0 == -0.0, so only sets of one type whose equal values print alike may share.
    base = FIXTURE_FINDINGS[0]
    ports = [[1, 2], [True, 2], [1.0, 2.0], [0.0], [-0.0], ["1", "2"], (1, 2), [1, True]]
    findings = [_with_columns(base, set_sPort=value) for value in ports for _ in range(2)]
    text = render(findings, width)
    assert text == reference_render(findings, width)
    for shown in ("True, 2", "1.0, 2.0", "-0.0", "1, True"):
        assert shown in text


@pytest.mark.parametrize("width", [40, 100, 100_000])
def test_a_huge_hostile_value_is_shortened_escaped_and_the_same(width: int) -> None:
    # A scanner's 1 MB user agent of escapes, and a long value that is not a set (wrapped whole).
    agent = "\x1b[2J\x1b]0;pwned\x07" * 70_000
    findings = [
        _with_columns(FIXTURE_FINDINGS[0], set_csUserAgent=[agent, "curl/8.0"]),
        _with_columns(FIXTURE_FINDINGS[1], Computer="web-" * 5_000, set_csUserAgent=[]),
    ]
    findings[1] = dataclasses.replace(findings[1], evidence=(*findings[1].evidence, ("Server", "Computer")))
    text = render(findings, width)
    assert text == reference_render(findings, width)
    assert "\x1b" not in text and "\x07" not in text
    assert len(text) < len(agent)  # the set was shortened, not written out


def test_findings_of_many_windows_and_rules_keep_the_rule_order() -> None:
    later = [
        dataclasses.replace(f, window=Window(DAY_WINDOW.start + timedelta(days=1), DAY_WINDOW.end + timedelta(days=1)))
        for f in FIXTURE_FINDINGS
    ]
    other = [dataclasses.replace(f, rule_id="other", rule_name="Other rule", evidence=()) for f in FIXTURE_FINDINGS[:3]]
    findings = [*later, *other, *FIXTURE_FINDINGS][::-1]
    for width in (40, 100, 100_000):
        assert render(findings, width) == reference_render(findings, width)
