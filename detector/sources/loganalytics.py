"""`loganalytics:<workspace id>`: W3CIISLog rows from a Log Analytics workspace (azure-monitor-query).

The rule's pushdown description (detector.pushdown) becomes KQL run server-side (kql_query.py).
Two-step mode (default), for a rule whose threshold prunes: one KQL summarize finds, server-side, the
(bin, keys) groups whose exact measure (count or distinct count, over the rows the filter keeps) meets
the threshold; then only the rule's columns of only those groups' filtered rows are fetched, and the
rule is evaluated in Python exactly as for files. Raw mode, and any rule whose description does not
prune, fetches the projected rows of the whole window that the filter keeps (for small workspaces and
for cross-checking two-step); a rule with no description at all gets every row of the window.
`rowsRead` (the window's rows before pushdown) costs no request of its own: the candidates and first
phase queries carry it as one more row (kql_query.window_total), raw mode's per-bin counts as a column.

Nothing is silently lost. Each query carries an explicit (start, end) timespan, the same half-open
window in its KQL, a server timeout and a longer client read timeout. Reads are planned under the
API's limits (500,000 rows, ~64 MB per response; 200 requests per 30 s; 5 concurrent queries: we send
one at a time) and an answer that comes back cut (PartialError, no tables, 204, a broken body) is never
used: the piece is split (by whole time bins for candidates, by group ranges or time otherwise) and
asked again. 429 and 5xx are retried with backoff honouring Retry-After, within a bounded budget.
When no whole answer can be had, SourceError names the window and the run fails.

The Azure SDKs are imported inside the functions that use them, so importing the package stays cheap.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from detector.deadline import current_deadline
from detector.errors import ConfigError, DeadlineReachedError, SourceError, shown
from detector.identity import credential_failure, credential_for
from detector.kql import bin_datetime, format_datetime, parse_datetime, plain_int
from detector.models import Row, Window
from detector.pushdown import TIME, CandidateSpec, Capabilities
from detector.sources import LineReport, MalformedLine, ReadRequest, Source, register_source, typed
from detector.sources.kql_query import (
    TOTAL,
    GroupRange,
    bin_counts_query,
    candidates_query,
    details_query,
    first_phase_query,
    late_bins_query,
    raw_query,
    second_phase_query,
)
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    from azure.core.pipeline import PipelineResponse
    from azure.monitor.query import LogsQueryClient

    from detector.config import LogAnalyticsSettings, Settings

log = logging.getLogger(__name__)

# Statuses worth asking again: throttling (the SDK never retries a POST that got 429), gateway and
# service hiccups, and a server-side timeout (504), which a smaller or later query often avoids.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class QueryLimits:
    """How reads are sized and how hard the source tries. Defaults follow the service's limits."""

    rows_per_request: int = 200_000  # planned rows per answer: under the 500,000-row cap and ~100 MB of JSON
    ranges_per_request: int = 200  # group ranges per details query (keeps the query text near 60 KB)
    requests_per_period: int = 200  # the API allows 200 requests per 30 s per identity
    period_seconds: float = 30.0
    max_attempts: int = 6  # tries of one query before giving up
    max_backoff_seconds: float = 30.0
    max_wait_seconds: float = 180.0  # total sleep on retries of one query (Retry-After included)
    read_timeout_seconds: float | None = None  # the socket's wait for an answer; None: a little above the server timeout
    max_requests: int = 2_000  # per read(): bounds splitting, so a failing workspace cannot loop


@dataclass
class QueryStats:
    """What a source did on the wire, for logs and the benchmark."""

    requests: int = 0
    retries: int = 0
    splits: int = 0
    rows: int = 0
    bytes_received: int = 0  # response bodies as received (compressed when the service gzips them)
    rows_read: int = 0  # rows of the window the workspace holds (before pushdown), as it counted them

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


class RequestPacer:
    """At most `limit` requests in any `period` seconds; shared by every source in the process."""

    def __init__(
        self,
        limit: int,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()

    def wait(self) -> None:
        """Block until one more request fits in the window, then count it."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - self.period:
            self._sent.popleft()
        if len(self._sent) >= self.limit:
            self._sleep(self._sent[0] + self.period - now)
            now = self._clock()
            self._sent.popleft()
        self._sent.append(now)


_PACER = RequestPacer(QueryLimits.requests_per_period, QueryLimits.period_seconds)


def _next_boundary(moment: datetime, size: timedelta) -> datetime:
    start = bin_datetime(moment, size)
    return start if start == moment else start + size


def _middle_boundary(start: datetime, end: datetime, size: timedelta) -> datetime | None:
    """A bin boundary strictly inside (start, end) near the middle, or None when the range is one bin."""
    first = _next_boundary(start, size)
    if first == start:
        first += size
    if first >= end:
        return None
    bins_inside = (end - first) // size  # whole bins after the first inner boundary
    return first + size * (bins_inside // 2) if bins_inside else first


def _time_split(start: datetime, end: datetime, size: timedelta) -> datetime | None:
    """Where to cut [start, end) when any cut is allowed: a bin boundary if one is inside, else the middle."""
    boundary = _middle_boundary(start, end, size)
    if boundary is not None:
        return boundary
    if end - start < 2 * MICROSECOND:
        return None
    return start + (end - start) / 2  # timedelta division rounds to whole microseconds


@dataclass(frozen=True)
class _Piece:
    """One query's worth of a read. `halves` returns the pieces to ask instead when its answer is cut."""

    kind: str  # candidates | details | raw | bin counts | late bins | first phase | second phase
    start: datetime
    end: datetime
    query: str
    halves: Callable[[], tuple[_Piece, ...]]
    counts_window: bool = False  # the query carries its range's row count (kql_query.window_total)
    columns: tuple[str, ...] = ()  # the columns every row of the answer must have (a query of rows projects them)

    def __str__(self) -> str:
        return f"{self.kind} [{format_datetime(self.start)}, {format_datetime(self.end)})"


@dataclass(frozen=True)
class _Candidate:
    """A group found by the candidates query: its range within the window and its row count."""

    key: tuple[tuple[str, str | int | None], ...]
    start: datetime
    end: datetime
    rows: int


class LogAnalyticsSource(Source):
    """W3CIISLog rows of one Log Analytics workspace."""

    def __init__(
        self,
        workspace_id: str,
        settings: LogAnalyticsSettings,
        limits: QueryLimits | None = None,
        pacer: RequestPacer | None = None,
        sleep: Callable[[float], None] = time.sleep,
        strict: bool = False,
    ) -> None:
        from detector.config import GUID

        if not GUID.fullmatch(workspace_id):
            raise ConfigError(
                "DETECTOR_SOURCE",
                f"loganalytics:{workspace_id}: the workspace id must be the workspace's GUID "
                "(Azure portal > Log Analytics workspace > Overview > Workspace ID)",
            )
        self.workspace_id = workspace_id.lower()
        self.settings = settings
        self.limits = limits or QueryLimits()
        self.pacer = pacer or _PACER
        self.sleep = sleep
        self.stats = QueryStats()
        self.strict = strict
        self._report = LineReport(strict)
        self._client: LogsQueryClient | None = None
        self._requests_at_read_start = 0
        self._last_status = 0
        self._stats_at_read_start = QueryStats()

    def describe(self) -> str:
        return f"loganalytics:{self.workspace_id} ({self.settings.mode}, table {self.settings.table}, {self.settings.endpoint})"

    # -- reading ---------------------------------------------------------------------------------------

    def read_stats(self) -> dict[str, Any]:
        """What the last read did on the wire (requests, retries, splits, rows, bytes) and `rowsRead`."""
        before = self._stats_at_read_start.to_json()
        stats: dict[str, Any] = {k: v - before[k] for k, v in self.stats.to_json().items() if k != "rows_read"}
        stats["rowsRead"] = self.stats.rows_read
        return {**stats, **{k: v for k, v in self._report.stats().items() if k != "rowsRead"}}

    def read(self, request: ReadRequest) -> Iterator[Row]:
        where = f"{self.describe()} window {request.window}"
        self._stats_at_read_start = QueryStats(**self.stats.to_json())
        self.stats.rows_read = 0
        self._report = LineReport(self.strict)
        spec = request.candidates
        with self._session():
            if self.settings.mode != "raw" and spec is not None and spec.first_phase is not None:
                rows = self._read_two_phase(request, spec)
            elif self.settings.mode == "raw" or spec is None or not spec.prunes:
                if spec is not None:
                    for reason in spec.plan(_KQL_CAPABILITIES).reasons:
                        log.info("%s: pushdown: %s", where, reason)
                rows = self._read_raw(request)
            else:
                rows = self._read_two_step(request, spec)
            for index, raw in enumerate(rows):
                try:
                    yield typed(raw, request, where, f"row {index} of the answer")
                except MalformedLine as exc:
                    self._report.skip(exc)
        log.info("%s: %s", where, json.dumps(self.stats.to_json()))

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime]:
        """Bins of the window that hold rows ingested after `ingested_after` (for late-data re-checks)."""
        table = self.settings.table

        def piece(start: datetime, end: datetime) -> _Piece:
            return _Piece(
                "late bins",
                start,
                end,
                late_bins_query(table, start, end, ingested_after, time_bin),
                lambda: self._split_anywhere(start, end, time_bin, piece),
            )

        with self._session():
            rows = self._fetch_whole(piece(window.start, window.end), window)
        return {self._datetime(row["TimeGenerated"], window) for row in rows}

    def _read_raw(self, request: ReadRequest) -> Iterator[dict[str, Any]]:
        """Every row of the window, in slices planned from per-bin counts to stay under the limits."""
        window, table, size = request.window, self.settings.table, self._plan_bin(request)

        row_filter = request.candidates.filter if request.candidates is not None else None
        columns = request.read_columns()

        def counts(start: datetime, end: datetime) -> _Piece:
            return _Piece(
                "bin counts",
                start,
                end,
                bin_counts_query(table, start, end, size, row_filter),
                lambda: self._split_anywhere(start, end, size, counts),
                columns=(TIME, "rows", "total"),
            )

        def rows(start: datetime, end: datetime) -> _Piece:
            return _Piece(
                "raw",
                start,
                end,
                raw_query(table, start, end, columns, row_filter),
                lambda: self._split_anywhere(start, end, size, rows),
                columns=tuple(columns),
            )

        per_bin: dict[datetime, int] = {}
        for row in self._fetch_whole(counts(window.start, window.end), window):
            moment = self._datetime(row["TimeGenerated"], window)
            per_bin[moment] = per_bin.get(moment, 0) + int(row["rows"])
            self.stats.rows_read += int(row["total"])
        for start, end, expected in self._plan_slices(window, size, per_bin):
            found = self._fetch_whole(rows(start, end), window)
            self._check_count(found, expected, f"raw [{format_datetime(start)}, {format_datetime(end)})", window)
            yield from found

    def _read_two_step(self, request: ReadRequest, spec: CandidateSpec) -> Iterator[dict[str, Any]]:
        """Candidate groups server-side, then only their rows."""
        window, table = request.window, self.settings.table
        size = spec.time_bin

        def candidates(start: datetime, end: datetime) -> _Piece:
            # Never split a bin: the measure of a group must be computed over all its rows. A
            # whole-window spec has one bin, the window, and is never split.
            def halves() -> tuple[_Piece, ...]:
                cut = _middle_boundary(start, end, size) if size is not None else None
                return () if cut is None else (candidates(start, cut), candidates(cut, end))

            query = candidates_query(table, start, end, spec)
            wanted = (*spec.keys, "rows", *((TIME,) if size is not None else ()))
            return _Piece("candidates", start, end, query, halves, counts_window=True, columns=wanted)

        found: list[_Candidate] = []
        for row in self._fetch_whole(candidates(window.start, window.end), window):
            key = tuple((column, _key_value(column, row[column])) for column in spec.keys)
            if size is None:
                start, end = window.start, window.end
            else:
                bin_start = self._datetime(row["TimeGenerated"], window)
                start, end = max(bin_start, window.start), min(bin_start + size, window.end)
            found.append(_Candidate(key, start, end, int(row["rows"])))
        log.info("%s window %s: %d candidate group(s)", self.describe(), window, len(found))
        plan_bin = size or (window.end - window.start)
        for batch in self._plan_batches(_merge_adjacent(found)):
            expected = sum(c.rows for c in batch)
            label = f"details of {len(batch)} group range(s)"
            rows = self._fetch_whole(self._details_piece(request, batch, plan_bin), window)
            self._check_count(rows, expected, label, window)
            yield from rows

    def _read_two_phase(self, request: ReadRequest, spec: CandidateSpec) -> Iterator[dict[str, Any]]:
        """A first phase's keys server-side (one row per key over the window), then the recent rows of those keys.

        Never the window's rows: Silk Typhoon's 14-day first phase comes back as a few rows (one per
        Exchange server), and only the last day's requests of those servers are fetched.
        """
        first = spec.first_phase
        assert first is not None  # noqa: S101 - the caller checked
        window, table, columns = request.window, self.settings.table, request.read_columns()
        recent = Window(max(window.start, window.end - first.recent), window.end)
        size = timedelta(hours=1)

        def keys(start: datetime, end: datetime) -> _Piece:
            return _Piece(
                "first phase",
                start,
                end,
                first_phase_query(table, start, end, first, columns),
                lambda: self._split_anywhere(start, end, size, keys),
                counts_window=True,
                columns=tuple(columns),
            )

        def rows(names: tuple[str, ...]) -> Callable[[datetime, datetime], _Piece]:
            def make(start: datetime, end: datetime) -> _Piece:
                query = second_phase_query(table, start, end, first.key, names, columns, spec.filter)
                return _Piece(
                    "second phase",
                    start,
                    end,
                    query,
                    lambda: self._split_anywhere(start, end, size, make),
                    columns=tuple(columns),
                )

            return make

        found: dict[str, dict[str, Any]] = {}
        for row in self._fetch_whole(keys(window.start, window.end), window):
            name = "" if row.get(first.key) is None else str(row[first.key])
            moment = self._datetime(row["TimeGenerated"], window)
            if name not in found or moment < self._datetime(found[name]["TimeGenerated"], window):
                found[name] = row  # halves of a split first phase may both name a key: keep one row
        names = tuple(sorted(found))
        log.info("%s window %s: first phase found %d %s value(s)", self.describe(), window, len(names), first.key)
        # A key's row from the recent part also comes with the second phase (the spec's filter admits it).
        yield from (row for row in found.values() if not recent.contains(self._datetime(row["TimeGenerated"], window)))
        for index in range(0, len(names), self.limits.ranges_per_request):
            batch = names[index : index + self.limits.ranges_per_request]
            yield from self._fetch_whole(rows(batch)(recent.start, recent.end), window)

    def _details_piece(self, request: ReadRequest, batch: Sequence[_Candidate], size: timedelta) -> _Piece:
        ranges = [GroupRange(c.key, c.start, c.end) for c in batch]

        def halves() -> tuple[_Piece, ...]:
            if len(batch) > 1:
                middle = len(batch) // 2
                return (self._details_piece(request, batch[:middle], size), self._details_piece(request, batch[middle:], size))
            # One group range (say, one client flooding one server): any time cut is fine here, since
            # details are evaluated in Python over the union of the pieces.
            only = batch[0]
            cut = _time_split(only.start, only.end, size)
            if cut is None:
                return ()
            first, second = _Candidate(only.key, only.start, cut, 0), _Candidate(only.key, cut, only.end, 0)
            return (self._details_piece(request, [first], size), self._details_piece(request, [second], size))

        start, end = min(c.start for c in batch), max(c.end for c in batch)
        row_filter = request.candidates.filter if request.candidates is not None else None
        query = details_query(self.settings.table, ranges, request.read_columns(), row_filter)
        return _Piece("details", start, end, query, halves, columns=request.read_columns())

    def _plan_batches(self, ranges: Sequence[_Candidate]) -> Iterator[list[_Candidate]]:
        """Pack group ranges, in time order, into queries of bounded rows and query size."""
        batch: list[_Candidate] = []
        rows = 0
        for item in sorted(ranges, key=lambda c: (c.start, c.key)):
            full = len(batch) >= self.limits.ranges_per_request or rows + item.rows > self.limits.rows_per_request
            if batch and full:
                yield batch
                batch, rows = [], 0
            batch.append(item)
            rows += item.rows
        if batch:
            yield batch

    def _plan_slices(
        self, window: Window, size: timedelta, per_bin: dict[datetime, int]
    ) -> Iterator[tuple[datetime, datetime, int]]:
        """Consecutive time slices of the window, each with at most rows_per_request rows (or one bin)."""
        start, rows = window.start, 0
        for bin_start in sorted(per_bin):
            count = per_bin[bin_start]
            cut = max(bin_start, window.start)
            if rows and rows + count > self.limits.rows_per_request and cut > start:
                yield start, cut, rows
                start, rows = cut, 0
            rows += count
        if rows:
            yield start, window.end, rows

    def _split_anywhere(
        self, start: datetime, end: datetime, size: timedelta, make: Callable[[datetime, datetime], _Piece]
    ) -> tuple[_Piece, ...]:
        cut = _time_split(start, end, size)
        return () if cut is None else (make(start, cut), make(cut, end))

    @staticmethod
    def _plan_bin(request: ReadRequest) -> timedelta:
        spec = request.candidates
        return spec.time_bin if spec is not None and spec.time_bin is not None else timedelta(minutes=10)

    def _check_count(self, rows: Sequence[Any], expected: int, label: str, window: Window) -> None:
        # Rows may arrive late between two queries (more is fine); fewer means something was lost.
        if len(rows) < expected:
            raise SourceError(
                f"{self.describe()} window {window}: {label} returned {len(rows)} rows but the workspace counted "
                f"{expected}; the answer is incomplete, so the window is not evaluated"
            )

    # -- one whole answer ------------------------------------------------------------------------------

    def _fetch_whole(self, piece: _Piece, window: Window) -> list[dict[str, Any]]:
        """All rows of a piece, splitting it until every answer comes back whole."""
        pending = [piece]
        rows: list[dict[str, Any]] = []
        while pending:
            current = pending.pop()
            answer = self._query(current, window)
            if answer is not None:
                rows.extend(self._count_window(answer, current, window) if current.counts_window else answer)
                continue
            halves = current.halves()
            if not halves:
                raise SourceError(
                    f"{self.describe()} window {window}: the answer to {current} stays cut at the service's limits "
                    "and cannot be split further; no finding of this window is reported"
                )
            self.stats.splits += 1
            log.info("%s: answer to %s was cut; asking for %s and %s instead", self.describe(), current, *halves)
            pending.extend(reversed(halves))
        return rows

    def _count_window(self, answer: list[dict[str, Any]], piece: _Piece, window: Window) -> list[dict[str, Any]]:
        """The rows of a whole answer but its row-count row, whose count goes to rowsRead."""
        counts = [row[TOTAL] for row in answer if row.get(TOTAL) is not None]
        if len(counts) != 1:
            raise SourceError(
                f"{self.describe()} window {window}: the answer to {piece} holds {len(counts)} row counts where the "
                "query asks for one; the answer is not what was asked, so the window is not evaluated"
            )
        self.stats.rows_read += int(counts[0])
        return [row for row in answer if row.get(TOTAL) is None]

    def _query(self, piece: _Piece, window: Window) -> list[dict[str, Any]] | None:
        """The rows of one whole answer, or None when the answer was cut (the caller splits the piece)."""
        from azure.core.exceptions import DecodeError, HttpResponseError, ServiceRequestError, ServiceResponseError
        from azure.monitor.query import LogsQueryStatus

        client = self._client
        assert client is not None, "queries run inside _session()"  # noqa: S101 - internal invariant
        server_timeout = int(self.settings.server_timeout.total_seconds())
        # Above the server's own timeout, so the server (not the socket) decides; 10 % plus a second of slack.
        read_timeout = self.limits.read_timeout_seconds or server_timeout * 1.1 + 1
        waited, attempt = 0.0, 0
        while True:
            if self.stats.requests - self._requests_at_read_start >= self.limits.max_requests:
                raise SourceError(
                    f"{self.describe()} window {window}: gave up after {self.limits.max_requests} requests without a whole answer"
                )
            # The run's deadline bounds each query too: the server is asked to give up (and the socket to
            # wait) no longer than the run has left, and a wait that would outlast it is not begun.
            deadline = current_deadline()
            left = deadline.remaining() if deadline is not None else float("inf")
            if left < 2:
                raise DeadlineReachedError(f"{self.describe()} window {window}: run deadline reached before {piece}")
            self.pacer.wait()
            self.stats.requests += 1
            attempt += 1
            retry_after: float | None = None
            try:
                result = client.query_workspace(
                    self.workspace_id,
                    piece.query,
                    timespan=(piece.start, piece.end),  # never falsy: a falsy timespan means "all data"
                    server_timeout=int(min(server_timeout, max(left - 1, 1))),
                    read_timeout=min(read_timeout, left),
                    connection_timeout=30,
                    raw_response_hook=self._count_bytes,
                )
            except (ServiceRequestError, ServiceResponseError, DecodeError) as exc:
                # Timeouts, resets and bodies cut short (DecodeError covers IncompleteReadError): ask again.
                problem = f"{type(exc).__name__}: {_one_line(str(exc))}"
            except json.JSONDecodeError:
                # The SDK parses an error body even when there is none, as on a 204 No Content.
                problem = f"HTTP {self._last_status} without a body"
            except (ValueError, RecursionError) as exc:  # a body json refuses: a 4,300-digit number, deep nesting
                problem = f"a body that cannot be read ({_one_line(str(exc))[:120]})"
            except (IndexError, KeyError) as exc:  # the SDK building a table from rows longer than its columns
                wrong = f"is not a table the SDK can read ({type(exc).__name__}: {_one_line(str(exc))[:120]})"
                raise self._wrong_answer(window, piece, wrong) from None
            except HttpResponseError as exc:
                failure = credential_failure(exc)
                if failure is not None:
                    raise failure from None  # no token, nothing sent: asking again would fail the same way
                status = exc.status_code or 0
                # No status: the answer never arrived whole (the SDK re-raises a cut body as a bare
                # HttpResponseError); ask again like any transport failure.
                if status and status not in RETRYABLE_STATUS and status != 204:
                    raise SourceError(
                        f"{self.describe()} window {window}: {piece} failed with HTTP {status}: {_error_text(exc)}"
                        + _hint(status)
                    ) from None
                problem = f"HTTP {status}: {_error_text(exc)}" if status else f"broken answer: {_error_text(exc)}"
                retry_after = _retry_after(exc)
            else:
                if result.status == LogsQueryStatus.PARTIAL:
                    error = getattr(result, "partial_error", None)
                    log.warning(
                        "%s: partial answer to %s (%s); not used", self.describe(), piece, getattr(error, "message", error)
                    )
                    return None
                tables = getattr(result, "tables", None)
                if tables:
                    wrong = _wrong_shape(tables[0], piece.columns)
                    try:
                        rows = [] if wrong else _table_rows(tables[0], window)
                    except ValueError:  # zip(strict=True): a row shorter than the columns (longer: IndexError above)
                        wrong = f"holds a row whose values do not match its {len(tables[0].columns)} columns"
                    if wrong:  # the same query gets the same answer: no retry
                        raise self._wrong_answer(window, piece, wrong)
                    self.stats.rows += len(rows)
                    return rows
                problem = "an answer without a result table"
            if attempt >= self.limits.max_attempts:
                raise SourceError(f"{self.describe()} window {window}: {piece} failed {attempt} times, last: {problem}")
            delay = retry_after if retry_after is not None else min(self.limits.max_backoff_seconds, 2.0 ** (attempt - 1))
            if waited + delay > self.limits.max_wait_seconds:
                raise SourceError(
                    f"{self.describe()} window {window}: {piece} still failing ({problem}) and the next wait of {delay:.0f}s "
                    f"exceeds the retry budget of {self.limits.max_wait_seconds:.0f}s"
                )
            if deadline is not None and delay >= deadline.remaining():
                raise DeadlineReachedError(
                    f"{self.describe()} window {window}: {piece} still failing ({problem}) and the run deadline comes "
                    f"before the next try in {delay:.0f}s"
                )
            log.warning("%s: %s: %s; retry %d in %.1fs", self.describe(), piece, problem, attempt, delay)
            self.stats.retries += 1
            self.sleep(delay)
            waited += delay

    def _count_bytes(self, response: PipelineResponse[Any, Any]) -> None:
        http = response.http_response
        self._last_status = http.status_code
        length = http.headers.get("Content-Length")
        self.stats.bytes_received += plain_int(length or "") or len(http.body() or b"")

    def _wrong_answer(self, window: Window, piece: _Piece, wrong: str) -> SourceError:
        """The error for an answer that is not the table asked for (`wrong` says how)."""
        return SourceError(f"{self.describe()} window {window}: the answer to {piece} {wrong}; {_NOT_EVALUATED}")

    # -- plumbing --------------------------------------------------------------------------------------

    def _session(self) -> ExitStack:
        """A context that opens the credential and client for one read and closes them after."""
        from azure.monitor.query import LogsQueryClient

        stack = ExitStack()
        credential = credential_for(self.settings.client_id)
        stack.callback(credential.close)  # type: ignore[attr-defined]
        # retry_total=0: this module owns retries (the SDK's policy skips 429 on POST and is unbounded in time).
        client = LogsQueryClient(credential, endpoint=self.settings.endpoint, retry_total=0)
        stack.callback(client.close)
        self._client = client
        stack.callback(self._forget_client)
        self._requests_at_read_start = self.stats.requests
        return stack

    def _forget_client(self) -> None:
        self._client = None

    @staticmethod
    def _datetime(value: Any, window: Window) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_datetime(str(value))
        except ValueError:
            raise SourceError(f"window {window}: the service returned {value!r} where a datetime was expected") from None


_KQL_CAPABILITIES = Capabilities()  # KQL can take part in every piece of a description


def _key_value(column: str, value: Any) -> str | int | None:
    """A group key value as the details query must match it (strings are never null in KQL)."""
    if COLUMN_TYPES.get(column) == "string":
        return "" if value is None else str(value)
    return None if value is None else int(value)


def _merge_adjacent(candidates: Sequence[_Candidate]) -> list[_Candidate]:
    """Join consecutive bins of the same group key into one range (a long scan becomes one clause)."""
    merged: list[_Candidate] = []
    for item in sorted(candidates, key=lambda c: (c.key, c.start)):
        last = merged[-1] if merged else None
        if last is not None and last.key == item.key and last.end == item.start:
            merged[-1] = _Candidate(last.key, last.start, item.end, last.rows + item.rows)
        else:
            merged.append(item)
    return merged


_NOT_EVALUATED = "the window is not evaluated (check DETECTOR_LOGS_TABLE names a table with the W3CIISLog columns and types)"
_SAME_KIND = {"int": "integer", "long": "integer", "string": "string", "datetime": "datetime"}


def _wrong_shape(table: Any, wanted: Sequence[str]) -> str:
    """What makes an answer's columns not the ones asked for (empty when nothing does): a column asked for
    is missing, or a W3CIISLog column has another type (a string sPort would make every row a skipped
    line, a run that reports nothing and succeeds). A row of another length: _table_rows."""
    names, types = list(table.columns), list(table.columns_types)
    missing = [c for c in wanted if c not in names]
    if missing:
        return f"lacks column(s) {', '.join(shown(c) for c in missing)}"
    for name, kind in zip(names, types, strict=False):
        expected = COLUMN_TYPES.get(name)
        if expected and name != TIME and _SAME_KIND.get(str(kind)) != _SAME_KIND[expected]:
            return f"gives {shown(name)} as {shown(str(kind))}, where W3CIISLog has {expected}"
    if len(types) != len(names):
        return f"gives {len(types)} types for its {len(names)} columns"
    return ""


def _table_rows(table: Any, window: Window) -> list[dict[str, Any]]:
    """Rows of a LogsTable as dicts. Dynamic values arrive as JSON text; datetimes as µs-truncated datetimes."""
    names: list[str] = list(table.columns)
    types: list[str] = list(table.columns_types)
    dynamic = [i for i, kind in enumerate(types) if kind == "dynamic"]
    dates = [i for i, kind in enumerate(types) if kind == "datetime"]
    out = []
    for row in table.rows:
        values = list(row)
        for i in dynamic:
            if isinstance(values[i], str):
                # A dynamic string scalar that is not JSON text stays the string it is.
                with suppress(ValueError, RecursionError):  # JSONDecodeError, 4,300 digits, deep nesting
                    values[i] = json.loads(values[i])
        for i in dates:
            value = values[i]
            if value is not None and not isinstance(value, datetime):
                # The SDK leaves a datetime it cannot parse as text; KQL prints 7 fractional digits.
                values[i] = LogAnalyticsSource._datetime(value, window)
        out.append(dict(zip(names, values, strict=True)))
    return out


def _error_text(exc: Any) -> str:
    model = getattr(exc, "model", None)
    code, message = getattr(model, "code", None), getattr(model, "message", None)
    if code or message:
        return _one_line(f"{code}: {message}")
    return _one_line(str(getattr(exc, "reason", None) or exc.message or exc))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _hint(status: int) -> str:
    if status in (401, 403):
        return (
            "; give the app's managed identity 'Log Analytics Data Reader' on the workspace, with the condition that "
            "limits it to the DETECTOR_LOGS_TABLE table (docs/deploy.md, Roles)"
        )
    if status == 400:
        return "; check DETECTOR_LOGS_TABLE names a table with the W3CIISLog columns"
    if status == 404:
        return "; check the workspace id after 'loganalytics:' and DETECTOR_LOGS_ENDPOINT"
    return ""


def _retry_after(exc: Any) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; the API does not send HTTP dates)."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@register_source("loganalytics")
def _open(argument: str, settings: Settings) -> Source:
    return LogAnalyticsSource(argument, settings.logs, strict=settings.strict)
