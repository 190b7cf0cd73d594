"""What each step of the JSON Lines columnar read costs on one thread, block by block.

    POLARS_MAX_THREADS=1 python benchmarks/block_steps.py benchmarks/data/w3ciislog-1000000/ordered.jsonl
    POLARS_MAX_THREADS=1 python benchmarks/block_steps.py <rows.jsonl> --blocks 40

The file's first blocks are cut as the detector cuts them (file.BLOCK_BYTES, at line breaks) and each step
of `file._columnar_block` for the port rule is timed on its own, in the order the read runs them: the
read, the cut into lines, polars' parse of the key columns (the floor, see parse_floor.py), the
exactness checks, the typing and the key frame. Prints milliseconds per block and each step's share, so
a change to one step can be measured without the noise of threads (with POLARS_MAX_THREADS=1, polars runs
each step on this thread). A block the columnar read cannot take whole (odd lines) is counted and skipped.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.logic.high_port_count import HighPortCountByClientIP
from detector.models import Window
from detector.pushdown import TIME
from detector.sources import ReadRequest
from detector.sources import candidates as c
from detector.sources import file as f
from detector.w3ciislog import COLUMN_TYPES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--blocks", type=int, default=30, help="blocks from the file's start (default 30)")
    parser.add_argument("--block-bytes", type=int, default=f.BLOCK_BYTES, help=f"block size (default {f.BLOCK_BYTES:,})")
    args = parser.parse_args()
    logic = HighPortCountByClientIP(timedelta(minutes=10), 30, 128)
    window = Window(datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
    request = ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec())
    spec = request.candidates
    assert spec is not None  # noqa: S101 - the port rule pushes down
    wanted = spec.columns()
    required = set(request.required) | {TIME}
    spent: dict[str, float] = {}
    runs: Counter[str] = Counter()

    def timed(step: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        spent[step] = spent.get(step, 0.0) + time.perf_counter() - started
        runs[step] += 1
        return result

    fd = os.open(args.path, os.O_RDONLY)
    blocks = rows = skipped = 0
    try:
        for offset, length in list(c.line_spans(fd, 0, os.fstat(fd).st_size, args.block_bytes))[: args.blocks]:
            data = timed("read (pread)", lambda: os.pread(fd, length, offset))  # noqa: B023 - called at once
            lines = timed("cut into lines (polars_lines)", lambda: c.polars_lines(data, empty=True))  # noqa: B023
            cut = timed("line ends, CRs (_cut)", lambda: f._cut(data, lines))  # noqa: B023
            frame = timed("parse the key columns (read_ndjson)", lambda: f._key_strings(data, wanted))  # noqa: B023
            if cut is None or frame is None or frame.height != cut.lines.len():
                skipped += 1
                continue
            if not timed("each key named once (_names_once)", lambda: f._names_once(data, cut.lines, frame, required)):  # noqa: B023
                skipped += 1
                continue
            strings = [k for k in wanted if COLUMN_TYPES[k] == "string" and k != TIME]
            if not timed(
                "keys were JSON strings (_from_json_strings)",
                lambda: all(f._from_json_strings(cut.lines, frame[k], k) for k in strings),  # noqa: B023
            ):
                skipped += 1
                continue
            typed = timed("times and ports typed (_typed)", lambda: f._typed(frame, wanted, lambda: True))  # noqa: B023
            if typed is None:
                skipped += 1
                continue
            timed("key frame (keys_frame)", lambda: c.keys_frame(typed, spec, request.window))  # noqa: B023
            blocks += 1
            rows += frame.height
    finally:
        os.close(fd)
    if not blocks:
        print(f"no block of {args.path} takes the columnar read whole ({skipped} skipped)")
        return 1
    per_block = {step: seconds / runs[step] for step, seconds in spent.items()}  # a skipped block stops early
    total = sum(per_block.values())
    print(
        f"{blocks} blocks, {rows:,} rows ({skipped} skipped); POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', 'unset')}"
    )
    for step, seconds in per_block.items():
        print(f"  {step:<45} {seconds * 1000:6.2f} ms a block  {seconds / total:6.1%}")
    print(f"  {'all steps':<45} {total * 1000:6.2f} ms a block; {total * blocks / rows * 1e6:.2f} s a million rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
