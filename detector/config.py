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
    Setting("DETECTOR_RULES", "rules", "rule file, folder of rule files, rule id, or a comma-separated list of them"),
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
    # Sinks that reach Azure and the SOC (issue 4, docs/sinks.md).
    Setting(
        "DETECTOR_ARM_ENDPOINT",
        "https://management.azure.com",
        "Azure Resource Manager endpoint of the cloud (sovereign clouds: https://management.usgovcloudapi.net, ...)",
    ),
    Setting(
        "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID",
        "",
        "sentinel sink: resource id of the Sentinel workspace, "
        "/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.OperationalInsights/workspaces/<name>",
    ),
    Setting(
        "DETECTOR_INGESTION_ENDPOINT",
        "",
        "loganalytics-table sink: logs ingestion endpoint of the DCR (or its DCE), https://<name>.<region>.ingest.monitor.azure.com",
    ),
    Setting("DETECTOR_INGESTION_DCR_IMMUTABLE_ID", "", "loganalytics-table sink: immutable id of the DCR (dcr-<32 hex>)"),
    Setting(
        "DETECTOR_INGESTION_STREAM",
        "Custom-IISPortScanFindings_CL",
        "loganalytics-table sink: stream declared in the DCR (infra/schema/findings-columns.json)",
    ),
    Setting("DETECTOR_WEBHOOK_URL", "", "webhook sink: URL to POST findings to; a secret (Key Vault reference in Azure)"),
    Setting("DETECTOR_WEBHOOK_MODE", "per-finding", "webhook sink: per-finding (one POST per finding) or per-run (one POST)"),
    # Log Analytics source (loganalytics:<workspace id>), docs/loganalytics.md.
    Setting(
        "DETECTOR_LOGS_ENDPOINT",
        "https://api.loganalytics.io",
        "Log Analytics query API endpoint (sovereign clouds: https://api.loganalytics.us, https://api.loganalytics.azure.cn)",
    ),
    Setting("DETECTOR_LOGS_MODE", "two-step", "two-step (candidates server-side, then details) or raw (all projected rows)"),
    Setting("DETECTOR_LOGS_TABLE", "W3CIISLog", "table to query, e.g. W3CIISLog or a custom IISLogs_CL"),
    Setting("DETECTOR_LOGS_SERVER_TIMEOUT", "5m", "server timeout of each query (KQL timespan, 1s to 10m)"),
)

SETTING_NAMES = frozenset(s.name for s in SETTINGS)

LOGS_MODES = ("two-step", "raw")
# Log Analytics table names: a letter or underscore, then letters, digits, underscores (custom tables
# end in _CL, which this allows). Nothing else may reach the query text.
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_SERVER_TIMEOUT = timedelta(minutes=10)  # the query API's ceiling for Prefer: wait=N


@dataclass(frozen=True)
class LogAnalyticsSettings:
    """Settings of the `loganalytics:<workspace id>` source, validated."""

    endpoint: str = "https://api.loganalytics.io"
    mode: str = "two-step"
    table: str = "W3CIISLog"
    server_timeout: timedelta = timedelta(minutes=5)
    client_id: str = ""

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
    azure_client_id: str
    state: str
    state_table_endpoint: str
    state_table_name: str
    catchup_limit: timedelta
    recheck_horizon: timedelta
    raw: Mapping[str, str] = field(repr=False)  # holds DETECTOR_WEBHOOK_URL, a secret: never printed
    # The Azure sinks (issue 4). Defaults keep Settings constructible in tests.
    arm_endpoint: str = "https://management.azure.com"
    sentinel_workspace_resource_id: str = ""
    ingestion_endpoint: str = ""
    ingestion_dcr_immutable_id: str = ""
    ingestion_stream: str = "Custom-IISPortScanFindings_CL"
    webhook_url: str = field(default="", repr=False)  # a secret: never printed
    webhook_mode: str = "per-finding"
    logs: LogAnalyticsSettings = field(default_factory=LogAnalyticsSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, source_required: bool = True) -> Settings:
        """Build settings from a mapping (default: os.environ); raise ConfigError naming the setting.

        source_required=False serves callers that only need the sink settings (the CLI's --sink).
        """
        source_env: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, str] = {}
        for spec in SETTINGS:
            value = source_env.get(spec.name, "").strip()
            if not value:
                if spec.default is None and not (spec.name == "DETECTOR_SOURCE" and not source_required):
                    raise ConfigError(spec.name, f"is required ({spec.description})")
                value = spec.default or ""
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
        logs = LogAnalyticsSettings.from_values(values)
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
            **_sink_settings(values),
            logs=logs,
        )


def _timespan(values: Mapping[str, str], name: str, minimum: timedelta) -> timedelta:
    try:
        span = parse_timespan(values[name])
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None
    if span < minimum:
        raise ConfigError(name, f"must be at least {minimum}")
    return span


_WORKSPACE_RESOURCE_ID = re.compile(
    r"^/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/resourceGroups/[-\w._()]{1,90}"
    r"/providers/Microsoft\.OperationalInsights/workspaces/[-A-Za-z0-9]{4,63}$",
    re.IGNORECASE,
)
_DCR_IMMUTABLE_ID = re.compile(r"^dcr-[0-9a-f]{32}$")
_STREAM = re.compile(r"^Custom-[A-Za-z][A-Za-z0-9_]{0,62}$")
WEBHOOK_MODES = ("per-finding", "per-run")


def _https_url(name: str, value: str, *, secret: bool = False) -> str:
    """Validate an https:// URL setting; a secret URL is never echoed back in the error."""
    parsed = urlsplit(value)
    if parsed.scheme != "https" or not parsed.hostname:
        shown = "the value" if secret else f"'{value}'"
        raise ConfigError(name, f"{shown} is not an https:// URL")
    return value.rstrip("/") if not secret else value


def _sink_settings(values: Mapping[str, str]) -> dict[str, str]:
    """Parse the Azure sink settings. Emptiness is checked by the sink that needs a value, not here."""
    out = {
        "arm_endpoint": _https_url("DETECTOR_ARM_ENDPOINT", values["DETECTOR_ARM_ENDPOINT"]),
        "sentinel_workspace_resource_id": values["DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID"].rstrip("/"),
        "ingestion_endpoint": values["DETECTOR_INGESTION_ENDPOINT"],
        "ingestion_dcr_immutable_id": values["DETECTOR_INGESTION_DCR_IMMUTABLE_ID"],
        "ingestion_stream": values["DETECTOR_INGESTION_STREAM"],
        "webhook_url": values["DETECTOR_WEBHOOK_URL"],
        "webhook_mode": values["DETECTOR_WEBHOOK_MODE"],
    }
    workspace = out["sentinel_workspace_resource_id"]
    if workspace and not _WORKSPACE_RESOURCE_ID.match(workspace):
        raise ConfigError(
            "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID",
            f"'{workspace}' is not a workspace resource id; copy it from the workspace's Properties page: "
            "/subscriptions/<subscription id>/resourceGroups/<group>/providers/Microsoft.OperationalInsights/workspaces/<name>",
        )
    if out["ingestion_endpoint"]:
        out["ingestion_endpoint"] = _https_url("DETECTOR_INGESTION_ENDPOINT", out["ingestion_endpoint"])
    dcr = out["ingestion_dcr_immutable_id"]
    if dcr and not _DCR_IMMUTABLE_ID.match(dcr):
        raise ConfigError(
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID",
            f"'{dcr}' is not a DCR immutable id (dcr- and 32 hex digits); it is the DCR's immutableId property, "
            "not its name or resource id",
        )
    if not _STREAM.match(out["ingestion_stream"]):
        raise ConfigError(
            "DETECTOR_INGESTION_STREAM",
            f"'{out['ingestion_stream']}' is not a custom stream name such as Custom-IISPortScanFindings_CL",
        )
    if out["webhook_url"]:
        _https_url("DETECTOR_WEBHOOK_URL", out["webhook_url"], secret=True)
    if out["webhook_mode"] not in WEBHOOK_MODES:
        raise ConfigError("DETECTOR_WEBHOOK_MODE", f"'{out['webhook_mode']}' is not one of {', '.join(WEBHOOK_MODES)}")
    return out


def settings_or_env(settings: Settings | None) -> Settings:
    """The given settings, or (for CLI callers that pass none) those of the environment, source optional."""
    return settings if settings is not None else Settings.from_env(source_required=False)
