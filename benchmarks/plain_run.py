"""`python -m detector run` with the candidate pushdown switched off: the plain path, for comparison.

    python benchmarks/plain_run.py --source iis:<folder> --computer bench-iis --start ... --end ... --sink jsonl:<out>

The CLI has no switch for it (a rule that offers a CandidateSpec always gets the fast path where the
source supports it), so this wraps the source and hands it every request with `candidates=None`: each
source then reads every row with its plain row-by-row code, the rule evaluates them all, and the
findings must be the same. Everything else (rules, sinks, runner) is what the CLI uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector import runner
from detector.config import Settings
from detector.kql import parse_datetime
from detector.models import Row, Window
from detector.rules import DEFAULT_RULES_DIR, load_rules
from detector.sinks import open_sink
from detector.sources import ReadRequest, Source, open_source


class WithoutCandidates(Source):
    """A source asked for every row: requests reach it without their CandidateSpec."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner

    def read(self, request: ReadRequest) -> Iterator[Row]:
        return self.inner.read(replace(request, candidates=None))

    def describe(self) -> str:
        return f"{self.inner.describe()} (plain path)"

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        return self.inner.late_bins(window, ingested_after, time_bin)

    def read_stats(self) -> dict[str, int]:
        return self.inner.read_stats()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--computer", default="")
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    parser.add_argument("--rule", default=str(DEFAULT_RULES_DIR))
    parser.add_argument("--sink", action="append", required=True)
    args = parser.parse_args()
    window = Window(parse_datetime(args.start), parse_datetime(args.end))
    settings = replace(Settings.from_env({"DETECTOR_SOURCE": args.source}), computer=args.computer)
    source = WithoutCandidates(open_source(args.source, settings))
    summary = runner.run([(rule, window) for rule in load_rules(args.rule)], source, [open_sink(s) for s in args.sink])
    for rule, error in summary.errors.items():
        print(f"error: {rule}: {error}", file=sys.stderr)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
