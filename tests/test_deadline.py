"""The run deadline: every retry loop ends by it, and what does not fit is left for the next run and reported.

Time is a fake monotonic clock that the sources' and sinks' injected sleeps (and slow reads) move; nothing
here sleeps for real.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError, ServiceResponseTimeoutError
from azure.core.pipeline import Pipeline
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

from detector import cli
from detector.deadline import Deadline, running_until
from detector.errors import DeadlineReachedError, SinkError
from detector.kql import parse_datetime
from detector.models import Finding
from detector.runner import RUN_DEADLINE, RunSummary, run_incremental
from detector.sinks.http_delivery import BoundedRetryPolicy, RetrySettings
from detector.sinks.jsonl import JsonlSink
from detector.sinks.webhook import WebhookSink
from detector.sources import ReadRequest
from detector.state.file import FileStateStore
from tests.fakes.loganalytics import Fault
from tests.fakes.server import FakeServer, serve
from tests.fakes.webhook import WebhookHandler
from tests.helpers import FILES, ROOT, RULE, expected_findings
from tests.test_loganalytics import Workspace, file_findings, findings_of, rule, workspace  # noqa: F401 - fixtures
from tests.test_runs import NOW, Clock, FlakySource, RecordingSink, settings


class Monotonic:
    """A fake monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_run_deadline_fits_in_the_function_timeout() -> None:
    hours, minutes, seconds = (int(p) for p in json.loads((ROOT / "host.json").read_text())["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    assert RUN_DEADLINE.total_seconds() <= timeout - 5 * 60  # room for start-up, token requests and the summary


class SlowSource(FlakySource):
    """Each read takes ten minutes of the fake monotonic clock."""

    def __init__(self, path: Path, monotonic: Monotonic) -> None:
        super().__init__(path)
        self.monotonic = monotonic

    def read(self, request: ReadRequest) -> Any:
        self.monotonic.sleep(600)
        return super().read(request)


def _copy_data(tmp_path: Path) -> Path:
    import os
    import shutil

    path = tmp_path / "w3ciislog.jsonl"
    shutil.copy(FILES / "w3ciislog.jsonl", path)
    os.utime(path, (0, 0))
    return path


def _set_checkpoint(store: FileStateStore, moment: str) -> None:
    store.acquire_lease(RULE.id, "earlier-run", RUN_DEADLINE, Clock()())
    state = store.load_rule_state(RULE.id, RULE.logic.time_bin)
    state.checkpoint = parse_datetime(moment)
    store.save_rule_state(RULE.id, state, "earlier-run")
    store.release_lease(RULE.id, "earlier-run")


def test_windows_that_do_not_fit_stay_behind_the_checkpoint_and_are_reported(tmp_path: Path) -> None:
    data, monotonic, clock = _copy_data(tmp_path), Monotonic(), Clock()
    store = FileStateStore(tmp_path / "state")
    _set_checkpoint(store, "2026-11-24T00:00:00Z")  # three days to catch up: 24th, 25th, 26th
    sink = RecordingSink()

    def one_run() -> RunSummary:
        deadline = Deadline.after(25 * 60, monotonic)  # evaluation stops 5 minutes before it
        return run_incremental([RULE], SlowSource(data, monotonic), [sink], store, NOW, settings(), clock, deadline)

    first = one_run()
    windows = [str(r.window.start.date()) for r in first.rules if r.kind == "window"]
    assert windows == ["2026-11-24", "2026-11-25"]  # 20 minutes of reads; the third would not fit
    assert first.ok and first.deadline_reached and not first.complete
    assert any("2026-11-26" in m and "next run" in m for m in first.deferred)
    summary = first.to_json()
    assert summary["deadlineReached"] is True
    assert summary["deferred"] == first.deferred
    assert store.load_rule_state(RULE.id, RULE.logic.time_bin).checkpoint == parse_datetime("2026-11-26T00:00:00Z")
    assert [f.columns["cIP"] for f in sink.received] == ["203.0.113.50"]  # what was evaluated is delivered

    assert cli._report(first, argparse.Namespace(quiet=False), as_json=True) == cli.EXIT_INCOMPLETE

    second = one_run()
    assert [str(r.window.start.date()) for r in second.rules if r.kind == "window"] == ["2026-11-26"]
    assert second.complete
    assert {f.columns["cIP"] for f in sink.received} >= {e["cIP"] for e in expected_findings()}
    assert len(sink.received) == len({f.id for f in sink.received})


def test_deliveries_not_reached_by_the_deadline_stay_pending_and_are_reported(tmp_path: Path) -> None:
    data, monotonic = _copy_data(tmp_path), Monotonic()
    store = FileStateStore(tmp_path / "state")

    class SlowSink(RecordingSink):
        def deliver(self, findings: Sequence[Finding]) -> None:
            super().deliver(findings)
            monotonic.sleep(30 * 60)  # a sink that takes the rest of the run

    class LaterSink(RecordingSink):
        name = "later"

    slow, later = SlowSink(), LaterSink()
    deadline = Deadline.after(25 * 60, monotonic)
    summary = run_incremental([RULE], FlakySource(data), [slow, later], store, NOW, settings(), Clock(), deadline)
    assert summary.deadline_reached
    assert any(
        m.startswith("sink later:") and f"{len(expected_findings())} finding(s) left pending" in m for m in summary.deferred
    )
    assert len(store.pending("later")) == len(expected_findings())  # never lost: the next run delivers them
    again = run_incremental(
        [RULE], FlakySource(data), [slow, later], store, NOW, settings(), Clock(), Deadline.after(1500, monotonic)
    )
    assert again.complete
    assert len(later.received) == len(expected_findings())


def test_a_failing_webhook_gives_up_by_the_deadline(pki: Any, azure_env: FakeServer) -> None:
    monotonic = Monotonic()
    with serve(WebhookHandler, pki) as receiver:
        receiver.state["script"] = [(503, {})] * 50
        retry = RetrySettings(attempts=50, backoff_factor=0.8, max_wait=60, sleep=monotonic.sleep)
        sink = WebhookSink(f"{receiver.url}/hook", retry=retry)
        from tests.sink_support import findings

        started = monotonic()
        with running_until(Deadline.after(30, monotonic)), pytest.raises(SinkError, match="503"):
            sink.deliver(findings()[:3])
        assert monotonic() - started <= 30  # the waits stopped before the deadline
        posts = len(receiver.state["received"])
        assert 2 <= posts < 10  # a few tries, not 50 (and not one per finding: the first failure ends the batch)


class HangingTransport(HttpTransport[Any, Any]):
    """A service that accepts the connection and never answers: each attempt costs its read timeout."""

    def __init__(self, monotonic: Monotonic) -> None:
        self.monotonic = monotonic
        self.read_timeouts: list[float] = []

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.read_timeouts.append(kwargs["read_timeout"])
        self.monotonic.sleep(kwargs["read_timeout"])
        raise ServiceResponseError("read timed out")

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> HangingTransport:
        return self

    def __exit__(self, *args: object) -> None:
        pass


def test_a_hung_service_holds_the_run_no_longer_than_its_deadline() -> None:
    monotonic = Monotonic()
    transport = HangingTransport(monotonic)
    policy = BoundedRetryPolicy(RetrySettings(attempts=4, read_timeout=60, sleep=monotonic.sleep), retry_post=True)
    pipeline = Pipeline(transport, policies=[policy])
    started = monotonic()
    with running_until(Deadline.after(45, monotonic)), pytest.raises(ServiceResponseTimeoutError, match="Response timeout"):
        pipeline.run(HttpRequest("POST", "https://hook.example/x", json={}), read_timeout=60)
    assert monotonic() - started <= 45 + 1e-6  # without the deadline: 4 x 60 s plus backoff
    assert transport.read_timeouts[0] <= 45
    without = HangingTransport(Monotonic())
    with pytest.raises(ServiceResponseError):
        Pipeline(
            without, policies=[BoundedRetryPolicy(RetrySettings(attempts=4, sleep=without.monotonic.sleep), retry_post=True)]
        ).run(HttpRequest("POST", "https://hook.example/x", json={}), read_timeout=60)
    assert without.read_timeouts == [60, 60, 60, 60]  # what the deadline saves


def test_log_analytics_retries_end_by_the_deadline(workspace: Workspace, rule: Any) -> None:  # noqa: F811 - fixtures
    monotonic = Monotonic()
    workspace.fake.fail_always(Fault("status", 503))
    source = workspace.source()
    source.sleep = monotonic.sleep
    with running_until(Deadline.after(10, monotonic)), pytest.raises(DeadlineReachedError, match="run deadline"):
        findings_of(rule, source)
    assert sum(workspace.sleeps) <= 10
    assert 1 <= len(workspace.fake.requests) < 6  # fewer than the 6 attempts of the source's own budget


def test_a_deadline_in_a_source_read_leaves_the_window_for_the_next_run(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    store = FileStateStore(tmp_path / "state")

    class DeadlineSource(FlakySource):
        def read(self, request: ReadRequest) -> Any:
            raise DeadlineReachedError(f"loganalytics window {request.window}: run deadline reached before the query")

    summary = run_incremental([RULE], DeadlineSource(data), [JsonlSink(tmp_path / "f.jsonl")], store, NOW, settings(), Clock())
    assert summary.ok and summary.deadline_reached
    assert any("stays behind the checkpoint" in m for m in summary.deferred)
    assert store.load_rule_state(RULE.id, RULE.logic.time_bin).checkpoint == parse_datetime("2026-11-26T00:00:00Z")
