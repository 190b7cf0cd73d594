"""The run's deadline: every retry loop (source reads, sink deliveries, their waits) ends by it.

The runner sets the deadline for the work it does (`running_until`); the Log Analytics source and the
HTTP retry policy of the sinks read it with `current_deadline()`. A context variable keeps the Source and
Sink interfaces as they are: a deadline is a property of the run, not of a read or a delivery.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

MonotonicClock = Callable[[], float]


@dataclass(frozen=True)
class Deadline:
    """A moment on a monotonic clock by which the run's work must be done."""

    at: float
    clock: MonotonicClock = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: MonotonicClock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.clock()

    def reached(self) -> bool:
        return self.remaining() <= 0

    def earlier(self, seconds: float) -> Deadline:
        """A deadline `seconds` before this one (work that must leave time for later work)."""
        return Deadline(self.at - seconds, self.clock)


_current: ContextVar[Deadline | None] = ContextVar("detector_run_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline of the work in progress, or None when the caller set none (no limit but each loop's own)."""
    return _current.get()


@contextlib.contextmanager
def running_until(deadline: Deadline | None) -> Iterator[None]:
    """Make `deadline` the current one for the duration of the block."""
    token = _current.set(deadline)
    try:
        yield
    finally:
        _current.reset(token)
