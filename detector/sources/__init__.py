"""Sources of W3CIISLog rows, chosen by a `scheme:argument` spec."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from detector.errors import ConfigError
from detector.logic import CandidateSpec
from detector.models import Row, Window

if TYPE_CHECKING:
    from detector.config import Settings


@dataclass(frozen=True)
class ReadRequest:
    """What the rule needs from a source for one window."""

    window: Window
    columns: tuple[str, ...]  # the columns the rule reads; a source may return only these
    required: tuple[str, ...]  # columns the data must have; absent ones are an InputError
    candidates: CandidateSpec | None = None  # pushdown a source may use to skip groups that cannot fire


class Source(ABC):
    """Yields typed W3CIISLog rows with window.start <= TimeGenerated < window.end.

    A source either returns every row the rule needs for the window or raises: a partial answer is never
    returned as complete.
    """

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

    def read_stats(self) -> dict[str, int]:
        """Figures about the last read (requests, candidate groups, bytes...) for the run summary."""
        return {}


def files_changed_after(paths: list[Path], moment: datetime) -> bool:
    """True when any file was modified after `moment` (how local sources detect late data)."""
    return any(path.stat().st_mtime > moment.timestamp() for path in paths)


SourceFactory = Callable[[str, "Settings | None", str], Source]
_FACTORIES: dict[str, SourceFactory] = {}


def register_source(scheme: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a factory(argument, settings, computer) for `scheme:argument` source specs."""

    def decorate(factory: SourceFactory) -> SourceFactory:
        if scheme in _FACTORIES:
            raise RuntimeError(f"source scheme {scheme} registered twice")
        _FACTORIES[scheme] = factory
        return factory

    return decorate


def open_source(spec: str, settings: Settings | None = None, computer: str = "", setting: str = "--source") -> Source:
    """Build the source a spec names, e.g. file:rows.jsonl, iis:C:/inetpub/logs, loganalytics:<id>."""
    scheme, sep, argument = spec.partition(":")
    _load_builtin(scheme)
    if not sep or scheme not in _FACTORIES or not argument:
        known = sorted(set(_FACTORIES) | set(_BUILTIN))
        raise ConfigError(setting, f"unknown source '{spec}'; use one of {', '.join(f'{s}:<...>' for s in known)}")
    return _FACTORIES[scheme](argument, settings, computer)


# The built-in sources, each registering itself when imported. Only the one a spec names is imported, so
# that importing the package (and function_app) stays cheap and a run over files does not load the Log
# Analytics client code.
_BUILTIN = {"file": "detector.sources.file", "iis": "detector.sources.iis", "loganalytics": "detector.sources.loganalytics"}


def _load_builtin(scheme: str) -> None:
    module = _BUILTIN.get(scheme)
    if module is not None and scheme not in _FACTORIES:
        importlib.import_module(module)
