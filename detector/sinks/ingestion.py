"""`loganalytics-table`: one row per finding in the custom table IISPortScanFindings_CL.

Rows go through the Logs Ingestion API (azure-monitor-ingestion), for a Sentinel analytics rule to turn
into alerts with entities.

The columns are declared once, in COLUMNS: the columns every rule has (ids, times, the rule's title and
summary, entities) plus one dynamic column, Result, that holds the rule's own result row. A new rule
therefore changes neither the table nor the DCR. infra/schema/findings-columns.json (the table schema and
the DCR stream declaration the Bicep loads) is generated from COLUMNS, and a test checks the two agree.

Delivery: the SDK splits the rows into gzip chunks of at most 1 MiB and reports each failed chunk to
`on_error`; the ids of rows in chunks that did not fail are reported as delivered. A chunk the service
refuses as too large (413) is split in halves and sent again. Throttling (429) and 5xx are retried by
the client's retry policy, honouring Retry-After up to a bound.

Idempotency: the Logs Ingestion API does not de-duplicate. A row carries FindingId, and a finding that
is delivered again (a retry after an unacknowledged success, a late-data re-check) is a second row with
the same FindingId and a later TimeGenerated. Readers take the latest row per FindingId
(`summarize arg_max(TimeGenerated, *) by FindingId`); the alert rule in infra/schema does so and raises
an alert only for a FindingId's first delivery.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from detector.errors import ConfigError, SinkError
from detector.kql import format_datetime, string_literal
from detector.models import FINDING_NAMESPACE, Finding
from detector.sinks import Sink, register_sink
from detector.sinks.presentation import evidence_of, summary_of, title_of
from detector.sinks.sentinel import activity_span, evidence_query, evidence_table

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.monitor.ingestion import LogsIngestionClient

    from detector.config import Settings
    from detector.rules import Rule
    from detector.sinks.http_delivery import RetrySettings

log = logging.getLogger(__name__)

TABLE_NAME = "IISPortScanFindings_CL"
STREAM_NAME = f"Custom-{TABLE_NAME}"
PUBLISHER_ROLE = "Monitoring Metrics Publisher"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "infra" / "schema" / "findings-columns.json"
# Log Analytics truncates a field at 64 KB; a truncated dynamic value is no longer JSON. We keep every
# dynamic value below half of that (escaping in the JSON text can grow it) by dropping trailing elements,
# and name the shortened columns in TruncatedColumns.
DYNAMIC_LIMIT = 32_000
# Names Log Analytics reserves in custom tables (logs-ingestion-api-overview.md).
RESERVED_COLUMNS = frozenset({"id", "type", "tenantid", "_resourceid", "_subscriptionid", "uniqueid", "title"})
DCR_TYPES = frozenset({"string", "int", "long", "real", "boolean", "datetime", "dynamic"})


@dataclass(frozen=True)
class Column:
    """A column of the findings table: its type (DCR stream and table type) and what it holds."""

    name: str
    type: str
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("TimeGenerated", "datetime", "When the detector delivered this row (a redelivery has a later time)"),
    Column("FindingId", "string", "Stable id of the finding (uuid); the same finding always has the same id"),
    Column("RuleId", "string", "Id of the Sentinel rule the detector evaluated"),
    Column("RuleName", "string", "Name of the rule"),
    Column("RuleVersion", "string", "Version of the rule"),
    Column("Severity", "string", "Severity of the rule (High, Medium, Low, Informational)"),
    Column("Tactics", "dynamic", "MITRE ATT&CK tactics of the rule"),
    Column("Techniques", "dynamic", "MITRE ATT&CK techniques of the rule"),
    Column("WindowStart", "datetime", "Start of the evaluated window (inclusive)"),
    Column("WindowEnd", "datetime", "End of the evaluated window (exclusive)"),
    Column("BinStart", "datetime", "TimeGenerated of the rule's result row: the start of its time bin"),
    Column("FirstActivityTime", "datetime", "Start of the activity (bin start, within the window)"),
    Column("LastActivityTime", "datetime", "End of the activity (bin end, within the window)"),
    Column("FindingTitle", "string", "The rule's short subject of the finding (actors and measure), plain text"),
    Column("Summary", "string", "The rule's one-sentence description of the finding, plain text"),
    Column("Entities", "dynamic", "Sentinel entities of the finding: [{Type, identifier: value}]"),
    Column("Evidence", "dynamic", "The fields an analyst reads first, in order: [{label, column}] of Result"),
    Column("Result", "dynamic", "The rule's result row: its KQL output columns, with KQL names"),
    Column("TruncatedColumns", "dynamic", "Columns of Result whose values were shortened to fit the 64 KB field limit"),
    Column("EvidenceQuery", "string", "KQL that shows the raw W3CIISLog rows of the finding"),
)


# ---------------------------------------------------------------------------------------------------
# Pure: rows and the schema


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _size(value: Any) -> int:
    return len(json.dumps(value))  # ASCII-escaped: never smaller than the UTF-8 the service counts


def fit_result(result: Mapping[str, Any], limit: int = DYNAMIC_LIMIT) -> tuple[dict[str, Any], list[str]]:
    """The result row as JSON within `limit` characters, and the columns shortened to get there.

    The longest list loses trailing values (or the longest text its tail) until the row fits, so the
    small columns (counts, keys) always stay whole.
    """
    out = {name: _json_value(value) for name, value in result.items()}
    truncated: list[str] = []
    size = _size(out)
    while size > limit:
        shrinkable = [
            name
            for name, value in out.items()
            if (isinstance(value, list) and value) or (isinstance(value, str) and len(value) > 1)
        ]
        if not shrinkable:
            break
        name = max(shrinkable, key=lambda n: _size(out[n]))
        value, excess = out[name], size - limit
        if isinstance(value, list):
            kept, removed = list(value), 0
            while kept and removed < excess:
                removed += _size(kept.pop()) + 2
            out[name] = kept
        else:
            out[name] = value[: max(1, len(value) - excess - 1)] + "\u2026"
        if name not in truncated:
            truncated.append(name)
        size = _size(out)
    return out, truncated


def finding_row(finding: Finding, delivered_at: datetime, table: str = "W3CIISLog") -> dict[str, Any]:
    """The table row of a finding: JSON types only (datetimes as ISO 8601 strings, dynamic as JSON values).

    The row has the columns every rule has; the rule's own result row goes whole into Result, so a new
    rule needs no change of the table, the DCR or this code.
    """
    first, last = activity_span(finding)
    bin_start = finding.columns.get("TimeGenerated")
    result, truncated = fit_result(finding.columns)
    return {
        "TimeGenerated": format_datetime(delivered_at),
        "FindingId": finding.id,
        "RuleId": finding.rule_id,
        "RuleName": finding.rule_name,
        "RuleVersion": finding.rule_version,
        "Severity": finding.severity,
        "Tactics": list(finding.tactics),
        "Techniques": list(finding.techniques),
        "WindowStart": format_datetime(finding.window.start),
        "WindowEnd": format_datetime(finding.window.end),
        "BinStart": format_datetime(bin_start) if isinstance(bin_start, datetime) else None,
        "FirstActivityTime": format_datetime(first),
        "LastActivityTime": format_datetime(last),
        "FindingTitle": title_of(finding),
        "Summary": summary_of(finding),
        "Entities": [e.to_json() for e in finding.entities],
        "Evidence": [{"label": label, "column": column} for label, column in evidence_of(finding)],
        "Result": result,
        "TruncatedColumns": truncated,
        "EvidenceQuery": evidence_query(finding, table),
    }


def schema_document() -> dict[str, Any]:
    """infra/schema/findings-columns.json: the custom table schema and the DCR stream declaration."""
    return {
        "$comment": (
            "Generated from detector/sinks/ingestion.py COLUMNS by `python infra/schema/generate.py`; "
            "tests/sinks/test_ingestion.py fails when they differ. Loaded by infra Bicep with loadJsonContent()."
        ),
        "tableName": TABLE_NAME,
        "streamName": STREAM_NAME,
        "outputStream": STREAM_NAME,
        "transformKql": "source",
        "tableColumns": [{"name": c.name, "type": c.type, "description": c.description} for c in COLUMNS],
        "streamDeclarations": {STREAM_NAME: {"columns": [{"name": c.name, "type": c.type} for c in COLUMNS]}},
    }


ALERT_RULE_LOOKBACK = "10m"  # twice the alert rules' 5-minute frequency: see alert_rule_query


def _alert_columns(rule: Rule) -> list[tuple[str, str]]:
    """(name, Result column) of the columns the alert rule extends for its entity mappings."""
    taken = {c.name.lower() for c in COLUMNS}
    out: list[tuple[str, str]] = []
    for mapping in rule.entity_mappings:
        for _, column in mapping.fields:
            name = column if column.lower() not in taken else f"Result_{column}"
            if (name, column) not in out:
                out.append((name, column))
    return out


def alert_rule_query(rule: Rule) -> str:
    """KQL of the Sentinel scheduled rule that raises one alert per new finding of `rule`.

    The Logs Ingestion API does not de-duplicate, and the detector may deliver a finding more than once
    (a retry after an unacknowledged upload, a late-data re-check): each delivery is a row with the same
    FindingId. So, per FindingId, the latest row (arg_max), and an alert only when the FindingId's first
    row was ingested since the previous run. The lookback is twice the 5-minute run interval: a row
    ingested near a run boundary is seen by two runs rather than by none, and the incident grouping on
    the FindingId custom detail folds such a repeat into the same incident.
    """
    extended = ", ".join(f"{name} = tostring(Result[{string_literal(column)}])" for name, column in _alert_columns(rule))
    lines = [
        f"// Sentinel scheduled rule over {TABLE_NAME} for the detector's findings of rule {rule.id}",
        f"// ({rule.name}). Generated by infra/schema/generate.py from {Path(rule.path).name}: do not edit.",
        "// Every 5 minutes over 1 day; one alert per FindingId, when its first row arrived since the last run.",
        f"let lookback = {ALERT_RULE_LOOKBACK};",
        TABLE_NAME,
        f"| where RuleId == {string_literal(rule.id)}",
        "| summarize arg_max(TimeGenerated, *), FirstIngested = min(ingestion_time()) by FindingId",
        "| where FirstIngested > ago(lookback)",
    ]
    if extended:
        lines.append(f"| extend {extended}")
    projected = [
        "TimeGenerated",
        "FindingId",
        "RuleName",
        "Severity",
        "FindingTitle",
        "Summary",
        "BinStart",
        "FirstActivityTime",
        "LastActivityTime",
        *(name for name, _ in _alert_columns(rule)),
        "Result",
        "EvidenceQuery",
    ]
    lines.append(f"| project {', '.join(projected)}")
    return "\n".join(lines) + "\n"


def alert_rule_template(rule: Rule) -> dict[str, Any]:
    """The Sentinel scheduled rule (Azure-Sentinel YAML form) over the findings table for one rule.

    One alert rule per detector rule, because a scheduled rule's tactics, techniques and entity mappings
    are fixed properties: one rule for all would label every finding with the same tactics and could map
    only entities every rule has.
    """
    entity_names = {column: name for name, column in _alert_columns(rule)}
    return {
        "id": str(uuid.uuid5(FINDING_NAMESPACE, f"alert-rule/{rule.id}")),
        "name": f"{rule.name} (serverless detector)",
        "description": (
            f"Findings of Sentinel rule {rule.id} ({rule.name}, version {rule.version}) as evaluated by the "
            f"serverless detector and written to {TABLE_NAME}. One alert per finding; a finding delivered again "
            "is not alerted again. The EvidenceQuery column holds the KQL that shows the raw rows."
        ),
        "severity": rule.severity,
        "status": "Available",
        "requiredDataConnectors": [],
        "queryFrequency": "5m",
        "queryPeriod": "1d",
        "triggerOperator": "gt",
        "triggerThreshold": 0,
        "tactics": list(rule.tactics),
        "relevantTechniques": list(rule.techniques),
        "query": alert_rule_query(rule),
        "entityMappings": [
            {
                "entityType": mapping.entity_type,
                "fieldMappings": [
                    {"identifier": identifier, "columnName": entity_names[column]} for identifier, column in mapping.fields
                ],
            }
            for mapping in rule.entity_mappings
        ],
        "customDetails": {"FindingId": "FindingId", "BinStart": "BinStart"},
        "alertDetailsOverride": {
            "alertDisplayNameFormat": f"{rule.name}: {{{{FindingTitle}}}}",
            "alertDescriptionFormat": "{{Summary}} See EvidenceQuery for the raw rows.",
            "alertSeverityColumnName": "Severity",
        },
        "eventGroupingSettings": {"aggregationKind": "AlertPerResult"},
        "incidentConfiguration": {
            "createIncident": True,
            "groupingConfiguration": {
                "enabled": True,
                "reopenClosedIncident": False,
                "lookbackDuration": "P7D",
                "matchingMethod": "Selected",
                "groupByEntities": [],
                "groupByAlertDetails": [],
                "groupByCustomDetails": ["FindingId"],
            },
        },
        "suppressionEnabled": False,
        "suppressionDuration": "PT1H",
        "kind": "Scheduled",
        "version": "1.0.0",
    }


def alert_rules_document(rules: Sequence[Rule]) -> dict[str, Any]:
    """infra/schema/findings-alert-rules.json: the alert rules' properties as the Bicep deploys them.

    Microsoft.SecurityInsights/alertRules, kind Scheduled: durations in ISO 8601.
    """
    deployed = []
    for rule in rules:
        template = alert_rule_template(rule)
        deployed.append(
            {
                "id": template["id"],
                "ruleId": rule.id,
                "displayName": template["name"],
                "description": template["description"],
                "severity": template["severity"],
                "query": template["query"],
                "tactics": template["tactics"],
                "techniques": template["relevantTechniques"],
                "entityMappings": template["entityMappings"],
                "customDetails": template["customDetails"],
                "alertDetailsOverride": template["alertDetailsOverride"],
            }
        )
    return {
        "$comment": (
            "Generated from rules/*.yaml by `python infra/schema/generate.py`; tests/sinks/test_ingestion.py fails "
            "when it differs. One Sentinel scheduled rule per detector rule (docs/sinks.md says why)."
        ),
        "queryFrequency": "PT5M",
        "queryPeriod": "P1D",
        "rules": deployed,
    }


def schema_problems(columns: Sequence[Column] = COLUMNS) -> list[str]:
    """Rules Log Analytics applies to custom table columns, checked on our declaration."""
    problems = []
    names = [c.name for c in columns]
    if "TimeGenerated" not in names:
        problems.append("a custom table needs a TimeGenerated datetime column")
    for column in columns:
        if column.name.lower() in RESERVED_COLUMNS:
            problems.append(f"{column.name} is a reserved column name")
        if not (column.name[:1].isalpha() and column.name.replace("_", "").isalnum() and len(column.name) <= 45):
            problems.append(f"{column.name}: names start with a letter and hold at most 45 letters, digits or _")
        if column.type not in DCR_TYPES:
            problems.append(f"{column.name}: type {column.type} is not a DCR stream type")
    if len({n.lower() for n in names}) != len(names):
        problems.append("column names must be unique (case-insensitively)")
    return problems


def monitor_scope(endpoint: str) -> str:
    """Token scope of the Logs Ingestion API for the cloud an ingestion endpoint belongs to."""
    host = (urlsplit(endpoint).hostname or "").lower()
    if host.endswith(".azure.us"):
        return "https://monitor.azure.us/.default"
    if host.endswith(".azure.cn"):
        return "https://monitor.azure.cn/.default"
    return "https://monitor.azure.com/.default"


# ---------------------------------------------------------------------------------------------------
# I/O: the Logs Ingestion API


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


class LogsIngestionSink(Sink):
    """Uploads one row per finding to a DCR stream."""

    name = "loganalytics-table"

    def __init__(
        self,
        endpoint: str,
        dcr_immutable_id: str,
        stream: str = STREAM_NAME,
        *,
        credential: TokenCredential | Callable[[], TokenCredential],
        evidence_table: str = "W3CIISLog",
        retry: RetrySettings | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        from detector.sinks.http_delivery import RetrySettings  # azure-core: imported when a sink is built

        self.endpoint = endpoint.rstrip("/")
        self.dcr_immutable_id = dcr_immutable_id
        self.stream = stream
        self.evidence_table = evidence_table
        self._credential = credential
        self._retry = retry or RetrySettings()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._client: LogsIngestionClient | None = None

    def describe(self) -> str:
        return f"loganalytics-table:{self.stream}"

    def _ingestion_client(self) -> LogsIngestionClient:
        if self._client is None:
            from azure.monitor.ingestion import LogsIngestionClient

            from detector.sinks.http_delivery import BoundedRetryPolicy

            credential = self._credential() if callable(self._credential) else self._credential
            self._client = LogsIngestionClient(
                endpoint=self.endpoint,
                credential=credential,
                credential_scopes=[monitor_scope(self.endpoint)],
                # Rows carry FindingId and readers dedup, so a repeated POST is harmless: retry it.
                retry_policy=BoundedRetryPolicy(self._retry, retry_post=True),
                connection_timeout=self._retry.connection_timeout,
                read_timeout=self._retry.read_timeout,
            )
        return self._client

    def _upload(self, rows: list[dict[str, Any]]) -> list[tuple[BaseException, list[Mapping[str, Any]]]]:
        """Upload rows; returns the chunks that failed. A chunk refused as too large is halved and resent."""
        failed: list[tuple[BaseException, list[Mapping[str, Any]]]] = []

        def collect(error: Any) -> None:
            failed.append((error.error, list(error.failed_logs)))

        logs = cast("list[MutableMapping[str, Any]]", rows)
        self._ingestion_client().upload(rule_id=self.dcr_immutable_id, stream_name=self.stream, logs=logs, on_error=collect)
        remaining: list[tuple[BaseException, list[Mapping[str, Any]]]] = []
        for error, chunk in failed:
            if _status(error) == 413 and len(chunk) > 1:
                half = len(chunk) // 2
                log.info("loganalytics-table: a chunk of %d rows was too large (413); sending it in halves", len(chunk))
                remaining += self._upload([dict(r) for r in chunk[:half]])
                remaining += self._upload([dict(r) for r in chunk[half:]])
            else:
                remaining.append((error, chunk))
        return remaining

    def _explain(self, error: BaseException, rows: int) -> str:
        """What went wrong with a failed chunk, and what to do."""
        from detector.sinks.http_delivery import request_ids, service_error, throttled_text

        status = _status(error)
        response = getattr(error, "response", None)
        headers: Mapping[str, str] = getattr(response, "headers", None) or {}
        body = None
        if response is not None:
            try:
                body = response.text()
            except Exception:  # the body only decorates the message; never fail on it
                body = None
        detail = (service_error(body) or getattr(error, "message", "") or str(error)).strip()
        ids = request_ids(headers)
        if status is None:
            return (
                f"cannot reach {self.endpoint} (DETECTOR_INGESTION_ENDPOINT) or get a token for "
                f"{monitor_scope(self.endpoint)} (check AZURE_CLIENT_ID): {detail}"
            )
        if status in (401, 403):
            return (
                f"{status} ({detail}){ids}: grant the Function App's managed identity (AZURE_CLIENT_ID) the "
                f"'{PUBLISHER_ROLE}' role on the data collection rule {self.dcr_immutable_id}"
            )
        if status == 404:
            return (
                f"404 ({detail}){ids}: check DETECTOR_INGESTION_DCR_IMMUTABLE_ID ({self.dcr_immutable_id}), "
                f"DETECTOR_INGESTION_STREAM ({self.stream}) and DETECTOR_INGESTION_ENDPOINT ({self.endpoint})"
            )
        if status == 413:
            return f"413 ({detail}){ids}: one row is larger than the service accepts in a call; it cannot be delivered"
        if status == 429:
            return f"{throttled_text(headers, self._retry)}{ids}"
        return f"{status} ({detail}){ids} for {rows} rows"

    def deliver(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        delivered_at = self._clock()
        rows = [finding_row(f, delivered_at, self.evidence_table) for f in findings]
        # upload() hands every failure to on_error, credential errors included (they have no status).
        failed = self._upload(rows)
        if not failed:
            log.info("loganalytics-table: %d rows uploaded to %s", len(rows), self.stream)
            return
        failed_ids = {str(row.get("FindingId")) for _, chunk in failed for row in chunk}
        delivered = frozenset(f.id for f in findings if f.id not in failed_ids)
        reasons = sorted({self._explain(error, len(chunk)) for error, chunk in failed})
        # A row refused as too large on its own is that finding's, whatever the service's state: counted
        # against it (parked after a few runs), never retried for ever. Anything else is the sink's.
        too_large = {
            str(chunk[0].get("FindingId")): self._explain(error, 1)
            for error, chunk in failed
            if _status(error) == 413 and len(chunk) == 1
        }
        raise SinkError(
            f"{self.describe()}: {len(failed_ids)} of {len(findings)} rows not ingested: " + "; ".join(reasons),
            delivered=delivered,
            rejected=too_large,
        )


@register_sink("loganalytics-table")
def _open(argument: str, settings: Settings | None) -> Sink:
    from detector.config import settings_or_env
    from detector.identity import build_credential

    if argument:
        raise ConfigError("DETECTOR_SINKS", "loganalytics-table takes no argument; set DETECTOR_INGESTION_* settings")
    resolved = settings_or_env(settings)
    for name, value in (
        ("DETECTOR_INGESTION_ENDPOINT", resolved.ingestion_endpoint),
        ("DETECTOR_INGESTION_DCR_IMMUTABLE_ID", resolved.ingestion_dcr_immutable_id),
    ):
        if not value:
            raise ConfigError(name, "is required by the loganalytics-table sink (see docs/sinks.md)")
    return LogsIngestionSink(
        resolved.ingestion_endpoint,
        resolved.ingestion_dcr_immutable_id,
        resolved.ingestion_stream,
        credential=lambda: build_credential(resolved),
        evidence_table=evidence_table(resolved),
    )
