"""`jsonl:<path>`: one JSON object per finding, upserted by FindingId, written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.atomicfile import write_atomically
from detector.errors import ConfigError, SinkError
from detector.models import Finding
from detector.sinks import Sink, register_sink


class JsonlSink(Sink):
    """Keeps one line per finding id: a rerun replaces a finding's line instead of appending a copy.

    The file is rewritten through a temporary file in the same folder and renamed over the old one, so a
    reader never sees a half-written file and a failed run leaves the previous file untouched.
    """

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"jsonl:{self.path}"

    def deliver(self, findings: Sequence[Finding]) -> None:
        records: dict[str, dict[str, Any]] = {}
        try:
            if self.path.exists():
                with self.path.open("r", encoding="utf-8") as handle:
                    for number, line in enumerate(handle, start=1):
                        if line.strip():
                            try:
                                record = json.loads(line)
                                records[record["FindingId"]] = record
                            except (json.JSONDecodeError, KeyError, TypeError):
                                raise SinkError(
                                    f"jsonl:{self.path}:{number} is not a findings file line; "
                                    "point the sink at a new file or remove this one"
                                ) from None
            for finding in findings:
                records[finding.id] = finding.to_json()
            write_atomically(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values()))
        except OSError as exc:
            raise SinkError(
                f"jsonl:{self.path}: cannot write ({exc.strerror}); check the folder exists and is writable"
            ) from None


@register_sink("jsonl")
def _open(argument: str, settings: object) -> Sink:
    if not argument:
        raise ConfigError("--sink", "jsonl needs a path: jsonl:/path/findings.jsonl")
    return JsonlSink(Path(argument))
