"""What a rule lets a source push down, as data: a row filter, group keys, a time bin, a measure, a threshold.

The shape follows pySigma's correlation rules (a type, group-by fields, a timespan and a condition
described as data, translated by each backend) with sqlglot-style capability flags where a target cannot
take part. A rule returns one `CandidateSpec` from `RuleLogic.candidate_spec()`; every source (Log
Analytics KQL, the JSON Lines and IIS first passes, the plain readers) reads that one description.

    CandidateSpec(
        filter=column("scStatus").in_("401", "403") & column("csUserName").ne("-"),
        keys=("cIP", "Computer", "sIP"),
        time_bin=timedelta(minutes=1),          # None: the whole window is one bin
        measure=Count(),                        # or DistinctCount("sPort"), or Opaque("why")
        threshold=Threshold(">=", 20),          # None: no threshold to prune by
    )

Fields (all keyword-only):
- `filter`: a `Predicate` over W3CIISLog columns, or None for every row. Nodes: `Compare` (==, !=, =~,
  !~), `InSet` (in, !in, in~, !in~), `StartsWith` (startswith, !startswith: case-insensitive as in KQL;
  startswith_cs, !startswith_cs), `Term` (has, hasprefix, contains and their negations, with Kusto's
  term rules; `has_any` is an `Or` of `has`), `StringSize` (string_size(column) < <= > >= == != an
  integer), `And`, `Or`, `Not`, and `Opaque(reason)` for a condition the rule
  applies itself that no source can push down. Build them with `column(name)` and `&`, `|`, `~`.
  String columns compare with strings (a missing string is "" as KQL has no null string); int/long
  columns compare with integers, only with ==, != and (!)in, and a null there is never equal to a value
  (so != and !in hold for it, as in KQL).
- `keys`: group-by columns besides the time bin (any W3CIISLog columns; the file first passes handle
  string keys, other key types read the plain way).
- `time_bin`: bin(TimeGenerated, time_bin) is part of the group; None means the whole window.
- `measure`: `Count()` (rows of the group that pass the filter), `DistinctCount(column)` (distinct
  non-null values), or `Opaque(reason)` when the rule measures something a source cannot compute.
- `first_phase`: `FirstPhase(key, filter, recent)` for a two-phase query (`key in (<first query>)`), which
  Log Analytics runs as two small queries instead of reading the whole window (see FirstPhase).
- `threshold`: `Threshold(op, value)` with op one of >=, >, <, <=, ==, !=. Only the monotonic >= and >
  allow pruning (a group below them stays below on any subset of its rows); with any other operator,
  an Opaque measure or no threshold, a source may filter rows but never drops a group.

Contract between rules and sources. A source returns, for the window, a superset of the rows that pass
`filter` and belong to groups whose measure meets a pruning threshold; it never returns fewer. A rule
must therefore apply its own filter and threshold in `evaluate` (it may call `filter.matches(row)`,
which gives KQL's answer), and its result on such a superset must be its result on every row.
Targets translate the filter so that what they keep is a superset of what `matches` keeps:
- Python (`admits`): exact; `Opaque` admits every row.
- polars (`polars_admits`): exact, except that the case-insensitive operators admit every non-ASCII
  value (Python's and polars' Unicode lower-casing may differ; for ASCII both are the same).
- KQL (`kql_admits`): exact, the literals built by detector.kql.string_literal; the parts of the filter
  under an `Opaque` are widened away (None when nothing is left, meaning every row).
Negation is pushed down to the leaves first (`Not(And(a, b))` becomes `Or(~a, ~b)`), so widening an
`Opaque` or a non-ASCII value always widens the result, under any number of `not`s.

The capability flags (`Capabilities`) say what each target can take part in; a source asks
`spec.plan(capabilities)` which of filter and pruning it may use and falls back for the rest.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from detector.kql import bin_datetime, format_timespan, string_literal
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import polars as pl

    from detector.models import Window

TIME = "TimeGenerated"
CompareOp = Literal["==", "!=", "=~", "!~"]
InOp = Literal["in", "!in", "in~", "!in~"]
TermOp = Literal["has", "!has", "hasprefix", "!hasprefix", "contains", "!contains"]
ThresholdOp = Literal[">=", ">", "<", "<=", "==", "!="]
_NEGATED_COMPARE: dict[str, CompareOp] = {"==": "!=", "!=": "==", "=~": "!~", "!~": "=~"}
_NEGATED_IN: dict[str, InOp] = {"in": "!in", "!in": "in", "in~": "!in~", "!in~": "in~"}
_NEGATED_TERM: dict[str, TermOp] = {
    "has": "!has",
    "!has": "has",
    "hasprefix": "!hasprefix",
    "!hasprefix": "hasprefix",
    "contains": "!contains",
    "!contains": "contains",
}
_NON_ASCII = r"[^\x00-\x7F]"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _column_kind(name: str) -> str:
    kind = COLUMN_TYPES.get(name)
    if kind is None or name == TIME:
        raise ValueError(f"{name!r} is not a W3CIISLog column a filter or group can use")
    return kind


def _check_literal(column: str, value: object, case_insensitive: bool, op: str) -> None:
    kind = _column_kind(column)
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{column} is a string column: compare it with a string, not {value!r}")
    elif kind in ("int", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{column} is an integer column: compare it with an integer, not {value!r}")
        if case_insensitive:
            raise ValueError(f"{op} compares strings; {column} is an integer column")
    else:
        raise ValueError(f"{column} ({kind}) cannot be used in a filter")


class Predicate(ABC):
    """A row filter node. Combine with `&`, `|` and `~`."""

    def __and__(self, other: Predicate) -> Predicate:
        return And((self, other))

    def __or__(self, other: Predicate) -> Predicate:
        return Or((self, other))

    def __invert__(self) -> Predicate:
        return Not(self)

    @abstractmethod
    def columns(self) -> frozenset[str]:
        """The columns the predicate reads."""

    @abstractmethod
    def negated(self) -> Predicate:
        """The exact negation, with negations pushed down to the leaves."""

    @abstractmethod
    def normal(self) -> Predicate:
        """The same predicate with negations pushed down to the leaves (no `Not` left)."""

    @abstractmethod
    def matches(self, row: Mapping[str, Any]) -> bool:
        """KQL's answer for one typed row; raises TypeError on an `Opaque` part (only the rule knows it)."""

    def admits(self, row: Mapping[str, Any]) -> bool:
        """False only when the row surely fails the filter (what a source may drop)."""
        return self.normal()._admits(row)

    def admitter(self) -> Callable[[Mapping[str, Any]], bool]:
        """`admits` for many rows: the normal form is worked out once."""
        return self.normal()._admits

    def polars_admits(self) -> pl.Expr:
        """A polars Boolean expression: False only for rows that surely fail the filter.

        String columns must hold "" for a missing value, integer columns null, as typed rows do.
        """
        return self.normal()._polars()

    def kql_admits(self) -> str | None:
        """KQL text keeping a superset of the matching rows, or None when every row must be kept."""
        return self.normal()._kql()

    def pushable(self) -> bool:
        """True when no part is Opaque: every target can apply the filter exactly."""
        return not any(isinstance(node, Opaque) for node in self.walk())

    def walk(self) -> Iterable[Predicate]:
        """This node and every node below it."""
        yield self

    @abstractmethod
    def _admits(self, row: Mapping[str, Any]) -> bool: ...

    @abstractmethod
    def _polars(self) -> pl.Expr: ...

    @abstractmethod
    def _kql(self) -> str | None: ...


@dataclass(frozen=True)
class Compare(Predicate):
    """column op value, op one of == != (case-sensitive) =~ !~ (case-insensitive), as in KQL."""

    column: str
    op: CompareOp
    value: str | int

    def __post_init__(self) -> None:
        if self.op not in _NEGATED_COMPARE:
            raise ValueError(f"unknown comparison {self.op!r}; use one of {', '.join(_NEGATED_COMPARE)}")
        _check_literal(self.column, self.value, self.op in ("=~", "!~"), self.op)

    def columns(self) -> frozenset[str]:
        return frozenset((self.column,))

    def negated(self) -> Predicate:
        return Compare(self.column, _NEGATED_COMPARE[self.op], self.value)

    def normal(self) -> Predicate:
        return self

    def matches(self, row: Mapping[str, Any]) -> bool:
        value = row.get(self.column)
        if self.op in ("=~", "!~"):
            equal = str(value or "").lower() == str(self.value).lower()
        else:
            equal = value == self.value if value is not None else False
        return equal if self.op in ("==", "=~") else not equal

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return self.matches(row)

    def _polars(self) -> pl.Expr:
        import polars as pl

        col = pl.col(self.column)
        if self.op == "==":
            return col.eq_missing(self.value)
        if self.op == "!=":
            return col.ne_missing(self.value)
        lowered = col.str.to_lowercase().eq(str(self.value).lower())
        exact = lowered if self.op == "=~" else ~lowered
        return exact | col.str.contains(_NON_ASCII)

    def _kql(self) -> str:
        name = self.column
        if COLUMN_TYPES[name] != "string":
            if self.op == "!=":
                return f"(isnull({name}) or {name} != {int(self.value)})"
            return f"{name} == {int(self.value)}"
        return f"{name} {self.op} {string_literal(str(self.value))}"


@dataclass(frozen=True)
class InSet(Predicate):
    """column in (values), op one of in !in (case-sensitive) in~ !in~ (case-insensitive), as in KQL."""

    column: str
    op: InOp
    values: tuple[str | int, ...]

    def __post_init__(self) -> None:
        if self.op not in _NEGATED_IN:
            raise ValueError(f"unknown set operator {self.op!r}; use one of {', '.join(_NEGATED_IN)}")
        if not self.values:
            raise ValueError(f"{self.column} {self.op} (): the list of values is empty")
        for value in self.values:
            _check_literal(self.column, value, self.op.endswith("~"), self.op)

    def columns(self) -> frozenset[str]:
        return frozenset((self.column,))

    def negated(self) -> Predicate:
        return InSet(self.column, _NEGATED_IN[self.op], self.values)

    def normal(self) -> Predicate:
        return self

    def matches(self, row: Mapping[str, Any]) -> bool:
        value = row.get(self.column)
        if self.op.endswith("~"):
            found = str(value or "").lower() in {str(v).lower() for v in self.values}
        else:
            found = value is not None and value in self.values
        return found if self.op in ("in", "in~") else not found

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return self.matches(row)

    def _polars(self) -> pl.Expr:
        import polars as pl

        col = pl.col(self.column)
        if self.op in ("in", "!in"):
            found = col.is_in(list(self.values)).fill_null(False)
            return found if self.op == "in" else ~found
        lowered = col.str.to_lowercase().is_in([str(v).lower() for v in self.values]).fill_null(False)
        exact = lowered if self.op == "in~" else ~lowered
        return exact | col.str.contains(_NON_ASCII)

    def _kql(self) -> str:
        name = self.column
        if COLUMN_TYPES[name] != "string":
            listed = ", ".join(str(int(v)) for v in self.values)
            if self.op == "!in":
                return f"(isnull({name}) or {name} !in ({listed}))"
            return f"{name} in ({listed})"
        if any(_CONTROL.search(str(v)) for v in self.values):
            # Such values are built from code points (an expression), which an in-list may not hold.
            single: CompareOp = {"in": "==", "!in": "!=", "in~": "=~", "!in~": "!~"}[self.op]  # type: ignore[assignment]
            joiner = " or " if self.op in ("in", "in~") else " and "
            return "(" + joiner.join(Compare(name, single, v)._kql() for v in self.values) + ")"
        return f"{name} {self.op} ({', '.join(string_literal(str(v)) for v in self.values)})"


@dataclass(frozen=True)
class StartsWith(Predicate):
    """column startswith prefix: case-insensitive as KQL's `startswith`, unless case_sensitive (`startswith_cs`)."""

    column: str
    prefix: str
    negated_: bool = False
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        if COLUMN_TYPES.get(self.column) != "string":
            raise ValueError(f"startswith needs a string column, not {self.column!r}")
        _check_literal(self.column, self.prefix, not self.case_sensitive, "startswith")

    @property
    def op(self) -> str:
        """The KQL operator."""
        return ("!" if self.negated_ else "") + ("startswith_cs" if self.case_sensitive else "startswith")

    def columns(self) -> frozenset[str]:
        return frozenset((self.column,))

    def negated(self) -> Predicate:
        return StartsWith(self.column, self.prefix, not self.negated_, self.case_sensitive)

    def normal(self) -> Predicate:
        return self

    def matches(self, row: Mapping[str, Any]) -> bool:
        value = str(row.get(self.column) or "")
        found = value.startswith(self.prefix) if self.case_sensitive else value.lower().startswith(self.prefix.lower())
        return found != self.negated_

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return self.matches(row)

    def _polars(self) -> pl.Expr:
        import polars as pl

        col = pl.col(self.column)
        if self.case_sensitive:
            found = col.str.starts_with(self.prefix)
            return ~found if self.negated_ else found
        lowered = col.str.to_lowercase().str.starts_with(self.prefix.lower())
        exact = ~lowered if self.negated_ else lowered
        return exact | col.str.contains(_NON_ASCII)

    def _kql(self) -> str:
        return f"{self.column} {self.op} {string_literal(self.prefix)}"


SizeOp = Literal["<", "<=", ">", ">=", "==", "!="]
_NEGATED_SIZE: dict[str, SizeOp] = {"<": ">=", ">=": "<", "<=": ">", ">": "<=", "==": "!=", "!=": "=="}
_SIZE_TESTS: dict[str, Any] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class StringSize(Predicate):
    """string_size(column) op value, an integer: the column's size in bytes of UTF-8.

    As KQL's string_size; a missing string is "", size 0.
    """

    column: str
    op: SizeOp
    value: int

    def __post_init__(self) -> None:
        if self.op not in _NEGATED_SIZE:
            raise ValueError(f"unknown comparison {self.op!r}; use one of {', '.join(_NEGATED_SIZE)}")
        if COLUMN_TYPES.get(self.column) != "string":
            raise ValueError(f"string_size needs a string column, not {self.column!r}")
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise TypeError(f"string_size compares with an integer, not {self.value!r}")

    def columns(self) -> frozenset[str]:
        return frozenset((self.column,))

    def negated(self) -> Predicate:
        return StringSize(self.column, _NEGATED_SIZE[self.op], self.value)

    def normal(self) -> Predicate:
        return self

    def matches(self, row: Mapping[str, Any]) -> bool:
        from detector.kql_terms import string_size

        return bool(_SIZE_TESTS[self.op](string_size(str(row.get(self.column) or "")), self.value))

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return self.matches(row)

    def _polars(self) -> pl.Expr:
        import polars as pl

        # Exact: polars holds valid UTF-8 only, and a lone surrogate (which the plain code would count as
        # three bytes) never reaches a frame (the first passes refuse such blocks).
        return _SIZE_TESTS[self.op](pl.col(self.column).fill_null("").str.len_bytes(), self.value)  # type: ignore[no-any-return]

    def _kql(self) -> str:
        return f"string_size({self.column}) {self.op} {int(self.value)}"


@dataclass(frozen=True)
class Term(Predicate):
    """column op needle, op one of has, hasprefix, contains and their negations (case-insensitive, as in KQL).

    `has` and `hasprefix` follow Kusto's term rules (detector.kql_terms): a term boundary is needed at an
    edge of the needle only where the needle's own character is a letter or digit. polars checks the same
    boundaries with a regular expression; on non-ASCII values (where case folding may differ) it admits.
    """

    column: str
    op: TermOp
    needle: str

    def __post_init__(self) -> None:
        if self.op not in _NEGATED_TERM:
            raise ValueError(f"unknown term operator {self.op!r}; use one of {', '.join(_NEGATED_TERM)}")
        if COLUMN_TYPES.get(self.column) != "string":
            raise ValueError(f"{self.op} needs a string column, not {self.column!r}")
        _check_literal(self.column, self.needle, True, self.op)

    def columns(self) -> frozenset[str]:
        return frozenset((self.column,))

    def negated(self) -> Predicate:
        return Term(self.column, _NEGATED_TERM[self.op], self.needle)

    def normal(self) -> Predicate:
        return self

    def matches(self, row: Mapping[str, Any]) -> bool:
        from detector import kql_terms

        value = str(row.get(self.column) or "")
        test = {"has": kql_terms.has, "hasprefix": kql_terms.hasprefix, "contains": kql_terms.contains}
        return test[self.op.lstrip("!")](value, self.needle) != self.op.startswith("!")

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return self.matches(row)

    def _polars(self) -> pl.Expr:
        import polars as pl

        from detector.kql_terms import is_term_char

        base, needle = self.op.lstrip("!"), self.needle
        body = "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):X}}}" for c in needle)
        lead = "(?:^|[^\\pL\\pN])" if base in ("has", "hasprefix") and needle and is_term_char(needle[0]) else ""
        trail = "(?:[^\\pL\\pN]|$)" if base == "has" and needle and is_term_char(needle[-1]) else ""
        found = pl.col(self.column).str.contains(f"(?i){lead}{body}{trail}")
        exact = ~found if self.op.startswith("!") else found
        return exact | pl.col(self.column).str.contains(_NON_ASCII) | pl.lit(not needle.isascii())

    def _kql(self) -> str:
        return f"{self.column} {self.op} {string_literal(self.needle)}"


@dataclass(frozen=True)
class _Junction(Predicate):
    """And / Or: parts joined by one operator."""

    parts: tuple[Predicate, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"{type(self).__name__}() needs at least one part")

    def columns(self) -> frozenset[str]:
        return frozenset().union(*(p.columns() for p in self.parts))

    def walk(self) -> Iterable[Predicate]:
        yield self
        for part in self.parts:
            yield from part.walk()

    def normal(self) -> Predicate:
        return type(self)(tuple(p.normal() for p in self.parts))


@dataclass(frozen=True)
class And(_Junction):
    """Every part holds."""

    def negated(self) -> Predicate:
        return Or(tuple(p.negated() for p in self.parts))

    def matches(self, row: Mapping[str, Any]) -> bool:
        return all(p.matches(row) for p in self.parts)

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return all(p._admits(row) for p in self.parts)

    def _polars(self) -> pl.Expr:
        import polars as pl

        return pl.all_horizontal([p._polars() for p in self.parts])

    def _kql(self) -> str | None:
        known = [text for text in (p._kql() for p in self.parts) if text is not None]
        if not known:
            return None  # every part may admit anything
        return known[0] if len(known) == 1 else "(" + " and ".join(known) + ")"


@dataclass(frozen=True)
class Or(_Junction):
    """At least one part holds."""

    def negated(self) -> Predicate:
        return And(tuple(p.negated() for p in self.parts))

    def matches(self, row: Mapping[str, Any]) -> bool:
        return any(p.matches(row) for p in self.parts)

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return any(p._admits(row) for p in self.parts)

    def _polars(self) -> pl.Expr:
        import polars as pl

        return pl.any_horizontal([p._polars() for p in self.parts])

    def _kql(self) -> str | None:
        texts = [p._kql() for p in self.parts]
        if any(text is None for text in texts):
            return None  # one part may admit anything, so the whole may
        return texts[0] if len(texts) == 1 else "(" + " or ".join(t for t in texts if t is not None) + ")"


@dataclass(frozen=True)
class Not(Predicate):
    """The part does not hold."""

    part: Predicate

    def columns(self) -> frozenset[str]:
        return self.part.columns()

    def walk(self) -> Iterable[Predicate]:
        yield self
        yield from self.part.walk()

    def negated(self) -> Predicate:
        return self.part.normal()

    def normal(self) -> Predicate:
        return self.part.negated()

    def matches(self, row: Mapping[str, Any]) -> bool:
        return not self.part.matches(row)

    # Never reached: normal() removes every Not before translation.
    def _admits(self, row: Mapping[str, Any]) -> bool:
        return self.normal()._admits(row)

    def _polars(self) -> pl.Expr:
        return self.normal()._polars()

    def _kql(self) -> str | None:
        return self.normal()._kql()


@dataclass(frozen=True)
class Opaque(Predicate):
    """A condition (as a filter part) or a measure that no source can push down; the rule applies it.

    As a filter part it admits every row, negated or not; as a measure it turns pruning off.
    """

    reason: str
    reads: tuple[str, ...] = ()  # the columns the rule needs for it (read, but not filtered on)

    def columns(self) -> frozenset[str]:
        return frozenset(self.reads)

    def negated(self) -> Predicate:
        return self

    def normal(self) -> Predicate:
        return self

    def matches(self, row: Mapping[str, Any]) -> bool:
        raise TypeError(f"an opaque condition ({self.reason}) is evaluated by the rule's own code")

    def _admits(self, row: Mapping[str, Any]) -> bool:
        return True

    def _polars(self) -> pl.Expr:
        import polars as pl

        return pl.lit(True)

    def _kql(self) -> None:
        return None


@dataclass(frozen=True)
class ColumnRef:
    """Builder of leaves: column("scStatus").in_("401", "403") & column("csUserName").ne("-")."""

    name: str

    def eq(self, value: str | int) -> Predicate:
        """== (case-sensitive)."""
        return Compare(self.name, "==", value)

    def ne(self, value: str | int) -> Predicate:
        """!= (case-sensitive)."""
        return Compare(self.name, "!=", value)

    def eq_ci(self, value: str) -> Predicate:
        """=~ (case-insensitive)."""
        return Compare(self.name, "=~", value)

    def ne_ci(self, value: str) -> Predicate:
        """!~ (case-insensitive)."""
        return Compare(self.name, "!~", value)

    def in_(self, *values: str | int) -> Predicate:
        """in (case-sensitive)."""
        return InSet(self.name, "in", tuple(values))

    def not_in(self, *values: str | int) -> Predicate:
        """!in (case-sensitive)."""
        return InSet(self.name, "!in", tuple(values))

    def in_ci(self, *values: str) -> Predicate:
        """in~ (case-insensitive)."""
        return InSet(self.name, "in~", tuple(values))

    def not_in_ci(self, *values: str) -> Predicate:
        """!in~ (case-insensitive)."""
        return InSet(self.name, "!in~", tuple(values))

    def startswith(self, prefix: str) -> Predicate:
        """startswith (case-insensitive, as KQL's)."""
        return StartsWith(self.name, prefix)

    def not_startswith(self, prefix: str) -> Predicate:
        """!startswith (case-insensitive)."""
        return StartsWith(self.name, prefix, negated_=True)

    def startswith_cs(self, prefix: str) -> Predicate:
        """startswith_cs (case-sensitive)."""
        return StartsWith(self.name, prefix, case_sensitive=True)

    def has(self, needle: str) -> Predicate:
        """has (a whole term, case-insensitive)."""
        return Term(self.name, "has", needle)

    def not_has(self, needle: str) -> Predicate:
        """!has."""
        return Term(self.name, "!has", needle)

    def has_any(self, *needles: str | int) -> Predicate:
        """has_any (values): `has` for any of them; a number is its text, as KQL's tostring gives it."""
        if not needles:
            raise ValueError(f"{self.name} has_any (): the list of values is empty")
        return Or(tuple(Term(self.name, "has", str(n)) for n in needles))

    def hasprefix(self, prefix: str) -> Predicate:
        """hasprefix (a term starts with it, case-insensitive)."""
        return Term(self.name, "hasprefix", prefix)

    def contains(self, needle: str) -> Predicate:
        """contains (case-insensitive substring)."""
        return Term(self.name, "contains", needle)

    def size(self, op: SizeOp, value: int) -> Predicate:
        """string_size(column) op value (bytes of UTF-8)."""
        return StringSize(self.name, op, value)


def column(name: str) -> ColumnRef:
    """A column to build filter leaves from."""
    _column_kind(name)
    return ColumnRef(name)


@dataclass(frozen=True)
class Count:
    """count(): rows of the group that pass the filter."""

    def columns(self) -> frozenset[str]:
        return frozenset()

    def kql(self, threshold: int) -> str:
        return "count()"


@dataclass(frozen=True)
class DistinctCount:
    """dcount(column), exactly: distinct non-null values of the column in the group."""

    column: str

    def __post_init__(self) -> None:
        _column_kind(self.column)

    def columns(self) -> frozenset[str]:
        return frozenset((self.column,))

    def kql(self, threshold: int) -> str:
        # make_set(x, n) holds min(distinct non-null x, n) values, so its length reaches n exactly when
        # the distinct count does (dcount() is an estimate and could miss a group); the cap also keeps
        # the server's memory small.
        return f"array_length(make_set({self.column}, {int(threshold)}))"


Measure = Count | DistinctCount | Opaque


@dataclass(frozen=True)
class Threshold:
    """measure op value. Only >= and > let a source drop groups (they are monotonic in the rows)."""

    op: ThresholdOp
    value: int

    def __post_init__(self) -> None:
        if self.op not in (">=", ">", "<", "<=", "==", "!="):
            raise ValueError(f"unknown threshold operator {self.op!r}")
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise TypeError(f"a threshold is an integer, not {self.value!r}")

    @property
    def prunes(self) -> bool:
        """True when a group below the threshold on a superset of its rows is below it on every subset."""
        return self.op in (">=", ">")

    @property
    def minimum(self) -> int:
        """The smallest measure that meets a pruning threshold."""
        if not self.prunes:
            raise ValueError(f"threshold {self.op} {self.value} does not prune")
        return self.value if self.op == ">=" else self.value + 1

    def holds(self, measured: int) -> bool:
        """Whether a measured value meets the threshold."""
        ops = {
            ">=": measured >= self.value,
            ">": measured > self.value,
            "<": measured < self.value,
            "<=": measured <= self.value,
            "==": measured == self.value,
            "!=": measured != self.value,
        }
        return ops[self.op]


@dataclass(frozen=True)
class Capabilities:
    """What one target can take part in (sqlglot dialects' SUPPORTS_* flags, for pushdown)."""

    filter: bool = True  # applies spec.filter (as a superset, see the module docstring)
    prune: bool = True  # computes the measure per group and drops groups below the threshold
    distinct_count: bool = True  # can compute DistinctCount (else such a spec does not prune there)
    non_string_keys: bool = True  # can group by integer columns


@dataclass(frozen=True)
class Plan:
    """What a target will do with a spec: filter rows, prune groups, both or neither."""

    filter: Predicate | None
    prune: bool
    reasons: tuple[str, ...] = ()  # why a part is not pushed down (for logs)


@dataclass(frozen=True)
class FirstPhase:
    """A first query whose distinct `key` values select the rows of the second (`key in (first phase)`).

    `let keys = T | where <filter> | summarize by <key>; T | where TimeGenerated > ago(recent) | where
    <key> in (keys) | ...`: of the read window, the rule needs every row of its last `recent` whose key
    has a row passing `filter` anywhere in the window, and, for each such key, one row passing `filter`
    (any one) so that the rule sees the key qualify. The spec's own `filter` must admit every row that
    `filter` here admits (the rule derives the keys from those rows). A source that cannot run two
    phases ignores this and reads the window with the spec's filter, which is always a superset.
    """

    key: str
    filter: Predicate
    recent: timedelta

    def __post_init__(self) -> None:
        if _column_kind(self.key) != "string":
            raise ValueError(f"a first phase's key must be a string column, not {self.key!r}")
        if self.recent <= timedelta(0):
            raise ValueError("a first phase's recent period must be a positive timespan")
        if not self.filter.pushable():
            raise ValueError("a first phase's filter must be pushable (no Opaque part)")


@dataclass(frozen=True, kw_only=True)
class CandidateSpec:
    """A rule's pushdown description (see the module docstring for the contract)."""

    filter: Predicate | None = None
    keys: tuple[str, ...] = ()
    time_bin: timedelta | None = None
    measure: Measure = field(default_factory=Count)
    threshold: Threshold | None = None
    first_phase: FirstPhase | None = None

    def __post_init__(self) -> None:
        if self.first_phase is not None and (self.prunes or self.filter is None):
            raise ValueError("a first phase needs a filter (a superset of its own) and no pruning threshold")
        for key in self.keys:
            _column_kind(key)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"group keys repeat a column: {self.keys}")
        if self.time_bin is not None and self.time_bin <= timedelta(0):
            raise ValueError("time_bin must be a positive timespan or None")
        if not isinstance(self.measure, Count | DistinctCount | Opaque):
            raise TypeError(f"measure must be Count(), DistinctCount(column) or Opaque(reason), not {self.measure!r}")

    @property
    def prunes(self) -> bool:
        """True when a source may drop whole groups whose measure cannot meet the threshold."""
        return self.threshold is not None and self.threshold.prunes and not isinstance(self.measure, Opaque)

    @property
    def filters(self) -> bool:
        """True when some part of the filter can be pushed down."""
        return self.filter is not None and self.filter.kql_admits() is not None

    @property
    def pruning_keys(self) -> tuple[str, ...]:
        """The keys a source groups by: `keys` when the spec prunes, none when it only filters rows."""
        return self.keys if self.prunes else ()

    def group_keys(self) -> tuple[str, ...]:
        """The columns the rule groups by (whether or not the spec prunes on them)."""
        return self.keys

    def columns(self) -> tuple[str, ...]:
        """Every column the pushdown reads: TimeGenerated, keys (when it prunes), measure and filter columns."""
        wanted = [TIME, *self.pruning_keys, *sorted(self.measure.columns())]
        if self.filter is not None:
            wanted += sorted(self.filter.columns())
        if self.first_phase is not None:
            wanted += [self.first_phase.key, *sorted(self.first_phase.filter.columns())]
        return tuple(dict.fromkeys(wanted))

    def admits(self, row: Mapping[str, Any]) -> bool:
        """False only for a row that surely fails the filter."""
        return self.filter is None or self.filter.admits(row)

    def bin_start(self, moment: datetime, window_start: datetime) -> datetime:
        """The start of the group's time bin (the window's start for a whole-window spec)."""
        return window_start if self.time_bin is None else bin_datetime(moment, self.time_bin)

    def plan(self, capabilities: Capabilities) -> Plan:
        """What a target with these capabilities does with this spec."""
        reasons = []
        pushed = self.filter if capabilities.filter else None
        if self.filter is not None and not self.filter.pushable():
            reasons.append("part of the filter is opaque: that part is left to the rule")
        if self.filter is not None and not capabilities.filter:
            reasons.append("the target cannot filter rows")
        prune = self.prunes and capabilities.prune
        if self.prunes and not capabilities.prune:
            reasons.append("the target cannot prune groups")
        if prune and isinstance(self.measure, DistinctCount) and not capabilities.distinct_count:
            prune = False
            reasons.append("the target cannot count distinct values")
        if prune and not capabilities.non_string_keys and any(COLUMN_TYPES[k] != "string" for k in self.keys):
            prune = False
            reasons.append("the target groups by string columns only")
        if isinstance(self.measure, Opaque):
            reasons.append(f"the measure is opaque ({self.measure.reason}): no group is dropped")
        elif self.threshold is not None and not self.threshold.prunes:
            reasons.append(f"threshold {self.threshold.op} {self.threshold.value} is not monotonic: no group is dropped")
        return Plan(pushed, prune, tuple(reasons))

    def describe(self) -> str:
        """One line for logs: the spec in KQL-like words."""
        if isinstance(self, SharedSpec):
            return " ; ".join(spec.describe() for spec in self.specs)
        parts = []
        if self.filter is not None:
            parts.append(f"where {self.filter.kql_admits() or 'true'}")
        bin_part = [f"bin(TimeGenerated, {format_timespan(self.time_bin)})"] if self.time_bin else []
        measure = (
            f"opaque measure ({self.measure.reason})"
            if isinstance(self.measure, Opaque)
            else ("count()" if isinstance(self.measure, Count) else f"dcount({self.measure.column})")
        )
        if self.first_phase is not None:
            first = self.first_phase
            parts.insert(
                0,
                f"{first.key} in (where {first.filter.kql_admits()} | summarize by {first.key}) "
                f"over the last {format_timespan(first.recent)}",
            )
        parts.append(f"{measure} by {', '.join([*bin_part, *self.keys]) or 'window'}")
        if self.threshold is not None:
            parts.append(f"{self.threshold.op} {self.threshold.value}")
        return " | ".join(parts)


@dataclass(frozen=True, kw_only=True)
class SharedSpec(CandidateSpec):
    """Several rules' descriptions answered by one read of the rows (`SharedSpec.of(specs)`).

    A source that knows it (the file first passes, detector/sources/candidates.py) returns every row
    that is a candidate of any of `specs`, each spec pruned exactly as alone: every rule then gets a
    superset of its own candidate rows, which by the contract above leaves its result unchanged. Read
    as a plain CandidateSpec by a source that does not know it, it is the union of the filters with no
    pruning (an opaque measure), which is still a superset for every rule.
    """

    specs: tuple[CandidateSpec, ...] = ()
    # Each spec's own window, when it is not the read's: a spec is pruned, and a whole-window spec's one
    # group formed, over its own window's rows only, exactly as its own read would (None: the read's window).
    windows: tuple[Window | None, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.windows and len(self.windows) != len(self.specs):
            raise ValueError("a shared description gives a window for each of its specs, or none")

    @classmethod
    def of(cls, specs: Iterable[CandidateSpec], windows: Iterable[Window | None] | None = None) -> SharedSpec:
        """The shared description of these specs, each over its own window when `windows` gives one.

        A SharedSpec among them is flattened, its parts keeping their own windows.
        """
        specs = list(specs)
        given = list(windows) if windows is not None else [None] * len(specs)
        if len(given) != len(specs):
            raise ValueError("a shared description gives a window for each of its specs, or none")
        flat: list[CandidateSpec] = []
        flat_windows: list[Window | None] = []
        for spec, window in zip(specs, given, strict=True):
            if isinstance(spec, SharedSpec):
                flat.extend(spec.specs)
                flat_windows.extend(spec.window_of(i) or window for i in range(len(spec.specs)))
            else:
                flat.append(spec)
                flat_windows.append(window)
        if not flat:
            raise ValueError("a shared description needs at least one spec")
        filters = [spec.filter for spec in flat]
        union: Predicate | None = None
        if all(f is not None for f in filters):
            union = filters[0] if len(filters) == 1 else Or(tuple(f for f in filters if f is not None))
        kept = tuple(flat_windows) if any(w is not None for w in flat_windows) else ()
        return cls(filter=union, measure=Opaque("the measures of several rules"), specs=tuple(flat), windows=kept)

    def window_of(self, index: int) -> Window | None:
        """The window of the spec at `index`, or None when it is the read's."""
        return self.windows[index] if self.windows else None

    def group_keys(self) -> tuple[str, ...]:
        """The columns any of the specs groups by."""
        return tuple(dict.fromkeys(key for spec in self.specs for key in spec.group_keys()))

    def columns(self) -> tuple[str, ...]:
        """Every column any of the specs reads."""
        return tuple(dict.fromkeys(column for spec in self.specs for column in spec.columns()))
