"""Rule logic plugins: the Python evaluation of each rule, found through a registry keyed by rule id.

Adding a rule means adding a YAML file under rules/ and a module here that subclasses RuleLogic and
decorates it with @register. The engine never changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from detector.kql import format_datetime, parse_timespan
from detector.models import Row, Window
from detector.pushdown import (
    And,
    CandidateSpec,
    Compare,
    Count,
    DistinctCount,
    FirstPhase,
    InSet,
    Not,
    Opaque,
    Or,
    Predicate,
    StartsWith,
    StringSize,
    Term,
    Threshold,
    column,
)

# The pushdown description lives in detector.pushdown (sources read it without loading rule logic);
# rules import it from here.
__all__ = [
    "And",
    "CandidateSpec",
    "Compare",
    "Count",
    "DistinctCount",
    "FirstPhase",
    "InSet",
    "Not",
    "Opaque",
    "Or",
    "Predicate",
    "RuleLogic",
    "StartsWith",
    "StringSize",
    "Term",
    "Threshold",
    "bin_parameter",
    "check_parameters",
    "column",
    "logic_class",
    "positive_int_parameter",
    "register",
]


class RuleLogic(ABC):
    """The Python evaluation of one rule. Pure: rows and a window in, KQL result rows out."""

    rule_id: ClassVar[str]
    # Columns the logic reads (sources may return only these), and those that must exist in the data.
    columns: ClassVar[tuple[str, ...]]
    required_columns: ClassVar[tuple[str, ...]]
    # The query's output columns, in order (what entity mappings and sinks may refer to).
    output_columns: ClassVar[tuple[str, ...]]
    # Windows are whole multiples of this, aligned to the UTC clock, so no bin is ever split.
    time_bin: timedelta
    # True for a rule without a time bin (one group per key over its whole window, or one result per
    # row): each evaluation covers one queryFrequency step and reads queryPeriod back from the step's
    # end (detector.windows). The rule loader then sets `time_bin` to queryFrequency, the unit windows
    # are made of, so checkpoints, re-checks and backfills step by whole windows.
    whole_window: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> RuleLogic:
        """Build from the rule file's `parameters`; raise ValueError naming the bad parameter."""

    @abstractmethod
    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        """The query's result rows (KQL column names, KQL order) for rows with start <= TimeGenerated < end."""

    @abstractmethod
    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        """The values that identify a result row within its window (a binned group, or a request)."""

    def finding_key(self, result: Mapping[str, Any], window: Window) -> tuple[Any, ...]:
        """The values a finding's stable id is derived from; the group key by default.

        A binned group's key holds its bin and a request's key holds the request, so neither needs the
        window (any run, window or source that sees it gives the same id). A group counted over a whole
        window is another group in another window: such a rule puts the window in (see
        anomalous_user_agent.py).
        """
        del window
        return self.group_key(result)

    def candidate_spec(self) -> CandidateSpec | None:
        """What a source may push down (filter, groups, measure, threshold; see detector.pushdown).

        None means nothing: every row of the window with the rule's columns is read. A rule with a
        `where` should at least declare it as a filter, so Log Analytics filters server-side.
        """
        return None

    def first_activity(self, result: Mapping[str, Any]) -> Any:
        """Start of the activity a result row describes (for incidents); the bin start by default."""
        return result.get("TimeGenerated")

    def last_activity(self, result: Mapping[str, Any]) -> Any:
        """End of the activity a result row describes."""
        return result.get("TimeGenerated")

    # Presentation: plain text (sinks escape it for their own format), written by the rule because only
    # the rule knows what its columns mean. Sinks never name a rule's columns.

    def title(self, result: Mapping[str, Any]) -> str:
        """A short subject naming the actors and the measure; the group key values by default."""
        return ", ".join(_plain(value) for value in self.group_key(result))

    def summary(self, result: Mapping[str, Any]) -> str:
        """One plain sentence for a human; the title by default."""
        return self.title(result)

    def evidence(self, result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """(label, column) pairs an analyst reads first, in order; every output column by default."""
        return tuple((column, column) for column in self.output_columns)


def check_parameters(parameters: Mapping[str, Any], expected: set[str]) -> None:
    """Raise ValueError naming unknown and missing parameters (what every rule's from_parameters checks first)."""
    unknown = set(parameters) - expected
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; expected {sorted(expected)}")
    missing = expected - set(parameters)
    if missing:
        raise ValueError(f"missing parameter(s) {sorted(missing)}")


def bin_parameter(parameters: Mapping[str, Any], name: str, example: str) -> timedelta:
    """A time-bin parameter: a positive KQL timespan that divides a day (so bins align with UTC days)."""
    try:
        time_bin = parse_timespan(str(parameters[name]))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if time_bin <= timedelta(0) or timedelta(days=1) % time_bin:
        raise ValueError(f"{name} must be a positive timespan that divides a day, e.g. {example}")
    if time_bin % timedelta(milliseconds=1):
        raise ValueError(f"{name} must be whole milliseconds (a KQL bin is written as one), e.g. {example}")
    return time_bin


def positive_int_parameter(parameters: Mapping[str, Any], name: str, hint: str = "") -> int:
    """A parameter that must be a positive integer."""
    value = parameters[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{hint}")
    return value


def _plain(value: Any) -> str:
    """A result value as text: datetimes in KQL's ISO 8601 form, the rest with str()."""
    return format_datetime(value) if isinstance(value, datetime) else str(value)


L = TypeVar("L", bound=type[RuleLogic])
_REGISTRY: dict[str, type[RuleLogic]] = {}
_loaded = False


def register(cls: L) -> L:
    """Class decorator: register rule logic under its rule_id; a second class for the same id is refused."""
    key = cls.rule_id.lower()
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise RuntimeError(f"rule id {cls.rule_id} already has logic {_REGISTRY[key].__name__}")
    _REGISTRY[key] = cls
    return cls


def logic_class(rule_id: str) -> type[RuleLogic] | None:
    """The logic registered for a rule id, importing every module of this package once."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    return _REGISTRY.get(rule_id.lower())
