"""Leases: a dead run blocks nobody (a real `kill -9` at several points, then at once another run), a live
run is never overtaken, a run that steps aside says so, and the heartbeat keeps a working run's lease."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.cli import EXIT_INCOMPLETE, EXIT_OK, main
from detector.errors import StateError
from detector.runner import LEASE_TTL, LeaseKeeper
from detector.state import LeaseLostError, StateStore, holder_is_dead, new_owner
from detector.state.file import FileStateStore
from tests.helpers import FILES, ROOT, RULE, expected_findings
from tests.state.test_stores import store  # noqa: F401 - the file and Azurite table store fixture

T0 = datetime(2026, 11, 27, tzinfo=UTC)


def _owner_of_a_process(alive: bool) -> Iterator[str]:
    """The lease owner id of another process of this host, running (alive) or already gone."""
    code = "from detector.state import new_owner; import sys, time; print(new_owner(), flush=True); sys.stdin.read()"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    owner = process.stdout.readline().strip()
    if not alive:
        process.kill()
        process.wait()
    try:
        yield owner
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def dead_owner() -> Iterator[str]:
    yield from _owner_of_a_process(alive=False)


@pytest.fixture
def live_owner() -> Iterator[str]:
    yield from _owner_of_a_process(alive=True)


def test_owner_ids_tell_dead_processes_of_this_host(dead_owner: str, live_owner: str) -> None:
    assert holder_is_dead(dead_owner)
    assert not holder_is_dead(live_owner)
    assert not holder_is_dead(new_owner())  # this process
    assert not holder_is_dead("manual-run")  # an owner that names no process: trusted until its lease lapses
    host_elsewhere = dead_owner.replace("@", "@other-host", 1)
    assert not holder_is_dead(host_elsewhere)


def test_a_lease_of_a_dead_process_is_taken_at_once(store: StateStore, dead_owner: str) -> None:  # noqa: F811
    assert store.acquire_lease("rule", dead_owner, LEASE_TTL, T0)
    assert store.acquire_lease("rule", "next-run", LEASE_TTL, T0 + timedelta(seconds=1))


def test_a_lease_of_a_live_process_is_respected_until_it_lapses(store: StateStore, live_owner: str) -> None:  # noqa: F811
    assert store.acquire_lease("rule", live_owner, LEASE_TTL, T0)
    assert not store.acquire_lease("rule", "next-run", LEASE_TTL, T0 + timedelta(seconds=1))
    holder = store.lease_holder("rule")
    assert holder is not None and holder[0] == live_owner
    assert store.acquire_lease("rule", "next-run", LEASE_TTL, T0 + LEASE_TTL + timedelta(seconds=1))  # a hung holder


def test_a_stale_lock_file_does_not_delay_the_next_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / ".lock").write_text("pid 999999\n")  # left by an older version's killed run, or by a crash
    folder = FileStateStore(state, mutex_wait=0.5)  # it would raise if it had to wait that long
    assert folder.acquire_lease("rule", "a", LEASE_TTL, T0)


def test_the_folder_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import sys, time; from detector.state.file import FileStateStore; s = FileStateStore(sys.argv[1]); "
        "m = s._mutex(); m.__enter__(); print('locked', flush=True); time.sleep(600)"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(state)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    with pytest.raises(StateError, match="held by pid"):
        FileStateStore(state, mutex_wait=0).acquire_lease("rule", "a", LEASE_TTL, T0)  # a live holder is not taken over
    process.kill()
    process.wait()
    assert FileStateStore(state, mutex_wait=0.2).acquire_lease("rule", "a", LEASE_TTL, T0)


class FakeWait:
    """The heartbeat's wait between beats, stepped by the test: returns True (stop) after `beats` waits."""

    def __init__(self, beats: int, clock: list[datetime]) -> None:
        self.beats, self.clock, self.waits = beats, clock, 0

    def __call__(self, event: object, seconds: float) -> bool:
        self.waits += 1
        self.clock[0] += timedelta(seconds=seconds)  # the interval passes
        return self.waits > self.beats


def test_the_heartbeat_keeps_a_long_run_s_lease(tmp_path: Path) -> None:
    folder = FileStateStore(tmp_path / "state")
    now = [T0]
    wait = FakeWait(beats=10, clock=now)
    keeper = LeaseKeeper(folder, lambda: now[0], wait=wait)
    assert keeper.acquire("rule")
    with keeper:
        pass  # __exit__ joins the thread: it beat 10 times, 30 s apart
    assert wait.waits == 11
    assert now[0] - T0 == timedelta(seconds=330)  # far longer than the 2-minute lease
    holder = folder.lease_holder("rule")
    assert holder is not None and holder[0] == keeper.owner and holder[1] > now[0] - timedelta(seconds=30)
    assert not folder.acquire_lease("rule", "other", LEASE_TTL, now[0])  # still ours
    keeper.renew("rule")


def test_a_heartbeat_that_finds_its_lease_taken_stops_the_run_s_writes(tmp_path: Path) -> None:
    folder = FileStateStore(tmp_path / "state")
    now = [T0]
    keeper = LeaseKeeper(folder, lambda: now[0])
    assert keeper.acquire("rule")
    now[0] += LEASE_TTL + timedelta(seconds=1)  # the heartbeat stalled (a frozen process), the lease lapsed
    assert folder.acquire_lease("rule", "newer-run", LEASE_TTL, now[0])
    keeper.beat()
    assert "rule" in keeper.lost
    with pytest.raises(LeaseLostError):
        keeper.renew("rule")


# -- a real kill -9, then at once another run -------------------------------------------------------------


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "w3ciislog.jsonl"
    shutil.copy(FILES / "w3ciislog.jsonl", data)
    os.utime(data, (0, 0))
    return data


def _kill_at(point: str, state: Path, data: Path, out: Path) -> None:
    marker = state.parent / f"marker-{point}"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_driver", point, str(state), str(data), str(out), str(marker)], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # waiting for the child to reach the point, not for time to pass
            assert process.poll() is None, f"the run ended before reaching {point}"
            assert time.monotonic() < deadline, f"the run did not reach {point}"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []


def _assert_every_finding_once(out: Path, state: Path) -> None:
    records = _records(out)
    assert len(records) == len({r["FindingId"] for r in records}), "one copy per finding"
    expected = {(e["TimeGenerated"], e["cIP"], e["Computer"], e["sIP"]) for e in expected_findings()}
    assert {(r["TimeGenerated"], r["cIP"], r["Computer"], r["sIP"]) for r in records} == expected
    assert FileStateStore(state).pending(f"jsonl:{out}") == []


@pytest.mark.parametrize("point", ["read", "staged", "delivery"])
def test_kill_9_then_an_immediate_run_loses_and_repeats_nothing(
    point: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, data, out = tmp_path / "state", _data(tmp_path), tmp_path / "out" / "findings.jsonl"
    _kill_at(point, state, data, out)
    if point == "delivery":
        assert 0 < len(_records(out)) < len(expected_findings())  # killed midway through the delivery
    monkeypatch.setenv("DETECTOR_SOURCE", f"file:{data}")
    monkeypatch.setenv("DETECTOR_STATE", f"file:{state}")
    monkeypatch.setenv("DETECTOR_SINKS", f"jsonl:{out}")
    monkeypatch.setenv("DETECTOR_NOW", "2026-11-27T00:35:00Z")
    code = main(["scheduled"])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err  # the dead run's leases were taken at once: no stepping aside, no wait
    summary = json.loads(err.splitlines()[0])
    assert summary["steppedAside"] == [] and summary["complete"]
    _assert_every_finding_once(out, state)


def test_a_killed_backfill_continues_when_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, data, out = tmp_path / "state", _data(tmp_path), tmp_path / "out" / "findings.jsonl"
    _kill_at("backfill", state, data, out)
    args = [
        "backfill",
        "--rule",
        RULE.id,
        "--source",
        f"file:{data}",
        "--start",
        "2026-11-26T00:00:00Z",
        "--end",
        "2026-11-27T00:00:00Z",
    ]
    code = main([*args, "--sink", f"jsonl:{out}", "--state", f"file:{state}"])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err
    assert "4/24 windows" in err and "24/24 windows" in err  # four hours were done before the kill
    assert " 0 rows evaluated" not in err
    _assert_every_finding_once(out, state)


def test_a_run_that_steps_aside_for_a_live_run_says_so_and_exits_3(
    tmp_path: Path, live_owner: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    FileStateStore(state).acquire_lease(RULE.id, live_owner, LEASE_TTL, datetime.now(UTC))
    args = [
        "backfill",
        "--rule",
        RULE.id,
        "--source",
        f"file:{FILES / 'w3ciislog.jsonl'}",
        "--start",
        "2026-11-26T00:00:00Z",
        "--end",
        "2026-11-27T00:00:00Z",
    ]
    code = main([*args, "--sink", f"jsonl:{tmp_path / 'f.jsonl'}", "--state", f"file:{state}", "--summary-json"])
    err = capsys.readouterr().err
    assert code == EXIT_INCOMPLETE
    assert f"warning: {RULE.id}: stepped aside: its lease is held by run {live_owner}" in err
    summary = json.loads(err.splitlines()[0])
    assert summary["steppedAside"] and summary["ok"] and not summary["complete"]


def _busy_store(folder: Path, run_a: Callable[[FileStateStore], object]) -> FileStateStore:
    """Run B's view of the state: the first time B reads a sink's pending entries, run A works on the same
    folder (`run_a` gets A's own store), as a run started meanwhile would."""

    class Busy(FileStateStore):
        fired = False

        def pending(self, sink_name: str) -> list[Any]:
            entries = super().pending(sink_name)
            if not Busy.fired:
                Busy.fired = True
                run_a(FileStateStore(folder))
            return entries

    return Busy(folder)


def test_findings_staged_while_another_run_delivers_are_delivered_by_it(tmp_path: Path) -> None:
    """Run B, delivering, has read a sink's pending findings when run A stages new ones; A cannot take
    the outbox lease and steps aside ("that run delivers the pending findings"). B must then deliver
    them: it looks again once it has released the lease (an outside hunt found them left for the next
    timer run, with both runs saying complete)."""
    from detector.runner import RunSummary, deliver_outbox, wall_clock
    from detector.sinks.jsonl import JsonlSink
    from tests.state.test_stores import FINDINGS

    sink = JsonlSink(tmp_path / "findings.jsonl")
    name = sink.describe()
    early, late = FINDINGS[:2], FINDINGS[2:]
    a_summary = RunSummary(source="A")

    def run_a(a_store: FileStateStore) -> None:
        a_store.stage([name], late)
        deliver_outbox(a_store, [sink], a_summary, wall_clock)

    b_store = _busy_store(tmp_path / "state", run_a)
    b_store.stage([name], early)
    b_summary = RunSummary(source="B")
    deliver_outbox(b_store, [sink], b_summary, wall_clock)
    assert a_summary.stepped_aside and "that run delivers the pending findings" in a_summary.stepped_aside[0]
    written = [json.loads(line)["FindingId"] for line in sink.path.read_text(encoding="utf-8").splitlines()]
    assert sorted(written) == sorted(f.id for f in FINDINGS)
    assert FileStateStore(tmp_path / "state").pending(name) == []
    assert b_summary.deliveries == {name: len(FINDINGS)}


@pytest.mark.parametrize("renewal", ["before a write", "by the heartbeat first"])
def test_a_lease_that_lapsed_and_was_used_meanwhile_is_lost_not_taken_again(store: StateStore, renewal: str) -> None:  # noqa: F811 - the fixture
    """Run A stalls past its lease (a paused VM); run B takes the lease, does the work and gives it back;
    A wakes. The lease is free, but A's view of the state is stale: renewing must not take it again (an
    outside hunt had A stage its older finding over B's, and the sinks got it), whether A's next write
    or its heartbeat renews first. A lease that lapsed while nobody else took it is still A's."""
    now = [datetime.now(UTC)]
    a = LeaseKeeper(store, lambda: now[0])
    assert a.acquire("rule-x") and a.acquire("rule-y")
    now[0] += LEASE_TTL + timedelta(seconds=1)
    b = LeaseKeeper(store, lambda: now[0])
    assert b.acquire("rule-x")
    b.release("rule-x")
    if renewal == "by the heartbeat first":
        a.beat()
    with pytest.raises(LeaseLostError):
        a.renew("rule-x")
    a.renew("rule-y")  # lapsed, but nobody took it: still A's
    assert store.lease_holder("rule-y")[0] == a.owner  # type: ignore[index]


def test_the_second_look_delivers_new_versions_and_counts_one_rejection_a_run(tmp_path: Path) -> None:
    """The stepped-aside run stages a new version of a finding B is delivering, and B's sink cannot
    carry another finding: B's next pass delivers the new version (what it offered was the old one),
    and does not offer the refused finding again, which would count a second rejection in one run
    (three passes parked it in a single run: found by a review)."""
    from detector.runner import RunSummary, deliver_outbox, wall_clock
    from detector.sinks import Sink
    from tests.state.test_stores import FINDINGS

    poison, kept, *_ = FINDINGS
    updated = replace(kept, columns={**kept.columns, "ConnectionsCount": 999})
    got: list[tuple[str, Any]] = []

    class Picky(Sink):
        name = "picky"

        def deliver(self, findings: Any) -> None:
            if any(f.id == poison.id for f in findings):
                raise TypeError("cannot carry it")
            got.extend((f.id, f.columns["ConnectionsCount"]) for f in findings)

    def run_a(a_store: FileStateStore) -> None:
        a_store.stage(["picky"], [updated])
        deliver_outbox(a_store, [Picky()], RunSummary(source="A"), wall_clock)

    b_store = _busy_store(tmp_path / "state", run_a)
    b_store.stage(["picky"], [poison, kept])
    summary = RunSummary(source="B")
    deliver_outbox(b_store, [Picky()], summary, wall_clock)
    assert got[-1] == (kept.id, 999)  # the new version went out, after the old one
    (left,) = FileStateStore(tmp_path / "state").pending("picky")
    assert left.finding.id == poison.id and left.attempts == 1 and summary.parked == []
    assert "rejected" in summary.delivery_errors["picky"]


def test_the_heartbeat_never_takes_back_a_lease_being_given_back(tmp_path: Path) -> None:
    """The heartbeat renews a lease at the moment the run gives it back: the release waits for the
    renewal, so the lease ends up free (a review found it re-taken by the heartbeat and held by nobody
    who would give it back, so other runs stepped aside for two minutes)."""
    import threading

    releasing: list[threading.Thread] = []

    class Racy(FileStateStore):
        def lease_holder(self, name: str) -> Any:
            held = super().lease_holder(name)
            if not releasing:  # the heartbeat's renewal has read the lease: now the run gives it back
                releasing.append(threading.Thread(target=keeper.release, args=("outbox",)))
                releasing[0].start()
                releasing[0].join(0.3)
            return held

    racy = Racy(tmp_path / "state")
    keeper = LeaseKeeper(racy, lambda: datetime.now(UTC))
    assert keeper.acquire("outbox")
    keeper.beat()
    releasing[0].join()
    assert racy.lease_holder("outbox") is None


def test_parked_held_is_what_the_last_pass_leaves(tmp_path: Path) -> None:
    """A finding was parked; while run B delivers, run A stages a new version of it (no longer parked)
    and steps aside; B's next pass delivers it, and B's summary holds no parked finding any more."""
    from detector.runner import RunSummary, deliver_outbox, wall_clock
    from detector.sinks import Sink
    from detector.state import MAX_REJECTIONS
    from tests.state.test_stores import FINDINGS

    poison, other, *_ = FINDINGS
    fixed = replace(poison, columns={**poison.columns, "ConnectionsCount": 12345})

    class Takes(Sink):
        name = "takes"

        def deliver(self, findings: Any) -> None:
            pass

    first = FileStateStore(tmp_path / "state")
    first.stage(["takes"], [poison])
    (entry,) = first.pending("takes")
    for _ in range(MAX_REJECTIONS):
        first.record_rejections("takes", {poison.id: (entry, "bad")}, MAX_REJECTIONS)
    first.stage(["takes"], [other])
    assert len(first.parked("takes")) == 1

    class Busy(FileStateStore):
        fired = False

        def parked(self, sink_name: str) -> list[Any]:
            held = super().parked(sink_name)
            if not Busy.fired:  # the end of B's first pass
                Busy.fired = True
                a_store = FileStateStore(tmp_path / "state")
                a_store.stage(["takes"], [fixed])
                deliver_outbox(a_store, [Takes()], RunSummary(source="A"), wall_clock)
            return held

    summary = RunSummary(source="B")
    deliver_outbox(Busy(tmp_path / "state"), [Takes()], summary, wall_clock)
    assert summary.deliveries == {"takes": 2} and summary.parked_held == {}
    assert FileStateStore(tmp_path / "state").parked("takes") == []
