"""Sinks: where findings go. Registered by name, chosen by `name[:argument]` specs, several at once."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from detector.errors import ConfigError
from detector.models import Finding

if TYPE_CHECKING:
    from detector.config import Settings


class Sink(ABC):
    """Delivers findings. Must be idempotent on Finding.id: delivering the same finding twice leaves one
    copy (upsert, or remember what was delivered). Raise SinkError when delivery failed."""

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
    _load_builtin()
    name, _, argument = spec.partition(":")
    if name not in _FACTORIES:
        raise ConfigError(setting, f"unknown sink '{spec}'; use one of {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](argument, settings)


def _load_builtin() -> None:
    # Each module registers itself; none imports an Azure SDK at module level (they do it when used).
    from detector.sinks import ingestion, jsonl, sentinel, stdout, webhook  # noqa: F401
