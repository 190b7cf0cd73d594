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
    # Identity: the user-assigned managed identity every Azure client uses (empty: developer credentials).
    Setting("AZURE_CLIENT_ID", "", "client id of the Function App's user-assigned managed identity"),
    # Durable state: checkpoint, outbox, lease (issue "Runs that never miss and never duplicate").
    Setting("DETECTOR_STATE", "file:.detector-state", "state store: file:<folder> (local) or table (Azure Table Storage)"),
    Setting(
        "DETECTOR_STATE_TABLE_ENDPOINT",
        "",
        "table service URL when DETECTOR_STATE=table, https://<account>.table.core.windows.net",
    ),
    Setting("DETECTOR_STATE_TABLE_NAME", "detectorstate", "table holding the state"),
    Setting(
        "DETECTOR_CATCHUP_LIMIT", "7d", "after downtime, catch up at most this far back; older windows are reported as skipped"
    ),
    Setting("DETECTOR_RECHECK_HORIZON", "1d", "re-evaluate bins this recent that received rows after they were evaluated"),
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
    azure_client_id: str
    state: str
    state_table_endpoint: str
    state_table_name: str
    catchup_limit: timedelta
    recheck_horizon: timedelta
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
        delay = _timespan(values, "DETECTOR_INGESTION_DELAY", timedelta(0))
        catchup_limit = _timespan(values, "DETECTOR_CATCHUP_LIMIT", timedelta(minutes=10))
        recheck_horizon = _timespan(values, "DETECTOR_RECHECK_HORIZON", timedelta(0))
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
            azure_client_id=values["AZURE_CLIENT_ID"],
            state=values["DETECTOR_STATE"],
            state_table_endpoint=values["DETECTOR_STATE_TABLE_ENDPOINT"],
            state_table_name=values["DETECTOR_STATE_TABLE_NAME"],
            catchup_limit=catchup_limit,
            recheck_horizon=recheck_horizon,
            raw=values,
        )


def _timespan(values: Mapping[str, str], name: str, minimum: timedelta) -> timedelta:
    try:
        span = parse_timespan(values[name])
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None
    if span < minimum:
        raise ConfigError(name, f"must be at least {minimum}")
    return span
