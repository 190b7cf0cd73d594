"""Runs: read rows for windows, evaluate rules, stage findings, deliver them. Shared by the CLI and the function.

Two ways to run:
- `run`: one explicit window, no state (the CLI's `run`): findings go straight to the sinks.
- `run_incremental` / `run_backfill`: windows planned from a durable checkpoint, findings through the outbox.
  Order of work per window: evaluate -> stage in the outbox -> advance the checkpoint; then deliver the
  outbox -> mark delivered. A crash anywhere loses no finding and duplicates none (see detector/state).

Planning, one function per concern:
- `rule_step` and `due_windows`: which windows one rule evaluates now (whole steps from its checkpoint);
  a rule with no whole step since its checkpoint is not due and is not read.
- `read_groups`: which of the due evaluations one read serves. A source that `shares_reads` (files)
  reads the overlapping reads of several rules once (a rule's window, or for a rule without a bin each
  step's query period), with every rule's pushdown over its own window (a SharedSpec); any other source
  gets one request per rule and read.
- `evaluate_together`: the read(s) of one group and each rule's evaluation of its own window.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from queue import Queue
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from detector.deadline import Deadline, current_deadline, running_until
from detector.errors import ConfigError, DeadlineReachedError, DetectorError, SinkError, SourceError
from detector.evaluate import evaluate
from detector.kql import format_datetime
from detector.models import Finding, Row, Window
from detector.pushdown import TIME, CandidateSpec, SharedSpec
from detector.rules import Rule, load_rules
from detector.sinks import Sink
from detector.sources import EVERY_READ, ReadRequest, Source
from detector.state import MAX_REJECTIONS, LeaseLostError, OutboxEntry, RuleState, StateStore, new_owner
from detector.windows import (
    WindowPlan,
    bins_of,
    evaluation_period,
    is_aligned,
    merge_bins,
    plan_windows,
    read_windows,
    split_window,
)

if TYPE_CHECKING:
    from detector.config import Settings

log = logging.getLogger(__name__)

# A run holds its leases this long and a heartbeat thread renews them every HEARTBEAT while it works (and
# every window renews too), so a run that died blocks the next for at most LEASE_TTL; on the file store a
# holder that is a dead process of this host is noticed at once.
LEASE_TTL = timedelta(minutes=2)
HEARTBEAT = LEASE_TTL / 4
# The scheduled run's deadline: host.json's functionTimeout (30 min) minus a margin for start-up and the
# summary. Evaluation stops DELIVERY_RESERVE earlier so the outbox still gets delivered.
RUN_DEADLINE = timedelta(minutes=25)
DELIVERY_RESERVE = timedelta(minutes=5)
# Rows ingested up to this long before a bin was evaluated may not have been visible to that evaluation.
LATE_MARGIN = timedelta(minutes=5)
BACKFILL_PIECE = timedelta(hours=1)
OUTBOX_LEASE = "outbox"


RunKind = Literal["window", "recheck", "backfill"]


@dataclass
class RuleRun:
    """What one evaluation of one window did."""

    rule_id: str
    window: Window
    kind: RunKind = "window"
    rows_evaluated: int = 0
    findings: list[Finding] = field(default_factory=list)
    staged: int = 0
    source_stats: dict[str, Any] = field(default_factory=dict)  # Source.read_stats(): rowsRead, skippedLines...
    shared_read: int = 0  # rules evaluated from the same read share its number (0: a read of its own)


@dataclass
class RunSummary:
    """The outcome of a run; `ok` is False when a source, the state or a delivery failed."""

    source: str
    rules: list[RuleRun] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)  # sink -> findings delivered
    delivery_errors: dict[str, str] = field(default_factory=dict)  # sink -> error
    errors: dict[str, str] = field(default_factory=dict)  # rule id -> source or state error
    skipped: list[str] = field(default_factory=list)  # what was not evaluated, and why
    lag_seconds: dict[str, float] = field(default_factory=dict)  # rule id -> now - checkpoint
    stepped_aside: list[str] = field(default_factory=list)  # leases a live run held: that run does the work
    deadline_reached: bool = False
    deferred: list[str] = field(default_factory=list)  # work left for the next run by the deadline
    parked: list[dict[str, Any]] = field(default_factory=list)  # findings parked by this run
    parked_held: dict[str, int] = field(default_factory=dict)  # sink -> parked findings in its outbox
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.delivery_errors and not self.errors

    @property
    def complete(self) -> bool:
        """ok, and nothing was left to another run (a live lease holder, or the next run after the deadline)."""
        return self.ok and not self.stepped_aside and not self.deadline_reached

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.rules for f in r.findings]

    def _per_read(self, figure: str) -> int:
        """A read figure summed over the reads (a read shared by several rules counts once)."""
        seen: set[int] = set()
        total = 0
        for r in self.rules:
            if r.shared_read:
                if r.shared_read in seen:
                    continue
                seen.add(r.shared_read)
            total += int(r.source_stats.get(figure, 0))
        return total

    def to_json(self) -> dict[str, Any]:
        """Structured form for logs (query it in Application Insights) and the CLI."""
        return {
            "source": self.source,
            "windows": [
                {
                    "ruleId": r.rule_id,
                    "kind": r.kind,
                    "start": format_datetime(r.window.start),
                    "end": format_datetime(r.window.end),
                    "rowsEvaluated": r.rows_evaluated,
                    "findings": len(r.findings),
                    "staged": r.staged,
                    **r.source_stats,
                    **({"sharedRead": r.shared_read} if r.shared_read else {}),
                }
                for r in self.rules
            ],
            "rowsRead": self._per_read("rowsRead"),
            "rowsEvaluated": sum(r.rows_evaluated for r in self.rules),
            "skippedLines": self._per_read("skippedLines"),
            "findings": len(self.findings),
            "deliveries": self.deliveries,
            "deliveryErrors": self.delivery_errors,
            "errors": self.errors,
            "skipped": self.skipped,
            "lagSeconds": self.lag_seconds,
            "steppedAside": self.stepped_aside,
            "deadlineReached": self.deadline_reached,
            "deferred": self.deferred,
            "parked": self.parked,
            "parkedHeld": self.parked_held,
            "ok": self.ok,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
        }


def _counted(rows: Iterator[Row], run: RuleRun) -> Iterator[Row]:
    for row in rows:
        run.rows_evaluated += 1
        yield row


def _reads(rule: Rule, window: Window) -> list[Window]:
    """What a rule reads and evaluates for a window.

    The window itself for a binned rule; for a rule without a bin, each step's query period (windows.read_windows).
    """
    return read_windows(window, rule.logic.time_bin, rule.query_period, rule.logic.whole_window)


def _span(windows: Sequence[Window]) -> Window:
    return Window(min(w.start for w in windows), max(w.end for w in windows))


def _request(rule: Rule, window: Window) -> ReadRequest:
    logic = rule.logic
    return ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec())


def evaluate_window(rule: Rule, source: Source, window: Window, kind: RunKind = "window") -> RuleRun:
    """Read the rows one rule needs for a window and evaluate it. Raises if the source cannot answer whole."""
    run = RuleRun(rule.id, window, kind)
    for read in _reads(rule, window):
        run.findings += evaluate(rule, _counted(source.read(_request(rule, read)), run), read)
        stats = source.read_stats()
        run.source_stats = {
            k: run.source_stats.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v for k, v in stats.items()
        }
    log.info("rule %s %s %s: %d rows, %d findings", rule.id, kind, window, run.rows_evaluated, len(run.findings))
    return run


# -- planning -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One evaluation to do: a rule over one window."""

    rule: Rule
    window: Window
    kind: RunKind = "window"


def rule_step(rule: Rule) -> timedelta:
    """What a rule's windows are whole multiples of: its time bin (each bin's results are final once it closed)."""
    return rule.logic.time_bin


def due_windows(rule: Rule, checkpoint: datetime | None, now: datetime, settings: Settings) -> WindowPlan:
    """The windows a rule evaluates now: whole steps from its checkpoint to now minus the ingestion delay
    (none when no whole step has closed since: the timer may fire more often than the rule's step).
    """
    step = rule_step(rule)
    period = evaluation_period(step, rule.query_period, rule.logic.whole_window)
    return plan_windows(checkpoint, now, settings.ingestion_delay, step, period, settings.catchup_limit)


def _shareable(task: Task) -> bool:
    """A rule whose description filters or prunes: its share of a read is a small part of the rows.

    A rule without a bin shares the read with its query period (each step's), as its own part.
    """
    spec = task.rule.logic.candidate_spec()
    return spec is not None and (spec.prunes or spec.filters)


def _prunes(task: Task) -> bool:
    """Whether the task's rule prunes groups.

    A read is shared by rules that prune or by rules that only filter, never both: a pruning rule's
    candidates may be every row of the day (a day of port scans), and a rule that only filters would
    have to look at each of them to drop it (on the scan day, every rule over one read took 28.2 s
    against 18.3 s with the filtering rules reading on their own).
    """
    spec = task.rule.logic.candidate_spec()
    return spec is not None and spec.prunes


def _read_span(task: Task) -> Window:
    """The time a task reads: its window, or for a rule without a bin the query periods of its steps."""
    return _span(_reads(task.rule, task.window))


def _joins(group: Sequence[Task], span: Window, task: Task) -> bool:
    """Whether one more rule's read may be shared with the group's: it overlaps the span, and the span
    grows by at most one step of the group's rules beyond its longest read (a read of a few extra rows,
    never of another day).
    """
    mine = _read_span(task)
    if not (mine.start < span.end and span.start < mine.end):
        return False
    merged = Window(min(span.start, mine.start), max(span.end, mine.end))
    members = [*group, task]
    longest = max(read.end - read.start for read in map(_read_span, members))
    return merged.end - merged.start <= longest + max(rule_step(t.rule) for t in members)


def read_groups(queues: Sequence[Sequence[Task]], shares_reads: bool) -> Iterator[list[Task]]:
    """The evaluations one read serves, oldest first: at most one task per queue (a rule's windows, in
    order), each queue's order kept. Without `shares_reads` every group is one task.
    """
    pending = [list(queue) for queue in queues if queue]
    while pending:
        heads = [queue[0] for queue in pending]
        first = min(heads, key=lambda t: (_read_span(t).start, _read_span(t).end))
        group, span = [first], _read_span(first)
        if shares_reads and _shareable(first):
            for task in heads:
                if task is not first and _shareable(task) and _prunes(task) == _prunes(first) and _joins(group, span, task):
                    group.append(task)
                    span = _span([span, _read_span(task)])
        for queue in pending:
            if queue[0] in group:
                queue.pop(0)
        pending = [queue for queue in pending if queue]
        yield group


_SHARED_READS = iter(range(1, 2**62))
FAN_CHUNK = 1000  # rows handed to each rule's thread at once
FAN_AHEAD = 4  # chunks a rule's thread may have waiting (the read waits for a rule further behind)
T = TypeVar("T")


class _ReadFailedError(Exception):
    """Ends a rule's evaluation when the read it was fed from raised (the read's error is raised)."""


def each_over(rows: Iterator[Row], evaluations: Sequence[Callable[[Iterator[Row]], T]]) -> tuple[list[T], int]:
    """Every evaluation over the same rows in one pass: each runs on a thread of its own, fed the rows in
    chunks through a bounded queue, so the rows are typed once and never all held (a shared read of a
    day of port scans hands its rules a million rows; held in a list they were 1.2 GB). The GIL makes
    this no faster than one rule after another; it is for memory. Returns each evaluation's result and
    the rows read. An error of the read, or of any evaluation, is raised here once every thread has ended.
    """
    end, failed = object(), object()
    queues: list[Queue[Any]] = [Queue(maxsize=FAN_AHEAD) for _ in evaluations]
    results: list[Any] = [None] * len(evaluations)
    errors: list[BaseException | None] = [None] * len(evaluations)

    def work(index: int) -> None:
        feed, ended = queues[index], False

        def fed() -> Iterator[Row]:
            nonlocal ended
            while True:
                chunk = feed.get()
                if chunk is end or chunk is failed:
                    ended = True
                    if chunk is failed:
                        raise _ReadFailedError
                    return
                yield from chunk

        try:
            results[index] = evaluations[index](fed())
        except BaseException as exc:  # raised by the caller's thread below
            errors[index] = exc
        while not ended:  # an evaluation that stopped early: the read must not wait for it
            ended = feed.get() in (end, failed)

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(work, i), name=f"detector-rule-{i}", daemon=True)
        for i in range(len(evaluations))
    ]
    for thread in threads:
        thread.start()
    count, last = 0, failed
    try:
        while chunk := tuple(itertools.islice(rows, FAN_CHUNK)):
            count += len(chunk)
            for feed in queues:
                feed.put(chunk)
        last = end
    finally:
        for feed in queues:
            feed.put(last)
        for thread in threads:
            thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results, count


def _may_keep_skipped(request: ReadRequest, shared: ReadRequest, causes: frozenset[tuple[str, str]] | None) -> bool:
    """Whether a rule's own read might have kept a line the shared read skipped.

    It might for a line skipped for a column the rule does not read (a value its type cannot hold) or
    does not require (missing), or for a cause not known; never for a line every read skips (not JSON),
    nor when the rule reads as the shared read did.
    """
    if set(request.read_columns()) == set(shared.read_columns()) and set(request.required) == set(shared.required):
        return False
    if causes is None:
        return True
    read, required = set(request.read_columns()), set(request.required)
    return any(column not in (read if kind == "value" else required) for kind, column in causes)


def evaluate_together(group: Sequence[Task], source: Source) -> list[RuleRun]:
    """Evaluate each task of a group; several tasks are read once, over the span of their reads (and so
    are the several reads of one task, one per step of a rule without a bin, from a source that
    `shares_reads`).

    The shared read asks for every rule's columns and pushdown (SharedSpec, each read's spec over its
    own window), so each rule gets a superset of its own candidate rows and its result is the one its
    own read gives; the rules take the rows as they are read (each_over). One exception is checked: a
    line the shared read skipped may be one that a rule reading fewer columns (or requiring fewer) would
    have used (`_may_keep_skipped`); such rules are read again, together when their own reads would
    skip the same lines (`_skips_alike`), else each on its own.
    """
    if len(group) == 1:
        task = group[0]
        if not (source.shares_reads and _shareable(task) and len(_reads(task.rule, task.window)) > 1):
            return [evaluate_window(task.rule, source, task.window, task.kind)]
    requests = [_request(t.rule, t.window) for t in group]
    # One evaluation per read of each task (a rule without a bin reads each step's query period), each
    # a part of the shared description over its own window, so each is pruned exactly as its own read.
    # Every task here is _shareable: it has a spec.
    reads = [(index, read) for index, task in enumerate(group) for read in _reads(task.rule, task.window)]
    span = _span([read for _, read in reads])
    specs = [spec for i, _ in reads if (spec := requests[i].candidates) is not None]
    assert len(specs) == len(reads)  # noqa: S101 - _shareable tasks only
    shared = ReadRequest(
        span,
        tuple(dict.fromkeys(c for r in requests for c in r.read_columns())),
        tuple(dict.fromkeys(c for r in requests for c in r.required)),
        SharedSpec.of(specs, [None if read == span else read for _, read in reads]),
    )
    number = next(_SHARED_READS)
    runs = [RuleRun(t.rule.id, t.window, t.kind, shared_read=number) for t in group]

    def evaluation(
        task: Task, run: RuleRun, read: Window, spec: CandidateSpec | None
    ) -> Callable[[Iterator[Row]], list[Finding]]:
        # The rows of the rule's own read: in its window and admitted by its own filter (a superset of
        # what it needs, by the pushdown contract), so a rule that holds its rows (Silk Typhoon lists
        # them) holds no more than alone; the other rules' candidates are dropped here.
        admits = spec.filter.admitter() if spec is not None and spec.filter is not None else None

        def evaluated(rows: Iterator[Row]) -> list[Finding]:
            mine: Iterator[Row] = rows
            if read != span:
                mine = (row for row in mine if read.contains(row[TIME]))
            if admits is not None:
                mine = filter(admits, mine)
            return evaluate(task.rule, _counted(mine, run), read)

        return evaluated

    evaluations = [evaluation(group[i], runs[i], read, requests[i].candidates) for i, read in reads]
    results, count = each_over(source.read(shared), evaluations)
    found: list[list[Finding]] = [[] for _ in group]
    for (index, _), findings in zip(reads, results, strict=True):
        found[index] += findings
    stats = dict(source.read_stats())
    causes = source.skip_causes() if int(stats.get("skippedLines", 0)) else EVERY_READ
    log.info("one read of %s for %d rules (%d evaluations): %d rows", span, len(group), len(reads), count)
    done: list[RuleRun | None] = []
    again: dict[object, list[int]] = {}  # the rules read again, by what their reads skip
    for index, (request, run, findings) in enumerate(zip(requests, runs, found, strict=True)):
        if _may_keep_skipped(request, shared, causes):
            again.setdefault(_skips_alike(request, causes) if causes is not None else index, []).append(index)
            done.append(None)
            continue
        run.findings, run.source_stats = findings, stats
        log.info("rule %s %s %s: %d rows, %d findings", run.rule_id, run.kind, run.window, run.rows_evaluated, len(findings))
        done.append(run)
    # Rules whose own reads skip the same lines (they agree on reading, and on requiring, each column the
    # lines were skipped for) are read again together. That read may skip a line for another column
    # (a read reports the first bad value it types) and send some back again, but always fewer: every
    # cause it reports is a column one of them reads or requires, so if all were sent back they would
    # disagree on one, and be split. A group as large as this one is read rule by rule all the same.
    for indexes in again.values():
        tasks = [group[i] for i in indexes]
        reruns = (
            evaluate_together(tasks, source) if len(tasks) < len(group) else [evaluate_together([t], source)[0] for t in tasks]
        )
        for index, rerun in zip(indexes, reruns, strict=True):
            done[index] = rerun
    return [run for run in done if run is not None]


def _skips_alike(request: ReadRequest, causes: frozenset[tuple[str, str]]) -> tuple[frozenset[str], frozenset[str]]:
    """The columns lines were skipped for that this request reads (a bad value) and requires (missing).

    Requests that agree on them skip the same lines, alone or read together.
    """
    read, required = set(request.read_columns()), set(request.required)
    return (
        frozenset(c for kind, c in causes if kind == "value" and c in read),
        frozenset(c for kind, c in causes if kind == "missing" and c in required),
    )


def printable(text: str, limit: int = 2000) -> str:
    """Text safe for any log, terminal or JSON (lone surrogates and controls escaped), shortened to `limit`."""
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")
    escaped = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in escaped)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def deliver(findings: Sequence[Finding], sinks: Sequence[Sink], summary: RunSummary) -> None:
    """Deliver straight to every sink (no outbox); a failing sink is recorded and the others still run."""
    for sink in sinks:
        try:
            sink.deliver(findings)
            summary.deliveries[sink.describe()] = len(findings)
        except Exception as exc:
            text = printable(str(exc), 20_000) if isinstance(exc, SinkError) else printable(f"{type(exc).__name__}: {exc}")
            summary.delivery_errors[sink.describe()] = text
            log.error("delivery to %s failed: %s", sink.describe(), text)  # noqa: TRY400 - the message says it all


def run(plan: Sequence[tuple[Rule, Window]], source: Source, sinks: Sequence[Sink]) -> RunSummary:
    """Evaluate each (rule, window) of the plan, then deliver all findings to every sink. No state."""
    started = time.monotonic()
    summary = RunSummary(source=source.describe())
    queues: dict[str, list[Task]] = {}
    for rule, window in plan:
        queues.setdefault(rule.id, []).append(Task(rule, window))
    for group in read_groups(list(queues.values()), source.shares_reads):
        summary.rules.extend(evaluate_together(group, source))
    deliver(summary.findings, sinks, summary)
    summary.seconds = time.monotonic() - started
    return summary


Clock = Callable[[], datetime]
Wait = Callable[[threading.Event, float], bool]


def wall_clock() -> datetime:
    """The real time, for leases and for when bins were evaluated (compared with ingestion times)."""
    return datetime.now(UTC)


def _event_wait(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


class LeaseKeeper:
    """The run's leases, renewed by a daemon thread every `interval` while the run works.

    The heartbeat only keeps leases alive; it never fences writes. Every state write is still preceded by
    a renewal that checks the lease (commit, and before each sink), so a run whose heartbeat stalled and
    whose lease another run then took stops writing exactly as before. A renewal that finds the lease taken
    marks it lost, and the run stops at its next write.
    """

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        interval: timedelta = HEARTBEAT,
        ttl: timedelta = LEASE_TTL,
        wait: Wait = _event_wait,
    ) -> None:
        self.store, self.clock, self.interval, self.ttl, self._wait = store, clock, interval, ttl, wait
        self.owner = new_owner()
        self._names: set[str] = set()
        self.lost: dict[str, str] = {}
        self._lock = threading.Lock()
        # Held across each lease's store calls (take, renew, give back), so that the heartbeat never
        # renews a lease this run is giving back, nor finds it free between a release and a new take.
        self._store_calls = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, name: str) -> bool:
        """Take the lease `name` and keep it renewed; False when a live run holds it."""
        with self._store_calls:
            if not self.store.acquire_lease(name, self.owner, self.ttl, self.clock()):
                return False
            with self._lock:
                self._names.add(name)
                self.lost.pop(name, None)
            return True

    def renew(self, name: str) -> None:
        """Renew now and check: raise LeaseLostError when another run has taken the lease."""
        with self._store_calls:
            if name in self.lost or not self._renewed(name):
                raise LeaseLostError(f"lease on {name} was taken by another run; this run stops writing its state")

    def _renewed(self, name: str) -> bool:
        """Renew the lease if it still names this run.

        A lease that lapsed while this run stalled (a paused VM, a debugger) may have been taken, used
        and released by another run meanwhile: it is free again, but this run's view of the state is
        stale, so it is lost, not taken again.
        """
        held = self.store.lease_holder(name)
        if held is None or held[0] != self.owner:
            return False
        return self.store.acquire_lease(name, self.owner, self.ttl, self.clock())

    def release(self, name: str) -> None:
        with self._store_calls:
            with self._lock:
                self._names.discard(name)
            self.store.release_lease(name, self.owner)

    def beat(self) -> None:
        """Renew every lease held (what the thread does each interval)."""
        with self._lock:
            names = sorted(self._names)
        for name in names:
            with self._store_calls:
                with self._lock:
                    if name not in self._names:
                        continue  # given back meanwhile (and perhaps taken again: then it is renewed next beat)
                try:
                    renewed = self._renewed(name)
                except Exception as exc:
                    log.warning("lease heartbeat for %s failed, retrying: %s", name, exc)
                    continue
                if not renewed:
                    with self._lock:
                        self._names.discard(name)
                        self.lost[name] = "taken by another run"
                    log.error("lease on %s was taken by another run; this run stops writing its state", name)

    def _loop(self) -> None:
        while not self._wait(self._stop, self.interval.total_seconds()):
            self.beat()

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._loop, name="detector-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


def _describe_holder(store: StateStore, name: str) -> str:
    try:
        held = store.lease_holder(name)
    except Exception:
        held = None
    if held is None:
        return "another run"
    return f"run {held[0]} until {format_datetime(held[1])}"


def _step_aside(store: StateStore, name: str, what: str, summary: RunSummary) -> None:
    message = f"{name}: stepped aside: its lease is held by {_describe_holder(store, name)}; {what}"
    summary.stepped_aside.append(message)
    log.warning(message)


def _reach_deadline(summary: RunSummary, message: str) -> None:
    summary.deadline_reached = True
    summary.deferred.append(message)
    log.warning(message)


def _deliver_isolating(
    sink: Sink, entries: list[OutboxEntry]
) -> tuple[list[OutboxEntry], dict[str, tuple[OutboxEntry, str]], str | None]:
    """Deliver entries to one sink so that no finding it rejects holds back the others.

    Returns (delivered, rejected: finding id -> (entry, reason), outage): an outage (a SinkError for the
    sink as a whole: down, throttled, no access) leaves what was not delivered pending without counting
    against it. Any other exception means the sink could not take some finding (a value it cannot carry):
    the entries are then offered one at a time, and each one that fails alone is rejected. A first
    rejection needs proof that the sink works (another finding got through in the same offer): when none
    does (a sink answering HTML for JSON), the sink is what fails, an outage too; parking every finding
    would lose them all while the runs looked ok. A finding rejected before for an exception counts
    again when it fails alone (a lone finding the sink cannot carry is still parked); a finding the
    service refused (SinkError.refused) counts only beside a finding that got through.
    """
    try:
        sink.deliver([e.finding for e in entries])
    except SinkError as exc:
        delivered = [e for e in entries if e.finding.id in exc.delivered]
        rejected = {e.finding.id: (e, printable(exc.rejected[e.finding.id])) for e in entries if e.finding.id in exc.rejected}
        # Refused, with proof that it is the finding: another got through in this very offer. (A finding
        # refused before is no proof: a receiver that starts refusing every body would park them all.)
        if delivered:
            rejected |= {
                e.finding.id: (e, printable(exc.refused[e.finding.id]))
                for e in entries
                if e.finding.id in exc.refused and e.finding.id not in rejected
            }
        return delivered, rejected, printable(str(exc), 20_000)
    except Exception as exc:
        log.warning(
            "delivery to %s failed (%s: %s); offering its findings one at a time",
            sink.describe(),
            type(exc).__name__,
            printable(str(exc), 200),
        )
    else:
        return entries, {}, None
    delivered, rejected = [], {}
    failures: set[str] = set()  # rejected for an exception, not by the sink's own word (SinkError.rejected)
    refusals: set[str] = set()  # refused by the service as far as it says (SinkError.refused)
    outage = None
    for index, entry in enumerate(entries):
        deadline = current_deadline()
        if deadline is not None and deadline.reached():
            outage = f"run deadline reached with {len(entries) - index} finding(s) not yet offered"
            break
        try:
            sink.deliver([entry.finding])
            delivered.append(entry)
        except SinkError as exc:
            fid = entry.finding.id
            if fid in exc.delivered:
                delivered.append(entry)
            elif fid in exc.rejected:
                rejected[fid] = (entry, printable(exc.rejected[fid]))
            elif fid in exc.refused:
                rejected[fid] = (entry, printable(exc.refused[fid]))
                refusals.add(fid)
            else:  # the sink itself is failing now: the rest waits for the next run
                outage = printable(str(exc))
                break
        except Exception as exc:
            rejected[entry.finding.id] = (entry, printable(f"{type(exc).__name__}: {exc}"))
            failures.add(entry.finding.id)
    return _with_proof(delivered, rejected, failures, refusals, outage)


def _with_proof(
    delivered: list[OutboxEntry],
    rejected: dict[str, tuple[OutboxEntry, str]],
    failures: set[str],
    refusals: set[str],
    outage: str | None,
) -> tuple[list[OutboxEntry], dict[str, tuple[OutboxEntry, str]], str | None]:
    """The one-at-a-time offer's outcome, its rejections kept only with proof that the sink works.

    The proof is a finding that got through. Without one, a finding refused counts never, and one that
    failed with an exception only if it was rejected before; what is dropped leaves the sink taken as
    failing.
    """
    if delivered:
        return delivered, rejected, outage
    unproven = [fid for fid in rejected if fid in refusals or (fid in failures and rejected[fid][0].attempts == 0)]
    if not unproven:
        return delivered, rejected, outage
    reason = rejected[unproven[0]][1]
    for fid in unproven:
        del rejected[fid]
    failing = f"{len(unproven)} finding(s) failed when offered alone and none got through, so the sink is taken as failing"
    return delivered, rejected, f"{failing}: {reason}" + (f"; {outage}" if outage else "")


def _offered(entries: Sequence[OutboxEntry]) -> set[tuple[str, str]]:
    """What identifies an offer of these entries: (finding id, digest); a re-staged version is new."""
    return {(e.finding.id, e.digest) for e in entries}


def _deliver_one_sink(
    store: StateStore, sink: Sink, summary: RunSummary, clock: Clock, offered: set[tuple[str, str]] | None = None
) -> set[tuple[str, str]]:
    """Offer the sink its pending entries but those `offered` already in this run, and record the outcome.

    A finding that failed is not offered again until the next run (each run counts one rejection).
    Returns what it offered (_offered).
    """
    name = sink.describe()
    entries = [e for e in store.pending(name) if (e.finding.id, e.digest) not in (offered or set())]
    parked_before = len(summary.parked)
    delivered: list[OutboxEntry] = []
    if entries:
        delivered, rejected, outage = _deliver_isolating(sink, entries)
        store.mark_delivered(name, delivered, clock())
        problems = []
        if rejected:
            parked = {e.finding.id for e in store.record_rejections(name, rejected, MAX_REJECTIONS)}
            for fid, (entry, reason) in rejected.items():
                if fid in parked:
                    record = {
                        "sink": name,
                        "findingId": fid,
                        "ruleId": entry.finding.rule_id,
                        "attempts": MAX_REJECTIONS,
                        "error": reason,
                    }
                    summary.parked.append(record)
                    log.error(
                        "finding %s parked: %s rejected it %d times (%s); kept in the outbox, not offered again until it changes",
                        fid,
                        name,
                        MAX_REJECTIONS,
                        reason,
                    )
                else:
                    problems.append(f"finding {fid} rejected ({reason}); retried on the next run")
        if outage is not None:
            left = len(entries) - len(delivered) - len(rejected)
            problems.append(f"{left} of {len(entries)} not delivered: {outage}")
            log.error("delivery to %s failed, will retry next run: %s", name, outage)
        if problems or summary.parked[parked_before:]:
            mine = [p for p in summary.parked[parked_before:] if p["sink"] == name]
            if mine:
                problems.append(f"{len(mine)} finding(s) parked after {MAX_REJECTIONS} rejections")
            if problems:
                earlier = summary.delivery_errors.get(name)  # a pass before this one, in the same run
                summary.delivery_errors[name] = "; ".join([earlier, *problems] if earlier else problems)
    summary.deliveries[name] = summary.deliveries.get(name, 0) + len(delivered)
    held = len(store.parked(name))
    if held:
        summary.parked_held[name] = held
    else:  # a later pass: a new version staged meanwhile may have taken a parked finding's place
        summary.parked_held.pop(name, None)
    return _offered(entries)


_OUTBOX_PASSES = 3  # deliveries in one run: the first, then the findings staged meanwhile by runs that stepped aside


def deliver_outbox(
    store: StateStore, sinks: Sequence[Sink], summary: RunSummary, clock: Clock, keeper: LeaseKeeper | None = None
) -> None:
    """Deliver every pending outbox entry of each sink and mark what arrived; failures stay pending.

    Runs under the "outbox" lease, so two overlapping runs do not both deliver the same entries, and
    within the current deadline: sinks not reached in time keep their findings pending for the next run.
    A run that stages findings while another holds the lease steps aside and leaves them to it, so the
    holder looks again once it has released the lease: findings it has not seen (staged after it read
    a sink's pending entries) are delivered in another pass, under the lease again. A run staging after
    that look finds the lease free and delivers them itself.
    """
    own_keeper = keeper is None
    keeper = keeper or LeaseKeeper(store, clock)
    if own_keeper:
        keeper.__enter__()
    try:
        seen: dict[str, set[tuple[str, str]]] = {}  # per sink: (finding id, digest) of the entries offered
        for delivery in range(_OUTBOX_PASSES):
            if not keeper.acquire(OUTBOX_LEASE):
                if not delivery:
                    _step_aside(store, OUTBOX_LEASE, "that run delivers the pending findings", summary)
                return  # (a later pass: the run that holds it now delivers what is new)
            late = False
            try:
                for sink in sinks:
                    name = sink.describe()
                    deadline = current_deadline()
                    if deadline is not None and deadline.reached():
                        left = len(store.pending(name))
                        _reach_deadline(
                            summary, f"sink {name}: run deadline reached; {left} finding(s) left pending for the next run"
                        )
                        late = True
                        continue
                    # Renewed before each sink; a run that lost it stops and leaves the rest to the new holder.
                    try:
                        keeper.renew(OUTBOX_LEASE)
                    except LeaseLostError:
                        _step_aside(store, OUTBOX_LEASE, f"lease lost before delivering to {name}; that run delivers", summary)
                        return
                    seen.setdefault(name, set()).update(_deliver_one_sink(store, sink, summary, clock, seen.get(name, set())))
            finally:
                keeper.release(OUTBOX_LEASE)
            if late:
                return
            sinks = [s for s in sinks if _offered(store.pending(s.describe())) - seen.get(s.describe(), set())]
            if not sinks:
                return
    finally:
        if own_keeper:
            keeper.__exit__(None, None, None)


def _deliver_even_if(
    work: Callable[[], None],
    store: StateStore,
    sinks: Sequence[Sink],
    summary: RunSummary,
    clock: Clock,
    keeper: LeaseKeeper,
    deadline: Deadline | None,
) -> None:
    """Run work() (within the deadline less the delivery reserve), then deliver the outbox (within the
    deadline), also when work() raises (the error is then re-raised).

    Findings staged by earlier windows must reach the sinks even when a later window keeps failing with
    an error the run does not turn into a summary entry (bad input rows, a state store or SDK error):
    otherwise one bad window would hold them back for as long as it fails.
    """
    evaluation = None
    if deadline is not None:
        reserve = min(DELIVERY_RESERVE.total_seconds(), max(deadline.remaining(), 0) / 4)
        evaluation = deadline.earlier(reserve)
    try:
        with running_until(evaluation):
            work()
    except Exception:
        try:
            with running_until(deadline):
                deliver_outbox(store, sinks, summary, clock, keeper)
        except DetectorError as exc:  # an error we can name (bad state, a lease lost): one line, no stack
            log.error("delivering the outbox after a failed run failed too: %s", exc)  # noqa: TRY400
        except Exception:
            log.exception("delivering the outbox after a failed run failed too")
        raise
    with running_until(deadline):
        deliver_outbox(store, sinks, summary, clock, keeper)


class _RuleProgress:
    """One rule's (or backfill's) state during a run, written back after every window under the run's lease."""

    def __init__(
        self, store: StateStore, name: str, rule: Rule, sinks: Sequence[Sink], keeper: LeaseKeeper, clock: Clock
    ) -> None:
        self.store, self.name, self.rule, self.keeper, self.clock = store, name, rule, keeper, clock
        self.owner = keeper.owner
        self.sink_names = [s.describe() for s in sinks]
        self.state: RuleState = store.load_rule_state(name, rule.logic.time_bin)
        self._check_outboxes()

    def _check_outboxes(self) -> None:
        """An outbox this rule staged findings in must still be the one it staged them in."""
        from detector.errors import StateError

        for sink in self.sink_names:
            recorded = self.state.outboxes.get(sink)
            if recorded is not None and self.store.outbox_id(sink) != recorded:
                raise StateError(
                    f"outbox of sink {sink} in {self.store.describe()}",
                    f"is missing or was replaced, although the state of {self.name} records findings staged in it "
                    "(findings not yet delivered would be lost silently)",
                    "restore the outbox from a backup; or, accepting that its pending findings are gone, run `python -m "
                    "detector backfill` over the days since the last delivery and remove the sink from 'outboxes' in the "
                    "rule's state",
                )

    def save(self) -> None:
        self.keeper.renew(self.name)
        self.store.save_rule_state(self.name, self.state, self.owner)

    def commit(self, run: RuleRun, advance: bool, record_bins: bool = True, read_from: datetime | None = None) -> None:
        """Stage the window's findings, then record the window as evaluated (and advance the checkpoint).

        `read_from` is when the window's read began: rows ingested after it may not have been seen, so that
        (not the end of the evaluation) is the time the late-data re-check compares ingestion times with.
        """
        # Renew (and so check) the lease before writing anything: a run whose lease lapsed must not put an
        # older version of a finding into the outbox over what the new lease holder stored.
        self.keeper.renew(self.name)
        run.staged = self.store.stage(self.sink_names, run.findings)
        if run.findings:
            for sink in self.sink_names:
                if sink not in self.state.outboxes:
                    self.state.outboxes[sink] = self.store.outbox_id(sink) or ""
        evaluated_at = read_from if read_from is not None else self.clock()
        if record_bins:
            for bin_start in bins_of(run.window, self.rule.logic.time_bin):
                self.state.evaluated[bin_start] = evaluated_at
        if advance:
            self.state.checkpoint = run.window.end
        self.store.save_rule_state(self.name, self.state, self.owner)  # fenced by the lease as well


def _deadline_passed(summary: RunSummary, what: str) -> bool:
    deadline = current_deadline()
    if deadline is not None and deadline.reached():
        _reach_deadline(summary, f"{what}: run deadline reached; left for the next run")
        return True
    return False


# The failures that stop one rule for this run (reported in the summary; the next run carries on).
_RULE_FAILURES = (DeadlineReachedError, SourceError, LeaseLostError)


def _record_failure(name: str, summary: RunSummary, exc: Exception) -> None:
    if isinstance(exc, DeadlineReachedError):
        _reach_deadline(summary, f"{name}: {exc}; the window stays behind the checkpoint for the next run")
    else:
        summary.errors[name] = str(exc)
        log.error("%s: %s", name, exc)


class _RuleWork:
    """One rule in a scheduled run: its progress, the windows due, and whether it failed this run."""

    def __init__(self, progress: _RuleProgress, now: datetime, settings: Settings, summary: RunSummary) -> None:
        self.progress, self.rule, self.state = progress, progress.rule, progress.state
        self.state.check_against(now, f"{progress.name} in {progress.store.describe()}")
        self.started_at = progress.clock()
        # The horizon is measured from the checkpoint the run starts from: measured from the advanced one, a
        # run that moves the checkpoint by the horizon or more (the default daily schedule and 1d horizon)
        # would drop every earlier bin before looking at it, and late rows would never be re-checked.
        self.previous_checkpoint = self.state.checkpoint
        plan = due_windows(self.rule, self.state.checkpoint, now, settings)
        if plan.skipped:
            message = (
                f"rule {self.rule.id}: {plan.skipped} is older than DETECTOR_CATCHUP_LIMIT and was NOT evaluated; "
                f"run `python -m detector backfill --start {format_datetime(plan.skipped.start)} "
                f"--end {format_datetime(plan.skipped.end)}` to cover it"
            )
            summary.skipped.append(message)
            log.error(message)
        if self.state.checkpoint is None and plan.windows:
            # The schedule's origin is recorded before any work: a first run that fails must not let the next
            # first run start later and leave a slice of the first period unevaluated.
            self.state.checkpoint = plan.windows[0].start
            progress.save()
        self.windows = plan.windows
        self.done = 0
        self.failed = False

    def tasks(self) -> list[Task]:
        return [Task(self.rule, window) for window in self.windows]

    def left(self) -> str:
        """The windows not evaluated yet, for the deadline's message."""
        rest = self.windows[self.done :]
        return f"rule {self.rule.id}: windows {Window(rest[0].start, rest[-1].end)} ({len(rest)})"


def _evaluate_due(works: Sequence[_RuleWork], source: Source, summary: RunSummary) -> None:
    """Every due window of every rule, read once per group (read_groups), committed rule by rule."""
    by_rule = {work.rule.id: work for work in works}
    for group in read_groups([work.tasks() for work in works], source.shares_reads):
        live = [task for task in group if not by_rule[task.rule.id].failed]
        if not live:
            continue
        deadline = current_deadline()
        if deadline is not None and deadline.reached():
            for work in works:
                if not work.failed and work.done < len(work.windows):
                    _reach_deadline(summary, f"{work.left()}: run deadline reached; left for the next run")
            return
        read_from = by_rule[live[0].rule.id].progress.clock()
        try:
            runs = evaluate_together(live, source)
        except _RULE_FAILURES as exc:
            for task in live:
                by_rule[task.rule.id].failed = True
                _record_failure(task.rule.id, summary, exc)
            continue
        for task, run_ in zip(live, runs, strict=True):
            work = by_rule[task.rule.id]
            summary.rules.append(run_)
            try:
                work.progress.commit(run_, advance=True, read_from=read_from)
            except _RULE_FAILURES as exc:
                work.failed = True
                _record_failure(task.rule.id, summary, exc)
                continue
            work.done += 1


def _recheck_late(work: _RuleWork, source: Source, now: datetime, settings: Settings, summary: RunSummary) -> None:
    """Late data: bins within the re-check horizon that received rows after they were evaluated."""
    rule, state, progress, time_bin = work.rule, work.state, work.progress, work.rule.logic.time_bin
    horizon_start = (work.previous_checkpoint or state.checkpoint or now) - settings.recheck_horizon
    for bin_start in [b for b in state.evaluated if b < horizon_start]:
        del state.evaluated[bin_start]
    earlier = [(b, at) for b, at in state.evaluated.items() if at < work.started_at]
    late: set[datetime] = set()
    if not summary.deadline_reached:
        for at in sorted({at for _, at in earlier}):
            for window in merge_bins([b for b, when in earlier if when == at], time_bin):
                found = source.late_bins(window, at - LATE_MARGIN, time_bin)
                late |= set(bins_of(window, time_bin)) if found is None else found
    for window in merge_bins(late, time_bin):
        # A re-check not done now is looked for again by the next run (the bins keep their evaluation time).
        if _deadline_passed(summary, f"rule {rule.id}: late-data re-check of {window}"):
            break
        read_from = progress.clock()
        run_ = evaluate_window(rule, source, window, kind="recheck")
        summary.rules.append(run_)
        progress.commit(run_, advance=False, read_from=read_from)
    if state.checkpoint is not None:
        summary.lag_seconds[rule.id] = (now - state.checkpoint).total_seconds()


def _under_lease(name: str, summary: RunSummary, keeper: LeaseKeeper, work: Callable[[], None]) -> None:
    """Run work() holding the lease `name`; report, do not raise, source, deadline and lease failures."""
    if not keeper.acquire(name):
        _step_aside(keeper.store, name, "that run evaluates it, this one did not", summary)
        return
    try:
        work()
    except _RULE_FAILURES as exc:
        _record_failure(name, summary, exc)
    finally:
        keeper.release(name)


def _advance_rules(
    rules: Sequence[Rule],
    source: Source,
    sinks: Sequence[Sink],
    store: StateStore,
    now: datetime,
    settings: Settings,
    clock: Clock,
    keeper: LeaseKeeper,
    summary: RunSummary,
) -> None:
    """Every due window of every rule (under each rule's lease, all held at once, so that rules due for
    the same window share its read), then each rule's late-data re-checks.
    """
    held: list[str] = []
    works: list[_RuleWork] = []
    try:
        for rule in rules:
            if _deadline_passed(summary, f"rule {rule.id}"):
                continue
            if not keeper.acquire(rule.id):
                _step_aside(keeper.store, rule.id, "that run evaluates it, this one did not", summary)
                continue
            held.append(rule.id)
            try:
                works.append(_RuleWork(_RuleProgress(store, rule.id, rule, sinks, keeper, clock), now, settings, summary))
            except _RULE_FAILURES as exc:
                _record_failure(rule.id, summary, exc)
        _evaluate_due(works, source, summary)
        for work in works:
            if work.failed:
                continue
            try:
                _recheck_late(work, source, now, settings, summary)
            except _RULE_FAILURES as exc:
                _record_failure(work.rule.id, summary, exc)
    finally:
        for name in held:
            keeper.release(name)


def run_incremental(
    rules: Sequence[Rule],
    source: Source,
    sinks: Sequence[Sink],
    store: StateStore,
    now: datetime,
    settings: Settings,
    clock: Clock = wall_clock,
    deadline: Deadline | None = None,
) -> RunSummary:
    """Evaluate every whole window each rule has not evaluated yet (and late bins), then deliver the outbox.

    With a deadline, windows that do not fit are left behind the checkpoint and findings not delivered in
    time stay pending: both are reported (deadlineReached, deferred) and done by the next run.
    """
    started = time.monotonic()
    summary = RunSummary(source=source.describe())
    with LeaseKeeper(store, clock) as keeper:

        def every_rule() -> None:
            _advance_rules(rules, source, sinks, store, now, settings, clock, keeper, summary)

        _deliver_even_if(every_rule, store, sinks, summary, clock, keeper, deadline)
    summary.seconds = time.monotonic() - started
    return summary


def run_backfill(
    rules: Sequence[Rule],
    source: Source,
    sinks: Sequence[Sink],
    store: StateStore,
    window: Window,
    progress: Callable[[int, int], None] = lambda done, total: None,
    clock: Clock = wall_clock,
    deadline: Deadline | None = None,
) -> RunSummary:
    """Evaluate a past range window by window under the same state rules; resumable after interruption.

    Progress is kept under its own name (rule id + range), so rerunning the same command continues where
    it stopped; the scheduled checkpoint is not touched. Findings go through the outbox like any run's.
    """
    started = time.monotonic()
    summary = RunSummary(source=source.describe())
    for rule in rules:
        if not is_aligned(window, rule.logic.time_bin):
            raise ConfigError("--start/--end", f"a backfill must cover whole {rule.logic.time_bin} bins: {window}")

    def backfill_rule(keeper: LeaseKeeper, rule: Rule) -> None:
        name = f"backfill|{rule.id}|{format_datetime(window.start)}|{format_datetime(window.end)}"
        # The rule's lease is held for the whole backfill; progress is saved under the backfill's name.
        if not keeper.acquire(name):
            raise LeaseLostError(f"{name}: another backfill of the same range is running")
        try:
            state = _RuleProgress(store, name, rule, sinks, keeper, clock)
            checkpoint = state.state.checkpoint
            if checkpoint is not None and not window.start <= checkpoint <= window.end:
                from detector.errors import StateError

                raise StateError(
                    f"{name} in {store.describe()}",
                    f"backfill progress {format_datetime(checkpoint)} lies outside the range {window}",
                    "delete that record to run the backfill from its start",
                )
            pieces = split_window(window, max(BACKFILL_PIECE, rule.logic.time_bin))  # whole windows of the rule
            done = [p for p in pieces if checkpoint and p.end <= checkpoint]
            progress(len(done), len(pieces))
            for index, piece in enumerate(pieces[len(done) :], start=len(done) + 1):
                if _deadline_passed(summary, f"backfill of {rule.id}: {Window(piece.start, window.end)}"):
                    break
                run_ = evaluate_window(rule, source, piece, kind="backfill")
                summary.rules.append(run_)
                state.commit(run_, advance=True, record_bins=False)
                keeper.renew(rule.id)
                progress(index, len(pieces))
        finally:
            keeper.release(name)

    with LeaseKeeper(store, clock) as keeper:

        def every_rule() -> None:
            for rule in rules:
                _under_lease(rule.id, summary, keeper, lambda rule=rule: backfill_rule(keeper, rule))  # type: ignore[misc]

        _deliver_even_if(every_rule, store, sinks, summary, clock, keeper, deadline)
    summary.seconds = time.monotonic() - started
    return summary


def run_scheduled(settings: Settings, now: datetime, clock: Clock = wall_clock, deadline: Deadline | None = None) -> RunSummary:
    """The timer's run: every configured rule, incrementally from its checkpoint, through the outbox, by RUN_DEADLINE."""
    from detector.sinks import open_sinks
    from detector.sources import open_source
    from detector.state import open_state_store

    deadline = deadline or Deadline.after(RUN_DEADLINE.total_seconds())
    if settings.now_override is not None:
        now = settings.now_override
    rules = load_rules(settings.rules)
    source = open_source(settings.source, settings, setting="DETECTOR_SOURCE")
    sinks = open_sinks(settings.sinks, settings, setting="DETECTOR_SINKS")
    store = open_state_store(settings)
    return run_incremental(rules, source, sinks, store, now, settings, clock, deadline)
