"""Settings: the one place that reads the environment (app settings, local.settings.json, CLI env).

`SETTINGS` is the single list of setting names. Bicep appSettings, local.settings.json.template and the
README use exactly these names; tests check that they agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

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
    # Log Analytics source (loganalytics:<workspace id>), docs/loganalytics.md.
    Setting(
        "DETECTOR_LOGS_ENDPOINT",
        "https://api.loganalytics.io",
        "Log Analytics query API endpoint (sovereign clouds: https://api.loganalytics.us, https://api.loganalytics.azure.cn)",
    ),
    Setting("DETECTOR_LOGS_MODE", "two-step", "two-step (candidates server-side, then details) or raw (all projected rows)"),
    Setting("DETECTOR_LOGS_TABLE", "W3CIISLog", "table to query, e.g. W3CIISLog or a custom IISLogs_CL"),
    Setting("DETECTOR_LOGS_SERVER_TIMEOUT", "5m", "server timeout of each query (KQL timespan, 1s to 10m)"),
    Setting(
        "AZURE_CLIENT_ID",
        "",
        "client id of the user-assigned managed identity; empty: developer credentials (DefaultAzureCredential)",
    ),
)

SETTING_NAMES = frozenset(s.name for s in SETTINGS)

LOGS_MODES = ("two-step", "raw")
# Log Analytics table names: a letter or underscore, then letters, digits, underscores (custom tables
# end in _CL, which this allows). Nothing else may reach the query text.
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_SERVER_TIMEOUT = timedelta(minutes=10)  # the query API's ceiling for Prefer: wait=N


def _defaults(names: tuple[str, ...]) -> dict[str, str]:
    by_name = {spec.name: spec for spec in SETTINGS}
    return {name: by_name[name].default or "" for name in names}


@dataclass(frozen=True)
class LogAnalyticsSettings:
    """Settings of the `loganalytics:<workspace id>` source, validated."""

    endpoint: str = "https://api.loganalytics.io"
    mode: str = "two-step"
    table: str = "W3CIISLog"
    server_timeout: timedelta = timedelta(minutes=5)
    client_id: str = ""

    NAMES = (
        "DETECTOR_LOGS_ENDPOINT",
        "DETECTOR_LOGS_MODE",
        "DETECTOR_LOGS_TABLE",
        "DETECTOR_LOGS_SERVER_TIMEOUT",
        "AZURE_CLIENT_ID",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogAnalyticsSettings:
        """Read and validate the Log Analytics settings (default: os.environ); ConfigError names the setting."""
        source_env: Mapping[str, str] = os.environ if env is None else env
        values = _defaults(cls.NAMES)
        for name in cls.NAMES:
            value = source_env.get(name, "").strip()
            if value:
                values[name] = value
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> LogAnalyticsSettings:
        """Validate already-collected setting values (defaults applied)."""
        endpoint = values["DETECTOR_LOGS_ENDPOINT"].rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                "DETECTOR_LOGS_ENDPOINT", f"'{endpoint}' must be an https:// URL such as https://api.loganalytics.io"
            )
        mode = values["DETECTOR_LOGS_MODE"].lower()
        if mode not in LOGS_MODES:
            raise ConfigError("DETECTOR_LOGS_MODE", f"'{values['DETECTOR_LOGS_MODE']}' is not one of {', '.join(LOGS_MODES)}")
        table = values["DETECTOR_LOGS_TABLE"]
        if not TABLE_NAME.fullmatch(table):
            raise ConfigError(
                "DETECTOR_LOGS_TABLE",
                f"{table!r} is not a table name; use letters, digits and underscores only (e.g. W3CIISLog or IISLogs_CL)",
            )
        try:
            timeout = parse_timespan(values["DETECTOR_LOGS_SERVER_TIMEOUT"])
        except ValueError as exc:
            raise ConfigError("DETECTOR_LOGS_SERVER_TIMEOUT", str(exc)) from None
        if not timedelta(seconds=1) <= timeout <= MAX_SERVER_TIMEOUT or timeout.microseconds:
            raise ConfigError("DETECTOR_LOGS_SERVER_TIMEOUT", "must be whole seconds from 1s to 10m (the API's maximum)")
        client_id = values["AZURE_CLIENT_ID"]
        if client_id and not GUID.fullmatch(client_id):
            raise ConfigError(
                "AZURE_CLIENT_ID", f"'{client_id}' is not a client id (a GUID); leave it empty for developer credentials"
            )
        return cls(endpoint=endpoint, mode=mode, table=table, server_timeout=timeout, client_id=client_id)


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
    logs: LogAnalyticsSettings = field(default_factory=LogAnalyticsSettings)

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
        logs = LogAnalyticsSettings.from_values(values)
        return cls(
            rules=values["DETECTOR_RULES"],
            source=values["DETECTOR_SOURCE"],
            computer=values["DETECTOR_COMPUTER"],
            sinks=sinks,
            ingestion_delay=delay,
            now_override=now_override,
            raw=values,
            logs=logs,
        )
