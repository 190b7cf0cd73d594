"""Window planning: whole bins, contiguous from the checkpoint, catch-up in bounded pieces, loud skips."""

from __future__ import annotations

from datetime import datetime, timedelta

from detector.kql import parse_datetime
from detector.models import Window
from detector.windows import bins_of, is_aligned, merge_bins, plan_windows

BIN, DAY, DELAY, CAP = timedelta(minutes=10), timedelta(days=1), timedelta(minutes=30), timedelta(days=7)


def t(text: str) -> datetime:
    return parse_datetime(text)


def test_first_run_covers_the_query_period_ending_at_the_last_whole_bin() -> None:
    plan = plan_windows(None, t("2026-11-27T00:47:13Z"), DELAY, BIN, DAY, CAP)
    assert plan.windows == [Window(t("2026-11-26T00:10:00Z"), t("2026-11-27T00:10:00Z"))]
    assert plan.skipped is None


def test_next_run_starts_exactly_at_the_checkpoint() -> None:
    plan = plan_windows(t("2026-11-27T00:10:00Z"), t("2026-11-28T00:47:00Z"), DELAY, BIN, DAY, CAP)
    assert plan.windows == [Window(t("2026-11-27T00:10:00Z"), t("2026-11-28T00:10:00Z"))]


def test_up_to_date_plans_nothing() -> None:
    assert plan_windows(t("2026-11-28T00:10:00Z"), t("2026-11-28T00:49:59Z"), DELAY, BIN, DAY, CAP).windows == []


def test_missed_runs_are_caught_up_oldest_first_in_pieces_of_the_period() -> None:
    plan = plan_windows(t("2026-11-20T00:10:00Z"), t("2026-11-23T12:40:00Z"), DELAY, BIN, DAY, CAP)
    assert [w.start for w in plan.windows] == [
        t("2026-11-20T00:10:00Z"),
        t("2026-11-21T00:10:00Z"),
        t("2026-11-22T00:10:00Z"),
        t("2026-11-23T00:10:00Z"),
    ]
    assert plan.windows[-1].end == t("2026-11-23T12:10:00Z")
    assert all(a.end == b.start for a, b in zip(plan.windows, plan.windows[1:], strict=False))  # contiguous
    assert all(is_aligned(w, BIN) for w in plan.windows)


def test_beyond_the_catch_up_limit_is_skipped_and_reported() -> None:
    plan = plan_windows(t("2026-10-01T00:00:00Z"), t("2026-11-28T00:30:00Z"), DELAY, BIN, DAY, CAP)
    assert plan.skipped == Window(t("2026-10-01T00:00:00Z"), t("2026-11-21T00:00:00Z"))
    assert plan.windows[0].start == t("2026-11-21T00:00:00Z")
    assert len(plan.windows) == 7


def test_catch_up_limit_never_shortens_the_first_run_below_the_period() -> None:
    plan = plan_windows(None, t("2026-11-28T00:30:00Z"), DELAY, BIN, DAY, timedelta(hours=1))
    assert plan.windows == [Window(t("2026-11-27T00:00:00Z"), t("2026-11-28T00:00:00Z"))]


def test_an_unaligned_checkpoint_re_evaluates_its_whole_bin() -> None:
    plan = plan_windows(t("2026-11-27T00:15:00Z"), t("2026-11-27T01:30:00Z"), DELAY, BIN, DAY, CAP)
    assert plan.windows == [Window(t("2026-11-27T00:10:00Z"), t("2026-11-27T01:00:00Z"))]


def test_bins_and_merging() -> None:
    window = Window(t("2026-11-27T00:00:00Z"), t("2026-11-27T00:30:00Z"))
    bins = bins_of(window, BIN)
    assert bins == [t("2026-11-27T00:00:00Z"), t("2026-11-27T00:10:00Z"), t("2026-11-27T00:20:00Z")]
    assert merge_bins([bins[2], bins[0]], BIN) == [Window(bins[0], bins[1]), Window(bins[2], window.end)]
    assert merge_bins(bins, BIN) == [window]
