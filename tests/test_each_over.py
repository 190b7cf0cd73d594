"""runner.each_over: several rules over one read's rows, in one pass, without holding the rows.

A shared read (the three binned rules of a file source) used to be listed whole and handed to each rule
in turn: on a day of port scans that was a million typed rows held at once (1.1 GB of RSS for 1,000,000
JSON Lines rows, 267 MB now). Each rule now takes the rows on a thread of its own as they are read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from detector import runner
from detector.models import Row

ROWS = 25_000


def _rows(produced: list[int], fail_at: int | None = None) -> Iterator[Row]:
    for number in range(ROWS):
        if number == fail_at:
            raise OSError("the disk went away")
        produced[0] += 1
        yield {"n": number}


def test_every_evaluation_sees_every_row_in_order_and_the_rows_are_never_all_held() -> None:
    produced = [0]
    lags: list[int] = []

    def total(rows: Iterator[Row]) -> int:
        seen = 0
        for row in rows:
            assert row["n"] == seen
            seen += 1
            lags.append(produced[0] - seen)  # rows read and not yet taken by this evaluation
        return seen

    def odd(rows: Iterator[Row]) -> list[int]:
        return [row["n"] for row in rows if row["n"] % 2]

    results, count = runner.each_over(_rows(produced), [total, odd])
    assert count == ROWS
    assert results == [ROWS, list(range(1, ROWS, 2))]
    # The read runs ahead of a rule by at most the chunks queued for it, the one it is taking, and the
    # one being handed out.
    assert max(lags) <= (runner.FAN_AHEAD + 2) * runner.FAN_CHUNK < ROWS


def test_an_error_of_the_read_is_raised_and_every_rule_thread_ends() -> None:
    before = threading.active_count()
    ended: list[str] = []

    def consume(rows: Iterator[Row]) -> int:
        try:
            return sum(1 for _ in rows)
        finally:
            ended.append("yes")

    with pytest.raises(OSError, match="the disk went away"):
        runner.each_over(_rows([0], fail_at=12_345), [consume, consume])
    assert ended == ["yes", "yes"]
    assert threading.active_count() == before


def test_an_error_of_one_rule_is_raised_and_the_read_does_not_wait_for_it() -> None:
    produced = [0]

    def broken(rows: Iterator[Row]) -> Any:
        next(rows)
        raise ValueError("a rule's bug")

    def total(rows: Iterator[Row]) -> int:
        return sum(1 for _ in rows)

    with pytest.raises(ValueError, match="a rule's bug"):
        runner.each_over(_rows(produced), [broken, total])
    assert produced[0] == ROWS  # the read went on to the end for the other rule


def test_a_rule_that_stops_taking_rows_early_does_not_stall_the_read() -> None:
    def first(rows: Iterator[Row]) -> Row:
        return next(rows)

    results, count = runner.each_over(_rows([0]), [first, lambda rows: sum(1 for _ in rows)])
    assert results == [{"n": 0}, ROWS]
    assert count == ROWS


def test_no_rows() -> None:
    assert runner.each_over(iter(()), [list, list]) == ([[], []], 0)


def test_a_shared_read_of_several_rules_is_taken_as_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_together hands the shared read to each_over, never a list of it: the read stays within a
    few chunks of the rules whatever the day holds (a stub source that counts what it has yielded)."""
    from datetime import UTC, datetime, timedelta

    from detector.models import Window
    from detector.rules import DEFAULT_RULES_DIR, load_rules
    from detector.sources import ReadRequest, Source
    from detector.w3ciislog import COLUMN_TYPES

    day = datetime(2026, 11, 26, tzinfo=UTC)
    window = Window(day, day + timedelta(days=1))
    rules = [r for r in load_rules(DEFAULT_RULES_DIR) if not r.logic.whole_window]
    produced = [0]

    class Day(Source):
        shares_reads = True

        def describe(self) -> str:
            return "a day of rows"

        def read(self, request: ReadRequest) -> Iterator[Row]:
            assert request.window == window
            blank = {c: 0 if COLUMN_TYPES.get(c, "string") in ("int", "long") else "-" for c in request.read_columns()}
            for number in range(ROWS):
                produced[0] += 1
                # Failed logons (every rule's filter admits them: each rule is handed only what its own admits)
                moment = day + timedelta(seconds=3 * number)
                yield {
                    **blank,
                    "TimeGenerated": moment,
                    "cIP": f"203.0.113.{number % 250}",
                    "scStatus": "401",
                    "csUserName": "bob",
                }

    lags: list[int] = []
    counted = runner._counted

    def watched(rows: Iterator[Row], run: runner.RuleRun) -> Iterator[Row]:
        for taken, row in enumerate(counted(rows, run), start=1):
            lags.append(produced[0] - taken)
            yield row

    monkeypatch.setattr(runner, "_counted", watched)
    group = [runner.Task(rule, window) for rule in rules]
    assert len(group) >= 2 and list(runner.read_groups([[t] for t in group], True)) == [group]  # one shared read
    runs = runner.evaluate_together(group, Day())
    assert [run.rows_evaluated for run in runs] == [ROWS] * len(group)
    assert produced[0] == ROWS
    assert max(lags) <= (runner.FAN_AHEAD + 2) * runner.FAN_CHUNK < ROWS
