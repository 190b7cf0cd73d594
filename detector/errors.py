"""One error hierarchy. Every message a user can cause says what, where, and what to do."""

from __future__ import annotations

from collections.abc import Mapping


class DetectorError(Exception):
    """Base of every error the detector raises on purpose."""


def shown(value: str, limit: int = 80) -> str:
    """A value as a message may show it: one line, control characters and lone surrogates escaped, bounded.

    Values reach messages from settings, file names and rule files; a newline, an escape sequence or
    100,000 characters there must not break the one-line `error:` a user sees or a log line.
    """
    text = value if len(value) <= limit else value[:limit]
    escaped = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return escaped + ("..." if len(value) > limit else "")


class ConfigError(DetectorError):
    """A setting (app setting, environment variable or CLI option) is missing or invalid.

    `source` names where the value came from when that is a file (local.settings.json): the message
    then starts with the file, so the user knows which copy of the setting to fix.
    """

    def __init__(self, setting: str, problem: str, *, source: str = "") -> None:
        self.setting, self.problem, self.source = setting, problem, source
        if source:
            super().__init__(f"{source}: {setting}: {problem}" if setting else f"{source}: {problem}")
        else:
            super().__init__(f"setting {setting}: {problem}")


class RuleError(DetectorError):
    """A rule file is malformed; the message names the file and the field."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path = path
        self.field = field
        where = f"{path}: field '{field}'" if field else path
        super().__init__(f"{where}: {problem}")


class InputError(DetectorError):
    """Source data is malformed; the message names the file and line where known."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        # A path is the user's, but may hold an escape sequence or a newline (a file named so by others).
        super().__init__(f"{where if where.isprintable() else shown(where, 2000)}: {problem}")


class SourceError(DetectorError):
    """A source could not return a complete answer for a window."""


class SinkError(DetectorError):
    """A sink could not deliver; the message names the sink and what to check.

    `delivered` holds the ids of findings that did reach the sink before the failure (a partial
    delivery); every other finding passed to the sink counts as not delivered and is retried later.
    `rejected` maps ids of findings the service refused for what they hold (not an outage: say a 400 for
    that one payload) to the reason; the runner counts those against the finding and parks it after a
    few runs, so it never holds back the others. `refused` maps ids of findings the service refused as
    far as it says (a 400 for the payload) where it may be refusing every payload alike (a retired API
    version, a policy): the runner counts those only with proof that it is the finding: another finding
    delivered in the same offer.
    """

    def __init__(
        self,
        message: str,
        delivered: frozenset[str] = frozenset(),
        rejected: Mapping[str, str] | None = None,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        self.delivered = delivered
        self.rejected: Mapping[str, str] = rejected or {}
        self.refused: Mapping[str, str] = refused or {}
        super().__init__(message)


class StateError(DetectorError):
    """A state record (file or table entity) is unreadable or does not hang together with the rest.

    The message names the record, what is wrong with it and what to do; the run stops before it could
    stall silently or lose findings on the strength of that record.
    """

    def __init__(self, where: str, problem: str, remedy: str) -> None:
        self.where = where
        super().__init__(f"state {where}: {problem}; {remedy}")


class DeadlineReachedError(SourceError):
    """The run's deadline came before the source could answer a window whole; the window is left for the next run."""
