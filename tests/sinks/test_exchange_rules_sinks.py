"""The three Exchange and user-agent rules reach every sink: sentinel, loganalytics-table and webhook (their
fakes, the real Azure SDK pipelines), from the Exchange fixture plus one hostile request per rule.

The hostile request copies a fixture request that the rule reports and puts markup in the columns an
attacker writes (user agent, query string, user name): each human-facing text must show it escaped, the
structured fields must keep it verbatim, and the Account and AzureResource entities must reach the
incident and the findings table's alert rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb_kql
import pytest

from detector.config import Settings
from detector.evaluate import evaluate
from detector.kql import parse_datetime
from detector.models import Finding, Row, Window
from detector.rules import Rule, load_rules
from detector.sinks import open_sink
from detector.sinks.ingestion import SCHEMA_PATH, alert_rule_template, finding_row
from detector.sinks.presentation import chat_text, markdown_text, visible
from detector.sources import ReadRequest, open_source
from tests.fakes.arm import ArmHandler
from tests.fakes.ingestion import IngestionHandler, row_problems, stream_columns
from tests.fakes.server import FakeServer, serve
from tests.fakes.webhook import WebhookHandler
from tests.helpers import FILES
from tests.sink_support import CLIENT_ID, DCR_ID, WORKSPACE
from tests.sinks.test_ingestion import load_rows_into_duckdb, projected

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki

END = parse_datetime("2026-11-27T00:00:00Z")
STREAM = "Custom-IISPortScanFindings_CL"
# Slack and Teams mention, a markdown link, emphasis, a code span, HTML and a line break.
MARKUP = "<!channel> [sign in](https://evil.example) *b* `c` <script>x</script>\nnext"
RAW_FORMS = ("<!channel>", "<script>", "[sign in](https", "\n")


@dataclass(frozen=True)
class HostileRequest:
    """Which fixture request to copy (a predicate over its row) and the columns to replace in the copy."""

    like: Callable[[Row], bool]
    values: dict[str, Any]


HOSTILE = {
    # A user agent of at least 1000 bytes is anomalous; a new client makes it a group of its own.
    "f845881e-2500-44dc-8ed7-b372af3e1e25": HostileRequest(
        lambda r: r["cIP"] == "198.51.100.77",
        {"cIP": "198.51.100.200", "csUserAgent": MARKUP + "A" * 1000, "csUserName": "ev*il_<b>@contoso.com"},
    ),
    # A query without "Protocol" to autodiscover.json is the SSRF pattern, whatever else it holds.
    "968358d6-6af8-49bb-aaa4-187b3067fb95": HostileRequest(
        lambda r: r["cIP"] == "203.0.113.51" and r["csUriStem"] == "/autodiscover/autodiscover.json",
        {"csUriQuery": "a=" + MARKUP, "csUserName": "ev*il_<b>@contoso.com"},
    ),
    # A query starting "t=" to an Exchange back end.
    "23005e87-2d3a-482b-b03d-edbebd1ae151": HostileRequest(
        lambda r: r.get("csUriQuery") == "t=1&c=2",
        {"csUriQuery": "t=" + MARKUP, "csUserAgent": MARKUP, "csUserName": "ev*il_<b>@contoso.com"},
    ),
}


def findings_of(rule_id: str) -> tuple[Rule, list[Finding], Finding]:
    """The rule's findings over its own window of the Exchange fixture plus its hostile request; and the
    finding of the hostile request."""
    (rule,) = load_rules(rule_id)
    window = Window(END - rule.query_period, END)
    source = open_source(f"file:{FILES / 'exchange_w3ciislog.jsonl'}")
    rows = list(source.read(ReadRequest(window, rule.logic.columns, rule.logic.required_columns)))
    hostile = HOSTILE[rule_id]
    model = min((r for r in rows if hostile.like(r)), key=lambda r: r["TimeGenerated"])
    rows.append({**model, **hostile.values, "TimeGenerated": model["TimeGenerated"] + timedelta(seconds=1)})
    found = evaluate(rule, rows, window)
    (planted,) = [f for f in found if any(f.columns.get(c) == v for c, v in hostile.values.items() if c != "cIP")]
    return rule, found, planted


@pytest.fixture
def arm(pki: TestPki, azure_env: FakeServer) -> Iterator[FakeServer]:
    with serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}) as server:
        server.state["audience"] = server.url
        yield server


@pytest.fixture
def ingestion(pki: TestPki, azure_env: FakeServer) -> Iterator[FakeServer]:
    with serve(IngestionHandler, pki, streams={DCR_ID: stream_columns(SCHEMA_PATH)}) as server:
        yield server


@pytest.fixture
def receiver(pki: TestPki, azure_env: FakeServer) -> Iterator[FakeServer]:
    with serve(WebhookHandler, pki) as server:
        yield server


def settings(arm: FakeServer, ingestion: FakeServer, receiver: FakeServer) -> Settings:
    return Settings.from_env(
        {
            "DETECTOR_SOURCE": "file:unused",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_ARM_ENDPOINT": arm.url,
            "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE,
            "DETECTOR_INGESTION_ENDPOINT": ingestion.url,
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID": DCR_ID,
            "DETECTOR_WEBHOOK_URL": f"{receiver.url}/hooks/exchange",
        }
    )


def prose_and_query(description: str) -> tuple[str, str]:
    """The description's markdown outside its ~~~kql code block, and the query inside it."""
    before, rest = description.split("~~~kql\n", 1)
    query, after = rest.split("\n~~~", 1)
    return before + after, query


def entity_text(entity: Any) -> str:
    """How the incident description lists one entity: its type, then its values, each escaped."""
    return f"{markdown_text(entity.type)} {', '.join(map(markdown_text, entity.fields.values()))}"


@pytest.mark.parametrize("rule_id", list(HOSTILE))
def test_the_rule_reaches_every_sink_with_its_entities_and_escaped_values(
    rule_id: str, arm: FakeServer, ingestion: FakeServer, receiver: FakeServer
) -> None:
    rule, found, planted = findings_of(rule_id)
    assert len(found) >= 2
    configured = settings(arm, ingestion, receiver)
    for name in ("sentinel", "loganalytics-table", "webhook"):
        open_sink(name, configured).deliver(found)

    # sentinel: one incident per finding; the description lists every entity, Account and AzureResource too.
    incidents = {key[1]: value["properties"] for key, value in arm.state["incidents"].items()}
    assert set(incidents) == {f.id for f in found}
    for finding in found:
        props = incidents[finding.id]
        assert props["title"] == visible(f"{rule.name}: {finding.title}", 256)
        listed = "Entities: " + "; ".join(entity_text(e) for e in finding.entities)
        assert listed in props["description"]
        prose, query = prose_and_query(props["description"])
        assert "<" not in prose  # every value from the logs is escaped
        assert query.count("<") == 1  # the query's own `TimeGenerated <`: its literals are inert (code points)
    assert "Account" in {e.type for e in planted.entities}
    account = next(e for e in planted.entities if e.type == "Account")
    assert account.fields["FullName"] == "ev*il_<b>@contoso.com"
    assert "Account ev\\*il\\_&lt;b&gt;@contoso.com" in incidents[planted.id]["description"]
    if rule_id == "968358d6-6af8-49bb-aaa4-187b3067fb95":
        resource = next(e for e in planted.entities if e.type == "AzureResource")
        assert resource.fields == {"ResourceId": planted.columns["_ResourceId"]}
        assert f"AzureResource {markdown_text(planted.columns['_ResourceId'])}" in incidents[planted.id]["description"]
    title = incidents[planted.id]["title"]
    description = incidents[planted.id]["description"]
    prose, query = prose_and_query(description)
    # The title is plain text in Sentinel (not markdown): only control characters are made visible.
    assert "\n" not in title
    for raw in RAW_FORMS[:3]:
        assert raw not in prose
        assert raw not in query
    assert "&lt;!channel&gt; \\[sign in\\](https://evil.example) \\*b\\* \\`c\\`" in prose
    assert all("\u240a" not in line for line in prose.splitlines() if line.startswith(("Entities", "Finding")))

    # loganalytics-table: every row matches the stream, Result is the rule's result (KQL names and order),
    # attacker values verbatim (data, not presentation), entities as JSON.
    rows = {row["FindingId"]: row for row in ingestion.state["rows"]}
    assert set(rows) == {f.id for f in found}
    columns = stream_columns(SCHEMA_PATH)[STREAM]
    for finding in found:
        row = rows[finding.id]
        assert row_problems(row, columns) == []
        assert list(row["Result"]) == list(finding.columns) == list(rule.logic.output_columns)
        assert row["Entities"] == [e.to_json() for e in finding.entities]
        assert row["RuleId"] == rule.id
    for column, value in HOSTILE[rule_id].values.items():
        assert rows[planted.id]["Result"][column] == value

    # webhook: the text a channel shows is escaped; the structured finding keeps the values verbatim.
    posts = {post["body"]["findingId"]: post["body"] for post in receiver.state["received"]}
    assert set(posts) == {f.id for f in found}
    text = posts[planted.id]["text"]
    for raw in RAW_FORMS[:3]:
        assert raw not in text
    assert "<" not in text
    assert "&lt;!channel&gt; \\[sign in\\](https://evil.example)" in text
    assert chat_text(planted.summary, 1000) in text
    assert posts[planted.id]["finding"] == planted.to_json()
    assert posts[planted.id]["title"] == planted.title


@pytest.mark.parametrize("rule_id", list(HOSTILE))
def test_the_alert_rule_over_the_findings_table_maps_the_rules_entities(rule_id: str, ingestion: FakeServer) -> None:
    """The generated alert rule extends each entity column from Result; run over the delivered rows
    (duckdb-kql; TimeGenerated stands in for ingestion_time(), which it lacks) it gives each finding's
    Account, Host, IP and AzureResource values."""
    rule, found, _ = findings_of(rule_id)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [finding_row(f, now) for f in found]
    template = alert_rule_template(rule)
    query = str(template["query"]).replace("ingestion_time()", "TimeGenerated")
    names = projected(query)
    alerts = {
        a["FindingId"]: a
        for a in (dict(zip(names, r, strict=True)) for r in duckdb_kql.kql(load_rows_into_duckdb(rows), query).fetchall())
    }
    assert set(alerts) == {f.id for f in found}
    mapped = {(m["entityType"], f["identifier"]): f["columnName"] for m in template["entityMappings"] for f in m["fieldMappings"]}
    types = {entity_type for entity_type, _ in mapped}
    assert "Account" in types
    if rule_id == "968358d6-6af8-49bb-aaa4-187b3067fb95":
        assert "AzureResource" in types
    for finding in found:
        for entity in finding.entities:
            for identifier, value in entity.fields.items():
                assert alerts[finding.id][mapped[(entity.type, identifier)]] == value


def test_a_long_hostile_value_is_matched_by_its_digest_in_the_evidence_query() -> None:
    from detector.kql import string_literal
    from detector.sinks.sentinel import evidence_query

    _, _, planted = findings_of("f845881e-2500-44dc-8ed7-b372af3e1e25")
    query = evidence_query(planted)
    (digest,) = re.findall(r'hash_sha256\(csUserAgent\) == "([0-9a-f]{64})"', query)
    value = planted.columns["csUserAgent"]
    con = duckdb_kql.connect()
    assert duckdb_kql.kql(con, f"print v = hash_sha256({string_literal(value)})").fetchall() == [(digest,)]
    assert "csUserAgent ==" not in query and len(query) < 2000
