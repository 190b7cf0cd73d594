"""Runs: read rows for windows, evaluate rules, stage findings, deliver them. Shared by the CLI and the function.

Two ways to run:
- `run`: one explicit window, no state (the CLI's `run`): findings go straight to the sinks.
- `run_incremental` / `run_backfill`: windows planned from a durable checkpoint, findings through the outbox.
  Order of work per window: evaluate -> stage in the outbox -> advance the checkpoint; then deliver the
  outbox -> mark delivered. A crash anywhere loses no finding and duplicates none (see detector/state).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from detector.errors import ConfigError, SinkError, SourceError
from detector.evaluate import evaluate
from detector.kql import format_datetime
from detector.models import Finding, Row, Window
from detector.rules import Rule, load_rules
from detector.sinks import Sink
from detector.sources import ReadRequest, Source
from detector.state import LeaseLostError, RuleState, StateStore
from detector.windows import bins_of, is_aligned, merge_bins, plan_windows, split_window

if TYPE_CHECKING:
    from detector.config import Settings

log = logging.getLogger("detector")

# A run holds its rule's lease this long and renews it after every window. It is longer than
# host.json's functionTimeout (30 min), so a crashed run's lease lapses before the next daily run.
LEASE_TTL = timedelta(minutes=35)
# Rows ingested up to this long before a bin was evaluated may not have been visible to that evaluation.
LATE_MARGIN = timedelta(minutes=5)
BACKFILL_PIECE = timedelta(hours=1)
OUTBOX_LEASE = "outbox"


@dataclass
class RuleRun:
    """What one evaluation of one window did."""

    rule_id: str
    window: Window
    kind: str = "window"  # window | recheck | backfill
    rows_evaluated: int = 0
    findings: list[Finding] = field(default_factory=list)
    staged: int = 0
    source_stats: dict[str, Any] = field(default_factory=dict)  # Source.read_stats(): rowsRead, skippedLines...


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
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.delivery_errors and not self.errors

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.rules for f in r.findings]

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
                }
                for r in self.rules
            ],
            "rowsRead": sum(int(r.source_stats.get("rowsRead", 0)) for r in self.rules),
            "rowsEvaluated": sum(r.rows_evaluated for r in self.rules),
            "skippedLines": sum(int(r.source_stats.get("skippedLines", 0)) for r in self.rules),
            "findings": len(self.findings),
            "deliveries": self.deliveries,
            "deliveryErrors": self.delivery_errors,
            "errors": self.errors,
            "skipped": self.skipped,
            "lagSeconds": self.lag_seconds,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
        }


def _counted(rows: Iterator[Row], run: RuleRun) -> Iterator[Row]:
    for row in rows:
        run.rows_evaluated += 1
        yield row


def evaluate_window(rule: Rule, source: Source, window: Window, kind: str = "window") -> RuleRun:
    """Read the rows one rule needs for a window and evaluate it. Raises if the source cannot answer whole."""
    run = RuleRun(rule.id, window, kind)
    logic = rule.logic
    request = ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec())
    run.findings = evaluate(rule, _counted(source.read(request), run), window)
    run.source_stats = dict(source.read_stats())
    log.info("rule %s %s %s: %d rows, %d findings", rule.id, kind, window, run.rows_evaluated, len(run.findings))
    return run


def deliver(findings: Sequence[Finding], sinks: Sequence[Sink], summary: RunSummary) -> None:
    """Deliver straight to every sink (no outbox); a failing sink is recorded and the others still run."""
    for sink in sinks:
        try:
            sink.deliver(findings)
            summary.deliveries[sink.describe()] = len(findings)
        except SinkError as exc:
            summary.delivery_errors[sink.describe()] = str(exc)
            log.error("delivery to %s failed: %s", sink.describe(), exc)  # noqa: TRY400 - the message says it all


def run(plan: Sequence[tuple[Rule, Window]], source: Source, sinks: Sequence[Sink]) -> RunSummary:
    """Evaluate each (rule, window) of the plan, then deliver all findings to every sink. No state."""
    started = time.monotonic()
    summary = RunSummary(source=source.describe())
    for rule, window in plan:
        summary.rules.append(evaluate_window(rule, source, window))
    deliver(summary.findings, sinks, summary)
    summary.seconds = time.monotonic() - started
    return summary


Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """The real time, for leases and for when bins were evaluated (compared with ingestion times)."""
    return datetime.now(UTC)


def deliver_outbox(store: StateStore, sinks: Sequence[Sink], summary: RunSummary, clock: Clock) -> None:
    """Deliver every pending outbox entry of each sink and mark what arrived; failures stay pending.

    Runs under the "outbox" lease, so two overlapping runs do not both deliver the same entries.
    """
    owner = str(uuid.uuid4())
    if not store.acquire_lease(OUTBOX_LEASE, owner, LEASE_TTL, clock()):
        summary.skipped.append("outbox: another run is delivering it")
        return
    try:
        for sink in sinks:
            name = sink.describe()
            # Renewed before each sink; a run that lost it stops and leaves the rest to the new holder.
            if not store.acquire_lease(OUTBOX_LEASE, owner, LEASE_TTL, clock()):
                summary.skipped.append(f"outbox: lease lost before delivering to {name}; the next run delivers")
                return
            entries = store.pending(name)
            delivered = entries
            if entries:
                try:
                    sink.deliver([e.finding for e in entries])
                except SinkError as exc:
                    delivered = [e for e in entries if e.finding.id in exc.delivered]
                    summary.delivery_errors[name] = f"{len(entries) - len(delivered)} of {len(entries)} not delivered: {exc}"
                    log.error("delivery to %s failed, will retry next run: %s", name, exc)  # noqa: TRY400
                store.mark_delivered(name, delivered, clock())
            summary.deliveries[name] = len(delivered)
    finally:
        store.release_lease(OUTBOX_LEASE, owner)


def _deliver_even_if(
    work: Callable[[], None], store: StateStore, sinks: Sequence[Sink], summary: RunSummary, clock: Clock
) -> None:
    """Run work(), then deliver the outbox, also when work() raises (the error is then re-raised).

    Findings staged by earlier windows must reach the sinks even when a later window keeps failing with
    an error the run does not turn into a summary entry (bad input rows, a state store or SDK error):
    otherwise one bad window would hold them back for as long as it fails.
    """
    try:
        work()
    except Exception:
        try:
            deliver_outbox(store, sinks, summary, clock)
        except Exception:
            log.exception("delivering the outbox after a failed run failed too")
        raise
    deliver_outbox(store, sinks, summary, clock)


class _RuleProgress:
    """One rule's (or backfill's) state during a run, written back after every window under the run's lease."""

    def __init__(self, store: StateStore, name: str, rule: Rule, sinks: Sequence[Sink], owner: str, clock: Clock) -> None:
        self.store, self.name, self.rule, self.owner, self.clock = store, name, rule, owner, clock
        self.sink_names = [s.describe() for s in sinks]
        self.state: RuleState = store.load_rule_state(name, rule.logic.time_bin)

    def commit(self, run: RuleRun, advance: bool, record_bins: bool = True, read_from: datetime | None = None) -> None:
        """Stage the window's findings, then record the window as evaluated (and advance the checkpoint).

        `read_from` is when the window's read began: rows ingested after it may not have been seen, so that
        (not the end of the evaluation) is the time the late-data re-check compares ingestion times with.
        """
        # Renew (and so check) the lease before writing anything: a run whose lease lapsed must not put an
        # older version of a finding into the outbox over what the new lease holder stored.
        if not self.store.acquire_lease(self.name, self.owner, LEASE_TTL, self.clock()):
            raise LeaseLostError(f"lease on {self.name} was taken by another run")
        run.staged = self.store.stage(self.sink_names, run.findings)
        evaluated_at = read_from if read_from is not None else self.clock()
        if record_bins:
            for bin_start in bins_of(run.window, self.rule.logic.time_bin):
                self.state.evaluated[bin_start] = evaluated_at
        if advance:
            self.state.checkpoint = run.window.end
        self.store.save_rule_state(self.name, self.state, self.owner)  # fenced by the lease as well


def _advance_rule(progress: _RuleProgress, source: Source, now: datetime, settings: Settings, summary: RunSummary) -> None:
    rule, state, time_bin = progress.rule, progress.state, progress.rule.logic.time_bin
    started_at = progress.clock()
    # The horizon is measured from the checkpoint the run starts from: measured from the advanced one, a run
    # that moves the checkpoint by the horizon or more (the default daily schedule and 1d horizon) would
    # drop every earlier bin before looking at it, and late rows would never be re-checked.
    previous_checkpoint = state.checkpoint
    plan = plan_windows(state.checkpoint, now, settings.ingestion_delay, time_bin, rule.query_period, settings.catchup_limit)
    if plan.skipped:
        message = (
            f"rule {rule.id}: {plan.skipped} is older than DETECTOR_CATCHUP_LIMIT and was NOT evaluated; "
            f"run `python -m detector backfill --start {format_datetime(plan.skipped.start)} "
            f"--end {format_datetime(plan.skipped.end)}` to cover it"
        )
        summary.skipped.append(message)
        log.error(message)
    for window in plan.windows:
        read_from = progress.clock()
        run_ = evaluate_window(rule, source, window)
        summary.rules.append(run_)
        progress.commit(run_, advance=True, read_from=read_from)

    # Late data: bins within the re-check horizon that received rows after they were evaluated.
    horizon_start = (previous_checkpoint or state.checkpoint or now) - settings.recheck_horizon
    for bin_start in [b for b in state.evaluated if b < horizon_start]:
        del state.evaluated[bin_start]
    earlier = [(b, at) for b, at in state.evaluated.items() if at < started_at]
    late: set[datetime] = set()
    for at in sorted({at for _, at in earlier}):
        for window in merge_bins([b for b, when in earlier if when == at], time_bin):
            found = source.late_bins(window, at - LATE_MARGIN, time_bin)
            late |= set(bins_of(window, time_bin)) if found is None else found
    for window in merge_bins(late, time_bin):
        read_from = progress.clock()
        run_ = evaluate_window(rule, source, window, kind="recheck")
        summary.rules.append(run_)
        progress.commit(run_, advance=False, read_from=read_from)
    if state.checkpoint is not None:
        summary.lag_seconds[rule.id] = (now - state.checkpoint).total_seconds()


def _under_lease(store: StateStore, name: str, summary: RunSummary, clock: Clock, work: Callable[[str], None]) -> None:
    """Run work(owner) holding the lease `name`; report, do not raise, source and lease failures."""
    owner = str(uuid.uuid4())
    if not store.acquire_lease(name, owner, LEASE_TTL, clock()):
        message = f"{name}: another run holds its lease; this run leaves it to that run"
        summary.skipped.append(message)
        log.warning(message)
        return
    try:
        work(owner)
    except (SourceError, LeaseLostError) as exc:
        summary.errors[name] = str(exc)
        log.error("%s: %s", name, exc)  # noqa: TRY400 - expected failure, the message says what to do
    finally:
        store.release_lease(name, owner)


def run_incremental(
    rules: Sequence[Rule],
    source: Source,
    sinks: Sequence[Sink],
    store: StateStore,
    now: datetime,
    settings: Settings,
    clock: Clock = wall_clock,
) -> RunSummary:
    """Evaluate every whole window each rule has not evaluated yet (and late bins), then deliver the outbox."""
    started = time.monotonic()
    summary = RunSummary(source=source.describe())

    def every_rule() -> None:
        for rule in rules:
            _under_lease(
                store,
                rule.id,
                summary,
                clock,
                lambda owner, rule=rule: _advance_rule(  # type: ignore[misc]
                    _RuleProgress(store, rule.id, rule, sinks, owner, clock), source, now, settings, summary
                ),
            )

    _deliver_even_if(every_rule, store, sinks, summary, clock)
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

    def backfill_rule(owner: str, rule: Rule) -> None:
        name = f"backfill|{rule.id}|{format_datetime(window.start)}|{format_datetime(window.end)}"
        state = _RuleProgress(store, name, rule, sinks, owner, clock)
        # The rule's lease is held for the whole backfill; progress is saved under the backfill's name.
        if not store.acquire_lease(name, owner, LEASE_TTL, clock()):
            raise LeaseLostError(f"{name}: another backfill of the same range is running")
        try:
            pieces = split_window(window, BACKFILL_PIECE)
            done = [p for p in pieces if state.state.checkpoint and p.end <= state.state.checkpoint]
            progress(len(done), len(pieces))
            for index, piece in enumerate(pieces[len(done) :], start=len(done) + 1):
                run_ = evaluate_window(rule, source, piece, kind="backfill")
                summary.rules.append(run_)
                state.commit(run_, advance=True, record_bins=False)
                if not store.acquire_lease(rule.id, owner, LEASE_TTL, clock()):  # renew the rule's lease
                    raise LeaseLostError(f"lease on {rule.id} was taken by another run")
                progress(index, len(pieces))
        finally:
            store.release_lease(name, owner)

    def every_rule() -> None:
        for rule in rules:
            _under_lease(store, rule.id, summary, clock, lambda owner, rule=rule: backfill_rule(owner, rule))  # type: ignore[misc]

    _deliver_even_if(every_rule, store, sinks, summary, clock)
    summary.seconds = time.monotonic() - started
    return summary


def run_scheduled(settings: Settings, now: datetime, clock: Clock = wall_clock) -> RunSummary:
    """The timer's run: every configured rule, incrementally from its checkpoint, through the outbox."""
    from detector.sinks import open_sink
    from detector.sources import open_source
    from detector.state import open_state_store

    if settings.now_override is not None:
        now = settings.now_override
    rules = load_rules(settings.rules)
    source = open_source(settings.source, settings, setting="DETECTOR_SOURCE")
    sinks = [open_sink(spec, settings, setting="DETECTOR_SINKS") for spec in settings.sinks]
    store = open_state_store(settings)
    return run_incremental(rules, source, sinks, store, now, settings, clock)
