"""Which windows a run evaluates, and what each evaluation reads. Pure: the clock and the checkpoint are passed in.

Two kinds of rule:
- binned (a `bin(TimeGenerated, ...)` in the query): windows are whole bins, planned in pieces of at most
  queryPeriod; a window is read and evaluated as it is (results of different bins never interact).
- without a bin (`RuleLogic.whole_window`: a group over the whole query period, or one result per row):
  the unit is one queryFrequency step aligned to the UTC clock (12h: 00:00 and 12:00; 1d: midnight),
  contiguous from the checkpoint, so consecutive evaluations never overlap or leave a gap. Each step is
  evaluated over its query period: the rows of [step end - queryPeriod, step end), so a 14-day period with
  a 1-day frequency reads 14 days per step. The rule loader sets such a logic's `time_bin` to its
  queryFrequency, so bins here are steps and planning, checkpoints and re-checks work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from detector.kql import bin_datetime
from detector.models import Window


def is_aligned(window: Window, time_bin: timedelta) -> bool:
    """True when both edges fall on bin boundaries (no bin is split by the window)."""
    return bin_datetime(window.start, time_bin) == window.start and bin_datetime(window.end, time_bin) == window.end


@dataclass(frozen=True)
class WindowPlan:
    """Windows to evaluate, oldest first, and the range skipped because it is beyond the catch-up limit."""

    windows: list[Window] = field(default_factory=list)
    skipped: Window | None = None


def plan_windows(
    checkpoint: datetime | None,
    now: datetime,
    delay: timedelta,
    time_bin: timedelta,
    period: timedelta,
    catchup_limit: timedelta,
) -> WindowPlan:
    """Whole-bin windows, contiguous from the checkpoint to now - delay floored to a bin.

    A first run (no checkpoint) covers the rule's queryPeriod. After missed runs every missed window is
    planned, in pieces of at most `period`, back to at most max(catchup_limit, period); anything older
    is returned as `skipped`, for the caller to report loudly.
    """
    end = bin_datetime(now - delay, time_bin)
    start = bin_datetime(checkpoint, time_bin) if checkpoint is not None else end - period
    earliest = bin_datetime(end - max(catchup_limit, period), time_bin)
    skipped = None
    if start < earliest:
        skipped, start = Window(start, earliest), earliest
    return WindowPlan(split_window(Window(start, end), period) if start < end else [], skipped)


def evaluation_period(time_bin: timedelta, query_period: timedelta, whole_window: bool) -> timedelta:
    """The `period` plan_windows takes: queryPeriod for a binned rule; one step for a rule without a bin.

    A first run of a rule without a bin evaluates the latest step only (its read covers queryPeriod anyway),
    and catch-up windows are one step each, each staged and checkpointed on its own.
    """
    return time_bin if whole_window else query_period


def read_windows(window: Window, time_bin: timedelta, query_period: timedelta, whole_window: bool) -> list[Window]:
    """The windows a rule reads and evaluates for `window`: the window itself for a binned rule.

    For a rule without a bin, a window of whole steps (what runs plan) is one read per step,
    [step end - queryPeriod, step end). Any other window (an explicit `run --start --end`) is the query
    run once over that time range, as Sentinel's query would be with it as its period.
    """
    if not whole_window or not is_aligned(window, time_bin):
        return [window]
    end = window.end
    ends = []
    while end > window.start:
        ends.append(end)
        end -= time_bin
    return [Window(moment - query_period, moment) for moment in reversed(ends)]


def split_window(window: Window, piece: timedelta) -> list[Window]:
    """Consecutive windows of at most `piece` covering `window`."""
    pieces, start = [], window.start
    while start < window.end:
        pieces.append(Window(start, min(start + piece, window.end)))
        start = pieces[-1].end
    return pieces


def bins_of(window: Window, time_bin: timedelta) -> list[datetime]:
    """Start of every bin that overlaps the window."""
    bins, moment = [], bin_datetime(window.start, time_bin)
    while moment < window.end:
        bins.append(moment)
        moment += time_bin
    return bins


def merge_bins(bins: Iterable[datetime], time_bin: timedelta) -> list[Window]:
    """Contiguous runs of bins as windows."""
    windows: list[Window] = []
    for bin_start in sorted(set(bins)):
        if windows and windows[-1].end == bin_start:
            windows[-1] = Window(windows[-1].start, bin_start + time_bin)
        else:
            windows.append(Window(bin_start, bin_start + time_bin))
    return windows
