"""A run that stops dead at a chosen point, for the kill -9 tests: `python -m tests.crash_driver POINT STATE DATA OUT MARKER`.

At POINT it creates MARKER and waits to be killed (the test sends SIGKILL as soon as MARKER exists):
- read: inside the first read of the rule's window (the lease held, nothing staged);
- staged: right after the window's findings were staged, before the checkpoint moves;
- delivery: after the sink received part of the findings, before anything is marked delivered;
- backfill: inside the fifth hourly read of a backfill of the fixture day.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from detector.config import Settings
from detector.kql import parse_datetime
from detector.models import Finding, Row, Window
from detector.rules import DEFAULT_RULES_DIR, load_rule
from detector.runner import run_backfill, run_incremental
from detector.sinks.jsonl import JsonlSink
from detector.sources import ReadRequest
from detector.sources.file import FileSource
from detector.state.file import FileStateStore

NOW = parse_datetime("2026-11-27T00:35:00Z")
DAY = Window(parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:00:00Z"))


def stop_here(marker: Path) -> None:
    marker.write_text("here", encoding="utf-8")
    time.sleep(600)  # killed long before this ends
    raise SystemExit("not killed")


def main(point: str, state: Path, data: Path, out: Path, marker: Path) -> None:
    class Source(FileSource):
        reads = 0

        def read(self, request: ReadRequest) -> Iterator[Row]:
            Source.reads += 1
            if (point == "read" and Source.reads == 1) or (point == "backfill" and Source.reads == 5):
                stop_here(marker)
            return super().read(request)

    class Store(FileStateStore):
        def stage(self, sinks: Sequence[str], findings: Any) -> int:
            staged = super().stage(sinks, findings)
            if point == "staged" and findings:
                stop_here(marker)
            return staged

    class Sink(JsonlSink):
        def deliver(self, findings: Sequence[Finding]) -> None:
            if point == "delivery" and len(findings) > 1:
                super().deliver(findings[: len(findings) // 2])
                stop_here(marker)
            super().deliver(findings)

    rules = [load_rule(DEFAULT_RULES_DIR / "high_port_count_by_client_ip.yaml")]  # the fixture day is this rule's
    source, store, sink = Source(data), Store(state), Sink(out)
    if point == "backfill":
        run_backfill(rules, source, [sink], store, DAY)
    else:
        settings = Settings.from_env({"DETECTOR_SOURCE": f"file:{data}", "DETECTOR_CATCHUP_LIMIT": "7d"})
        run_incremental(rules, source, [sink], store, NOW, settings, deadline=None)


if __name__ == "__main__":
    main(sys.argv[1], *(Path(a) for a in sys.argv[2:6]))
