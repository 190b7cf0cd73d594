"""`sentinel`: one Microsoft Sentinel incident per finding, through the Security Insights REST API.

The incident id is the finding id, so a rerun, a retry or a late-data re-check addresses the same
incident and never creates a second one. Each delivery reads the incident first:

* absent: PUT the whole incident (title, severity, status New, description with the evidence, labels
  for tactic and technique, first/last activity times);
* present: the incident now belongs to the analysts. The detector owns only the evidence (description)
  and the activity times; status, owner, classification, severity, title and labels are never written
  back with other values. When the evidence changed (late rows made the scan bigger), the detector adds
  a comment with a deterministic id (so a retry does not repeat it) and PUTs the incident with the etag
  it read (If-Match and body etag). A concurrent analyst edit makes that PUT fail with 409/412; the
  detector then re-reads and retries, so the analyst's edit is kept. When nothing changed, nothing is
  written at all.

Why update-with-etag plus a comment rather than comments only: the description is where Sentinel shows
evidence (and what automation rules and playbooks read), so it must stay current; the comment makes
the change visible in the incident's activity log, which a silent description edit would not be.

Reference: kql-and-sentinel.md §5.b (API version, required fields). Role: the custom incident writer
(INCIDENT_WRITER_ACTIONS) on the workspace, defined in infra/app/rbac-workspace.bicep.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from detector.display import BIDI_CONTROLS
from detector.errors import ConfigError, SinkError
from detector.kql import format_datetime, parse_datetime, string_literal
from detector.models import FINDING_NAMESPACE, Finding, shortened_digest
from detector.sinks import Sink, register_sink
from detector.sinks.presentation import evidence_lines, markdown_text, summary_of, title_of, visible
from detector.w3ciislog import COLUMN_TYPES as W3CIISLOG_TYPES

if TYPE_CHECKING:
    from azure.core import PipelineClient
    from azure.core.credentials import TokenCredential
    from azure.core.rest import HttpResponse

    from detector.config import Settings
    from detector.sinks.http_delivery import RetrySettings

log = logging.getLogger(__name__)

API_VERSION = "2025-09-01"  # stable (Incidents.json 2025-09-01); 2024-09-01 is the previous stable
# The custom role infra/app/rbac-workspace.bicep defines: exactly the calls this sink makes.
INCIDENT_WRITER_ROLE = "IIS detector incident writer"
INCIDENT_WRITER_ACTIONS = (
    "Microsoft.SecurityInsights/incidents/read",
    "Microsoft.SecurityInsights/incidents/write",
    "Microsoft.SecurityInsights/incidents/comments/write",
)
DETECTOR_LABEL = "iis-portscan-detector"
TITLE_LIMIT = 256
# The incidents API documents no limit on the description; Sentinel caps alert descriptions at 5000
# characters, and we keep incidents within the same bound so the portal shows the whole text.
DESCRIPTION_LIMIT = 5000
SUMMARY_LIMIT = 1000  # of the description: the evidence query after it must still fit
CONFLICT_ATTEMPTS = 4
# Properties a PUT may carry (IncidentProperties minus the read-only ones).
WRITABLE = (
    "title",
    "description",
    "severity",
    "status",
    "classification",
    "classificationReason",
    "classificationComment",
    "owner",
    "labels",
    "firstActivityTimeUtc",
    "lastActivityTimeUtc",
)
# What the detector still owns once an incident exists. Everything else is the analysts'.
DETECTOR_OWNED = ("description", "firstActivityTimeUtc", "lastActivityTimeUtc")
# The W3CIISLog columns an analyst wants of each raw row (the table's, not a rule's).
EVIDENCE_PROJECTION = (
    "TimeGenerated, cIP, Computer, sIP, sPort, csMethod, csUriStem, csUriQuery, csUserName, csUserAgent, "
    "scStatus, scSubStatus, scWin32Status"
)
# Longer literals are matched by their SHA-256 instead: a hostile user agent of a few thousand characters
# written as code points would otherwise fill the description and cut the query in the middle.
LITERAL_LIMIT = 256
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters that would be markup in the description's code block if a renderer took it for HTML, and
# those that would change how the block reads: C1 controls, line and paragraph separators, bidi controls.
_MARKUP = re.compile(f"[<>&`\x80-\x9f\u2028\u2029{BIDI_CONTROLS}]")


# ---------------------------------------------------------------------------------------------------
# Pure: what an incident for a finding says


def kql_table(name: str) -> str:
    """A table name as KQL: bare when it is an identifier, else bracket-quoted."""
    return name if _TABLE_NAME.match(name) else f"[{string_literal(name)}]"


def inert_literal(value: str) -> str:
    """A KQL expression for `value` that holds no markup character.

    Values with `<`, `>`, `&`, a backtick, a C1 control, a line separator or a bidi control are written
    as their code points, so the query can be shown verbatim in any message and reads as it runs.
    """
    if _MARKUP.search(value):
        return f"unicode_codepoints_to_string(dynamic([{', '.join(str(ord(c)) for c in value)}]))"
    return string_literal(value)


def activity_span(finding: Finding) -> tuple[datetime, datetime]:
    """First and last activity time of a finding (its bin); the window when the logic gave none."""
    first = finding.first_activity or finding.window.start
    last = finding.last_activity or finding.window.end
    return first, max(first, last)


def key_condition(column: str, value: str) -> str:
    """`column == <value>`, or the same test on the value's SHA-256 when its literal would be long."""
    stored = shortened_digest(value)  # a value the state store kept shortened: its whole text's hash
    literal = inert_literal(value)
    if stored is None and len(literal) <= LITERAL_LIMIT:
        return f"{column} == {literal}"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    if stored is not None:
        # Or the value as it reads: an attacker may write a text that only looks shortened into a log.
        return f'hash_sha256({column}) in ("{stored}", "{digest}")'
    return f'hash_sha256({column}) == "{digest}"'


def evidence_keys(finding: Finding) -> list[tuple[str, str]]:
    """(column, value) of the finding's single text values that are W3CIISLog columns.

    These are its group's actors (client, server, user...), whatever the rule, on which the raw rows can
    be filtered.
    """
    return [
        (column, value)
        for column, value in finding.columns.items()
        if column != "TimeGenerated" and W3CIISLOG_TYPES.get(column) == "string" and isinstance(value, str)
    ]


def evidence_query(finding: Finding, table: str = "W3CIISLog") -> str:
    """A KQL query an analyst pastes into Logs to see the raw rows behind a finding."""
    first, last = activity_span(finding)
    lines = [
        kql_table(table),
        f"| where TimeGenerated >= datetime({format_datetime(first)}) and TimeGenerated < datetime({format_datetime(last)})",
    ]
    keys = [key_condition(column, value) for column, value in evidence_keys(finding)]
    if keys:
        lines.append("| where " + " and ".join(keys))
    lines += [f"| project {EVIDENCE_PROJECTION}", "| order by TimeGenerated asc"]
    return "\n".join(lines)


def incident_title(finding: Finding) -> str:
    """`<rule>: <the rule's title of the finding>`, one line within Sentinel's title length."""
    title = title_of(finding)
    text = finding.rule_name if title == finding.rule_name else f"{finding.rule_name}: {title}"
    return visible(text, TITLE_LIMIT)


def incident_description(finding: Finding, table: str = "W3CIISLog") -> str:
    """The evidence, as markdown whose every value is escaped.

    Summary, activity, the query for the raw rows (in a code block), then the rule's evidence fields.
    """
    first, last = activity_span(finding)
    lines = [
        f"{markdown_text(finding.rule_name)} (rule {finding.rule_id}, version {markdown_text(finding.rule_version)})",
        "",
        markdown_text(summary_of(finding), SUMMARY_LIMIT),
        f"Activity: {format_datetime(first)} to {format_datetime(last)}.",
    ]
    if finding.entities:
        shown = [f"{markdown_text(e.type)} {', '.join(map(markdown_text, e.fields.values()))}" for e in finding.entities]
        lines.append("Entities: " + "; ".join(shown))
    lines += [
        f"Finding id: {finding.id}",
        f"Detection window: {markdown_text(finding.window)}",
        "",
        f"Raw {markdown_text(table)} rows (paste into Logs):",
        "~~~kql",
        evidence_query(finding, table),
        "~~~",
        "",
        *evidence_lines(finding, markdown_text),
    ]
    text = "\n".join(lines).rstrip()
    if len(text) > DESCRIPTION_LIMIT:
        text = text[: DESCRIPTION_LIMIT - 20].rstrip("\\").rstrip() + "\n... (truncated)"
    return text


def incident_labels(finding: Finding) -> list[dict[str, str]]:
    """Labels for filtering: the detector, each tactic and each technique."""
    names = [DETECTOR_LABEL, *(f"Tactic: {t}" for t in finding.tactics), *(f"Technique: {t}" for t in finding.techniques)]
    return [{"labelName": name} for name in names]


def detector_owned(finding: Finding, table: str = "W3CIISLog") -> dict[str, Any]:
    """The properties the detector keeps current on an existing incident."""
    first, last = activity_span(finding)
    return {
        "description": incident_description(finding, table),
        "firstActivityTimeUtc": format_datetime(first),
        "lastActivityTimeUtc": format_datetime(last),
    }


def new_incident(finding: Finding, table: str = "W3CIISLog") -> dict[str, Any]:
    """The body that creates the incident of a finding."""
    return {
        "properties": {
            "title": incident_title(finding),
            "severity": finding.severity,
            "status": "New",
            "labels": incident_labels(finding),
            **detector_owned(finding, table),
        }
    }


def _same_time(a: Any, b: Any) -> bool:
    try:
        return parse_datetime(str(a)) == parse_datetime(str(b))
    except ValueError:
        return False


def owned_changes(current: Mapping[str, Any], owned: Mapping[str, Any]) -> list[str]:
    """Names of detector-owned properties whose stored value differs from what the detector would write."""
    changed = []
    for name in DETECTOR_OWNED:
        stored, wanted = current.get(name), owned[name]
        same = _same_time(stored, wanted) if name.endswith("TimeUtc") else stored == wanted
        if not same:
            changed.append(name)
    return changed


def updated_incident(current: Mapping[str, Any], owned: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body for an existing incident: its own writable properties, the detector's replaced.

    Labels go back with their names only (labelType is read-only); everything the analysts set (status,
    owner, classification, severity, title, labels) is sent back exactly as read.
    """
    properties = dict(current.get("properties") or {})
    body: dict[str, Any] = {name: properties[name] for name in WRITABLE if properties.get(name) is not None}
    if "labels" in body:
        body["labels"] = [{"labelName": label["labelName"]} for label in body["labels"] if label.get("labelName")]
    body.update(owned)
    out: dict[str, Any] = {"properties": body}
    if current.get("etag"):
        out["etag"] = current["etag"]
    return out


def update_comment(finding: Finding, owned: Mapping[str, Any]) -> tuple[str, str]:
    """(comment id, message) recording that the evidence changed.

    The id depends on the finding and the new evidence, so a retried delivery writes the same comment
    again instead of a second one.
    """
    digest = hashlib.sha256(str(owned["description"]).encode()).hexdigest()
    comment_id = str(uuid.uuid5(FINDING_NAMESPACE, f"{finding.id}/evidence/{digest}"))
    first, last = activity_span(finding)
    message = (
        f"The detector re-evaluated this finding (late-arriving rows or a new detector version) and updated the "
        f"evidence in the description ({markdown_text(title_of(finding))}; activity {format_datetime(first)} to "
        f"{format_datetime(last)}). Status, owner and classification were left as they are."
    )
    return comment_id, message


# ---------------------------------------------------------------------------------------------------
# I/O: the Security Insights API


class _FindingFailedError(Exception):
    """This finding could not be delivered; the others may still be.

    `refused`: the service refused what the finding's incident holds (400, 413, 422), which a retry will
    not change.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class _SinkBrokenError(Exception):
    """Nothing more can be delivered this run (permissions, wrong workspace, throttling, network)."""


class SentinelSink(Sink):
    """Creates or updates one incident per finding in the workspace `workspace_resource_id`."""

    name = "sentinel"

    def __init__(
        self,
        workspace_resource_id: str,
        *,
        credential: TokenCredential | Callable[[], TokenCredential],
        arm_endpoint: str = "https://management.azure.com",
        evidence_table: str = "W3CIISLog",
        retry: RetrySettings | None = None,
    ) -> None:
        from detector.sinks.http_delivery import RetrySettings  # azure-core: imported when a sink is built

        self.workspace_resource_id = workspace_resource_id.rstrip("/")
        self.arm_endpoint = arm_endpoint.rstrip("/")
        self.evidence_table = evidence_table
        self._credential = credential
        self._retry = retry or RetrySettings()
        self._client: PipelineClient[Any, Any] | None = None

    def describe(self) -> str:
        return f"sentinel:{self.workspace_resource_id.rsplit('/', 1)[-1]}"

    # -- HTTP

    def _pipeline(self) -> PipelineClient[Any, Any]:
        if self._client is None:
            from azure.core import PipelineClient
            from azure.core.pipeline.policies import BearerTokenCredentialPolicy, HeadersPolicy, UserAgentPolicy

            from detector.identity import scope_of
            from detector.sinks.http_delivery import BoundedRetryPolicy

            credential = self._credential() if callable(self._credential) else self._credential
            # No HttpLoggingPolicy: it logs every request at INFO, which is noise in Application Insights.
            policies = [
                HeadersPolicy(),
                UserAgentPolicy(base_user_agent="iis-portscan-detector"),
                BoundedRetryPolicy(self._retry),
                BearerTokenCredentialPolicy(credential, scope_of(self.arm_endpoint)),
            ]
            self._client = PipelineClient(base_url=self.arm_endpoint, policies=policies)
        return self._client

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None, etag: str | None = None) -> HttpResponse:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
        from azure.core.rest import HttpRequest

        from detector.identity import scope_of

        client = self._pipeline()
        headers = {"If-Match": etag} if etag else {}
        request = HttpRequest(
            method, f"{self.arm_endpoint}{path}", params={"api-version": API_VERSION}, json=body, headers=headers
        )
        try:
            response: HttpResponse = client.send_request(
                request, connection_timeout=self._retry.connection_timeout, read_timeout=self._retry.read_timeout
            )
        except ClientAuthenticationError as exc:
            raise _SinkBrokenError(
                f"could not get a token for {scope_of(self.arm_endpoint)} from the managed identity: {exc.message}; "
                "check AZURE_CLIENT_ID names the Function App's user-assigned identity"
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise _SinkBrokenError(f"cannot reach {self.arm_endpoint} (DETECTOR_ARM_ENDPOINT): {exc.message}") from None
        response.read()
        return response

    def _problem(self, response: HttpResponse, action: str) -> Exception:
        """Turn a failed response into the error to raise, with the message that says what to do."""
        from detector.sinks.http_delivery import REFUSED_STATUSES, request_ids, service_error, throttled_text

        status, detail, ids = response.status_code, service_error(response.content), request_ids(response.headers)
        if status == 401:
            return _SinkBrokenError(
                f"401 Unauthorized to {action}: the token was refused ({detail}){ids}; check that the managed identity "
                f"(AZURE_CLIENT_ID) belongs to the workspace's tenant and that DETECTOR_ARM_ENDPOINT matches its cloud"
            )
        if status == 403:
            return _SinkBrokenError(
                f"403 Forbidden to {action} ({detail}){ids}: assign the Function App's managed identity the custom "
                f"'{INCIDENT_WRITER_ROLE}' role (only {', '.join(INCIDENT_WRITER_ACTIONS)}) on the workspace "
                f"{self.workspace_resource_id}; infra/ deploys it with enableSentinelSink (docs/deploy.md, Roles). "
                "Do not grant Microsoft Sentinel Responder: it also reads every table and edits automation rules"
            )
        if status == 404:
            return _SinkBrokenError(
                f"404 Not Found to {action} ({detail}){ids}: check DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID "
                f"('{self.workspace_resource_id}') names a workspace with Microsoft Sentinel enabled"
            )
        if status == 429:
            return _SinkBrokenError(f"cannot {action}: {throttled_text(response.headers, self._retry)}{ids}")
        if status >= 500:
            return _SinkBrokenError(f"cannot {action}: the service answered {status} ({detail}){ids}; retried next run")
        return _FindingFailedError(f"cannot {action}: {status} {detail}{ids}", refused=status in REFUSED_STATUSES)

    # -- delivery

    def _incident_path(self, finding: Finding) -> str:
        return f"{self.workspace_resource_id}/providers/Microsoft.SecurityInsights/incidents/{finding.id}"

    def _deliver_one(self, finding: Finding) -> str:
        """Create or update one incident; returns what happened (created, updated, unchanged)."""
        path = self._incident_path(finding)
        owned = detector_owned(finding, self.evidence_table)
        for _ in range(CONFLICT_ATTEMPTS):
            response = self._send("GET", path)
            if response.status_code == 404:
                created = self._send("PUT", path, new_incident(finding, self.evidence_table))
                if created.status_code in (200, 201):
                    number = (created.json().get("properties") or {}).get("incidentNumber")
                    log.info("sentinel: created incident %s (#%s) for finding %s", finding.id, number, finding.id)
                    return "created"
                if created.status_code in (409, 412):
                    continue  # someone created it meanwhile: read it and update it as an existing one
                raise self._problem(created, f"create incident {finding.id}")
            if response.status_code != 200:
                raise self._problem(response, f"read incident {finding.id}")
            current = response.json()
            changed = owned_changes(current.get("properties") or {}, owned)
            if not changed:
                return "unchanged"
            if "description" in changed:
                comment_id, message = update_comment(finding, owned)
                commented = self._send("PUT", f"{path}/comments/{comment_id}", {"properties": {"message": message}})
                if commented.status_code not in (200, 201):
                    raise self._problem(commented, f"comment on incident {finding.id}")
            etag = current.get("etag")
            updated = self._send("PUT", path, updated_incident(current, owned), etag=etag)
            if updated.status_code in (200, 201):
                log.info("sentinel: updated %s of incident %s", ", ".join(changed), finding.id)
                return "updated"
            if updated.status_code in (409, 412):
                log.info("sentinel: incident %s changed while we updated it (etag conflict); re-reading", finding.id)
                continue
            raise self._problem(updated, f"update incident {finding.id}")
        raise _FindingFailedError(
            f"incident {finding.id} kept changing while the detector updated it ({CONFLICT_ATTEMPTS} etag conflicts); "
            "retried next run"
        )

    def deliver(self, findings: Sequence[Finding]) -> None:
        """Each finding's incident, created or updated.

        The findings the service refused (400, 413, 422) are `refused`: the runner parks such a finding
        after a few runs once it has proof that it is the finding, not the API or the workspace, that is
        refused: another finding got through in the same offer. A systemic 400 (every finding refused)
        leaves them all pending, reported every run.
        """
        delivered: set[str] = set()
        failures: list[str] = []
        refused: dict[str, str] = {}
        for finding in findings:
            try:
                self._deliver_one(finding)
            except _FindingFailedError as exc:
                failures.append(str(exc))
                if exc.refused:
                    refused[finding.id] = str(exc)
                continue
            except _SinkBrokenError as exc:
                left = len(findings) - len(delivered)
                raise SinkError(
                    f"{self.describe()}: {exc} ({left} of {len(findings)} findings not delivered)",
                    delivered=frozenset(delivered),
                    refused=refused,
                ) from None
            delivered.add(finding.id)
        if failures:
            raise SinkError(
                f"{self.describe()}: {len(failures)} of {len(findings)} findings not delivered: " + "; ".join(failures),
                delivered=frozenset(delivered),
                refused=refused,
            )


def evidence_table(settings: Settings) -> str:
    """The table the evidence query reads: the Log Analytics source's table when it is configured."""
    return settings.logs.table


@register_sink("sentinel")
def _open(argument: str, settings: Settings | None) -> Sink:
    from detector.config import settings_or_env
    from detector.identity import build_credential

    if argument:
        raise ConfigError("DETECTOR_SINKS", "sentinel takes no argument; set DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID")
    resolved = settings_or_env(settings)
    if not resolved.sentinel_workspace_resource_id:
        raise ConfigError(
            "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID",
            "is required by the sentinel sink: the resource id of the Sentinel workspace",
        )
    return SentinelSink(
        resolved.sentinel_workspace_resource_id,
        credential=lambda: build_credential(resolved),
        arm_endpoint=resolved.arm_endpoint,
        evidence_table=evidence_table(resolved),
    )
