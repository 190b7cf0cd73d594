"""Sources of W3CIISLog rows, chosen by a `scheme:argument` spec.

Layering, one way only: a format reader (file.py: JSON Lines, JSON arrays, saved Log Analytics
responses; iis.py: W3C logs; loganalytics.py with kql_query.py: a workspace) uses the pushdown layer
(candidates.py for files, kql_query.py for KQL), which uses the rule's description (detector.pushdown);
no reader imports another, and the pushdown layer imports no reader.

Malformed input lines are a reader's business, reported the same way by every reader: a `MalformedLine`
is skipped, counted per file and logged as one WARNING naming file:line and a short reason (the first
few per file; then a count), or, with strict reading (DETECTOR_STRICT, --strict), it is an error.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import orjson

from detector.errors import ConfigError, InputError, shown
from detector.models import Row, Window
from detector.pushdown import CandidateSpec
from detector.w3ciislog import ColumnError, coerce_row

if TYPE_CHECKING:
    from detector.config import Settings


_T = TypeVar("_T")


@dataclass(frozen=True)
class ReadRequest:
    """What the rule needs from a source for one window."""

    window: Window
    columns: tuple[str, ...]  # the columns the rule reads; a source may return only these
    required: tuple[str, ...]  # columns the data must have; absent ones are an InputError
    candidates: CandidateSpec | None = None  # what the source may push down (detector.pushdown)

    def read_columns(self) -> tuple[str, ...]:
        """The columns to read: the rule's, and those its pushdown description reads."""
        cached: tuple[str, ...] | None = self.__dict__.get("_read_columns")
        if cached is None:  # asked once per row read: worked out once (the request is frozen)
            extra = self.candidates.columns() if self.candidates is not None else ()
            cached = tuple(dict.fromkeys((*self.columns, *extra)))
            object.__setattr__(self, "_read_columns", cached)
        return cached


class Source(ABC):
    """Yields typed W3CIISLog rows with window.start <= TimeGenerated < window.end.

    A source either returns every row the rule needs for the window or raises: a partial answer is never
    returned as complete.

    `shares_reads`: True when one read with a SharedSpec (detector.pushdown) answers several rules in the
    passes of one (the file readers: the runner then reads each window once for every rule due); False
    when each rule is better served by its own pushed-down request (a Log Analytics workspace, where
    every rule's queries run server-side).
    """

    shares_reads: ClassVar[bool] = False

    @abstractmethod
    def read(self, request: ReadRequest) -> Iterator[Row]:
        """Rows for the request's window."""

    def describe(self) -> str:
        """A short human description (for logs and the run summary)."""
        return type(self).__name__

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        """Bins of `window` holding rows that arrived after `ingested_after`, for the late-data re-check.

        None means the source cannot tell, and every bin of the window is re-evaluated (which is always
        safe: re-evaluating a bin that did not change produces the same findings, and they are not sent again).
        """
        return None

    def read_stats(self) -> dict[str, Any]:
        """Figures about the last read for the run summary: `rowsRead` (rows of the window the source
        read, before any pushdown), `skippedLines` and `skippedByFile`, and source-specific counters."""
        return {}

    def skip_causes(self) -> frozenset[tuple[str, str]] | None:
        """Why the last read skipped lines (LineReport.causes): which a read of other columns might have
        kept. None when not known, as here: a caller must assume any other read would keep them."""
        return None


# MalformedLine.causes of a line that every read skips, whatever columns it reads (not JSON, not an object).
EVERY_READ: frozenset[tuple[str, str]] = frozenset()


class MalformedLine(InputError):  # noqa: N818 - a skipped line, an error only when reading is strict
    """One line (or row) of input cannot be read; skipped and counted unless reading is strict."""

    def __init__(
        self, file: str, line: int | str | None, reason: str, *, causes: frozenset[tuple[str, str]] | None = None
    ) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        # Why, for a read of other columns: ColumnError causes ("missing"/"value", column); empty when every
        # read skips the line (not JSON, not an object, cut short); None when not known (assume any read may not).
        self.causes = causes
        where = file if line is None else f"{file}:{line}" if isinstance(line, int) else f"{file}: {line}"
        super().__init__(where, reason)


log = logging.getLogger(__name__)
WARNINGS_PER_FILE = 10  # then one line with the count, so a broken file cannot flood the log


class LineReport:
    """Malformed lines of one read: one WARNING each (a few per file), counts per file, strict makes them errors.

    A reader may pass over a file more than once (a fast first pass, then the plain read); a line is
    counted and logged once however often it is seen.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.rows_read = 0
        self._seen: dict[str, set[int | str | None]] = {}
        self._notices: set[str] = set()
        self._causes: set[tuple[str, str]] | None = set()

    def skip(self, error: MalformedLine) -> None:
        """Skip the line (or raise it, when strict)."""
        if self.strict:
            raise InputError(error.where, f"{error.reason} (strict reading: malformed lines are errors)")
        if error.causes is None:
            self._causes = None
        elif self._causes is not None:
            self._causes.update(error.causes)
        seen = self._seen.setdefault(error.file, set())
        if error.line in seen:
            return
        seen.add(error.line)
        if len(seen) <= WARNINGS_PER_FILE:
            # The reason may quote the line's values: escaped, so a value cannot forge a log line.
            log.warning("skipped malformed line %s: %s", shown(error.where, 500), shown(error.reason, 500))
        elif len(seen) == WARNINGS_PER_FILE + 1:
            log.warning("%s: more malformed lines; only the count is reported from here on", error.file)

    def notice(self, text: str, *, warning: bool = True) -> None:
        """Something about the input worth one line in the log (said once per read)."""
        if text not in self._notices:
            self._notices.add(text)
            (log.warning if warning else log.info)("%s", text)

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped lines per file."""
        return {file: len(lines) for file, lines in self._seen.items() if lines}

    def causes(self) -> frozenset[tuple[str, str]] | None:
        """Why the skipped lines were skipped (MalformedLine.causes, every line's); None when not known for one."""
        return None if self._causes is None else frozenset(self._causes)

    def stats(self) -> dict[str, Any]:
        """The read_stats() figures."""
        skipped = self.skipped
        return {"rowsRead": self.rows_read, "skippedLines": sum(skipped.values()), "skippedByFile": skipped}


_SURROGATE = re.compile("[\ud800-\udfff]")


def nesting_safe(parse: Callable[..., _T], *args: Any) -> _T:
    """parse(*args) (json.loads, raw_decode), with a nesting limit that does not depend on the caller's stack.

    json's scanner counts a value's nesting against the recursion limit from the current stack depth, so
    the same line could parse in one read and raise RecursionError in another reading it from deeper
    down (the fast read's taking of candidate rows): a lost finding. On RecursionError the parse is run
    again on a fresh thread, whose stack is always as shallow, so a line parses (up to ~990 levels) or
    raises RecursionError wherever it is read.
    """
    try:
        return parse(*args)
    except RecursionError:
        pass
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, parse(*args)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="json-nesting")
    thread.start()
    thread.join()
    succeeded, result = outcome[0]
    if not succeeded:
        raise result
    return result  # type: ignore[no-any-return]


_PLAIN_VALUES = frozenset({str, int, bool, type(None)})
_JSON_DEPTH = 900  # fewer opening brackets than this cannot nest as deep as json refuses


def json_object(text: str) -> tuple[Any, bool]:
    """(json.loads(text) as nesting_safe runs it, whether its strings are known to hold no lone surrogate).

    orjson parses a row several times faster than json. Its answer is used only when it is an object
    of strings, integers, booleans and nulls, and then it is json's answer. orjson refuses everything
    json refuses. It also refuses NaN and Infinity, numbers that overflow a double, lone surrogates
    (escaped or in the text) and nesting past 1,024 levels. Text both accept gets different values in
    two cases, and this check sends both back to json: an integer beyond 64 bits, which orjson makes a
    float, and nesting, which json limits lower (~990 levels, from the stack). Everything else is parsed
    by json, whose value or error the caller gets (tests/sources/test_json_object.py: hypothesis, both
    ways). A value from orjson has no lone surrogate, so `typed` need not look for one.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    else:
        # A duplicate key can hide a value nested deeper than json takes (orjson allows 1,024 levels, json
        # ~990): a line with that many brackets goes to json, which refuses it as it always did.
        if (
            value.__class__ is dict
            and _PLAIN_VALUES.issuperset(map(type, value.values()))
            and (len(text) < _JSON_DEPTH or text.count("[") + text.count("{") < _JSON_DEPTH)
        ):
            return value, True
    return nesting_safe(json.loads, text), False


def has_lone_surrogate(text: str) -> bool:
    """Whether the text holds a surrogate code point (which only JSON's \\ud800 escapes can produce)."""
    return _SURROGATE.search(text) is not None


def representable(row: Row) -> Row:
    """The row with lone surrogates (which JSON's \\ud800 escapes can produce and no sink can encode) as U+FFFD."""
    for name, value in row.items():
        if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
            row[name] = _SURROGATE.sub("\ufffd", value)
    return row


def typed(raw: Mapping[str, Any], request: ReadRequest, where: str, line: int | str | None, *, clean: bool = False) -> Row:
    """A raw mapping as a typed, representable row; a value that does not fit raises MalformedLine.

    `clean`: the raw values are known to hold no lone surrogate (json_object said so), so none is looked for.
    """
    label = where if line is None else f"{where}:{line}" if isinstance(line, int) else f"{where}: {line}"
    causes: frozenset[tuple[str, str]] | None = None
    try:
        row = coerce_row(raw, request.read_columns(), request.required, label)
        return row if clean else representable(row)
    except InputError as exc:
        reason = exc.problem  # (str(exc) starts with the label, escaped when the path holds a control character)
        if isinstance(exc, ColumnError):
            causes = frozenset({exc.cause})
    except OverflowError:
        reason = "a datetime out of range (before year 1 or after 9999 in UTC)"  # causes not known: None
    # Raised outside the handler: no __context__, whose traceback would hold the caller's frames (a
    # reader that keeps the error a moment, as an explanation, keeps its whole block alive in a cycle).
    raise MalformedLine(where, line, reason, causes=causes)


def files_changed_after(paths: list[Path], moment: datetime) -> bool:
    """True when any file was modified after `moment` (how local sources detect late data)."""
    return any(path.stat().st_mtime > moment.timestamp() for path in paths)


SourceFactory = Callable[[str, "Settings"], Source]
_FACTORIES: dict[str, SourceFactory] = {}


def register_source(scheme: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a factory(argument, settings) for `scheme:argument` source specs."""

    def decorate(factory: SourceFactory) -> SourceFactory:
        if scheme in _FACTORIES:
            raise RuntimeError(f"source scheme {scheme} registered twice")
        _FACTORIES[scheme] = factory
        return factory

    return decorate


def open_source(spec: str, settings: Settings | None = None, *, setting: str = "--source") -> Source:
    """Build the source a spec names, e.g. file:rows.jsonl, iis:C:/inetpub/logs, loganalytics:<id>.

    `settings` is the run's one Settings object (None: built from the environment, for CLI callers).
    """
    from detector.config import settings_or_env

    scheme, sep, argument = spec.partition(":")
    _load_builtin(scheme)
    if not sep or scheme not in _FACTORIES or not argument:
        known = sorted(set(_FACTORIES) | set(_BUILTIN))
        raise ConfigError(setting, f"unknown source '{shown(spec)}'; use one of {', '.join(f'{s}:<...>' for s in known)}")
    return _FACTORIES[scheme](argument, settings_or_env(settings))


# The built-in sources, each registering itself when imported. Only the one a spec names is imported, so
# that importing the package (and function_app) stays cheap and a run over files does not load the Log
# Analytics client code.
_BUILTIN = {"file": "detector.sources.file", "iis": "detector.sources.iis", "loganalytics": "detector.sources.loganalytics"}


def _load_builtin(scheme: str) -> None:
    module = _BUILTIN.get(scheme)
    if module is not None and scheme not in _FACTORIES:
        importlib.import_module(module)
