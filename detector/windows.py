"""Which windows a run evaluates. Pure: the clock and the checkpoint are passed in."""

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
