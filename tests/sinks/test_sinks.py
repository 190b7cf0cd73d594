"""The jsonl sink and the sink registry (the stdout sink: tests/sinks/test_stdout.py)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from detector.errors import ConfigError, SinkError
from detector.evaluate import evaluate
from detector.models import Finding
from detector.sinks import open_sink
from detector.sinks.jsonl import JsonlSink
from detector.sources import ReadRequest, open_source
from tests.helpers import DAY, FILES, ROOT, RULE

FINDINGS = evaluate(
    RULE,
    open_source(f"file:{FILES / 'w3ciislog.jsonl'}").read(ReadRequest(DAY, RULE.logic.columns, RULE.logic.required_columns)),
    DAY,
)


def test_jsonl_upserts_by_finding_id(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    sink = JsonlSink(path)
    sink.deliver(FINDINGS[:3])
    sink.deliver(FINDINGS[2:])
    ids = [json.loads(line)["FindingId"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert ids == [f.id for f in FINDINGS]


def test_jsonl_refuses_to_overwrite_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text("my notes\n", encoding="utf-8")
    with pytest.raises(SinkError, match=r"notes\.jsonl:1 is not a findings file line"):
        JsonlSink(path).deliver(FINDINGS)
    assert path.read_text(encoding="utf-8") == "my notes\n"


@pytest.mark.parametrize(
    ("spec", "message"), [("jsonl", "jsonl needs a path"), ("stdout:x", "takes no argument"), ("nope", "unknown sink 'nope'")]
)
def test_bad_sink_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_sink(spec)


def _findings(prefix: str, count: int) -> list[Finding]:
    return [dataclasses.replace(FINDINGS[0], id=f"{prefix}-{i:03d}") for i in range(count)]


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["FindingId"] for line in path.read_text(encoding="utf-8").splitlines()]


_WRITER = """
import dataclasses, sys, time
from pathlib import Path
from detector.sinks.jsonl import JsonlSink
from tests.sinks.test_sinks import FINDINGS
target, prefix, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
sink = JsonlSink(target)
for i in range(int(sys.argv[4])):
    sink.deliver([dataclasses.replace(FINDINGS[0], id=f"{prefix}-{i:03d}")])
"""


def test_two_processes_writing_one_file_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    target, go = tmp_path / "findings.jsonl", tmp_path / "go"
    count = 40
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(target), name, str(go), str(count)], cwd=ROOT) for name in ("a", "b")
    ]
    go.touch()  # both start together, so their read-merge-replace cycles interleave
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    ids = _ids(target)
    assert sorted(ids) == sorted(f"{name}-{i:03d}" for name in ("a", "b") for i in range(count))


def test_the_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    JsonlSink(path).deliver(FINDINGS[:1])
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # a new file: as open() would make it
    path.chmod(0o640)
    JsonlSink(path).deliver(FINDINGS[1:2])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _ids(path) == [FINDINGS[0].id, FINDINGS[1].id]


def test_a_symlinked_path_stays_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real" / "f.jsonl"
    target.parent.mkdir()
    JsonlSink(target).deliver(FINDINGS[:1])
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    JsonlSink(link).deliver(FINDINGS[1:2])
    assert link.is_symlink()
    assert _ids(target) == [FINDINGS[0].id, FINDINGS[1].id]


def test_jsonl_dash_writes_json_lines_to_standard_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sink = open_sink("jsonl:-")
    assert sink.describe() == "jsonl:-"
    sink.deliver(FINDINGS[:2])
    sink.deliver(FINDINGS[:1])  # a stream is appended to, never read back: no upsert
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["FindingId"] for line in lines] == [FINDINGS[0].id, FINDINGS[1].id, FINDINGS[0].id]
    assert not (Path.cwd() / "-").exists()


def test_a_fifo_is_written_as_a_stream_and_never_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []

    def read() -> None:
        with fifo.open(encoding="utf-8") as handle:
            received.extend(handle.read().splitlines())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writer = threading.Thread(target=JsonlSink(fifo).deliver, args=(FINDINGS[:3],), daemon=True)
    writer.start()
    writer.join(timeout=20)
    assert not writer.is_alive(), "the sink hangs on a FIFO"
    reader.join(timeout=20)
    assert [json.loads(line)["FindingId"] for line in received] == [f.id for f in FINDINGS[:3]]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_device_is_written_as_a_stream_and_stays_a_device() -> None:
    JsonlSink(Path("/dev/null")).deliver(FINDINGS)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_value_utf8_cannot_carry_does_not_block_the_other_findings(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    broken = dataclasses.replace(FINDINGS[0], columns={**FINDINGS[0].columns, "cIP": "10.0.0.1\ud800"})
    JsonlSink(path).deliver([broken, FINDINGS[1]])
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["FindingId"] for r in records] == [FINDINGS[0].id, FINDINGS[1].id]
    assert records[0]["cIP"] == "10.0.0.1\ud800"  # escaped as \\ud800 in the file, read back as it was


def test_a_file_locked_by_another_writer_is_a_sink_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    with (tmp_path / ".f.jsonl.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SinkError, match=r"f\.jsonl is locked by another writer"):
            JsonlSink(path, lock_timeout=0).deliver(FINDINGS[:1])
    JsonlSink(path, lock_timeout=0).deliver(FINDINGS[:1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", "is not a findings file (not UTF-8 text)"),
        (b"[" * 100_000 + b"\n", "is not a findings file line"),
        (b'{"FindingId": ["x"]}\n', "is not a findings file line"),
        (b'{"FindingId": "x", "n": ' + b"9" * 5000 + b"}\n", "is not a findings file line"),  # json's digit limit
    ],
)
def test_a_foreign_file_is_never_overwritten(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    with pytest.raises(SinkError, match=re.escape(message)):
        JsonlSink(path).deliver(FINDINGS[:1])
    assert path.read_bytes() == content


def test_a_folder_as_target_is_a_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="cannot write"):
        JsonlSink(tmp_path).deliver(FINDINGS[:1])


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_the_cli_pipes_json_lines_to_standard_output(target: str) -> None:
    command = [sys.executable, "-m", "detector", "run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}"]
    command += ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-27T00:00:00Z", "--sink", f"jsonl:{target}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["FindingId"] for line in done.stdout.splitlines()] == [f.id for f in FINDINGS]
