"""The jsonl sink and the sink registry (the stdout sink: tests/test_stdout.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.errors import ConfigError, SinkError
from detector.evaluate import evaluate
from detector.sinks import open_sink
from detector.sinks.jsonl import JsonlSink
from detector.sources import ReadRequest, open_source
from tests.helpers import DAY, FILES, RULE

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
