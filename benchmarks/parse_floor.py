"""The floor under the JSON Lines first pass: polars parsing the port rule's key columns, nothing else.

    python benchmarks/parse_floor.py <rows.jsonl>

The file is cut into the blocks the detector cuts (file.BLOCK_BYTES, at line breaks) and KEY_WORKERS
threads parse them with polars' read_ndjson into String columns, as the detector's workers do; no
exactness check, no typing, no finder, no rule. bench_core.py times this process like the others: what
is left between it and `ours ordered` is everything the detector adds to polars' parse (its imports,
the checks that make the columnar read exact, the finder, the rule), and no reader built on polars'
NDJSON parser goes below it. Prints the rows parsed.
"""

from __future__ import annotations

import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl

from detector.sources.candidates import line_spans
from detector.sources.file import BLOCK_BYTES, KEY_WORKERS

KEY_COLUMNS = ("TimeGenerated", "cIP", "Computer", "sIP", "sPort")  # the port rule's CandidateSpec.columns()


def main() -> int:
    path = sys.argv[1]
    fd = os.open(path, os.O_RDONLY)
    try:
        schema = dict.fromkeys(KEY_COLUMNS, pl.String)

        def parse(span: tuple[int, int]) -> int:
            offset, length = span
            return pl.read_ndjson(io.BytesIO(os.pread(fd, length, offset)), schema=schema).height

        with ThreadPoolExecutor(max_workers=KEY_WORKERS) as pool:
            rows = sum(pool.map(parse, line_spans(fd, 0, os.fstat(fd).st_size, BLOCK_BYTES)))
    finally:
        os.close(fd)
    print(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
