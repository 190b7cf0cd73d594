"""The benchmark: our CLI against DuckDB on every input shape of the same W3CIISLog day, in one run.

    python benchmarks/bench_core.py                          # 100,000 rows: a quick try
    python benchmarks/bench_core.py --rows 1000000           # the size the goals are set at
    python benchmarks/bench_core.py --rows 1000000 --rows 4000000 --shapes shuffled,response,array
    python benchmarks/bench_core.py --rows 20000 --repeat 3
    python benchmarks/bench_core.py --rows 1000000 --rules binned --shapes ordered,iis-single

For each day size the data comes from generate.py (seeded, cached under benchmarks/data/), and each
of these runs is its own process, timed from outside (wall time around the child, peak RSS from the
child's own ru_maxrss via os.wait4):
- the anchor, DuckDB running the rule as one SQL statement (duckdb_anchor.py), over the time-ordered
  and the shuffled JSON Lines, and over the shuffled file with Computer set to bench-iis (what the IIS
  source does: Computer is not in a W3C log);
- ours, as a user runs it: `python -m detector run --source <spec> --start ... --end ... --sink jsonl:...`
  on ordered.jsonl, shuffled.jsonl, response.json and array.json (`file:`; the response body and the
  `az monitor log-analytics query` array hold the shuffled rows, so DuckDB on shuffled.jsonl is their
  anchor), iis-single/ and iis-many/ (`iis:` with --computer bench-iis);
- the plain path on both IIS folders (plain_run.py: the same CLI code with the candidate pushdown off),
  the figure the IIS goal compares with;
- the floor under the ordered run (parse_floor.py: polars parsing the key columns of the detector's blocks
  on its worker threads, and nothing else), a figure with no goal: how far below it no reader built on
  polars' NDJSON parser gets.
Before a size's first measured run every input it reads is read once and the anchor runs once, not
counted (warm_up), so that no run pays for a cold page cache alone.
Every run of ours evaluates the port rule alone (the rule DuckDB runs); with `--rules binned` each shape
of ours also runs the three binned-threshold rules at once (one shared read of the file), with `--rules
all` every rule in rules/, its port-rule findings checked identical to DuckDB's, against the goal that
three rules cost at most 1.5x one rule's time. Every result set is checked identical to DuckDB's, column by column and in order,
before any figure is printed. Then each goal of the performance issue is printed with PASS or FAIL. The goals are set at
1,000,000 rows (and 4,000,000 for growth); at other sizes they are still evaluated, and labelled with
the size they were measured at. Figures go to stdout and to benchmarks/data/results-<sizes>.json.
Nothing here is a test; the machine's load average is printed with every figure, because wall times
on a shared machine move with it (compare ratios within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from benchmarks.generate import DATA, END, START, Day, write_day  # noqa: E402
from detector.logic.high_port_count import OUTPUT_COLUMNS  # noqa: E402

COLUMNS = list(OUTPUT_COLUMNS)  # the rule's 18 output columns, compared one by one with the anchor's
PORT_RULE = "44a555d8-ecee-4a25-95ce-055879b4b14b"  # the rule the DuckDB anchor runs
ALL_RULES = "rules"  # every rule in rules/
# The binned-threshold rules (port scan, failed logons by client IP and by user): the three rules whose
# cost the shared read is measured against. The whole-window Exchange rules read alone and, with a `<`
# threshold or none, prune nothing: they are measured by `--rules all`.
BINNED_RULES = "44a555d8-ecee-4a25-95ce-055879b4b14b,19e01883-15d8-4eb6-a7a5-3276cd668388,884c4957-70ea-4f57-80b9-1bca3890315b"
TOGETHER = {"binned": BINNED_RULES, "all": ALL_RULES}
ALL_RULES_LIMIT = 1.5
IIS_COMPUTER = "bench-iis"
SHAPES = ("ordered", "shuffled", "response", "array", "iis-single", "iis-many")
GOAL_ROWS, GROWTH_ROWS = 1_000_000, 4_000_000


class BenchError(Exception):
    """A run that did not finish, or whose findings differ from DuckDB's."""


@dataclass
class Figures:
    wall_s: float
    peak_rss_mb: float
    user_s: float
    sys_s: float
    load_before: float
    timed_out: bool = False

    def text(self) -> str:
        if self.timed_out:
            return f"> {self.wall_s:.0f} s (stopped at the timeout)"
        return f"{self.wall_s:.2f} s / {self.peak_rss_mb:.0f} MB"


def compiled() -> None:
    """Write the bytecode of the detector, its rules' logic and these scripts, as Python does on a user's
    first run. Where PYTHONDONTWRITEBYTECODE is set (the machine of docs/performance.md sets it), every child would
    otherwise compile the detector from source before its work (~0.3 s a run, measured on the 2-core VM:
    0.84-1.02 s for a one-line file, 0.49-0.66 s with bytecode), a cost no deployed run pays twice and
    the anchor, a short script, hardly pays at all."""
    import compileall

    done = [compileall.compile_dir(ROOT / folder, quiet=1) for folder in ("detector", "benchmarks")]
    if not all(done) or not compileall.compile_file(ROOT / "function_app.py", quiet=1):
        raise BenchError("could not compile detector/, benchmarks/ or function_app.py")


def measure(command: list[str], timeout: float) -> Figures:
    """Run a command as a child process: wall seconds, its own peak RSS in MB, CPU seconds."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        figures = Figures(wall, usage.ru_maxrss / 1024, usage.ru_utime, usage.ru_stime, load)
        if wall >= timeout and process.returncode != 0:
            figures.timed_out = True
            return figures
        if process.returncode != 0:
            stderr.seek(0)
            raise BenchError(f"command failed ({process.returncode}): {' '.join(command)}\n{stderr.read().decode()[-3000:]}")
    return figures


def anchor(jsonl: Path, out: Path, timeout: float, computer: str | None = None) -> tuple[Figures, list[dict[str, Any]]]:
    command = [sys.executable, str(HERE / "duckdb_anchor.py"), str(jsonl), START, END, str(out)]
    if computer:
        command += ["--computer", computer]
    figures = measure(command, timeout)
    return figures, json.loads(out.read_text(encoding="utf-8"))


def ours(
    source: str, out: Path, timeout: float, computer: str = "", plain: bool = False, rules: str = PORT_RULE
) -> tuple[Figures, list[dict[str, Any]]]:
    """Our CLI over the day; the port rule's findings (with more rules, the others are counted and dropped)."""
    out.unlink(missing_ok=True)
    entry = [str(HERE / "plain_run.py")] if plain else ["-m", "detector", "run"]
    command = [sys.executable, *entry, "--source", source, "--rule", rules, "--start", START, "--end", END]
    command += ["--sink", f"jsonl:{out}"]
    if computer:
        command += ["--computer", computer]
    figures = measure(command, timeout)
    if figures.timed_out:
        return figures, []
    with out.open(encoding="utf-8") as handle:
        found = [json.loads(line) for line in handle if line.strip()]
    others = [f for f in found if f.get("RuleId") != PORT_RULE]
    if others:
        print(f"    ({len(others)} findings of the other rules)")
    return figures, [f for f in found if f.get("RuleId") == PORT_RULE]


def differences(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str:
    """ "" when both result sets are equal column by column, in the same order; else what differs first."""
    got_rows = [[row[c] for c in COLUMNS] for row in got]
    want_rows = [[row[c] for c in COLUMNS] for row in want]
    if got_rows == want_rows:
        return ""
    for index, (a, b) in enumerate(zip(got_rows, want_rows, strict=False)):
        if a != b:
            diff = [(c, x, y) for c, x, y in zip(COLUMNS, a, b, strict=True) if x != y]
            return f"result {index} differs from DuckDB's: {diff[:3]}"
    return f"{len(got_rows)} results, DuckDB has {len(want_rows)}"


@dataclass
class SizeResult:
    rows: int
    manifest: dict[str, Any]
    runs: list[dict[str, Figures]] = field(default_factory=list)
    findings: int = 0

    def best(self, name: str) -> Figures | None:
        """Best wall and worst peak RSS over the repeats (a timeout is the worst of all)."""
        seen = [run[name] for run in self.runs if name in run]
        if not seen:
            return None
        timed_out = any(f.timed_out for f in seen)
        return Figures(
            max(f.wall_s for f in seen) if timed_out else min(f.wall_s for f in seen),
            max(f.peak_rss_mb for f in seen),
            min(f.user_s for f in seen),
            min(f.sys_s for f in seen),
            max(f.load_before for f in seen),
            timed_out,
        )


def shape_files(day: Day, shapes: set[str]) -> list[Path]:
    """The files the runs of `shapes` read (an IIS folder: every log file in it)."""
    files = {"ordered": [day.ordered], "shuffled": [day.shuffled], "response": [day.response], "array": [day.array]}
    files["iis-single"] = sorted(day.iis_single.rglob("*.log"))
    files["iis-many"] = sorted(day.iis_many.rglob("*.log"))
    wanted = [path for shape in SHAPES if shape in shapes for path in files[shape]]
    if shapes & {"response", "array", "iis-single", "iis-many"}:
        wanted.append(day.shuffled)  # their anchor's input
    return list(dict.fromkeys(wanted))


def warm_up(day: Day, shapes: set[str], work: Path, timeout: float) -> None:
    """Before the first measured run of a size: every input read once (into the page cache) and one anchor
    run that is not counted. Without it the first run of a size paid what no later run pays: DuckDB's first
    run over the 1M ordered file took 2.83-4.08 s where the next took 2.34-2.52 (with more system time; most
    likely the kernel reclaiming page cache for its ~850 MB), which made the first ratio of a run look better."""
    started = time.perf_counter()
    size = 0
    for path in shape_files(day, shapes):
        with path.open("rb") as handle:
            while chunk := handle.read(16 << 20):
                size += len(chunk)
    anchor(day.ordered if "ordered" in shapes else day.shuffled, work / "warm-up.json", timeout)
    print(f"  warm-up (not counted): {size / 1e6:,.0f} MB read, one anchor run, {time.perf_counter() - started:.1f} s")


def bench(rows: int, shapes: set[str], repeat: int, timeout: float, together: str | None = None) -> SizeResult:
    # The day is written by a child (a no-op when it is on disk): a child's ru_maxrss (os.wait4) counts this
    # process's peak RSS too (subprocess starts children with vfork, and exec keeps the high-water mark),
    # so a day written here would set every later child's peak RSS (a 4M day: 265 MB for every run).
    subprocess.run([sys.executable, str(HERE / "generate.py"), "--rows", str(rows)], check=True, stdout=subprocess.DEVNULL)
    day: Day = write_day(rows)
    result = SizeResult(rows, day.manifest)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(scratch)

        def check(
            name: str, figures: Figures, got: list[dict[str, Any]], want: list[dict[str, Any]], run: dict[str, Figures]
        ) -> None:
            run[name] = figures
            if figures.timed_out:
                print(f"    {name:<18} {figures.text()}, load {figures.load_before:.1f}")
                return
            problem = differences(got, want)
            if problem:
                raise BenchError(f"{name}, {rows} rows: {problem}")
            print(
                f"    {name:<18} {figures.text()}, {rows / figures.wall_s:>9,.0f} rows/s, load {figures.load_before:.1f}; "
                f"{len(got)} findings identical to DuckDB's"
            )

        warm_up(day, shapes, work, timeout)
        for attempt in range(repeat):
            print(f"  run {attempt + 1} of {repeat}")
            run: dict[str, Figures] = {}
            if "ordered" in shapes:
                duck, want = anchor(day.ordered, work / "duck-ordered.json", timeout)
                check("duckdb ordered", duck, want, want, run)
                figures, got = ours(f"file:{day.ordered}", work / "ours.jsonl", timeout)
                check("ours ordered", figures, got, want, run)
                run["floor ordered"] = floor = measure([sys.executable, str(HERE / "parse_floor.py"), str(day.ordered)], timeout)
                print(f"    {'floor ordered':<18} {floor.text()}, load {floor.load_before:.1f}; polars' parse alone")
                if together:
                    figures, got = ours(f"file:{day.ordered}", work / "ours.jsonl", timeout, rules=together)
                    check("all rules ordered", figures, got, want, run)
            if shapes & {"shuffled", "response", "array"}:
                duck, want = anchor(day.shuffled, work / "duck-shuffled.json", timeout)
                check("duckdb shuffled", duck, want, want, run)
                result.findings = len(want)
                for shape, path in (("shuffled", day.shuffled), ("response", day.response), ("array", day.array)):
                    if shape in shapes:
                        figures, got = ours(f"file:{path}", work / "ours.jsonl", timeout)
                        check(f"ours {shape}", figures, got, want, run)
                        if together:
                            figures, got = ours(f"file:{path}", work / "ours.jsonl", timeout, rules=together)
                            check(f"all rules {shape}", figures, got, want, run)
            if shapes & {"iis-single", "iis-many"}:
                duck, want = anchor(day.shuffled, work / "duck-iis.json", timeout, IIS_COMPUTER)
                check("duckdb iis", duck, want, want, run)
                for shape, folder in (("iis-single", day.iis_single), ("iis-many", day.iis_many)):
                    if shape in shapes:
                        for plain in (False, True):
                            figures, got = ours(f"iis:{folder}", work / "ours.jsonl", timeout, IIS_COMPUTER, plain)
                            check(f"{'plain' if plain else 'ours'} {shape}", figures, got, want, run)
                        if together:
                            figures, got = ours(f"iis:{folder}", work / "ours.jsonl", timeout, IIS_COMPUTER, rules=together)
                            check(f"all rules {shape}", figures, got, want, run)
            result.runs.append(run)
    return result


@dataclass
class Goal:
    name: str
    ok: bool | None  # None: not measured in this run
    detail: str


def ratio_goal(name: str, mine: Figures | None, base: Figures | None, limit: float, base_name: str) -> Goal:
    if mine is None or base is None:
        return Goal(name, None, "not measured (shape not run)")
    if mine.timed_out:
        return Goal(name, False, f"ours {mine.text()}, {base_name} {base.wall_s:.2f} s")
    ratio = mine.wall_s / base.wall_s
    return Goal(name, ratio <= limit, f"{ratio:.2f}x ({mine.wall_s:.2f} s vs {base_name} {base.wall_s:.2f} s; limit {limit}x)")


def rss_goal(name: str, mine: Figures | None, limit_mb: float) -> Goal:
    if mine is None:
        return Goal(name, None, "not measured (shape not run)")
    return Goal(name, mine.peak_rss_mb <= limit_mb, f"{mine.peak_rss_mb:.0f} MB (limit {limit_mb:.0f} MB)")


def goals(sizes: list[SizeResult]) -> list[Goal]:
    found: list[Goal] = []
    for size in sizes:
        at = f" [at {size.rows:,} rows]" if size.rows not in (GOAL_ROWS, GROWTH_ROWS) else ""
        if size.rows == GROWTH_ROWS and len(sizes) > 1:
            found.append(
                ratio_goal(f"4M JSON Lines shuffled: wall <= 1.0x DuckDB{at}", size.best("ours shuffled"),
                           size.best("duckdb shuffled"), 1.0, "DuckDB shuffled")
            )  # fmt: skip
            continue
        found += [
            ratio_goal(f"JSON Lines shuffled: wall <= 1.0x DuckDB{at}", size.best("ours shuffled"),
                       size.best("duckdb shuffled"), 1.0, "DuckDB shuffled"),
            ratio_goal(f"JSON Lines time-ordered: wall <= 0.7x DuckDB{at}", size.best("ours ordered"),
                       size.best("duckdb ordered"), 0.7, "DuckDB ordered"),
            rss_goal(f"JSON Lines shuffled: peak RSS <= 300 MB{at}", size.best("ours shuffled"), 300),
            rss_goal(f"JSON Lines time-ordered: peak RSS <= 300 MB{at}", size.best("ours ordered"), 300),
            ratio_goal(f"response body: wall <= 1.5x DuckDB on the same rows as JSON Lines{at}", size.best("ours response"),
                       size.best("duckdb shuffled"), 1.5, "DuckDB shuffled"),
            rss_goal(f"response body: peak RSS <= 400 MB{at}", size.best("ours response"), 400),
            # The array is the response-body class: read as a stream, never loaded whole (its memory
            # goals). Its wall time is a figure, not a goal: json's scanner builds every row object, holding
            # the GIL, and what az prints is one query's result, at most 500,000 rows and ~100 MiB.
            rss_goal(f"array: peak RSS <= 400 MB{at}", size.best("ours array"), 400),
            ratio_goal(f"iis-single: at least as fast as the plain path{at}", size.best("ours iis-single"),
                       size.best("plain iis-single"), 1.0, "plain"),
            ratio_goal(f"iis-many: at least as fast as the plain path{at}", size.best("ours iis-many"),
                       size.best("plain iis-many"), 1.0, "plain"),
        ]  # fmt: skip
        for shape in SHAPES:
            both = size.best(f"all rules {shape}")
            if both is not None:
                found.append(
                    ratio_goal(f"{shape}: the rules run together (one read) <= {ALL_RULES_LIMIT}x the port rule alone{at}",
                               both, size.best(f"ours {shape}"), ALL_RULES_LIMIT, "one rule")
                )  # fmt: skip
        single = size.best("ours iis-single")
        if single is None:
            found.append(Goal(f"iis-single: >= 550,000 rows/s{at}", None, "not measured (shape not run)"))
        else:
            speed = 0.0 if single.timed_out else size.rows / single.wall_s
            found.append(Goal(f"iis-single: >= 550,000 rows/s{at}", speed >= 550_000, f"{speed:,.0f} rows/s ({single.text()})"))
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        growth = f"{last.rows:,} vs {first.rows:,} rows"
        for name, label, limit in (
            ("ours shuffled", "JSON Lines shuffled", 1.25),
            ("ours response", "response body", 1.25),
            ("ours array", "array", 1.25),
        ):
            small, large = first.best(name), last.best(name)
            if small is None or large is None:
                found.append(Goal(f"{label}: peak RSS grows <= {limit}x ({growth})", None, "not measured"))
                continue
            grown = large.peak_rss_mb / small.peak_rss_mb
            found.append(
                Goal(f"{label}: peak RSS grows <= {limit}x ({growth})", grown <= limit,
                     f"{grown:.2f}x ({small.peak_rss_mb:.0f} -> {large.peak_rss_mb:.0f} MB)")
            )  # fmt: skip
    return found


def import_time(tries: int = 7) -> dict[str, float]:
    """Cold `import function_app`: best of several fresh processes (import alone, and whole process)."""
    code = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"
    imports, walls = [], []
    for _ in range(tries):
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        walls.append(time.perf_counter() - started)
        imports.append(float(output))
    return {"import_s": min(imports), "process_wall_s": min(walls)}


# What each run's wall time is compared with in the table.
BASELINE = {
    "ours ordered": "duckdb ordered",
    "floor ordered": "duckdb ordered",
    "ours shuffled": "duckdb shuffled",
    "ours response": "duckdb shuffled",
    "ours array": "duckdb shuffled",
    "ours iis-single": "plain iis-single",
    "ours iis-many": "plain iis-many",
    "plain iis-single": "duckdb iis",
    "plain iis-many": "duckdb iis",
    **{f"all rules {shape}": f"ours {shape}" for shape in SHAPES},
}
ORDER = ["duckdb ordered", "ours ordered", "floor ordered", "all rules ordered", "duckdb shuffled", "ours shuffled",
         "all rules shuffled",
         "ours response", "all rules response", "ours array", "all rules array", "duckdb iis", "ours iis-single",
         "all rules iis-single", "plain iis-single", "ours iis-many", "all rules iis-many", "plain iis-many"]  # fmt: skip


def table(size: SizeResult) -> list[str]:
    lines = [
        f"{size.rows:,} rows ({size.findings} findings; iis-many: {size.manifest['iis_many_blocks']:,} directive blocks); "
        "best wall / worst peak RSS over the repeats",
        "| run | wall | peak RSS | CPU (user+sys) | rows/s | wall vs | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ORDER:
        f = size.best(name)
        if f is None:
            continue
        base = size.best(BASELINE.get(name, ""))
        versus = f"{'> ' if f.timed_out else ''}{f.wall_s / base.wall_s:.2f}x {BASELINE[name]}" if base is not None else ""
        wall = f"> {f.wall_s:.0f} s (timeout)" if f.timed_out else f"{f.wall_s:.2f} s"
        speed = "" if f.timed_out else f"{size.rows / f.wall_s:,.0f}"
        lines.append(
            f"| {name} | {wall} | {f.peak_rss_mb:.0f} MB | {f.user_s + f.sys_s:.2f} s | {speed} | {versus} "
            f"| {f.load_before:.1f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per day (repeatable); default 100000")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (figures: best wall, worst RSS)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {','.join(SHAPES)}")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run is stopped and counted as failed")
    parser.add_argument("--no-import-time", action="store_true", help="skip the cold `import function_app` figure")
    parser.add_argument(
        "--rules",
        choices=("one", "binned", "all"),
        default="one",
        help="binned: also run the three binned-threshold rules at once on each shape; all: every rule in rules/",
    )
    args = parser.parse_args()
    shapes = {s.strip() for s in args.shapes.split(",") if s.strip()}
    if shapes - set(SHAPES):
        parser.error(f"unknown shape(s) {', '.join(sorted(shapes - set(SHAPES)))}; use {', '.join(SHAPES)}")
    sizes = sorted(args.rows or [100_000])
    compiled()
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "shapes": sorted(shapes), "sizes": []}
    results: list[SizeResult] = []
    try:
        for rows in sizes:
            print(f"{rows:,} rows (load average {os.getloadavg()[0]:.1f})")
            results.append(bench(rows, shapes, args.repeat, args.timeout, together=TOGETHER.get(args.rules)))
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    for size in results:
        print("\n".join(table(size)))
        print()
        report["sizes"].append(
            {"rows": size.rows, "manifest": size.manifest, "findings": size.findings,
             "runs": [{name: vars(f) for name, f in run.items()} for run in size.runs]}
        )  # fmt: skip
    checked = goals(results)
    print("Goals (wall ratios within this run; RSS is the child's own peak):")
    for goal in checked:
        mark = "n/a " if goal.ok is None else "PASS" if goal.ok else "FAIL"
        print(f"  {mark}  {goal.name}: {goal.detail}")
    report["goals"] = [vars(g) for g in checked]
    if not args.no_import_time:
        report["import_function_app"] = timing = import_time()
        print(
            f"\ncold import function_app: {timing['import_s']:.3f} s (whole process {timing['process_wall_s']:.3f} s), best of 7"
        )
    out = DATA / f"results-{'-'.join(str(s) for s in sizes)}.json"
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"full figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
