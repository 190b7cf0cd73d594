"""The first pass of a two-pass file read: which (bin, keys) groups can reach the threshold.

A group whose count of distinct non-null `distinct_column` values stays below the threshold can never
become a finding, so a source that knows the candidate groups may return only their rows and the rule's
result is unchanged (the rule still applies the threshold itself). This module holds the bookkeeping
shared by the file and IIS sources: key columns arrive in columnar batches (polars frames with an Int64
`bin` in epoch microseconds, the group's key hash and the distinct column as Int64), the distinct
(bin, group, value) tuples are kept, and bins are finished and freed as time moves on, so memory follows
the work in flight (about two bins of tuples for time-ordered logs) rather than the size of the day.

Groups are identified by a 64-bit hash of their key values (`group_hash`) rather than by the strings:
grouping and joining integers is several times cheaper. Exactness does not depend on the hash being
collision-free: two groups sharing a hash are counted together, which can only raise a distinct count,
so every group that reaches the threshold is still a candidate; a colliding group's rows merely come
along too, and the rule, which applies the threshold itself on the real keys, drops them.

polars is imported lazily: only a run over a file pays for it, `import function_app` does not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from detector.kql import EPOCH
from detector.logic import CandidateSpec
from detector.models import Row

if TYPE_CHECKING:
    import polars as pl

BIN = "bin"  # the name of the bin column (epoch microseconds of the bin start)
GROUP = "_group"  # the name of the group column: group_hash of the key columns (UInt64)
_HASH_SEED = 0x5EED  # any fixed seed: hashes are only compared within one process
# Bins this far behind the newest one are finished. Time-ordered logs (IIS writes them so, Log
# Analytics exports sort them) never go back; logs merged from a few servers may go back a little.
SLACK_BINS = 2


class OutOfOrder(Exception):  # noqa: N818 - a signal between the finder and its caller, not an error
    """A row arrived for a bin that was already finished; the caller re-reads without finishing bins."""


def microseconds(moment: datetime) -> int:
    """Epoch microseconds of a tz-aware datetime (exact integer arithmetic)."""
    span = moment - EPOCH
    return (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds


def span_microseconds(span: timedelta) -> int:
    """A timedelta in whole microseconds."""
    return (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds


class CandidateFinder:
    """Accumulates key-column batches and answers which groups reach the threshold.

    Feed it frames with columns `bin`, `_group`, spec.distinct_column, already limited to the window;
    rows with a null distinct value may be included (they are dropped here). With `finish_bins` True,
    bins more than SLACK_BINS behind the newest bin seen are decided and freed; a later row for such a
    bin raises OutOfOrder (the caller then starts again with finish_bins False, which is always exact).
    """

    def __init__(self, spec: CandidateSpec, finish_bins: bool = True) -> None:
        self.spec = spec
        self.bin_us = span_microseconds(spec.time_bin)
        self.finish_bins = finish_bins
        self._columns = [BIN, GROUP, spec.distinct_column]
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._compact_at = 1_000_000
        self._finished_below: int | None = None  # every bin < this is decided
        self._newest_bin: int | None = None
        self._found: list[pl.DataFrame] = []
        self._found_frame: pl.DataFrame | None = None

    @property
    def finished_below(self) -> int:
        """Every bin below this one is decided (no bin is, before the first finish)."""
        return self._finished_below if self._finished_below is not None else -(2**63)

    def found(self) -> pl.DataFrame:
        """Candidate groups of the bins decided so far."""
        import polars as pl

        if self._found_frame is None:
            self._found_frame = pl.concat(self._found) if self._found else _no_groups()
        return self._found_frame

    def add(self, batch: pl.DataFrame) -> None:
        """Add one batch of key columns."""
        import polars as pl

        # No per-batch unique(): nearly every row of a busy log is its own (bin, group, port) tuple.
        batch = batch.select(self._columns).filter(pl.col(self.spec.distinct_column).is_not_null())
        if batch.is_empty():
            return
        low, high = batch[BIN].min(), batch[BIN].max()
        if not isinstance(low, int) or not isinstance(high, int):
            raise TypeError("the bin column must be Int64")
        if self._finished_below is not None and low < self._finished_below:
            raise OutOfOrder
        self._pending.append(batch)
        self._pending_rows += batch.height
        self._newest_bin = high if self._newest_bin is None else max(self._newest_bin, high)
        if self.finish_bins:
            self._finish(self._newest_bin - SLACK_BINS * self.bin_us)
        elif self._pending_rows > self._compact_at:
            # Unordered input: keep only distinct tuples so memory is bounded by them, not by rows.
            merged = pl.concat(self._pending).unique()
            self._pending, self._pending_rows = [merged], merged.height
            self._compact_at = max(1_000_000, 2 * merged.height)

    def _finish(self, below: int) -> None:
        import polars as pl

        if self._finished_below is not None and below <= self._finished_below:
            return
        pending = pl.concat(self._pending) if len(self._pending) > 1 else self._pending[0]
        done = pending.filter(pl.col(BIN) < below)
        if not done.is_empty():
            decided = self._decide(done)
            if not decided.is_empty():
                self._found.append(decided)
                self._found_frame = None
        rest = pending.filter(pl.col(BIN) >= below)
        self._pending = [rest] if not rest.is_empty() else []
        self._pending_rows = rest.height
        self._finished_below = below

    def _decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        import polars as pl

        keys = [BIN, GROUP]
        counted = frame.group_by(keys).agg(pl.col(self.spec.distinct_column).n_unique().alias("_distinct"))
        return counted.filter(pl.col("_distinct") >= self.spec.threshold).select(keys)

    def result(self) -> pl.DataFrame:
        """The candidate groups: columns `bin`, `_group` (one row per group)."""
        import polars as pl

        found = list(self._found)
        if self._pending:
            found.append(self._decide(pl.concat(self._pending)))
        if not found:
            return _no_groups()
        return pl.concat(found).unique()


def _no_groups() -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema={BIN: pl.Int64, GROUP: pl.UInt64})


def group_hash(keys: Sequence[pl.Expr | str]) -> pl.Expr:
    """The `_group` column: a 64-bit hash of the key values (String columns or literals, in spec.keys order).

    Every source computes it with this one expression, so equal keys give equal hashes whether they
    came from the columnar reader or from Python rows (polars hashes values, not how they are stored).
    """
    import polars as pl

    return pl.struct(*keys).hash(_HASH_SEED).alias(GROUP)


def key_frame(keys: Sequence[tuple[Any, ...]], spec: CandidateSpec) -> pl.DataFrame:
    """A KeyedBlock.keys frame from Python tuples (bin, *keys, distinct value) of in-window records."""
    import polars as pl

    schema: dict[str, Any] = {BIN: pl.Int64, **dict.fromkeys(spec.keys, pl.String), spec.distinct_column: pl.Int64}
    frame = pl.DataFrame(keys, schema=schema, orient="row")
    return frame.select(
        BIN,
        group_hash(list(spec.keys)),
        spec.distinct_column,
        pl.lit(True).alias("_in_window"),
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_record"),
    )


class KeyedBlock(ABC):
    """One block of a file in the first pass: its key columns, and a way to the full rows of some records.

    `keys` has columns `bin`, `_group` (group_hash of the keys), spec.distinct_column, `_in_window` (bool)
    and `_record` (the record's index within the block, what `rows` takes).
    """

    keys: pl.DataFrame

    @abstractmethod
    def rows(self, records: list[int]) -> Iterator[Row]:
        """The typed rows of these records (in window), exactly as the source's plain path reads them."""


def candidate_rows(blocks: Callable[[], Iterator[KeyedBlock]], spec: CandidateSpec) -> Iterator[Row]:
    """Rows of candidate groups only. `blocks` opens a fresh pass over the file each time it is called.

    Time-ordered files take one pass: blocks are held until their bins are finished, then their
    candidate rows are taken and the block is freed. If a row arrives for a finished bin, a second,
    always-exact strategy runs: one pass to find every candidate, another to take their rows.
    Everything is computed before the first row is returned, so a caller may still fall back on error.
    """
    try:
        return iter(_one_pass(blocks(), spec))
    except OutOfOrder:
        finder = CandidateFinder(spec, finish_bins=False)
        for block in blocks():
            finder.add(_in_window(block))
        found = finder.result()
        return _take_all(blocks(), found, spec)


def _in_window(block: KeyedBlock) -> pl.DataFrame:
    import polars as pl

    return block.keys.filter(pl.col("_in_window"))


def _take(block: KeyedBlock, found: pl.DataFrame, spec: CandidateSpec) -> Iterator[Row]:
    if found.is_empty():
        return iter(())
    records = _in_window(block).join(found, on=[BIN, GROUP], how="semi")["_record"].to_list()
    return block.rows(records) if records else iter(())


def _take_all(blocks: Iterator[KeyedBlock], found: pl.DataFrame, spec: CandidateSpec) -> Iterator[Row]:
    for block in blocks:
        yield from _take(block, found, spec)


def _one_pass(blocks: Iterator[KeyedBlock], spec: CandidateSpec) -> list[Row]:
    finder = CandidateFinder(spec, finish_bins=True)
    held: deque[tuple[KeyedBlock, int | None]] = deque()
    taken: list[Row] = []
    for block in blocks:
        keys = _in_window(block)
        finder.add(keys)
        high = keys[BIN].max() if not keys.is_empty() else None
        held.append((block, high))  # type: ignore[arg-type]
        while held and (held[0][1] is None or held[0][1] < finder.finished_below):
            done, high = held.popleft()
            if high is not None:
                taken.extend(_take(done, finder.found(), spec))
    found = finder.result()
    for block, _ in held:
        taken.extend(_take(block, found, spec))
    return taken
