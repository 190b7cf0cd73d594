"""Real-world-shaped IIS log folders, written at test time (into tmp_path), for the reader's hard cases.

What real servers and copies of their logs look like (IIS W3C logging; log shippers' bug reports):
- a low-traffic site: `#Software`/`#Version`/`#Date`/`#Fields` written again every few entries (IIS
  writes a new header block whenever the worker process recycles or logging restarts);
- a crash: the file padded with NUL bytes up to its preallocated size, then a fresh header block and
  entries when the server came back (the NULs run into the next directive's line);
- a data line with an extra empty field, trailing spaces after the last field;
- the last line of a file still being written (no line break yet);
- a #Fields block without s-ip (an administrator trimmed the field list);
- FTP logs (FTPSVC<n> folders, #Fields with x-session and x-fullpath) and SMTP logs (SMTPSVC<n>), which
  are not web requests and are not W3CIISLog.
`write_folder` returns what it wrote (the good entries, the malformed line numbers per file), so tests
check the reader against the generator's own record of the truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

DAY = datetime(2026, 11, 26, tzinfo=UTC)
WEB_FIELDS = (
    "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) "
    "sc-status sc-substatus sc-win32-status time-taken"
)
NO_SIP_FIELDS = (
    "date time cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-substatus sc-win32-status"
)
FTP_FIELDS = (
    "date time c-ip cs-username s-ip s-port cs-method cs-uri-stem sc-status sc-win32-status sc-substatus x-session x-fullpath"
)


@dataclass
class Written:
    """What a generated folder holds."""

    root: Path
    entries: list[dict[str, str]] = field(default_factory=list)  # every good web entry (field -> value)
    malformed: dict[str, list[int]] = field(default_factory=dict)  # file -> line numbers of malformed lines
    truncated: Path | None = None  # the file whose last line has no line break yet
    truncated_rest: str = ""  # what the writer still has to write to finish it


def _header(moment: datetime, fields: str) -> list[str]:
    return [
        "#Software: Microsoft Internet Information Services 10.0",
        "#Version: 1.0",
        f"#Date: {moment:%Y-%m-%d %H:%M:%S}",
        f"#Fields: {fields}",
    ]


def _web_entry(rng: random.Random, moment: datetime, client: str, port: int, fields: str) -> tuple[str, dict[str, str]]:
    values = {
        "date": f"{moment:%Y-%m-%d}",
        "time": f"{moment:%H:%M:%S}",
        "s-ip": "10.0.0.4",
        "cs-method": rng.choice(["GET", "POST"]),
        "cs-uri-stem": "/owa/auth.owa",
        "cs-uri-query": rng.choice(["-", "MailboxId=abc&x=1", "q=a+b%20c"]),
        "s-port": str(port),
        "cs-username": rng.choice(["-", "CONTOSO\\alice"]),
        "c-ip": client,
        "cs(User-Agent)": "Mozilla/5.0+(Windows+NT+10.0)",
        "cs(Referer)": "-",
        "sc-status": rng.choice(["200", "401", "403"]),
        "sc-substatus": "0",
        "sc-win32-status": rng.choice(["0", "1326"]),
        "time-taken": str(rng.randrange(1, 900)),
    }
    names = fields.split()
    return " ".join(values[name] for name in names), {name: values[name] for name in names}


def write_folder(root: Path, seed: int = 1) -> Written:
    """A LogFiles folder: W3SVC1 (busy, with every damage), W3SVC2 (quiet, a header every few lines),
    FTPSVC2 and SMTPSVC1 (not web logs). Scanners make findings in W3SVC1 and W3SVC2."""
    rng = random.Random(seed)
    written = Written(root)
    web1, web2 = root / "W3SVC1", root / "W3SVC2"
    for folder in (web1, web2, root / "FTPSVC2", root / "SMTPSVC1"):
        folder.mkdir(parents=True)

    # W3SVC1: a scan of 40 ports at 03:00, noise, a crash with NUL padding, damaged lines.
    lines: list[str] = _header(DAY, WEB_FIELDS)
    malformed: list[int] = []
    moments = sorted(DAY + timedelta(seconds=rng.randrange(0, 6 * 3600)) for _ in range(300))
    scan = [DAY + timedelta(hours=3, seconds=s) for s in range(40)]
    events = sorted([(m, "noise") for m in moments] + [(m, "scan") for m in scan])
    for index, (moment, kind) in enumerate(events):
        client = "198.51.100.7" if kind == "scan" else f"203.0.113.{rng.randrange(1, 20)}"
        port = 1000 + index if kind == "scan" else rng.choice([80, 443])
        line, values = _web_entry(rng, moment, client, port, WEB_FIELDS)
        if index == 120:
            lines.append(line.replace(" ", "  ", 1))  # an extra empty field: malformed
            malformed.append(len(lines))
            continue
        if index == 121:
            line += "   "  # trailing spaces: read, nothing is lost
        lines.append(line)
        written.entries.append(values)
        if index == 200:
            # The crash: NUL padding where the preallocated file was never written; the restarted server's
            # header block follows the NULs on the same "line".
            lines.append("\x00" * 300)
            malformed.append(len(lines))
            restart = _header(moment, WEB_FIELDS)
            lines.append("\x00" * 50 + restart[0])
            lines.extend(restart[1:])
    lines.append("2026-11-26 05:59:59 10.0.0.4 GET /x - 80 - 203.0.113.9 curl - 200 0 0 1 extra")  # 16 fields
    malformed.append(len(lines))
    (web1 / "u_ex261126.log").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    written.malformed[str(web1 / "u_ex261126.log")] = malformed

    # W3SVC2: a quiet site, a header block every 3 entries, one block without s-ip, and a scan of 35 ports
    # at 09:00 whose last entry is still being written.
    lines = []
    for index in range(120):
        moment = DAY + timedelta(hours=9, seconds=index * 3)
        fields = NO_SIP_FIELDS if 30 <= index < 33 else WEB_FIELDS
        if index % 3 == 0:
            lines.extend(_header(moment, fields))
        client = "198.51.100.8" if index < 35 else "203.0.113.30"
        line, values = _web_entry(rng, moment, client, 2000 + index if index < 35 else 80, fields)
        lines.append(line)
        written.entries.append(values)
    lines.extend(_header(DAY + timedelta(hours=9, minutes=7), WEB_FIELDS))
    last, values = _web_entry(rng, DAY + timedelta(hours=9, minutes=7), "198.51.100.8", 2999, WEB_FIELDS)
    cut = len(last) - 6
    path = web2 / "u_ex261126.log"
    path.write_bytes(("\r\n".join(lines) + "\r\n" + last[:cut]).encode("utf-8"))
    written.truncated, written.truncated_rest = path, last[cut:] + "\r\n"
    written.malformed[str(path)] = [len(lines) + 1]
    written.entries.append(values)  # good once the writer finishes it

    # FTP and SMTP logs: W3C files with the same names, not web requests.
    ftp = [*_header(DAY, FTP_FIELDS)]
    for second in range(50):
        ftp.append(f"2026-11-26 03:00:{second:02d} 198.51.100.9 - 10.0.0.4 21 ControlChannelOpened - - 0 0 session{second} -")
    (root / "FTPSVC2" / "u_ex261126.log").write_text("\r\n".join(ftp) + "\r\n", encoding="utf-8")
    smtp = [*_header(DAY, WEB_FIELDS)]
    for second in range(50):
        smtp.append(_web_entry(rng, DAY + timedelta(hours=3, seconds=second), "198.51.100.9", 25 + second, WEB_FIELDS)[0])
    (root / "SMTPSVC1" / "u_ex261126.log").write_text("\r\n".join(smtp) + "\r\n", encoding="utf-8")
    return written


def ftp_file_outside_its_folder(path: Path) -> None:
    """An FTP log copied next to web logs: only its #Fields says what it is."""
    lines = [*_header(DAY, FTP_FIELDS)]
    for second in range(40):
        lines.append(f"2026-11-26 04:00:{second:02d} 198.51.100.10 - 10.0.0.4 {21 + second} USER - 331 0 0 s{second} -")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
