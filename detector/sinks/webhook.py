"""`webhook`: findings as JSON POSTs to a URL from DETECTOR_WEBHOOK_URL (Teams workflow, Slack, a SOAR...).

DETECTOR_WEBHOOK_MODE=per-finding (default) sends one POST per finding; per-run sends the run's
findings in batches: the findings of one rule and window, in the rule's order, RUN_BATCH at most to a
POST. Every body has a `text` field that Slack
incoming webhooks and Teams workflows show, plus the structured finding(s). `text` is built from the
rule's title, summary and evidence fields; every value in it is escaped (presentation.chat_text), because
values from the logs are the attacker's: a user agent of `<!channel>` must not ping a channel.

The URL is a secret (whoever has it can post into the channel): it comes only from the setting (a Key
Vault reference in Azure), is never logged, and is removed from every error message.

Retries: connection errors, 429 and 5xx are retried with exponential backoff, honouring Retry-After up to
a bound. A retried POST can reach the receiver twice, so each carries an Idempotency-Key header (the
finding id, or a digest of a batch's ids) that receivers may use to drop the repeat. A batch holds one
rule's window (run_batches), so findings of later windows never join a batch that was sent before: a
POST that timed out after the receiver took it is repeated with its own key. Only a re-check for late
rows that adds or updates a finding of a window already sent changes that window's batch (and key).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from detector.errors import ConfigError, SinkError
from detector.kql import format_datetime
from detector.models import FINDING_NAMESPACE, Finding
from detector.sinks import Sink, register_sink
from detector.sinks.presentation import chat_text, evidence_lines, summary_of, title_of
from detector.sinks.sentinel import activity_span

if TYPE_CHECKING:
    from azure.core import PipelineClient

    from detector.config import Settings
    from detector.sinks.http_delivery import RetrySettings

log = logging.getLogger(__name__)

RUN_BATCH = 50  # findings per POST in per-run mode: keeps bodies well below receivers' limits (Slack: 40k chars of text)
TEXT_LINES = 20  # findings listed in a per-run text before "... and N more"
TEXT_EVIDENCE_FIELDS = 3  # evidence fields of the rule shown in a per-finding text (all are in `finding`)
TEXT_LIST_LIMIT = 300  # characters of one evidence list in a per-finding text
TEXT_SUMMARY_LIMIT = 1000
MODES = ("per-finding", "per-run")
URL_PLACEHOLDER = "<DETECTOR_WEBHOOK_URL>"


# ---------------------------------------------------------------------------------------------------
# Pure: what is posted


def finding_line(finding: Finding) -> str:
    """One line a person reads in a chat channel: the rule's title, when, severity and id (escaped)."""
    first, last = activity_span(finding)
    return (
        f"{chat_text(title_of(finding))}, {format_datetime(first)} to {format_datetime(last)} "
        f"({chat_text(finding.severity)}) finding {finding.id}"
    )


def finding_text(finding: Finding) -> str:
    """The `text` of a per-finding message: every value from the logs escaped for Slack and Teams."""
    first, last = activity_span(finding)
    lines = [
        f"{chat_text(finding.severity)}: {chat_text(finding.rule_name)}",
        chat_text(summary_of(finding), TEXT_SUMMARY_LIMIT),
        f"{format_datetime(first)} to {format_datetime(last)}, finding {finding.id}",
        *evidence_lines(finding, chat_text, TEXT_LIST_LIMIT, TEXT_EVIDENCE_FIELDS),
    ]
    if finding.tactics or finding.techniques:
        lines.append(f"MITRE ATT&amp;CK: {', '.join(map(chat_text, (*finding.tactics, *finding.techniques)))}")
    return "\n".join(lines)


def finding_payload(finding: Finding) -> dict[str, Any]:
    """Body of a per-finding POST. Only `text` is escaped: the other fields are JSON data, verbatim."""
    return {
        "text": finding_text(finding),
        "findingId": finding.id,
        "severity": finding.severity,
        "ruleName": finding.rule_name,
        "title": title_of(finding),
        "summary": summary_of(finding),
        "finding": finding.to_json(),
    }


def batch_key(findings: Sequence[Finding]) -> str:
    """Idempotency key of a batch: the same findings always give the same key (uuid5 of the sorted ids)."""
    digest = hashlib.sha256("\n".join(sorted(f.id for f in findings)).encode()).hexdigest()
    return str(uuid.uuid5(FINDING_NAMESPACE, f"webhook-batch/{digest}"))


def run_batches(findings: Sequence[Finding]) -> list[list[Finding]]:
    """The per-run POSTs' batches: per rule and window, in window order, RUN_BATCH findings at a time.

    Within a window the findings are in the rule's order (rank, then id). A batch depends only on its
    rule's window and on which of the window's findings are still to deliver, never on findings of other
    windows: what a retry sends again is the batch it sent before (the batches before it having been
    delivered), so its key is the one the receiver saw.
    """
    windows: dict[tuple[datetime, datetime, str], list[Finding]] = {}
    for finding in findings:
        windows.setdefault((finding.window.start, finding.window.end, finding.rule_id), []).append(finding)
    batches: list[list[Finding]] = []
    for key in sorted(windows):
        ordered = sorted(windows[key], key=lambda f: (f.rank, f.id))
        batches += [ordered[i : i + RUN_BATCH] for i in range(0, len(ordered), RUN_BATCH)]
    return batches


def run_payload(findings: Sequence[Finding], part: int = 1, parts: int = 1) -> dict[str, Any]:
    """Body of a per-run POST (one batch of the run's findings)."""
    rules = ", ".join(sorted({chat_text(f.rule_name) for f in findings}))
    head = f"{len(findings)} finding(s) of {rules}" + (f" (part {part} of {parts})" if parts > 1 else "")
    lines = [head] + [f"- {finding_line(f)}" for f in findings[:TEXT_LINES]]
    if len(findings) > TEXT_LINES:
        lines.append(f"... and {len(findings) - TEXT_LINES} more (see findings)")
    return {
        "text": "\n".join(lines),
        "batchId": batch_key(findings),
        "part": part,
        "parts": parts,
        "findings": [f.to_json() for f in findings],
    }


def redact(text: str, url: str) -> str:
    """Text with every form of the secret URL (whole, without query, path and query, path) replaced."""
    parts = urlsplit(url)
    forms = {url, url.split("?", 1)[0], parts.path + (f"?{parts.query}" if parts.query else ""), parts.query}
    if len(parts.path) > 1:
        forms.add(parts.path)
    for form in sorted((f for f in forms if f and len(f) > 1), key=len, reverse=True):
        text = text.replace(form, URL_PLACEHOLDER)
    return text


# ---------------------------------------------------------------------------------------------------
# I/O


class _PostFailedError(Exception):
    """A POST failed for good; the message is already free of the URL.

    `refused`: the receiver refused this body (400, 413, 422). In per-finding mode that is the one
    finding's, and the other POSTs go on; in per-run mode no one finding of the batch is known to be it.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class WebhookSink(Sink):
    """POSTs findings to the webhook URL."""

    name = "webhook"

    def __init__(self, url: str, *, mode: str = "per-finding", retry: RetrySettings | None = None) -> None:
        from detector.sinks.http_delivery import RetrySettings  # azure-core: imported when a sink is built

        if mode not in MODES:
            raise ConfigError("DETECTOR_WEBHOOK_MODE", f"'{mode}' is not one of {', '.join(MODES)}")
        self._url = url
        self.mode = mode
        self._retry = retry or RetrySettings()
        self._client: PipelineClient[Any, Any] | None = None

    def describe(self) -> str:
        return f"webhook:{self.mode}"  # never the URL

    def __repr__(self) -> str:
        return f"WebhookSink(mode={self.mode!r})"

    def _pipeline(self) -> PipelineClient[Any, Any]:
        if self._client is None:
            from azure.core import PipelineClient
            from azure.core.pipeline.policies import HeadersPolicy, UserAgentPolicy

            from detector.sinks.http_delivery import BoundedRetryPolicy

            # No logging policies: azure-core's HttpLoggingPolicy would log the (secret) URL.
            policies = [
                HeadersPolicy(),
                UserAgentPolicy(base_user_agent="iis-portscan-detector"),
                BoundedRetryPolicy(self._retry, retry_post=True),
            ]
            self._client = PipelineClient(base_url=self._url, policies=policies)
        return self._client

    def _post(self, key: str, payload: dict[str, Any]) -> None:
        from azure.core.exceptions import AzureError
        from azure.core.rest import HttpRequest

        from detector.sinks.http_delivery import REFUSED_STATUSES, throttled_text

        request = HttpRequest("POST", self._url, json=payload, headers={"Idempotency-Key": key})
        try:
            response = self._pipeline().send_request(
                request, connection_timeout=self._retry.connection_timeout, read_timeout=self._retry.read_timeout
            )
            response.read()
        except AzureError as exc:
            reason = type(exc).__name__
            raise _PostFailedError(
                f"cannot reach the webhook ({reason}: {redact(str(exc.message), self._url)}) "
                f"after {self._retry.attempts} attempts; check DETECTOR_WEBHOOK_URL (not shown: it is a secret)"
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 429:
            raise _PostFailedError(f"the webhook {throttled_text(response.headers, self._retry)}")
        body = redact(response.text()[:300], self._url).strip()
        hint = {
            400: "the receiver refused the body",
            401: "the receiver wants credentials: use a URL that carries its own secret (Key Vault reference)",
            403: "the receiver refused the URL's credentials: rotate DETECTOR_WEBHOOK_URL",
            404: "the URL names no receiver: check DETECTOR_WEBHOOK_URL (not shown: it is a secret)",
            410: "the receiver was deleted: create a new webhook and update DETECTOR_WEBHOOK_URL",
            413: "the body is too large for the receiver: use DETECTOR_WEBHOOK_MODE=per-finding",
        }.get(status, "retried next run")
        raise _PostFailedError(
            f"the webhook answered {status}{f' ({body})' if body else ''}: {hint}", refused=status in REFUSED_STATUSES
        )

    def deliver(self, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        if self.mode == "per-finding":
            posts = [(f.id, [f.id], finding_payload(f)) for f in findings]
        else:
            batches = run_batches(findings)
            posts = [
                (batch_key(batch), [f.id for f in batch], run_payload(batch, n, len(batches)))
                for n, batch in enumerate(batches, start=1)
            ]
        delivered: set[str] = set()
        refused: dict[str, str] = {}  # the runner parks these once it has proof it is them (SinkError.refused)
        for key, ids, payload in posts:
            try:
                self._post(key, payload)
            except _PostFailedError as exc:
                if exc.refused and self.mode == "per-finding":
                    refused.update(dict.fromkeys(ids, str(exc)))
                    continue
                raise SinkError(
                    f"{self.describe()}: {exc} ({len(findings) - len(delivered)} of {len(findings)} findings not delivered)",
                    delivered=frozenset(delivered),
                    refused=refused,
                ) from None
            delivered.update(ids)
        if refused:
            reasons = sorted(set(refused.values()))
            raise SinkError(
                f"{self.describe()}: {reasons[0]} ({len(refused)} of {len(findings)} findings not delivered)",
                delivered=frozenset(delivered),
                refused=refused,
            )
        log.info("webhook: %d finding(s) posted in %d request(s)", len(findings), len(posts))


@register_sink("webhook")
def _open(argument: str, settings: Settings | None) -> Sink:
    from detector.config import settings_or_env

    if argument:
        # The URL must not appear in DETECTOR_SINKS (a plain setting, often logged): only in its own secret setting.
        raise ConfigError("DETECTOR_SINKS", "webhook takes no argument; put the URL in DETECTOR_WEBHOOK_URL")
    resolved = settings_or_env(settings)
    if not resolved.webhook_url:
        raise ConfigError("DETECTOR_WEBHOOK_URL", "is required by the webhook sink (a Key Vault reference in Azure)")
    return WebhookSink(resolved.webhook_url, mode=resolved.webhook_mode)
