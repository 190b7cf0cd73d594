"""`stdout`: a readable table for people."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from detector.errors import ConfigError
from detector.kql import format_datetime
from detector.models import Finding
from detector.sinks import Sink, register_sink


def _short(values: list[object], limit: int = 60) -> str:
    text = ",".join(str(v) for v in values)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StdoutSink(Sink):
    """Prints one line per finding, with the columns an analyst looks at first."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def deliver(self, findings: Sequence[Finding]) -> None:
        out = self.stream or sys.stdout
        if not findings:
            out.write("No findings.\n")
            return
        headers = ("TimeGenerated", "cIP", "Computer", "sIP", "portCount", "ConnectionsCount", "set_sPort", "FindingId")
        rows = []
        for f in findings:
            c = f.columns
            rows.append(
                (
                    format_datetime(c["TimeGenerated"]),
                    str(c.get("cIP", "")),
                    str(c.get("Computer", "")),
                    str(c.get("sIP", "")),
                    str(c.get("portCount", "")),
                    str(c.get("ConnectionsCount", "")),
                    _short(list(c.get("set_sPort", []))),
                    f.id,
                )
            )
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
        for r in rows:
            out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
        out.write(f"{len(findings)} finding(s) of {', '.join(sorted({f.rule_name for f in findings}))}.\n")
        out.flush()


@register_sink("stdout")
def _open(argument: str, settings: object) -> Sink:
    if argument:
        raise ConfigError("--sink", "stdout takes no argument; write 'stdout'")
    return StdoutSink()
