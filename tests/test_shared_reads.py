"""Many rules, one read: rules due for the same window are evaluated from one read of a file source, with
every rule's pushdown (a SharedSpec, each read's spec over its own window), and find exactly what each
finds from its own read; so do the rules without a time bin, whose reads are their steps' query periods
(ProxyShell's two 12-hour steps of a day, Silk Typhoon's 14 days); a rule whose step has not closed is
not due and not read; Log Analytics gets each rule's own requests."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.config import Settings
from detector.kql import parse_datetime
from detector.models import Row, Window
from detector.pushdown import SharedSpec
from detector.rules import DEFAULT_RULES_DIR, Rule, load_rules
from detector.runner import RunSummary, Task, read_groups, run, run_incremental
from detector.sources import ReadRequest
from detector.sources.file import FileSource
from detector.state.file import FileStateStore
from tests.helpers import FILES

EVERY_RULE = load_rules(DEFAULT_RULES_DIR)
RULES = [r for r in EVERY_RULE if not r.logic.whole_window]
# The binned-threshold rules (those that prune); the whole-window rules share reads too (the tests at the
# end), and have their own tests (tests/test_window_rules_engine.py).
BY_CLIENT, BY_USER, PORTS = (next(r for r in RULES if r.id.startswith(p)) for p in ("19e01883", "884c4957", "44a555d8"))
NOW = parse_datetime("2026-11-27T00:35:00Z")
SETTINGS = Settings.from_env({"DETECTOR_SOURCE": "file:unused", "DETECTOR_INGESTION_DELAY": "30m"})


class CountingFileSource(FileSource):
    """The file source, recording every request it answers."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.requests: list[ReadRequest] = []

    def read(self, request: ReadRequest) -> Iterator[Row]:
        self.requests.append(request)
        yield from super().read(request)


class OwnReadsFileSource(CountingFileSource):
    """The same, answering each rule's request on its own (as the Log Analytics source does)."""

    shares_reads = False


def _day(tmp_path: Path) -> Path:
    """The port-scan and the failed-logon fixture days as one time-ordered file."""
    lines = []
    for name in ("w3ciislog.jsonl", "w3ciislog_logons.jsonl"):
        lines += (FILES / name).read_text(encoding="utf-8").splitlines()
    lines.sort(key=lambda line: json.loads(line)["TimeGenerated"])
    path = tmp_path / "day.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    an_hour_ago = time.time() - 3600  # written long before the runs: no late-data re-check
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


def _findings(summary: RunSummary) -> list[dict[str, Any]]:
    return sorted((f.to_json() for f in summary.findings), key=lambda f: f["FindingId"])


def _scheduled(source: CountingFileSource, state: Path, now: Any = NOW) -> RunSummary:
    return run_incremental(RULES, source, [], FileStateStore(state), now, SETTINGS)


def test_three_rules_due_together_are_read_once_and_find_what_each_finds_alone(tmp_path: Path) -> None:
    path = _day(tmp_path)
    shared, alone = CountingFileSource(path), OwnReadsFileSource(path)
    together = _scheduled(shared, tmp_path / "shared")
    apart = _scheduled(alone, tmp_path / "apart")
    assert together.ok and apart.ok
    assert {f["RuleId"] for f in _findings(together)} == {r.id for r in RULES}
    assert _findings(together) == _findings(apart)
    assert len(alone.requests) == 3
    (request,) = shared.requests
    assert isinstance(request.candidates, SharedSpec) and len(request.candidates.specs) == 3
    # The 1-minute rule's window ends at 00:05, the 10-minute rules' at 00:00: one read covers both.
    assert request.window == Window(parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:05:00Z"))
    data = together.to_json()
    assert {w["sharedRead"] for w in data["windows"]} == {data["windows"][0]["sharedRead"]}
    assert data["rowsRead"] > 0
    assert data["rowsRead"] == data["windows"][0]["rowsRead"]  # the one read counted once
    assert data["rowsEvaluated"] < data["rowsRead"]  # every rule's pushdown kept


def test_a_rule_is_read_only_when_its_own_step_is_due(tmp_path: Path) -> None:
    """The timer fires every 5 minutes: the 1-minute rule is due every time, the 10-minute rules only
    when a 10-minute bin has closed, and then all three share the read."""
    source = CountingFileSource(_day(tmp_path))
    state = tmp_path / "state"
    _scheduled(source, state)
    seen = []
    for minutes in (5, 10, 15, 20):
        source.requests.clear()
        summary = _scheduled(source, state, NOW + timedelta(minutes=minutes))
        assert summary.ok
        seen.append(sorted({w["ruleId"][:8] for w in summary.to_json()["windows"]}))
        assert len(source.requests) == 1
    all_three, one_minute = ["19e01883", "44a555d8", "884c4957"], ["19e01883"]
    assert seen == [all_three, one_minute, all_three, one_minute]  # now - delay: 00:10, 00:15, 00:20, 00:25


def test_a_line_the_shared_read_skips_is_read_again_by_the_rules_that_can_use_it(tmp_path: Path) -> None:
    """Twenty failed logons in one minute, one of them without sPort: the port rule requires sPort, so the
    shared read skips that line, but the client-IP rule (which does not) counts it and fires at 20."""
    rows = [
        {
            "TimeGenerated": f"2026-11-26T10:00:{second:02d}Z",
            "cIP": "192.0.2.7",
            "Computer": "web01",
            "sIP": "10.0.0.4",
            "sPort": 443,
            "scStatus": "401",
            "csUserName": "bob",
        }
        for second in range(20)
    ]
    del rows[7]["sPort"]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    window = Window(parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:00:00Z"))
    shared, alone = CountingFileSource(path), OwnReadsFileSource(path)
    together = run([(rule, window) for rule in RULES], shared, [])
    apart = run([(rule, window) for rule in RULES], alone, [])
    assert [f["RuleId"] for f in _findings(together)] == [BY_CLIENT.id]
    assert _findings(together) == _findings(apart)
    # One shared read, then one for the two rules that do not require sPort (they skip the same lines).
    first, again = shared.requests
    assert isinstance(first.candidates, SharedSpec) and len(first.candidates.specs) == 3
    assert isinstance(again.candidates, SharedSpec) and len(again.candidates.specs) == 2
    assert "sPort" not in again.required


def test_a_line_every_read_skips_is_not_read_again(tmp_path: Path) -> None:
    """Lines that no read of any columns keeps (cut short, not JSON, a time that is no time) are skipped by
    the shared read and need no rule read again; a value only some rules read sends those that do not
    read it back to the file."""
    lines = (FILES / "w3ciislog.jsonl").read_text(encoding="utf-8").splitlines()
    bad = [lines[3][:40], "[1, 2]", json.dumps({**json.loads(lines[5]), "TimeGenerated": "yesterday"})]
    path = _write(tmp_path / "rows.jsonl", [*lines, *bad])
    shared = CountingFileSource(path)
    together = run([(rule, DAY) for rule in RULES], shared, [])
    assert together.ok and together.to_json()["skippedLines"] == 3
    assert len(shared.requests) == 1
    # A value no rule can type (csUserName as an object: every binned rule reads it) needs no read again; a
    # missing column only some rules require (sPort: the port rule) sends the others back to the file,
    # in one read (neither requires it).
    for changed, again in (({"csUserName": {"a": 1}}, 0), ({"sPort": None}, 1)):
        row = {**json.loads(lines[7]), **changed}
        odd = json.dumps({k: v for k, v in row.items() if not (k == "sPort" and v is None)})
        path = _write(tmp_path / "odd.jsonl", [*lines, odd])
        shared, alone = CountingFileSource(path), OwnReadsFileSource(path)
        together = run([(rule, DAY) for rule in RULES], shared, [])
        assert _findings(together) == _findings(run([(rule, DAY) for rule in RULES], alone, []))
        assert together.to_json()["skippedLines"] == 1 and len(shared.requests) == 1 + again, changed


def _task(rule: Rule, start: str, end: str) -> Task:
    return Task(rule, Window(parse_datetime(start), parse_datetime(end)))


def test_read_groups_join_overlapping_windows_and_keep_each_rules_order() -> None:
    a1 = _task(BY_CLIENT, "2026-11-26T00:05:00Z", "2026-11-27T00:05:00Z")
    a2 = _task(BY_CLIENT, "2026-11-27T00:05:00Z", "2026-11-27T00:06:00Z")
    b1 = _task(PORTS, "2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z")
    c1 = _task(BY_USER, "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z")  # catching up: another day
    c2 = _task(BY_USER, "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z")
    groups = list(read_groups([[a1, a2], [b1], [c1, c2]], shares_reads=True))
    assert groups == [[c1], [c2], [b1, a1], [a2]]
    assert list(read_groups([[a1, a2], [b1]], shares_reads=False)) == [[b1], [a1], [a2]]
    # A window a day apart from another is never read with it, even when they touch.
    d1 = _task(PORTS, "2026-11-27T00:00:00Z", "2026-11-28T00:00:00Z")
    assert list(read_groups([[c2], [d1]], shares_reads=True)) == [[c2], [d1]]


@pytest.mark.parametrize("rule", EVERY_RULE, ids=lambda r: r.id[:8])
def test_every_rule_in_rules_takes_part_in_shared_reads(rule: Rule) -> None:
    spec = rule.logic.candidate_spec()
    assert spec is not None and (spec.prunes or spec.filters)


# ---- every bundled rule, the rules without a bin among them --------------------------------------------

FIXTURE_LINES = [
    line
    for name in ("exchange_w3ciislog.jsonl", "w3ciislog.jsonl", "w3ciislog_logons.jsonl")
    for line in (FILES / name).read_text(encoding="utf-8").splitlines()
]  # Exchange traffic over 15 days (user agents, ProxyShell, Silk Typhoon), port scans and failed logons
DAY = Window(parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:00:00Z"))


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


def test_every_bundled_rule_is_read_twice_and_finds_what_each_finds_alone(tmp_path: Path) -> None:
    """The CLI's `run` over a day: the rules that only filter (those without a bin) share one read of Silk
    Typhoon's 14 days, ProxyShell's two 12-hour steps as two parts of it, each part over its own window;
    the rules that prune share another (never both: a pruning rule's candidates may be every row)."""
    lines = sorted(FIXTURE_LINES, key=lambda line: json.loads(line)["TimeGenerated"])
    path = _write(tmp_path / "all.jsonl", lines)
    shared, alone = CountingFileSource(path), OwnReadsFileSource(path)
    together = run([(rule, DAY) for rule in EVERY_RULE], shared, [])
    apart = run([(rule, DAY) for rule in EVERY_RULE], alone, [])
    assert together.ok and apart.ok
    assert {f["RuleId"] for f in _findings(together)} == {r.id for r in EVERY_RULE}  # every rule finds something
    assert _findings(together) == _findings(apart)
    assert len(alone.requests) == 7  # ProxyShell reads each 12-hour step on its own
    filtering, pruning = sorted(shared.requests, key=lambda r: r.window.start)
    spec = filtering.candidates
    assert isinstance(spec, SharedSpec) and len(spec.specs) == 4 and not any(s.prunes for s in spec.specs)
    assert filtering.window == Window(DAY.end - timedelta(days=14), DAY.end)  # Silk Typhoon's query period
    half = DAY.start + timedelta(hours=12)
    assert sorted(w for w in spec.windows if w is not None) == [Window(DAY.start, half), DAY, Window(half, DAY.end)]
    assert isinstance(pruning.candidates, SharedSpec) and pruning.window == DAY
    assert len(pruning.candidates.specs) == 3 and pruning.candidates.windows == ()
    # Each rule is handed the rows of its own reads that its own filter admits, not every rule's candidates:
    # a rule that does not prune (those without a bin) gets exactly its own read's rows (Silk Typhoon lists
    # them), a pruning rule at least those.
    evaluated = {w["ruleId"]: w["rowsEvaluated"] for w in together.to_json()["windows"]}
    own = {w["ruleId"]: w["rowsEvaluated"] for w in apart.to_json()["windows"]}
    for rule in EVERY_RULE:
        own_spec = rule.logic.candidate_spec()
        assert own_spec is not None
        assert evaluated[rule.id] == own[rule.id] if not own_spec.prunes else evaluated[rule.id] >= own[rule.id], rule.id
    times = [parse_datetime(json.loads(line)["TimeGenerated"]) for line in lines]
    in_reads = sum(map(filtering.window.contains, times)) + sum(map(DAY.contains, times))
    assert together.to_json()["rowsRead"] == in_reads  # each read counted once
    assert apart.to_json()["rowsRead"] > in_reads


def test_every_bundled_rule_scheduled_from_one_read_finds_what_each_finds_alone(tmp_path: Path) -> None:
    """The function's run at 00:35 with a 30-minute delay: every rule's first step ends at midnight."""
    lines = FIXTURE_LINES[:]
    random.Random(7).shuffle(lines)  # out of order: the two-pass read
    path = _write(tmp_path / "all.jsonl", lines)
    shared, alone = CountingFileSource(path), OwnReadsFileSource(path)
    together = run_incremental(EVERY_RULE, shared, [], FileStateStore(tmp_path / "shared"), NOW, SETTINGS)
    apart = run_incremental(EVERY_RULE, alone, [], FileStateStore(tmp_path / "apart"), NOW, SETTINGS)
    assert together.ok and apart.ok
    assert _findings(together) and _findings(together) == _findings(apart)
    assert len(shared.requests) < len(alone.requests)


# Ways a line goes bad: for every read (not JSON, a bad time), or only for a read of some columns (a value
# a column's type cannot hold, a missing column that some rules require and others do not read).
# Two bad values on one line: a read reports the first it types, and a rule read again may skip it for the other.
DAMAGE = ("cut", "time", "port-text", "port-huge", "agent-object", "status-list", "no-cIP", "no-sPort", "no-user", "two-bad")


def _damaged(line: str, kind: str) -> str:
    row = json.loads(line)
    if kind == "cut":
        return line[: len(line) // 2]
    if kind == "port-huge":
        return json.dumps({**row, "sPort": 0}).replace('"sPort": 0', '"sPort": 1e400')
    changes: dict[str, Any] = {
        "time": {"TimeGenerated": "yesterday"},
        "port-text": {"sPort": "http"},
        "agent-object": {"csUserAgent": {"a": 1}},
        "status-list": {"scStatus": ["401"]},
        "two-bad": {"csUserAgent": {"a": 1}, "scStatus": ["401"]},
    }
    if kind in changes:
        return json.dumps({**row, **changes[kind]})
    row.pop({"no-cIP": "cIP", "no-sPort": "sPort", "no-user": "csUserName"}[kind], None)
    return json.dumps(row)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damage=st.lists(st.tuples(st.integers(0, len(FIXTURE_LINES) - 1), st.sampled_from(DAMAGE)), max_size=40),
    share=st.sampled_from([0.05, 0.3, 0.7, 0.97, 1.0]),
    seed=st.integers(0, 2**16),
    start_hours=st.integers(-24, 23),
    hours=st.sampled_from([1, 6, 12, 24, 36]),
    rules=st.sets(st.sampled_from(range(len(EVERY_RULE))), min_size=2),
)
def test_any_rules_over_any_rows_and_window_find_from_one_read_what_each_finds_alone(
    tmp_path_factory: pytest.TempPathFactory,
    damage: list[tuple[int, str]],
    share: float,
    seed: int,
    start_hours: int,
    hours: int,
    rules: set[int],
) -> None:
    """A random part of the rows, some damaged, in any order, any whole-hour window (aligned to a rule's
    step or not), any rules: the shared read and each rule's own reads give the same findings (a line the
    shared read skips is read again by the rules that might keep it)."""
    rng = random.Random(seed)
    source_lines = FIXTURE_LINES[:]
    for index, kind in damage:
        source_lines[index] = _damaged(FIXTURE_LINES[index], kind)
    lines = [line for line in source_lines if rng.random() < share]
    rng.shuffle(lines)
    path = _write(tmp_path_factory.mktemp("any") / "rows.jsonl", lines)
    start = DAY.start + timedelta(hours=start_hours)
    window = Window(start, start + timedelta(hours=hours))
    chosen = [EVERY_RULE[i] for i in sorted(rules)]
    shared, alone = CountingFileSource(path), OwnReadsFileSource(path)
    together = run([(rule, window) for rule in chosen], shared, [])
    apart = run([(rule, window) for rule in chosen], alone, [])
    assert together.ok and apart.ok
    assert _findings(together) == _findings(apart)


def test_a_rule_without_a_description_reads_each_step_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule without a bin and without a pushdown description (a user's rule may have none) has nothing
    to share: over a day of two 12-hour steps it reads each step alone, as before, and finds what it finds."""
    (proxyshell,) = [r for r in EVERY_RULE if r.id.startswith("968358d6")]
    path = _write(tmp_path / "exchange.jsonl", (FILES / "exchange_w3ciislog.jsonl").read_text(encoding="utf-8").splitlines())
    described = run([(proxyshell, DAY)], CountingFileSource(path), [])
    monkeypatch.setattr(type(proxyshell.logic), "candidate_spec", lambda self: None)
    source = CountingFileSource(path)
    bare = run([(proxyshell, DAY)], source, [])
    assert bare.ok and _findings(bare) == _findings(described) and _findings(bare)
    assert [r.window for r in source.requests] == [
        Window(DAY.start, DAY.start + timedelta(hours=12)),
        Window(DAY.start + timedelta(hours=12), DAY.end),
    ]
