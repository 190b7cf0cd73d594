"""Sinks: where findings go. Registered by name, chosen by `name[:argument]` specs, several at once."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from detector.errors import ConfigError, shown
from detector.models import Finding

if TYPE_CHECKING:
    from detector.config import Settings


class Sink(ABC):
    """Delivers findings.

    Must be idempotent on Finding.id: delivering the same finding twice leaves one copy (upsert, or
    remember what was delivered). Raise SinkError when delivery failed.
    """

    name: ClassVar[str]

    @abstractmethod
    def deliver(self, findings: Sequence[Finding]) -> None:
        """Deliver every finding, or raise SinkError."""

    def describe(self) -> str:
        """A short human description for logs."""
        return self.name


SinkFactory = Callable[[str, "Settings | None"], Sink]
_FACTORIES: dict[str, SinkFactory] = {}


def register_sink(name: str) -> Callable[[SinkFactory], SinkFactory]:
    """Register a factory(argument, settings) for sink specs `name` or `name:argument`."""

    def decorate(factory: SinkFactory) -> SinkFactory:
        if name in _FACTORIES:
            raise RuntimeError(f"sink {name} registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


def open_sink(spec: str, settings: Settings | None = None, setting: str = "--sink") -> Sink:
    """Build the sink a spec names, e.g. stdout or jsonl:/tmp/findings.jsonl."""
    name, _, argument = spec.partition(":")
    _load_builtin(name)
    if name not in _FACTORIES:
        raise ConfigError(
            setting, f"unknown sink '{shown(spec)}'; use one of {', '.join(sorted(set(_FACTORIES) | set(_BUILTIN)))}"
        )
    return _FACTORIES[name](argument, settings)


# Specs of sinks that write to this process's standard output: two of them would interleave a table and
# JSON Lines in one stream, which no reader (jq, a person) can take apart.
_STANDARD_OUTPUT = {"stdout", "jsonl:-", "jsonl:/dev/stdout", "jsonl:/dev/fd/1", "jsonl:/proc/self/fd/1"}


def open_sinks(specs: Sequence[str], settings: Settings | None = None, setting: str = "--sink") -> list[Sink]:
    """Build every sink of a run; refuses two sinks that would both write to standard output."""
    on_stdout = [spec for spec in specs if spec.strip() in _STANDARD_OUTPUT]
    if len(on_stdout) > 1:
        raise ConfigError(
            setting,
            f"{' and '.join(on_stdout)} would both write to standard output; keep one (for JSON Lines on standard "
            "output, drop stdout: --sink jsonl:- alone)",
        )
    return [open_sink(spec, settings, setting) for spec in specs]


# The built-in sinks, each registering itself when imported; only the ones a run names are imported.
# None imports an Azure SDK at module level either (they do it when used).
_BUILTIN = {
    "stdout": "detector.sinks.stdout",
    "jsonl": "detector.sinks.jsonl",
    "sentinel": "detector.sinks.sentinel",
    "loganalytics-table": "detector.sinks.ingestion",
    "webhook": "detector.sinks.webhook",
}


def _load_builtin(name: str) -> None:
    module = _BUILTIN.get(name)
    if module is not None and name not in _FACTORIES:
        importlib.import_module(module)
