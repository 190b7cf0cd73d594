"""What people read about a finding, from the rule's presentation (Finding.title, summary, evidence).

Plain text only: every output format escapes these values itself. A finding stored by an older version
has no presentation; it is then described from its own columns, never from a particular rule's names.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import accumulate
from typing import Any

from detector.kql import format_datetime
from detector.models import Finding

# Characters that would act on a terminal instead of being shown: C0 and C1 controls, DEL, and the bidi
# controls that reorder text. Values come from requests an attacker sends, so they are shown escaped.
# The bidi controls (UAX #9: marks, embeddings, overrides, isolates), as a regex character class's
# members: every human-facing output escapes them (here, detector/sinks/presentation.py and the
# evidence query of detector/sinks/sentinel.py). U+2028 and U+2029 end a line for some terminals.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{BIDI_CONTROLS}]")


def printable(text: str) -> str:
    r"""Text safe to write to a terminal: unsafe characters become \xNN or \uNNNN escapes."""
    if text.isprintable():  # no control or format character, so nothing to escape (and quicker to learn)
        return text
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def title_of(finding: Finding) -> str:
    """The rule's short subject for the finding; its entities' identifiers when it has none."""
    title = str(getattr(finding, "title", "") or "")
    if title:
        return title
    names = [value for entity in finding.entities for value in entity.fields.values()]
    return ", ".join(dict.fromkeys(names)) or finding.id


def summary_of(finding: Finding) -> str:
    """The rule's one-sentence summary; the title when it has none."""
    return str(getattr(finding, "summary", "") or "") or title_of(finding)


def evidence_of(finding: Finding) -> tuple[tuple[str, str], ...]:
    """(label, column) pairs the rule puts first; every column, labelled by its name, when it names none."""
    evidence: tuple[tuple[str, str], ...] = tuple(getattr(finding, "evidence", ()) or ())
    if evidence:
        return evidence
    return tuple((name, name) for name in finding.columns)


def value_text(value: Any) -> str:
    """A column value as printable text: datetimes in ISO 8601 UTC, sets joined by ', ', controls escaped."""
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(item_texts(value))
    return "" if value is None else printable(str(value))


def item_texts(values: Iterable[Any]) -> list[str]:
    """value_text of each value of a set, in its order.

    Sets of plain str and int values (nearly every set) take no call per value: their text is str(value),
    escaped only when one of them holds an unsafe character (escaping is per character, so escaping each
    value or none of them gives the same text).
    """
    values = values if isinstance(values, list | tuple) else list(values)
    if set(map(type, values)) <= {str, int}:
        texts = list(map(str, values))
        return texts if all(map(str.isprintable, texts)) else [printable(text) for text in texts]
    return [value_text(v) for v in values]


def shorten(text: str, limit: int) -> str:
    """Text cut to `limit` characters, marked with '...' when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..." if limit >= 3 else text[:limit]


def shorten_list(values: list[Any] | tuple[Any, ...], limit: int) -> str:
    """A set shortened to fit `limit` characters, saying how many values were left out: 'a, b, ... (+28)'."""
    return shorten_texts(item_texts(values), limit)


def shorten_texts(items: Sequence[str], limit: int) -> str:
    """shorten_list of a set whose values are already text (item_texts, in the set's order)."""
    count = len(items)
    # ends[k] - 2: len(", ".join(items[: k + 1])), added up in C rather than joined value by value.
    ends = list(accumulate(map((2).__add__, map(len, items))))
    if (ends[-1] - 2 if ends else 0) <= limit:
        return ", ".join(items)
    # Showing values 0..k costs ends[k] - 2 + len(", ... (+N)") for the N = count - k - 1 left out. That
    # grows with k (a value adds 2 or more, N loses at most a digit), so the values shown are the longest
    # run that fits; the last value alone would show the whole set, which does not fit.
    shown = bisect_left(range(count - 1), True, key=lambda k: ends[k] + 7 + len(str(count - k - 1)) > limit)
    left = count - shown
    if not shown:  # not even the first value fits: show the start of it
        suffix = f" (+{left - 1})" if left > 1 else ""
        return shorten(items[0], max(limit - len(suffix), 3)) + suffix
    text = ", ".join(items[:shown]) + f", ... (+{left})"
    return text if len(text) <= limit else shorten(text, limit)
