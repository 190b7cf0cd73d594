"""Runs that never miss and never duplicate: crashes and faults at every step of a run.

Each test drives real runs (file source, real state store, the real jsonl sink plus a recording sink)
through a failure, then runs again, and checks: every expected finding reaches every sink, the sinks
hold exactly one copy of each (they upsert by stable id), the checkpoint is never ahead of the stored
findings, and a window evaluated twice gives the same findings.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.config import Settings
from detector.errors import InputError, SinkError, SourceError
from detector.kql import format_datetime, parse_datetime
from detector.models import Finding
from detector.runner import LEASE_TTL, RunSummary, run_incremental
from detector.sinks import Sink
from detector.sinks.jsonl import JsonlSink
from detector.sources import ReadRequest, Source
from detector.sources.file import FileSource
from detector.state import StateStore
from detector.state.file import FileStateStore
from tests.helpers import FILES, RULE, expected_findings

NOW = parse_datetime("2026-11-27T00:35:00Z")  # first run covers [2026-11-26 00:00, 2026-11-27 00:00)
ORIGIN = parse_datetime("2026-11-26T00:00:00Z")  # where the first run starts: recorded before it does any work


class SimulatedCrash(BaseException):  # the process dying: not an Exception, so no handler of ours runs after it
    """The process dies here."""


class Clock:
    """Wall clock for leases and evaluation times, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, span: timedelta) -> None:
        self.now += span


class RecordingSink(Sink):
    """A real sink that keeps every delivery attempt, and can be told to fail."""

    name = "recording"

    def __init__(self) -> None:
        self.received: list[Finding] = []
        self.failures = 0
        self.deliver_only: int | None = None  # deliver this many, then fail (partial delivery)

    def deliver(self, findings: Sequence[Finding]) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError("recording sink is down")
        if self.deliver_only is not None:
            done = findings[: self.deliver_only]
            self.received += done
            raise SinkError("recording sink failed midway", delivered=frozenset(f.id for f in done))
        self.received += findings


class FlakySource(Source):
    """The file source, failing on chosen reads (1-based) and recording what each read returned."""

    def __init__(self, path: Path, fail_on: set[int] | None = None) -> None:
        self.inner = FileSource(path)
        self.fail_on = fail_on or set()
        self.reads = 0

    def read(self, request: ReadRequest) -> Any:
        self.reads += 1
        if self.reads in self.fail_on:
            raise SourceError(f"source could not return a complete answer for {request.window}")
        return self.inner.read(request)

    def late_bins(self, window: Any, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        return self.inner.late_bins(window, ingested_after, time_bin)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "w3ciislog.jsonl"
    shutil.copy(FILES / "w3ciislog.jsonl", path)
    os.utime(path, (0, 0))  # old file: nothing arrived after any evaluation
    return path


def settings(**values: str) -> Settings:
    return Settings.from_env({"DETECTOR_SOURCE": "file:unused", **values})


class World:
    """The pieces of a deployment that survive a crash: the state folder, the data, the sinks' storage."""

    def __init__(self, tmp_path: Path, data: Path) -> None:
        self.state_dir = tmp_path / "state"
        self.jsonl = JsonlSink(tmp_path / "out" / "findings.jsonl")
        self.recording = RecordingSink()
        self.clock = Clock()
        self.data = data

    def run(
        self, store: StateStore | None = None, source: Source | None = None, now: datetime = NOW, config: Settings | None = None
    ) -> RunSummary:
        return run_incremental(
            [RULE],
            source or FlakySource(self.data),
            [self.recording, self.jsonl],
            store or FileStateStore(self.state_dir),
            now,
            config or settings(),
            self.clock,
        )

    def jsonl_records(self) -> list[dict[str, Any]]:
        path = self.jsonl.path
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []

    def set_checkpoint(self, moment: str) -> None:
        """As if earlier runs had evaluated everything up to `moment`."""
        store = FileStateStore(self.state_dir)
        store.acquire_lease(RULE.id, "earlier-run", LEASE_TTL, self.clock())
        state = store.load_rule_state(RULE.id, RULE.logic.time_bin)
        state.checkpoint = parse_datetime(moment)
        store.save_rule_state(RULE.id, state, "earlier-run")
        store.release_lease(RULE.id, "earlier-run")

    def checkpoint(self) -> datetime | None:
        return FileStateStore(self.state_dir).load_rule_state(RULE.id, RULE.logic.time_bin).checkpoint

    def assert_everything_delivered_once(self, also: tuple[str, ...] = ()) -> None:
        """Every expected finding (the fixture day's, plus scans at other times named by cIP) is at the sinks."""
        expected = {(e["TimeGenerated"], e["cIP"], e["Computer"], e["sIP"]) for e in expected_findings()}
        expected |= {_other_scans()[ip] for ip in also}
        records = self.jsonl_records()
        assert len(records) == len({r["FindingId"] for r in records}), "the jsonl sink holds one copy per finding"
        assert {(r["TimeGenerated"], r["cIP"], r["Computer"], r["sIP"]) for r in records} == expected
        received = Counter(f.id for f in self.recording.received)
        assert set(received) == {r["FindingId"] for r in records}
        assert FileStateStore(self.state_dir).pending(self.recording.describe()) == []

    def assert_checkpoint_covered(self) -> None:
        """Every finding of a bin before the checkpoint is delivered or pending: none is lost."""
        checkpoint = self.checkpoint()
        store = FileStateStore(self.state_dir)
        known = {f.columns["TimeGenerated"] for f in self.recording.received}
        known |= {e.finding.columns["TimeGenerated"] for e in store.pending(self.recording.describe())}
        for e in expected_findings():
            if checkpoint is not None and parse_datetime(e["TimeGenerated"]) < checkpoint:
                assert parse_datetime(e["TimeGenerated"]) in known


def _other_scans() -> dict[str, tuple[str, str, str, str]]:
    """Scans the fixture plants just outside its day, found by runs whose windows extend past it."""
    return {
        "203.0.113.52": ("2026-11-27T00:00:00Z", "203.0.113.52", "web01.contoso.com", "10.0.0.4"),
        "203.0.113.50": ("2026-11-25T23:50:00Z", "203.0.113.50", "web01.contoso.com", "10.0.0.4"),
    }


@pytest.fixture
def world(tmp_path: Path, data: Path) -> World:
    return World(tmp_path, data)


def test_a_clean_run_then_a_rerun_delivers_each_finding_once(world: World) -> None:
    first = world.run()
    assert first.ok
    assert next(r.window for r in first.rules if r.kind == "window").end == parse_datetime("2026-11-27T00:00:00Z")
    second = world.run()
    assert second.ok
    assert [r for r in second.rules if r.kind == "window"] == []  # up to date: nothing re-evaluated
    world.assert_everything_delivered_once()
    assert len(world.recording.received) == len(expected_findings())


def test_crash_after_the_outbox_write_loses_nothing_and_repeats_nothing(world: World) -> None:
    class CrashAfterStage(FileStateStore):
        def stage(self, sinks: Sequence[str], findings: Any) -> int:
            super().stage(sinks, findings)
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        world.run(store=CrashAfterStage(world.state_dir))
    assert world.checkpoint() == ORIGIN  # not advanced past findings it stored (the origin is recorded first)
    assert len(FileStateStore(world.state_dir).pending("recording")) == len(expected_findings())
    world.assert_checkpoint_covered()
    summary = world.run()
    assert summary.ok
    world.assert_everything_delivered_once()
    assert len(world.recording.received) == len(expected_findings())  # exactly once


def test_crash_before_the_delivery_mark_redelivers_to_upserting_sinks(world: World) -> None:
    class CrashBeforeMark(FileStateStore):
        def mark_delivered(self, sink: str, entries: Any, now: datetime) -> None:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        world.run(store=CrashBeforeMark(world.state_dir))
    assert world.checkpoint() == parse_datetime("2026-11-27T00:00:00Z")
    world.assert_checkpoint_covered()
    assert world.run().ok
    world.assert_everything_delivered_once()
    # At-least-once delivery: the crash came after the sinks received them, so they were sent again...
    assert Counter(f.id for f in world.recording.received).most_common(1)[0][1] == 2
    # ...and because sinks upsert by stable id, each finding still exists once (checked above for jsonl).
    assert len(world.recording.received) == 2 * len(expected_findings())


def test_killed_run_blocks_until_its_lease_lapses_then_the_next_run_finishes(world: World) -> None:
    class Killed(FileStateStore):
        def stage(self, sinks: Sequence[str], findings: Any) -> int:
            raise SimulatedCrash

        def release_lease(self, name: str, owner: str) -> None:  # a killed process releases nothing
            return

    with pytest.raises(SimulatedCrash):
        world.run(store=Killed(world.state_dir))
    blocked = world.run()  # the holder is this (live) process: only the lease's expiry frees the rule
    assert any("stepped aside" in s for s in blocked.stepped_aside)
    assert blocked.rules == []
    assert blocked.ok and not blocked.complete
    world.clock.advance(LEASE_TTL + timedelta(minutes=1))
    assert world.run().ok
    world.assert_everything_delivered_once()


def test_source_error_fails_loudly_and_the_next_run_resumes_where_it_stopped(world: World) -> None:
    # Three days of catch-up; the second day's read fails.
    world.set_checkpoint("2026-11-26T00:00:00Z")
    later = parse_datetime("2026-11-29T00:35:00Z")

    failed = world.run(source=FlakySource(world.data, fail_on={2}), now=later)
    assert not failed.ok
    assert "could not return a complete answer" in failed.errors[RULE.id]
    assert world.checkpoint() == parse_datetime("2026-11-27T00:00:00Z")  # the first day is done, not the second
    assert len(world.jsonl_records()) == len(expected_findings())  # the first day's findings are delivered

    resumed = world.run(now=later)
    assert resumed.ok
    assert [format_datetime(r.window.start) for r in resumed.rules if r.kind == "window"] == [
        "2026-11-27T00:00:00Z",
        "2026-11-28T00:00:00Z",
    ]
    world.assert_everything_delivered_once(also=("203.0.113.52",))


def test_a_sink_down_for_two_runs_gets_everything_on_the_third_once(world: World) -> None:
    world.recording.failures = 2
    first = world.run()
    assert not first.ok
    assert "recording" in first.delivery_errors
    assert len(world.jsonl_records()) == len(expected_findings())  # the other sink is not held back
    second = world.run()
    assert "recording" in second.delivery_errors
    assert world.run().ok
    world.assert_everything_delivered_once()
    assert len(world.recording.received) == len(expected_findings())


def test_partial_delivery_retries_only_the_rest(world: World) -> None:
    world.recording.deliver_only = 3
    assert not world.run().ok
    world.recording.deliver_only = None
    assert world.run().ok
    world.assert_everything_delivered_once()
    assert len(world.recording.received) == len(expected_findings())


def test_overlapping_runs_do_not_both_process_a_window(world: World) -> None:
    # The second run starts while the first is inside its read, holding the rule's lease: overlap is certain.
    first_reading, second_done = threading.Event(), threading.Event()
    summaries: dict[str, RunSummary] = {}
    errors: list[BaseException] = []

    class HeldRead(FlakySource):
        def read(self, request: ReadRequest) -> Any:
            first_reading.set()
            assert second_done.wait(timeout=60), "the second run did not finish while the first held the lease"
            return super().read(request)

    def first() -> None:
        try:
            summaries["first"] = world.run(source=HeldRead(world.data))
        except BaseException as exc:
            errors.append(exc)
            second_done.set()

    def second() -> None:
        try:
            assert first_reading.wait(timeout=60), "the first run never started reading"
            summaries["second"] = world.run()
        except BaseException as exc:
            errors.append(exc)
        finally:
            second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a run did not finish"
    assert errors == []
    assert [r.window for r in summaries["second"].rules] == []  # it stepped aside...
    assert any("stepped aside" in m for m in summaries["second"].stepped_aside)  # ...and said so
    evaluated = [r.window for r in summaries["first"].rules if r.kind == "window"]
    assert len(evaluated) == 1
    world.assert_everything_delivered_once()
    assert len(world.recording.received) == len(expected_findings())


def test_a_held_lease_makes_the_run_step_aside(world: World) -> None:
    FileStateStore(world.state_dir).acquire_lease(RULE.id, "manual-run", LEASE_TTL, world.clock())
    summary = world.run()
    assert summary.rules == []
    assert world.checkpoint() is None
    assert any(RULE.id in s and "stepped aside" in s and "manual-run" in s for s in summary.stepped_aside)
    assert summary.to_json()["steppedAside"] == summary.stepped_aside
    assert not summary.complete


def _late_rows() -> list[dict[str, Any]]:
    """Rows that arrive hours late: a new scan at 12:00, and 5 more ports for the 14:30 finding."""
    base = {"Computer": "web01.contoso.com", "sIP": "10.0.0.4", "csUserName": "-", "csMethod": "GET"}
    new_scan = [{**base, "TimeGenerated": "2026-11-26T12:03:00Z", "cIP": "203.0.113.200", "sPort": p} for p in range(2000, 2035)]
    more = [{**base, "TimeGenerated": "2026-11-26T14:35:00Z", "cIP": "192.0.2.77", "sPort": p} for p in range(5100, 5105)]
    return new_scan + more


def test_late_rows_make_a_new_finding_and_update_an_old_one_without_duplicates(world: World) -> None:
    assert world.run().ok
    before_records = world.jsonl_records()
    before = {r["cIP"]: r for r in before_records}
    # A late batch lands in the file after those bins were evaluated.
    with world.data.open("a", encoding="utf-8") as out:
        for row in _late_rows():
            out.write(json.dumps(row) + "\n")
    world.clock.advance(timedelta(hours=2))
    mtime = world.clock().timestamp()
    os.utime(world.data, (mtime, mtime))

    summary = world.run(now=NOW + timedelta(hours=2))
    assert summary.ok
    assert any(r.kind == "recheck" for r in summary.rules)
    records = world.jsonl_records()
    by_ip = {r["cIP"]: r for r in records}
    # One new finding from the late rows, one from the new window [00:00, 02:00) (the 203.0.113.52 scan).
    assert len(records) == len({r["FindingId"] for r in records}) == len(before_records) + 2
    assert "203.0.113.52" in by_ip
    assert by_ip["203.0.113.200"]["portCount"] == 35  # new
    assert by_ip["192.0.2.77"]["FindingId"] == before["192.0.2.77"]["FindingId"]  # same finding...
    assert (before["192.0.2.77"]["portCount"], by_ip["192.0.2.77"]["portCount"]) == (30, 35)  # ...updated
    received = Counter(f.id for f in world.recording.received)
    assert received[by_ip["192.0.2.77"]["FindingId"]] == 2  # the original, then the update
    assert received[by_ip["203.0.113.200"]["FindingId"]] == 1
    updated_or_new = {by_ip["192.0.2.77"]["FindingId"], by_ip["203.0.113.200"]["FindingId"]}
    assert all(received[r["FindingId"]] == 1 for r in records if r["FindingId"] not in updated_or_new)

    # Nothing new arrives. Bins evaluated within LATE_MARGIN of the file's change are re-checked once
    # more (that margin covers rows in flight during the evaluation); they send nothing, and after that
    # nothing is re-checked at all.
    world.clock.advance(timedelta(hours=1))
    world.run(now=NOW + timedelta(hours=2))
    world.clock.advance(timedelta(hours=1))
    quiet = world.run(now=NOW + timedelta(hours=2))
    assert [r for r in quiet.rules if r.kind == "recheck"] == []
    assert sum(received.values()) == len(world.recording.received)


def test_late_rows_beyond_the_recheck_horizon_are_not_rechecked(world: World) -> None:
    assert world.run(config=settings(DETECTOR_RECHECK_HORIZON="1h")).ok
    with world.data.open("a", encoding="utf-8") as out:
        for row in _late_rows():
            out.write(json.dumps(row) + "\n")
    world.clock.advance(timedelta(hours=2))
    os.utime(world.data, (world.clock().timestamp(),) * 2)
    summary = world.run(now=NOW + timedelta(hours=2), config=settings(DETECTOR_RECHECK_HORIZON="1h"))
    assert summary.ok
    # The horizon is the hour before the checkpoint the run started from (00:00): the late bins (12:00, 14:30
    # the day before) are older.
    assert all(r.window.start >= parse_datetime("2026-11-26T23:00:00Z") for r in summary.rules if r.kind == "recheck")
    assert "203.0.113.200" not in {r["cIP"] for r in world.jsonl_records()}


def test_same_window_evaluated_twice_gives_the_same_findings(world: World) -> None:
    class CrashAfterStage(FileStateStore):
        def stage(self, sinks: Sequence[str], findings: Any) -> int:
            self.seen = [f.to_json() for f in findings]
            super().stage(sinks, findings)
            raise SimulatedCrash

    crashing = CrashAfterStage(world.state_dir)
    with pytest.raises(SimulatedCrash):
        world.run(store=crashing)
    second = world.run()
    assert [f.to_json() for r in second.rules for f in r.findings] == crashing.seen


def test_catch_up_beyond_the_limit_is_reported(world: World) -> None:
    world.set_checkpoint("2026-11-01T00:00:00Z")
    summary = world.run(config=settings(DETECTOR_CATCHUP_LIMIT="2d"))
    assert any("NOT evaluated" in s and "2026-11-01T00:00:00Z" in s and "backfill" in s for s in summary.skipped)
    assert [format_datetime(r.window.start) for r in summary.rules if r.kind == "window"] == [
        "2026-11-25T00:00:00Z",
        "2026-11-26T00:00:00Z",
    ]
    world.assert_everything_delivered_once(also=("203.0.113.50",))


def test_late_rows_are_rechecked_when_runs_are_a_day_apart(world: World) -> None:
    # The shipped defaults: one run a day (DETECTOR_SCHEDULE 0 30 0 * * *), DETECTOR_RECHECK_HORIZON 1d.
    assert world.run().ok  # evaluates [26th, 27th) at 27th 00:35
    with world.data.open("a", encoding="utf-8") as out:
        for row in _late_rows():
            out.write(json.dumps(row) + "\n")
    world.clock.advance(timedelta(hours=2))  # the late batch lands two hours after that run
    os.utime(world.data, (world.clock().timestamp(),) * 2)
    world.clock.advance(timedelta(hours=22))
    summary = world.run(now=NOW + timedelta(days=1))  # the next daily run
    assert summary.ok
    assert any(r.kind == "recheck" for r in summary.rules)
    by_ip = {r["cIP"]: r for r in world.jsonl_records()}
    assert by_ip["203.0.113.200"]["portCount"] == 35
    assert by_ip["192.0.2.77"]["portCount"] == 35


class SlowSource(FlakySource):
    """The file source, whose reads take `duration` of the test clock; a late batch lands while it reads."""

    def __init__(self, path: Path, clock: Clock, duration: timedelta) -> None:
        super().__init__(path)
        self.clock, self.duration = clock, duration

    def read(self, request: ReadRequest) -> Any:
        rows = list(super().read(request))  # what the evaluation sees: the file as it was when the read began
        with self.inner.path.open("a", encoding="utf-8") as out:
            for row in _late_rows():
                out.write(json.dumps(row) + "\n")
        self.clock.advance(timedelta(minutes=1))
        os.utime(self.inner.path, (self.clock().timestamp(),) * 2)
        self.clock.advance(self.duration - timedelta(minutes=1))
        return iter(rows)


def test_rows_that_land_during_a_long_read_are_rechecked(world: World) -> None:
    slow = SlowSource(world.data, world.clock, timedelta(minutes=20))
    assert world.run(source=slow).ok
    assert "203.0.113.200" not in {r["cIP"] for r in world.jsonl_records()}
    world.clock.advance(timedelta(hours=1))
    summary = world.run(now=NOW + timedelta(hours=1))
    assert summary.ok
    assert "203.0.113.200" in {r["cIP"] for r in world.jsonl_records()}


class BadRowsOnTheLaterWindow(FlakySource):
    """A source that has a malformed row (an InputError, not a SourceError) in the window of the 26th."""

    def read(self, request: ReadRequest) -> Any:
        if request.window.start == parse_datetime("2026-11-26T00:00:00Z"):
            raise InputError("loganalytics window [2026-11-26, 2026-11-27)", "column sPort must be an integer, got 'eighty'")
        return self.inner.read(request)


def test_a_window_that_keeps_failing_does_not_hold_back_findings_already_staged(world: World) -> None:
    world.set_checkpoint("2026-11-25T00:00:00Z")  # catch-up: the 25th (one finding, 23:50), then the 26th
    with pytest.raises(InputError):
        world.run(source=BadRowsOnTheLaterWindow(world.data))
    assert world.checkpoint() == parse_datetime("2026-11-26T00:00:00Z")
    # The 25th's finding was staged and the checkpoint moved past it; the failing window must not keep it
    # from the sinks until someone fixes the data.
    assert [f.columns["cIP"] for f in world.recording.received] == ["203.0.113.50"]
    assert FileStateStore(world.state_dir).pending(world.recording.describe()) == []


def test_a_run_whose_lease_lapsed_mid_read_stores_nothing(world: World) -> None:
    class SlowRead(FlakySource):
        def read(self, request: ReadRequest) -> Any:
            # The read outlives the lease, and another run takes the rule over meanwhile.
            world.clock.advance(LEASE_TTL + timedelta(minutes=1))
            assert FileStateStore(world.state_dir).acquire_lease(RULE.id, "newer-run", LEASE_TTL, world.clock())
            return super().read(request)

    summary = world.run(source=SlowRead(world.data))
    assert "taken by another run" in summary.errors[RULE.id]
    assert FileStateStore(world.state_dir).pending("recording") == []  # nothing staged by the stale run
    assert world.checkpoint() == ORIGIN
