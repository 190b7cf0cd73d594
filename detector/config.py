"""Settings: the one place that reads the environment (app settings, local.settings.json, CLI env).

`SETTINGS` is the single list of setting names. Bicep appSettings, local.settings.json.template and the
README use exactly these names; tests check that they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from detector.errors import ConfigError
from detector.kql import parse_datetime, parse_timespan


@dataclass(frozen=True)
class Setting:
    """One app setting the code reads."""

    name: str
    default: str | None  # None: required
    description: str
    local_only: bool = False  # only meaningful on a developer machine; never set in Azure


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DETECTOR_SCHEDULE",
        "0 30 0 * * *",
        "NCRONTAB (6 fields, UTC) of the timer trigger; read by the Functions host, not by Python",
    ),
    Setting("DETECTOR_RULES", "rules", "rule file, folder of rule files, or rule id"),
    Setting("DETECTOR_SOURCE", None, "where rows come from: file:<path>, iis:<path> or loganalytics:<workspace id>"),
    Setting("DETECTOR_COMPUTER", "", "Computer value for rows of an iis: source (default: this host's name)"),
    Setting("DETECTOR_SINKS", "stdout", "comma-separated sinks, e.g. stdout,jsonl:/tmp/findings.jsonl"),
    Setting("DETECTOR_INGESTION_DELAY", "30m", "how far behind now a window must end (KQL timespan: 30m, 2h)"),
    Setting("DETECTOR_NOW", "", "pretend the time is this (ISO 8601 UTC) to replay fixture data", local_only=True),
)

SETTING_NAMES = frozenset(s.name for s in SETTINGS)


@dataclass(frozen=True)
class Settings:
    """Typed, validated settings, built once at start."""

    rules: str
    source: str
    computer: str
    sinks: tuple[str, ...]
    ingestion_delay: timedelta
    now_override: datetime | None
    raw: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from a mapping (default: os.environ); raise ConfigError naming the setting."""
        source_env: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, str] = {}
        for spec in SETTINGS:
            value = source_env.get(spec.name, "").strip()
            if not value:
                if spec.default is None:
                    raise ConfigError(spec.name, f"is required ({spec.description})")
                value = spec.default
            values[spec.name] = value

        sinks = tuple(s.strip() for s in values["DETECTOR_SINKS"].split(",") if s.strip())
        if not sinks:
            raise ConfigError("DETECTOR_SINKS", "names no sink; use e.g. 'stdout'")
        try:
            delay = parse_timespan(values["DETECTOR_INGESTION_DELAY"])
        except ValueError as exc:
            raise ConfigError("DETECTOR_INGESTION_DELAY", str(exc)) from None
        if delay < timedelta(0):
            raise ConfigError("DETECTOR_INGESTION_DELAY", "must not be negative")
        now_override = None
        if values["DETECTOR_NOW"]:
            try:
                now_override = parse_datetime(values["DETECTOR_NOW"])
            except ValueError as exc:
                raise ConfigError("DETECTOR_NOW", str(exc)) from None
        return cls(
            rules=values["DETECTOR_RULES"],
            source=values["DETECTOR_SOURCE"],
            computer=values["DETECTOR_COMPUTER"],
            sinks=sinks,
            ingestion_delay=delay,
            now_override=now_override,
            raw=values,
        )
