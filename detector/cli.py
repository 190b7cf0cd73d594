"""Command line: `python -m detector <command>`.

Commands:
- `run`: evaluate rules over one explicit window and deliver the findings (no state).
- `backfill`: evaluate a past range window by window through the state's outbox; resumable.
- `scheduled`: what the timer does, from the same settings (`--settings`, `--dry-run`).
- `validate`: check rule files and run their inline examples.
- `explain`: a rule's parameters, the windows a scheduled run would evaluate next, and the KQL it would send.
- `simulate`: findings per day or hour for several thresholds, as a table and an HTML report.

The common options (-v, -vv/--debug, -q) go before or after the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from detector import __version__, runner
from detector.errors import ConfigError, DetectorError, SourceError
from detector.kql import format_datetime, format_timespan, parse_datetime
from detector.models import Window
from detector.rules import DEFAULT_RULES_DIR, load_rules

if TYPE_CHECKING:
    from detector.config import Settings

# 0: done. 1: a source, the state or a delivery failed (the next run retries). 2: bad input, a bad setting
# or inconsistent state (one `error:` line says what to fix). 3: nothing failed, but part of the work was
# left to another run: a live run held a lease (steppedAside) or the run deadline came (deadlineReached).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3
log = logging.getLogger(__name__)

EXIT_CODES = f"""exit status:
  {EXIT_OK}  the command completed, findings or not
  {EXIT_FAILED}  a source could not give a complete answer, a delivery failed, or state was lost
  {EXIT_BAD_INPUT}  bad input or configuration: one "error:" line names the file, line or setting
  {EXIT_INCOMPLETE}  nothing failed, but work was left for the next run: a live run held a lease, or the deadline came
"""


def _datetime(option: str, text: str) -> datetime:
    try:
        return parse_datetime(text)
    except ValueError as exc:
        raise ConfigError(option, str(exc)) from None


def _common_options() -> argparse.ArgumentParser:
    """-v/-vv/--debug/-q, accepted before and after the command (SUPPRESS: a later place does not reset an earlier one)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log progress (-vv: debug)")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="log everything, as -vv")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print errors only on stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The `python -m detector` argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m detector",
        description="Sentinel scheduled rules over W3CIISLog, in Python.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options()],
    )
    # Each parser gets its own copies of the common options: set_defaults changes the action objects, and
    # a shared action with a default would make the command's parser overwrite what came before the command.
    parser.set_defaults(verbose=0, debug=False, quiet=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[_common_options()],
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sources = "file:<path> | iis:<path> | loganalytics:<workspace id>"
    sinks = "stdout (default) | jsonl:<path> | sentinel | loganalytics-table | webhook; repeatable"
    run = command("run", "evaluate rules over one window and deliver findings")
    run.add_argument("--source", required=True, help=sources)
    run.add_argument("--computer", default="", help="Computer for iis: rows (default: this host's name)")
    run.add_argument("--strict", action="store_true", help="a malformed input line is an error (default: skipped, counted)")
    run.add_argument("--start", required=True, help="window start, ISO 8601 UTC (inclusive)")
    run.add_argument("--end", required=True, help="window end, ISO 8601 UTC (exclusive)")
    run.add_argument("--rule", default=str(DEFAULT_RULES_DIR), help="rule file, folder, or rule id (default: all bundled rules)")
    run.add_argument("--sink", action="append", help=sinks)
    run.add_argument("--summary-json", action="store_true", help="print the run summary as JSON on stderr")

    piece = format_timespan(runner.BACKFILL_PIECE)
    backfill = command("backfill", f"evaluate a past range in windows of {piece}, with state; resumable")
    backfill.add_argument("--source", required=True, help=sources)
    backfill.add_argument("--computer", default="", help="Computer for iis: rows (default: this host's name)")
    backfill.add_argument("--strict", action="store_true", help="a malformed input line is an error (default: skipped, counted)")
    backfill.add_argument("--start", required=True, help="range start, ISO 8601 UTC, on a bin edge")
    backfill.add_argument("--end", required=True, help="range end, ISO 8601 UTC, on a bin edge")
    backfill.add_argument("--rule", default=str(DEFAULT_RULES_DIR), help="rule file, folder, or rule id")
    backfill.add_argument("--sink", action="append", help="as for run; findings go through the state's outbox")
    backfill.add_argument("--state", default="file:.detector-state", help="state store (default file:.detector-state)")
    backfill.add_argument("--summary-json", action="store_true", help="print the run summary as JSON on stderr")

    settings_help = (
        "a Functions settings file (its Values); default local.settings.json when present; the environment overrides it"
    )
    scheduled = command("scheduled", "do what the timer does, from the same settings (DETECTOR_*); prints the JSON summary")
    scheduled.add_argument("--settings", metavar="FILE", help=settings_help)
    scheduled.add_argument(
        "--dry-run", action="store_true", help="plan, read and evaluate; print what would be staged and delivered; write no state"
    )

    validate = command("validate", "validate rule files and run their inline examples")
    validate.add_argument("paths", nargs="*", default=[str(DEFAULT_RULES_DIR)], help="rule files or folders")

    explain = command("explain", "show a rule's parameters, the windows a scheduled run would evaluate next, and its KQL")
    explain.add_argument("--rule", default=None, help="rule file, folder, or rule id (default: DETECTOR_RULES)")
    explain.add_argument("--start", help="window for the KQL, ISO 8601 UTC (default: the next planned window)")
    explain.add_argument("--end", help="end of that window (exclusive)")
    explain.add_argument("--settings", metavar="FILE", help=settings_help)

    simulate = command("simulate", "findings per day (or hour) for several thresholds, in one read; table and HTML report")
    simulate.add_argument("--source", required=True, help=sources)
    simulate.add_argument("--computer", default="", help="Computer for iis: rows (default: this host's name)")
    simulate.add_argument("--start", required=True, help="range start, ISO 8601 UTC (inclusive)")
    simulate.add_argument("--end", required=True, help="range end, ISO 8601 UTC (exclusive)")
    simulate.add_argument("--rule", default=None, help="rule file or rule id (default: the one bundled rule)")
    simulate.add_argument(
        "--threshold", help="comma-separated values of the rule's threshold, e.g. 20,30,50 (default: the rule's)"
    )
    simulate.add_argument("--parameter", help="the rule parameter the thresholds replace (default: the one its pushdown uses)")
    simulate.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report here")
    simulate.add_argument("--top", type=int, default=10, help="findings listed in the report (default 10)")
    return parser


def _window(args: argparse.Namespace) -> Window:
    start, end = _datetime("--start", args.start), _datetime("--end", args.end)
    if start >= end:
        raise ConfigError("--start", f"{args.start} is not before --end {args.end}")
    return Window(start, end)


def _exit_code(summary: runner.RunSummary) -> int:
    if not summary.ok:
        return EXIT_FAILED
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE


def describe_windows(windows: Sequence[Window]) -> str:
    """A short text for the windows a run covered: up to two listed, more summarised (a backfill has dozens)."""
    distinct = sorted(set(windows))
    if not distinct:
        return "no window"
    if len(distinct) <= 2:
        return ("window " if len(distinct) == 1 else "windows ") + ", ".join(str(w) for w in distinct)
    return f"{len(distinct)} windows from {format_datetime(distinct[0].start)} to {format_datetime(distinct[-1].end)}"


def _report(summary: runner.RunSummary, args: argparse.Namespace, as_json: bool) -> int:
    log.info("detector.summary %s", json.dumps(summary.to_json()))
    if as_json:
        print(json.dumps(summary.to_json()), file=sys.stderr)
    elif not args.quiet:
        rows = sum(r.rows_evaluated for r in summary.rules)
        windows = describe_windows([r.window for r in summary.rules])
        print(f"{windows}: {rows} rows evaluated, {len(summary.findings)} finding(s)", file=sys.stderr)
    if not args.quiet:
        for message in summary.skipped:
            print(f"warning: {message}", file=sys.stderr)
    # Work left to another run is said even with -q: it is why the exit status is 3.
    for message in [*summary.stepped_aside, *summary.deferred]:
        print(f"warning: {message}", file=sys.stderr)
    for rule, error in summary.errors.items():
        print(f"error: {rule}: {error}", file=sys.stderr)
    for sink, error in summary.delivery_errors.items():
        print(f"error: delivery to {sink} failed: {error}", file=sys.stderr)
    return _exit_code(summary)


def backfill_progress(stream: TextIO, piece: timedelta) -> Callable[[int, int], None]:
    """A progress bar on a terminal; one plain line per window otherwise (a log file gets no carriage returns)."""
    size = format_timespan(piece)
    if stream.isatty():

        def bar(done: int, total: int) -> None:
            width = 30
            filled = width * done // max(total, 1)
            print(f"\rbackfill [{'#' * filled}{'.' * (width - filled)}] {done}/{total} windows of {size}", end="", file=stream)
            if done == total:
                print(file=stream)
            stream.flush()

        return bar

    def lines(done: int, total: int) -> None:
        print(f"backfill: {done}/{total} windows of {size} done", file=stream)

    return lines


def _backfill(args: argparse.Namespace) -> int:
    from detector.sinks import open_sinks
    from detector.sources import open_source
    from detector.state import open_state_store

    window = _window(args)
    rules = load_rules(args.rule)
    source = open_source(args.source, _source_settings(args))
    sinks = open_sinks(args.sink or ["stdout"])
    store = open_state_store(None, args.state)
    progress = backfill_progress(sys.stderr, runner.BACKFILL_PIECE) if not args.quiet else (lambda done, total: None)
    summary = runner.run_backfill(rules, source, sinks, store, window, progress)
    return _report(summary, args, args.summary_json)


def _settings(args: argparse.Namespace, *, source_required: bool = True) -> Settings:
    """What `func start` would give the app: the settings file's Values, overridden by the environment.

    Without --settings, local.settings.json is read when it exists in the current folder, as `func start` does.
    """
    from detector import config

    path = Path(args.settings) if args.settings else None
    if path is None and not Path("local.settings.json").is_file():
        return config.Settings.from_env(source_required=source_required)
    values = config.load_settings_file(path)
    return config.Settings.from_env(values, source_required=source_required)


def _source_settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command's source options (--computer, --strict) on top."""
    from dataclasses import replace

    from detector.config import settings_or_env

    settings = settings_or_env(None)
    computer = getattr(args, "computer", "") or settings.computer
    return replace(settings, computer=computer, strict=getattr(args, "strict", False) or settings.strict)


def _scheduled(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.dry_run:
        return _dry_run(settings, args)
    summary = runner.run_scheduled(settings, now=datetime.now(UTC))
    return _report(summary, args, as_json=True)


def _dry_run(settings: Settings, args: argparse.Namespace) -> int:
    from detector.dryrun import OverlayStore, RecordingSink, dry_store
    from detector.sinks import open_sinks
    from detector.sinks.stdout import StdoutSink
    from detector.sources import open_source
    from detector.state import open_state_store

    now = settings.now_override or datetime.now(UTC)
    rules = load_rules(settings.rules)
    source = open_source(settings.source, settings, setting="DETECTOR_SOURCE")
    sinks = [RecordingSink(sink) for sink in open_sinks(settings.sinks, settings, setting="DETECTOR_SINKS")]
    real_store = open_state_store(settings)
    with dry_store(real_store) as store:
        summary = runner.run_incremental(rules, source, sinks, store, now, settings)
    out = sys.stdout
    out.write(f"dry run at {format_datetime(now)}: nothing was written to {real_store.describe()} and nothing was sent\n")
    for run_ in summary.rules:
        out.write(f"  {run_.kind} {run_.window} rule {run_.rule_id}: {run_.rows_evaluated} rows, ")
        out.write(f"{len(run_.findings)} finding(s), {run_.staged} would be staged\n")
    if not summary.rules:
        out.write("  no window is due\n")
    if isinstance(store, OverlayStore):
        out.write("  (Table Storage: findings already delivered unchanged are counted as staged and delivered again)\n")
    for sink in sinks:
        out.write(f"would deliver {len(sink.findings)} finding(s) to {sink.describe()}\n")
    delivered = {f.id: f for sink in sinks for f in sink.findings}
    if delivered:
        StdoutSink(out).deliver(list(delivered.values()))
    return _report(summary, args, as_json=False)


def _run(args: argparse.Namespace) -> int:
    from detector.sinks import open_sinks
    from detector.sources import open_source
    from detector.windows import is_aligned

    window = _window(args)
    rules = load_rules(args.rule)
    source = open_source(args.source, _source_settings(args))
    sinks = open_sinks(args.sink or ["stdout"])
    for rule in rules:
        # A rule without a bin has no partial bins: an unaligned window is its query over that range.
        if not rule.logic.whole_window and not is_aligned(window, rule.logic.time_bin) and not args.quiet:
            print(
                f"warning: window {window} does not fall on {format_timespan(rule.logic.time_bin)} bin edges; "
                "its first and last bins are partial, exactly as in Sentinel",
                file=sys.stderr,
            )
    summary = runner.run([(rule, window) for rule in rules], source, sinks)
    return _report(summary, args, args.summary_json)


def _validate(args: argparse.Namespace) -> int:
    from detector.examples import check_rule_examples

    problems: list[str] = []
    count = 0
    for path in args.paths:
        rules = load_rules(path)
        for rule in rules:
            count += 1
            found = check_rule_examples(rule)
            problems += found
            status = "ok" if not found else "FAILED"
            version = f" v{rule.version}" if rule.version else ""
            print(f"{rule.path}: {rule.name}{version}: {len(rule.examples)} examples {status}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_OK if not problems and count else EXIT_FAILED


def _explain(args: argparse.Namespace) -> int:
    from detector.explain import explain

    settings = _settings(args, source_required=False)
    window = None
    if args.start or args.end:
        if not (args.start and args.end):
            raise ConfigError("--start" if not args.start else "--end", "give both --start and --end, or neither")
        window = _window(args)
    rules = load_rules(args.rule or settings.rules)
    now = settings.now_override or datetime.now(UTC)
    sys.stdout.write(explain(rules, settings, now, window))
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from detector.simulate import parse_thresholds, render_table, simulate
    from detector.sources import open_source

    window = _window(args)
    rules = load_rules(args.rule or str(DEFAULT_RULES_DIR))
    if len(rules) != 1:
        raise ConfigError("--rule", f"simulate takes one rule; {len(rules)} were found: {', '.join(r.id for r in rules)}")
    rule = rules[0]
    source = open_source(args.source, _source_settings(args))
    result = simulate(rule, source, window, parse_thresholds(args.threshold), parameter=args.parameter)
    sys.stdout.write(render_table(result))
    if args.html:
        from detector.atomicfile import write_atomically
        from detector.report import render_html

        write_atomically(Path(args.html), render_html(result, top=args.top))
        if not args.quiet:
            print(f"report written to {args.html}", file=sys.stderr)
    return EXIT_OK


def _configure_logging(args: argparse.Namespace) -> None:
    debug = args.debug or args.verbose >= 2
    level = logging.DEBUG if debug else logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request's headers at INFO
    # A failed token is one CredentialError line of ours; the SDK's own many-line account of it is for --debug.
    logging.getLogger("azure.identity").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # its DEBUG lines carry URLs (a webhook URL is a secret)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "backfill": _backfill,
    "scheduled": _scheduled,
    "validate": _validate,
    "explain": _explain,
    "simulate": _simulate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCOMPLETE)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
