"""What each step of the JSON Lines columnar read costs on one thread, block by block.

    POLARS_MAX_THREADS=1 python benchmarks/block_steps.py benchmarks/data/w3ciislog-1000000/ordered.jsonl
    POLARS_MAX_THREADS=1 python benchmarks/block_steps.py <rows.jsonl> --blocks 40
    POLARS_MAX_THREADS=1 python benchmarks/block_steps.py <rows.jsonl> --key-reader polars

The file's first blocks are cut as the detector cuts them (file.BLOCK_BYTES, at line breaks) and each is
read by the detector's own `file._columnar_block` for the port rule, with the steps it calls timed in
place (each step's own time, less the steps it calls): the read, the cut into lines, polars' parse of the
key columns (msgspec's decode, or with `--key-reader polars` polars' parse, the floor of
parse_floor.py, and the exactness checks it needs), the typing, the key frame, and what
is left of `_columnar_block` itself (line_profiler finds ~1 ms a block on its lines: the rest is spent
as it returns). Prints milliseconds per block and each step's share, so a change to
one step can be measured without the noise of threads (with POLARS_MAX_THREADS=1, polars runs each step
on this thread). Blocks with odd lines are read too, and counted. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.logic.high_port_count import HighPortCountByClientIP
from detector.models import Window
from detector.sources import LineReport, ReadRequest
from detector.sources import candidates as c
from detector.sources import file as f

# The steps timed, by the name `file` calls them under, in the order a block runs them.
STEPS = {
    "read_span": "read (pread)",
    "polars_lines": "cut into lines (polars_lines)",
    "_cut": "line ends, CRs (_cut)",
    "decoded_keys": "decode the key columns (msgspec: decoded_keys)",
    "_key_strings": "parse the key columns (read_ndjson)",
    "_names_once": "each key named once (_names_once)",
    "_all_from_json_strings": "keys were JSON strings (_all_from_json_strings)",
    "_from_json_strings": "times were JSON strings (_from_json_strings)",
    "_typed": "times and ports typed (_typed)",
    "keys_frame": "key frame (keys_frame)",
    "_odd_lines": "odd lines set apart (_odd_lines)",
    "_columnar_keys": "the rest of _columnar_keys",
    "_columnar_block": "the rest of _columnar_block (as it returns)",
}


def _timed_steps() -> dict[str, float]:
    """Wrap each of STEPS in the file module (its globals, which _columnar_block looks up at each call);
    the returned dict gathers each step's own seconds (a step's time less that of the steps it calls)."""
    spent: dict[str, float] = {}
    inner: list[float] = []  # per active step: seconds spent in the steps it called

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            inner.append(0.0)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                own = took - inner.pop()
                spent[name] = spent.get(name, 0.0) + own
                if inner:
                    inner[-1] += took

        return timed

    for name in STEPS:
        setattr(f, name, wrap(name, getattr(f, name)))
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--blocks", type=int, default=30, help="blocks from the file's start (default 30)")
    parser.add_argument("--block-bytes", type=int, default=f.BLOCK_BYTES, help=f"block size (default {f.BLOCK_BYTES:,})")
    parser.add_argument(
        "--key-reader",
        choices=("msgspec", "polars"),
        default="msgspec",
        help="msgspec first, as a read does (default), or polars' parse alone (what reads a block msgspec cannot)",
    )
    args = parser.parse_args()
    if args.key_reader == "polars":
        setattr(f, "decoded_keys", lambda *_: None)  # noqa: B010 - the name is a module global the read looks up
    logic = HighPortCountByClientIP(timedelta(minutes=10), 30, 128)
    window = Window(datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))
    request = ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec())
    spec = request.candidates
    assert spec is not None  # noqa: S101 - the port rule pushes down
    spent = _timed_steps()
    fd = os.open(args.path, os.O_RDONLY)
    blocks = rows = odd = 0
    try:
        for offset, length in list(c.line_spans(fd, 0, os.fstat(fd).st_size, args.block_bytes))[: args.blocks]:
            block = f._columnar_block(fd, offset, length, args.path, spec, request, LineReport())
            blocks += 1
            if isinstance(block, f._ColumnarBlock):
                rows += block.keys.height
            else:
                odd += 1  # odd lines (or a block for the plain code): its rows are not counted
    finally:
        os.close(fd)
    if not blocks:
        print(f"{args.path} holds no block")
        return 1
    total = sum(spent.values())
    threads = os.environ.get("POLARS_MAX_THREADS", "unset")
    print(f"{blocks} blocks, {rows:,} rows in the {blocks - odd} read whole ({odd} with odd lines); POLARS_MAX_THREADS={threads}")
    for name, label in STEPS.items():
        if name in spent:
            print(f"  {label:<45} {spent[name] / blocks * 1000:6.2f} ms a block  {spent[name] / total:6.1%}")
    print(
        f"  {'all steps':<45} {total / blocks * 1000:6.2f} ms a block"
        + (f"; {total / rows * 1e6:.2f} s a million rows" if rows and not odd else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
