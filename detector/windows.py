"""Which window a scheduled run evaluates. Pure: the clock is passed in."""

from __future__ import annotations

from datetime import datetime, timedelta

from detector.kql import bin_datetime
from detector.models import Window


def latest_window(now: datetime, delay: timedelta, period: timedelta, time_bin: timedelta) -> Window:
    """The window of length `period` ending at the last whole bin boundary at or before now - delay."""
    end = bin_datetime(now - delay, time_bin)
    return Window(end - period, end)


def is_aligned(window: Window, time_bin: timedelta) -> bool:
    """True when both edges fall on bin boundaries (no bin is split by the window)."""
    return bin_datetime(window.start, time_bin) == window.start and bin_datetime(window.end, time_bin) == window.end
