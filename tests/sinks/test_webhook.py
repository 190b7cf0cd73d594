"""The webhook sink against a local HTTPS receiver: payloads, idempotency keys, retries, and the secret URL."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from detector.config import Settings
from detector.errors import ConfigError, SinkError
from detector.models import FINDING_NAMESPACE, Window
from detector.sinks import open_sink
from detector.sinks.http_delivery import RetrySettings
from detector.sinks.webhook import RUN_BATCH, WebhookSink, batch_key, redact
from tests.fakes.server import FakeServer, serve
from tests.fakes.webhook import WebhookHandler
from tests.sink_support import findings

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki

SECRET_PATH = "/workflows/9f3c2a/triggers/manual/paths/invoke"
SECRET_QUERY = "sig=Zm9vYmFyLXNlY3JldC1zaWduYXR1cmU"


@pytest.fixture
def receiver(pki: TestPki, azure_env: FakeServer) -> Iterator[FakeServer]:
    with serve(WebhookHandler, pki) as server:
        yield server


def state(server: FakeServer) -> dict[str, Any]:
    return server.state


def url_of(server: FakeServer) -> str:
    return f"{server.url}{SECRET_PATH}?{SECRET_QUERY}"


def settings_for(server: FakeServer, mode: str = "per-finding") -> Settings:
    return Settings.from_env(
        {"DETECTOR_SOURCE": "file:unused", "DETECTOR_WEBHOOK_URL": url_of(server), "DETECTOR_WEBHOOK_MODE": mode}
    )


def test_one_post_per_finding_with_text_and_idempotency_key(receiver: FakeServer) -> None:
    found = findings()
    open_sink("webhook", settings_for(receiver)).deliver(found)

    received = state(receiver)["received"]
    assert [r["headers"]["idempotency-key"] for r in received] == [f.id for f in found]
    for post, finding in zip(received, found, strict=True):
        assert post["path"] == f"{SECRET_PATH}?{SECRET_QUERY}"
        body = post["body"]
        assert body["findingId"] == finding.id
        assert body["finding"] == finding.to_json()
        text = body["text"]
        assert finding.summary in text  # the fixture's values hold nothing to escape
        assert (body["title"], body["summary"]) == (finding.title, finding.summary)
        assert "InitialAccess" in text
        assert "T1190" in text


def test_per_run_mode_posts_batches_keyed_by_their_findings(receiver: FakeServer) -> None:
    found = findings()
    open_sink("webhook", settings_for(receiver, "per-run")).deliver(found)
    (post,) = state(receiver)["received"]
    assert post["headers"]["idempotency-key"] == batch_key(found) == post["body"]["batchId"]
    assert [f["FindingId"] for f in post["body"]["findings"]] == [f.id for f in found]
    assert post["body"]["text"].startswith("7 finding(s) of High count of connections")
    assert batch_key(list(reversed(found))) == batch_key(found)  # the key does not depend on order

    many = found * ((RUN_BATCH // len(found)) + 1)  # more than one batch
    state(receiver)["received"].clear()
    open_sink("webhook", settings_for(receiver, "per-run")).deliver(many)
    parts = [p["body"]["part"] for p in state(receiver)["received"]]
    assert parts == [1, 2]


def test_a_per_run_batch_retried_beside_later_findings_keeps_its_key(receiver: FakeServer) -> None:
    """A batch whose POST failed (or timed out after the receiver took it) is sent again on the next run
    with its own Idempotency-Key, even when the next run has new findings of a later window to deliver
    with it: they go in a batch of their own, so a receiver that honours the key shows nothing twice."""
    first = findings()
    span = first[0].window.end - first[0].window.start
    later_window = Window(first[0].window.end, first[0].window.end + span)
    later = [
        dataclasses.replace(f, id=str(uuid.uuid5(FINDING_NAMESPACE, f"later/{f.id}")), window=later_window) for f in first[:3]
    ]
    sink = WebhookSink(url_of(receiver), mode="per-run", retry=RetrySettings(sleep=lambda _: None, attempts=1))
    state(receiver)["script"] = [(500, {})]
    with pytest.raises(SinkError):
        sink.deliver(first)
    (failed,) = state(receiver)["received"]
    state(receiver)["received"].clear()
    sink.deliver([*later, *reversed(first)])  # the outbox's order is no promise
    retried, new = state(receiver)["received"]
    assert retried["headers"]["idempotency-key"] == failed["headers"]["idempotency-key"] == batch_key(first)
    assert [f["FindingId"] for f in retried["body"]["findings"]] == [f["FindingId"] for f in failed["body"]["findings"]]
    assert new["headers"]["idempotency-key"] == batch_key(later)
    # A window's findings past RUN_BATCH: the batches still delivered after the first went through are
    # the ones that were sent before.
    many = [
        dataclasses.replace(first[0], id=str(uuid.uuid5(FINDING_NAMESPACE, f"many/{i}")), rank=i) for i in range(RUN_BATCH + 7)
    ]
    state(receiver)["received"].clear()
    state(receiver)["script"] = [(200, {}), (500, {})]
    with pytest.raises(SinkError):
        sink.deliver(many)
    sent = [r["headers"]["idempotency-key"] for r in state(receiver)["received"]]
    state(receiver)["received"].clear()
    sink.deliver(many[RUN_BATCH:])  # what the outbox still holds: the second batch
    assert [r["headers"]["idempotency-key"] for r in state(receiver)["received"]] == sent[1:]


def test_retries_5xx_and_429_honouring_retry_after(receiver: FakeServer) -> None:
    waits: list[float] = []
    state(receiver)["script"] = [(503, {}), (429, {"Retry-After": "4"}), (502, {})]
    sink = WebhookSink(url_of(receiver), retry=RetrySettings(sleep=waits.append, backoff_factor=0.5))
    sink.deliver(findings()[:2])

    received = state(receiver)["received"]
    assert len(received) == 5  # three refused attempts of the first finding, then both findings
    assert len({r["headers"]["idempotency-key"] for r in received[:4]}) == 1  # retries repeat the key
    # azure-core retries the first failure at once, then the 429 waits its Retry-After (not the backoff),
    # then the backoff grows: 0.5 * 2**(3 - 1) seconds after the third failure.
    assert waits == [4, 2.0]
    assert len(state(receiver)["accepted"]) == 2


def test_gives_up_after_the_attempts_and_reports_what_was_delivered(receiver: FakeServer) -> None:
    found = findings()
    waits: list[float] = []
    state(receiver)["script"] = [(200, {})] + [(500, {})] * 10
    sink = WebhookSink(url_of(receiver), retry=RetrySettings(sleep=waits.append, attempts=3))
    with pytest.raises(SinkError, match="answered 500") as caught:
        sink.deliver(found)
    assert caught.value.delivered == frozenset({found[0].id})
    assert "6 of 7 findings not delivered" in str(caught.value)
    assert len(state(receiver)["received"]) == 1 + 3


def test_the_url_never_appears_in_errors_or_logs(receiver: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    state(receiver)["script"] = [(404, {})]
    sink = open_sink("webhook", settings_for(receiver))
    assert SECRET_QUERY not in repr(sink)
    assert SECRET_QUERY not in sink.describe()
    with pytest.raises(SinkError) as refused:
        sink.deliver(findings()[:1])
    # A receiver that is not listening: the transport's own error text names the URL; ours must not.
    closed = WebhookSink(
        f"https://127.0.0.1:9{SECRET_PATH}?{SECRET_QUERY}", retry=RetrySettings(sleep=lambda _: None, attempts=2)
    )
    with pytest.raises(SinkError, match="cannot reach the webhook") as unreachable:
        closed.deliver(findings()[:1])
    for message in (str(refused.value), str(unreachable.value)):
        assert SECRET_PATH not in message
        assert SECRET_QUERY not in message
    # urllib3 logs request paths at DEBUG (documented in docs/sinks.md); nothing else may.
    leaks = [r for r in caplog.records if (SECRET_QUERY in r.getMessage() or SECRET_PATH in r.getMessage())]
    assert [r.name for r in leaks if not r.name.startswith("urllib3")] == []
    assert all(r.levelno <= logging.DEBUG for r in leaks)
    assert SECRET_QUERY not in repr(settings_for(receiver))


def test_redact_removes_every_form_of_the_url() -> None:
    url = f"https://hooks.example.com{SECRET_PATH}?{SECRET_QUERY}"
    text = f"failed {url}; path {SECRET_PATH}; query {SECRET_QUERY}; {url.split('?', maxsplit=1)[0]}"
    cleaned = redact(text, url)
    assert SECRET_PATH not in cleaned
    assert SECRET_QUERY not in cleaned
    assert "hooks.example.com" not in cleaned


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"DETECTOR_WEBHOOK_URL.*required"):
        open_sink("webhook", Settings.from_env({"DETECTOR_SOURCE": "file:x"}))
    with pytest.raises(ConfigError, match="takes no argument"):
        open_sink("webhook:https://hooks.example.com/x", Settings.from_env({"DETECTOR_SOURCE": "file:x"}))
    with pytest.raises(ConfigError, match="DETECTOR_WEBHOOK_MODE"):
        Settings.from_env({"DETECTOR_SOURCE": "file:x", "DETECTOR_WEBHOOK_MODE": "batch"})
    with pytest.raises(ConfigError, match="DETECTOR_WEBHOOK_URL: the value is not an https") as caught:
        Settings.from_env({"DETECTOR_SOURCE": "file:x", "DETECTOR_WEBHOOK_URL": f"http://hooks.example.com{SECRET_PATH}"})
    assert SECRET_PATH not in str(caught.value)


def test_a_body_the_receiver_refuses_does_not_stop_the_other_posts(receiver: FakeServer) -> None:
    """Per finding, a 400 is that finding's: the others are posted, and the refused one is reported as
    refused (the runner parks it once it has proof, see tests/sinks/test_isolation.py). Per run, a
    refused batch says nothing about which finding it is: the delivery stops there, as for an outage."""
    found = findings()
    sink = WebhookSink(url_of(receiver), retry=RetrySettings(sleep=lambda _: None, attempts=1))
    state(receiver)["script"] = [(200, {}), (400, {})]
    with pytest.raises(SinkError, match="answered 400") as caught:
        sink.deliver(found)
    assert caught.value.delivered == frozenset(f.id for f in found) - {found[1].id}
    assert list(caught.value.refused) == [found[1].id]
    many = [dataclasses.replace(found[0], id=str(uuid.uuid5(FINDING_NAMESPACE, f"refused/{i}")), rank=i) for i in range(60)]
    run = WebhookSink(url_of(receiver), mode="per-run", retry=RetrySettings(sleep=lambda _: None, attempts=1))
    state(receiver)["script"] = [(400, {})]
    with pytest.raises(SinkError, match="answered 400") as caught:
        run.deliver(many)
    assert caught.value.delivered == frozenset() and caught.value.refused == {}
