"""What every human-facing sink shows of a finding, and how a value is made safe for each format.

A finding carries plain text from its rule (title, summary, evidence fields). Much of it comes from the
logs, so from whoever sent the requests: a scanner's user agent or user name can hold `<!channel>`, a
Slack link `<https://evil.example|sign in>`, a markdown link, HTML, NUL bytes, newlines or megabytes.
Each sink therefore renders values through one of the functions here, never verbatim:

* `visible`: control characters become their visible Unicode pictures (NUL is shown as U+2400, a line
  feed as U+240A), so a value can never start a new line or hide text; the bidi controls, which would
  reorder the text around them, are shown as escapes (U+202E as a backslash and u202e); long values are cut.
* `chat_text`: for Slack's `text` and Teams' markdown: `&`, `<`, `>` as HTML entities (what Slack asks
  for, and what stops HTML and `<...>` links in Teams), and backslash before the characters that build
  markdown links, images and code spans.
* `markdown_text`: for the Sentinel incident description (markdown with HTML): the same entities and
  backslash before every markdown character that acts inside a line (links, emphasis, code, tables).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from detector.display import BIDI_CONTROLS
from detector.kql import format_datetime
from detector.models import Finding

VALUE_LIMIT = 200  # characters of one value shown in a message; the sinks' structured fields keep all of it
LIST_LIMIT = 600  # characters of one list of values shown in a message before "... (+n more)"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x80-\x9f\u2028\u2029]")
# The bidi controls, which reorder the text around them: a client IP "\u202e9.311.0.302" would read as
# 203.0.113.9. Shown as their escapes (as the terminal display shows them), so the analyst sees them.
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")
_CHAT_SPECIAL = re.compile(r"[\\`\[\]]")
# Values never start a line (a label always comes first), so only the characters that act inside a line.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_\[\]~|]")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_HTML = re.compile(r"[&<>]")


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if code < 0x20:
        return chr(0x2400 + code)  # SYMBOL FOR NULL ... SYMBOL FOR UNIT SEPARATOR
    if code == 0x7F:
        return "\u2421"  # SYMBOL FOR DELETE
    return "\ufffd"  # C1 controls and Unicode line/paragraph separators have no picture


def visible(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value as one line of text: datetimes in ISO 8601, control characters shown, at most `limit` chars."""
    text = format_datetime(value) if isinstance(value, datetime) else str(value)
    # Lone surrogates (undecodable bytes kept by a lossy reader) cannot be encoded in a JSON body's UTF-8.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub(_picture, text)
    text = _BIDI.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


def html_escape(text: str) -> str:
    """`&`, `<`, `>` as HTML entities (quotes need none: no value goes into an attribute)."""
    return _HTML.sub(lambda m: _ENTITIES[m.group(0)], text)


def chat_text(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value for Slack `text` or Teams markdown: no mention, link, HTML or code span can be formed."""
    return _CHAT_SPECIAL.sub(lambda m: "\\" + m.group(0), html_escape(visible(value, limit)))


def markdown_text(value: Any, limit: int = VALUE_LIMIT) -> str:
    """A value for markdown that may hold HTML (the Sentinel incident description)."""
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), html_escape(visible(value, limit)))


def title_of(finding: Finding) -> str:
    """The rule's title of a finding; its rule name for a finding stored before findings had titles."""
    return finding.title or finding.rule_name


def summary_of(finding: Finding) -> str:
    """The rule's one-sentence summary; the title when the finding has none."""
    return finding.summary or title_of(finding)


def evidence_of(finding: Finding) -> tuple[tuple[str, str], ...]:
    """(label, column) pairs to show, in order, for columns the finding has; every column when none given."""
    pairs = finding.evidence or tuple((name, name) for name in finding.columns)
    return tuple((label, column) for label, column in pairs if column in finding.columns)


def listed(values: Sequence[Any], escape: Any = visible, limit: int = LIST_LIMIT) -> str:
    """Values joined by ", ", each escaped, stopping at about `limit` characters with "... (+n more)"."""
    shown: list[str] = []
    used = 0
    for value in values:
        text = escape(value)
        if used + len(text) > limit and shown:
            return f"{', '.join(shown)}, ... (+{len(values) - len(shown)} more)"
        shown.append(text)
        used += len(text) + 2
    return ", ".join(shown)


def evidence_lines(finding: Finding, escape: Any = visible, limit: int = LIST_LIMIT, fields: int | None = None) -> list[str]:
    """`Label (n): a, b` for a list, `Label: v` for a value: the finding's evidence, escaped by `escape`."""
    lines = []
    for label, column in evidence_of(finding)[:fields]:
        value = finding.columns[column]
        if isinstance(value, list | tuple):
            lines.append(f"{escape(label)} ({len(value)}): {listed(value, escape, limit)}")
        else:
            lines.append(f"{escape(label)}: {escape(value)}")
    return lines
