"""Where a run's time and memory go: `python -m detector run` under py-spy, and an RSS sampler in process.

    python benchmarks/profile_run.py time   --source file:<path> [--computer NAME] [--plain] [--top 25] [--rule ID]
    python benchmarks/profile_run.py memory --source file:<path> [--computer NAME] [--plain]

time: records the CLI (or plain_run.py with --plain) with py-spy (`pip install py-spy`; sampling, 100 Hz,
every thread, native frames left out) and prints the functions with the most samples: inclusive (the
function is anywhere on the stack) and self (it is the innermost Python frame, which includes native
code it called, e.g. polars or json). Percentages are of all samples of all threads.
memory: runs the CLI in this process with a thread that reads the process's RSS every 20 ms together
with the main thread's stack, then prints the peak RSS, the stack at the peak, and which functions were
innermost (among the detector's frames) while RSS grew, with the MB grown under each.
The window is the benchmark day (generate.START/END) unless --start/--end give another (the held-out
day of heldout.py is 2026-11-24).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from benchmarks.bench_core import PORT_RULE  # noqa: E402
from benchmarks.generate import END, START  # noqa: E402

_FRAME = re.compile(r"^(?P<name>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _command(args: argparse.Namespace, out: Path) -> list[str]:
    entry = [str(HERE / "plain_run.py")] if args.plain else ["-m", "detector", "run"]
    command = [*entry, "--source", args.source, "--start", args.start, "--end", args.end, "--sink", f"jsonl:{out}"]
    command += ["--rule", args.rule]
    return [*command, "--computer", args.computer] if args.computer else command


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match.group("file")
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match.group('name')} ({file})"


def profile_time(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "stacks.txt"
        spy = Path(sys.executable).with_name("py-spy")
        command = [str(spy), "record", "--format", "raw", "--rate", "100", "--threads", "--output", str(raw), "--"]
        started = time.perf_counter()
        subprocess.run([*command, sys.executable, *_command(args, Path(scratch) / "out.jsonl")], cwd=ROOT, check=True)
        wall = time.perf_counter() - started
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text(encoding="utf-8").splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [_short(f) for f in stack.split(";") if f and not f.startswith("thread (") and not f.startswith("process ")]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for name in set(frames):
                inclusive[name] += count
    print(f"{args.source}{' (plain path)' if args.plain else ''}: {total} samples at 100 Hz, {wall:.1f} s wall under py-spy")
    for title, counter in (("inclusive", inclusive), ("self (innermost Python frame)", own)):
        print(f"\n{title}:")
        for name, count in counter.most_common(args.top):
            print(f"  {100 * count / total:5.1f} %  {name}")


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _stack(frame: FrameType | None) -> list[str]:
    names = []
    while frame is not None:
        names.append(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        frame = frame.f_back
    return names[::-1]


def profile_memory(args: argparse.Namespace) -> None:
    if args.plain:
        from benchmarks import plain_run

        def main(argv: list[str]) -> int:
            sys.argv = ["plain_run.py", *argv]
            return plain_run.main()
    else:
        from detector.cli import main as cli_main

        def main(argv: list[str]) -> int:
            return cli_main(argv)

    samples: list[tuple[float, float, list[str]]] = []
    done = threading.Event()
    main_thread = threading.main_thread().ident

    def sample() -> None:
        while not done.is_set():
            frame = sys._current_frames().get(main_thread or 0)
            samples.append((time.perf_counter(), _rss_mb(), _stack(frame)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as scratch:
        argv = _command(args, Path(scratch) / "out.jsonl")
        argv = argv[3:] if not args.plain else argv[1:]  # drop "-m detector run" / the script
        sampler.start()
        started = time.perf_counter()
        code = main(["run", *argv] if not args.plain else argv)
        done.set()
        sampler.join()
    print(f"{args.source}{' (plain path)' if args.plain else ''}: exit {code}, {time.perf_counter() - started:.1f} s, "
          f"{len(samples)} RSS samples")  # fmt: skip
    peak = max(samples, key=lambda s: s[1])
    print(f"peak RSS {peak[1]:.0f} MB at {peak[0] - started:.1f} s, main thread in:")
    for name in peak[2][-args.top :]:
        print(f"    {name}")
    grown: collections.defaultdict[str, float] = collections.defaultdict(float)
    for (_, before, _stack_before), (_, after, stack) in itertools.pairwise(samples):
        if after > before:
            ours = [f for f in stack if any(f" ({m}" in f for m in ("file.py", "iis.py", "candidates", "runner.py", "high_port"))]
            grown[(ours or stack or ["?"])[-1].rsplit(":", 1)[0] + ")"] += after - before
    print("RSS growth by innermost detector frame (MB, summed over samples where RSS rose):")
    for name, mb in sorted(grown.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {mb:8.0f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["time", "memory"])
    parser.add_argument("--source", required=True)
    parser.add_argument("--computer", default="")
    parser.add_argument("--plain", action="store_true", help="the plain path (benchmarks/plain_run.py)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--start", default=START, help=f"the window's start (default: the benchmark day's, {START})")
    parser.add_argument("--end", default=END, help=f"the window's end (default {END})")
    parser.add_argument(
        "--rule",
        default=PORT_RULE,
        help="a rule id, or 'rules' for every rule (default: the port rule, as bench_core.py runs it)",
    )
    args = parser.parse_args()
    (profile_time if args.what == "time" else profile_memory)(args)


if __name__ == "__main__":
    main()
