"""HTTP plumbing shared by the sinks that call web services.

Retries with backoff that honour Retry-After within a bound and within the run's deadline, and error
texts that say what went wrong and what to do.

Imports azure-core at module level: import this module only from inside the sinks that need it, never
from detector/sinks/__init__.py, so `import function_app` stays fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import RetryPolicy

from detector.deadline import current_deadline

# Methods azure-core retries by default, plus POST for services where a repeated POST is harmless
# (webhooks get an Idempotency-Key; Logs Ingestion rows carry FindingId and the alert query dedups).
# Statuses of a service refusing a request's body (not the sink failing): what a retry will not change.
REFUSED_STATUSES = (400, 413, 422)
_IDEMPOTENT_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class RetrySettings:
    """How hard one delivery tries before it gives up and leaves the finding to the next run.

    `max_wait` bounds a single wait: a Retry-After longer than this is not waited for (the run would
    outlive its timer), the call fails at once and says when the service will accept again.
    """

    attempts: int = 4  # first try included
    backoff_factor: float = 0.8  # azure-core's exponential backoff: factor * 2**(retry-1)
    max_wait: float = 60.0
    connection_timeout: float = 10.0
    read_timeout: float = 60.0
    sleep: Callable[[float], None] = time.sleep


class BoundedRetryPolicy(RetryPolicy):  # type: ignore[type-arg]  # generic only in azure-core's stubs
    """azure-core's RetryPolicy (Retry-After first, else exponential backoff), with four changes.

    A Retry-After longer than `max_wait` ends the retries instead of blocking the run; waits go through a
    replaceable `sleep` (tests record them instead of sleeping); POST may be made retryable; and every
    attempt, wait and socket timeout ends by the run's deadline (detector.deadline), so a hung or
    throttling service costs at most the time the run has left: the call then fails, and the findings
    stay pending for the next run.
    """

    def __init__(self, settings: RetrySettings, *, retry_post: bool = False) -> None:
        retries = max(settings.attempts - 1, 0)
        super().__init__(
            retry_total=retries,
            retry_connect=retries,
            retry_read=retries,
            retry_status=retries,
            retry_backoff_factor=settings.backoff_factor,
            retry_backoff_max=int(settings.max_wait),
        )
        self.max_wait = settings.max_wait
        self._sleep = settings.sleep
        if retry_post:
            self._method_whitelist = _IDEMPOTENT_METHODS | {"POST"}

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        wait = self.get_retry_after(response)
        if wait is not None and wait > self.max_wait:
            return False
        deadline = current_deadline()
        if deadline is not None and (wait if wait is not None else self.get_backoff_time(settings)) >= deadline.remaining():
            return False  # the wait would outlast the run: answer now with what the service said
        # azure-core retries a POST's 429 only when Retry-After is present; a throttled call was not
        # processed, so repeating it is always safe.
        if response.http_response.status_code == 429:
            return bool(settings["total"])
        return bool(super().is_retry(settings, response))

    def sleep(self, settings: dict[str, Any], transport: Any, response: PipelineResponse[Any, Any] | None = None) -> None:
        wait = self.get_retry_after(response) if response is not None else None
        if wait is None:
            wait = self.get_backoff_time(settings)
        deadline = current_deadline()
        if deadline is not None:
            wait = min(wait, max(deadline.remaining(), 0.0))
        if wait and wait > 0:
            self._sleep(min(wait, self.max_wait))

    def _configure_timeout(self, request: PipelineRequest[Any], absolute_timeout: float, is_response_error: bool) -> None:
        # azure-core calls this before every attempt with the time its own budget has left; the run's
        # deadline bounds that budget too, and the read timeout as well (azure-core bounds only the
        # connection timeout, so a service that accepts and then hangs would hold the run for read_timeout).
        deadline = current_deadline()
        if deadline is not None:
            absolute_timeout = min(absolute_timeout, deadline.remaining())
        super()._configure_timeout(request, absolute_timeout, is_response_error)
        if deadline is not None:
            options = request.context.options
            options["read_timeout"] = min(float(options.get("read_timeout") or 300.0), max(absolute_timeout, 0.001))


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a Retry-After (or retry-after-ms / x-ms-retry-after-ms) header asks for, or None."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        if name in lowered:
            try:
                return float(lowered[name]) * scale
            except ValueError:
                pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(moment.timestamp() - time.time(), 0.0)


def service_error(body: bytes | str | None) -> str:
    """'Code: message' from an ARM / OneAPI error body ({"error": {"code", "message"}}), else a short text."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "")), str(error.get("message", ""))
        return f"{code}: {message}"[:600] if code else message[:600]
    return text.strip()[:300]


def request_ids(headers: Mapping[str, str]) -> str:
    """The request ids Azure support asks for, as ' (x-ms-request-id ...)' or ''."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ids = [f"{name} {lowered[name]}" for name in ("x-ms-request-id", "x-ms-correlation-request-id") if lowered.get(name)]
    return f" ({', '.join(ids)})" if ids else ""


def throttled_text(headers: Mapping[str, str], settings: RetrySettings) -> str:
    """The sentence for a 429 that outlasted our retries."""
    wait = retry_after_seconds(headers)
    if wait is None:
        return f"throttled (429) after {settings.attempts} attempts; the findings are retried on the next run"
    if wait > settings.max_wait:
        return (
            f"throttled (429): the service asks to wait {wait:.0f} s (Retry-After), longer than the "
            f"{settings.max_wait:.0f} s one run waits; the findings are retried on the next run"
        )
    return (
        f"throttled (429) after {settings.attempts} attempts (last Retry-After {wait:.0f} s); "
        "the findings are retried on the next run"
    )
