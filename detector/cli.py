"""Command line: `python -m detector run|validate`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from detector import runner
from detector.errors import ConfigError, DetectorError, SourceError
from detector.kql import format_timespan, parse_datetime
from detector.models import Window
from detector.rules import DEFAULT_RULES_DIR, load_rules

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _datetime(option: str, text: str) -> object:
    try:
        return parse_datetime(text)
    except ValueError as exc:
        raise ConfigError(option, str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detector", description="Sentinel scheduled rules over W3CIISLog, in Python.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate rules over one window and deliver findings")
    run.add_argument("--source", required=True, help="file:<path> | iis:<path> | loganalytics:<workspace id>")
    run.add_argument("--computer", default="", help="Computer for iis: rows (default: this host's name)")
    run.add_argument("--start", required=True, help="window start, ISO 8601 UTC (inclusive)")
    run.add_argument("--end", required=True, help="window end, ISO 8601 UTC (exclusive)")
    run.add_argument("--rule", default=str(DEFAULT_RULES_DIR), help="rule file, folder, or rule id (default: all bundled rules)")
    run.add_argument(
        "--sink", action="append", help="stdout (default) | jsonl:<path> | sentinel | loganalytics-table | webhook; repeatable"
    )
    run.add_argument("--summary-json", action="store_true", help="print the run summary as JSON on stderr")

    backfill = sub.add_parser("backfill", help="evaluate a past range window by window, with state; resumable")
    backfill.add_argument("--source", required=True, help="file:<path> | iis:<path> | loganalytics:<workspace id>")
    backfill.add_argument("--computer", default="", help="Computer for iis: rows (default: this host's name)")
    backfill.add_argument("--start", required=True, help="range start, ISO 8601 UTC, on a bin edge")
    backfill.add_argument("--end", required=True, help="range end, ISO 8601 UTC, on a bin edge")
    backfill.add_argument("--rule", default=str(DEFAULT_RULES_DIR), help="rule file, folder, or rule id")
    backfill.add_argument("--sink", action="append", help="as for run; findings go through the state's outbox")
    backfill.add_argument("--state", default="file:.detector-state", help="state store (default file:.detector-state)")
    backfill.add_argument("--summary-json", action="store_true", help="print the run summary as JSON on stderr")

    sub.add_parser("scheduled", help="do what the timer does, with settings from the environment (DETECTOR_*)")

    validate = sub.add_parser("validate", help="validate rule files and run their inline examples")
    validate.add_argument("paths", nargs="*", default=[str(DEFAULT_RULES_DIR)], help="rule files or folders")
    return parser


def _window(args: argparse.Namespace) -> Window:
    start, end = _datetime("--start", args.start), _datetime("--end", args.end)
    if start >= end:  # type: ignore[operator]
        raise ConfigError("--start", f"{args.start} is not before --end {args.end}")
    return Window(start, end)  # type: ignore[arg-type]


def _report(summary: runner.RunSummary, as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary.to_json()), file=sys.stderr)
    else:
        rows = sum(r.rows_evaluated for r in summary.rules)
        windows = ", ".join(sorted({str(r.window) for r in summary.rules})) or "none"
        print(f"windows {windows}: {rows} rows evaluated, {len(summary.findings)} finding(s)", file=sys.stderr)
    for message in summary.skipped:
        print(f"warning: {message}", file=sys.stderr)
    for rule, error in summary.errors.items():
        print(f"error: {rule}: {error}", file=sys.stderr)
    for sink, error in summary.delivery_errors.items():
        print(f"error: delivery to {sink} failed: {error}", file=sys.stderr)
    return EXIT_OK if summary.ok else EXIT_FAILED


def _backfill(args: argparse.Namespace) -> int:
    from detector.sinks import open_sink
    from detector.sources import open_source
    from detector.state import open_state_store

    window = _window(args)
    rules = load_rules(args.rule)
    source = open_source(args.source, None, args.computer)
    sinks = [open_sink(spec) for spec in (args.sink or ["stdout"])]
    store = open_state_store(None, args.state)

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        print(f"\rbackfill [{'#' * filled}{'.' * (width - filled)}] {done}/{total} windows", end="", file=sys.stderr)
        if done == total:
            print(file=sys.stderr)

    summary = runner.run_backfill(rules, source, sinks, store, window, progress)
    return _report(summary, args.summary_json)


def _scheduled() -> int:
    from datetime import UTC, datetime

    from detector.config import Settings

    summary = runner.run_scheduled(Settings.from_env(), now=datetime.now(UTC))
    return _report(summary, as_json=True)


def _run(args: argparse.Namespace) -> int:
    from detector.sinks import open_sink
    from detector.sources import open_source
    from detector.windows import is_aligned

    window = _window(args)
    rules = load_rules(args.rule)
    source = open_source(args.source, None, args.computer)
    sinks = [open_sink(spec) for spec in (args.sink or ["stdout"])]
    for rule in rules:
        if not is_aligned(window, rule.logic.time_bin):
            print(
                f"warning: window {window} does not fall on {format_timespan(rule.logic.time_bin)} bin edges; "
                "its first and last bins are partial, exactly as in Sentinel",
                file=sys.stderr,
            )
    summary = runner.run([(rule, window) for rule in rules], source, sinks)
    return _report(summary, args.summary_json)


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request's headers at INFO
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # its DEBUG lines carry URLs (a webhook URL is a secret)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "backfill":
            return _backfill(args)
        if args.command == "scheduled":
            return _scheduled()
        return _validate(args)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
