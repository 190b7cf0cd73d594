"""Settings: the one place that reads the environment (app settings, local.settings.json, CLI env).

Every value is checked at start: a bad one is one ConfigError naming the setting and what to do.

`SETTINGS` is the single list of setting names. Bicep appSettings, local.settings.json.template and the
README use exactly these names; tests check that they agree.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from detector.errors import ConfigError, shown
from detector.kql import format_timespan, parse_datetime, parse_timespan, plain_int


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
        "NCRONTAB (6 fields: second minute hour day month day-of-week, UTC) of the timer trigger; checked at start",
    ),
    Setting("DETECTOR_RULES", "rules", "rule file, folder of rule files, rule id, or a comma-separated list of them"),
    Setting("DETECTOR_SOURCE", None, "where rows come from: file:<path>, iis:<path> or loganalytics:<workspace id>"),
    Setting(
        "DETECTOR_COMPUTER",
        "",
        "Computer value for rows of an iis: source (default: this host's name; one line, at most 255 characters)",
    ),
    Setting("DETECTOR_STRICT", "false", "true: a malformed input line is an error (default: skipped, counted and reported)"),
    Setting(
        "DETECTOR_SINKS",
        "stdout",
        "comma-separated sinks, each at most once, e.g. stdout,jsonl:/tmp/findings.jsonl (jsonl:- is standard output)",
    ),
    Setting("DETECTOR_INGESTION_DELAY", "30m", "how far behind now a window must end (KQL timespan, 0s to 1d)"),
    Setting("DETECTOR_NOW", "", "pretend the time is this (ISO 8601 UTC, 1990 to 2100) to replay fixture data", local_only=True),
    # Identity: the user-assigned managed identity every Azure client uses (empty: developer credentials).
    Setting("AZURE_CLIENT_ID", "", "client id of the Function App's user-assigned managed identity"),
    # Durable state: checkpoint, outbox, lease.
    Setting(
        "DETECTOR_STATE",
        "file:.detector-state",
        "state store: file:<folder> (local; a folder where files can be created) or table (Azure Table Storage)",
    ),
    Setting(
        "DETECTOR_STATE_TABLE_ENDPOINT",
        "",
        "table service URL when DETECTOR_STATE=table, https://<account>.table.core.windows.net (https only)",
    ),
    Setting(
        "DETECTOR_STATE_TABLE_NAME",
        "detectorstate",
        "table holding the state (3 to 63 letters and digits, starting with a letter)",
    ),
    Setting(
        "DETECTOR_CATCHUP_LIMIT",
        "7d",
        "after downtime, catch up at most this far back (10m to 90d); older windows are reported as skipped",
    ),
    Setting(
        "DETECTOR_RECHECK_HORIZON", "1d", "re-evaluate bins this recent (0s to 14d) that received rows after they were evaluated"
    ),
    # Sinks that reach Azure and the SOC (docs/sinks.md).
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
# Bounds of every duration setting: below, a setting makes no sense; above, it is a typo (1000000d) that
# would overflow date arithmetic later. Ingestion delay: Log Analytics' own latency is minutes, a day
# covers any outage worth waiting for. Catch-up: 90 days is the default interactive retention of a
# workspace; older rows are gone anyway. Re-check: 14 days is Sentinel's longest queryPeriod, and
# delivered findings are remembered for 30 days, so a re-check never re-sends a forgotten one.
DURATION_BOUNDS: dict[str, tuple[timedelta, timedelta]] = {
    "DETECTOR_INGESTION_DELAY": (timedelta(0), timedelta(days=1)),
    "DETECTOR_CATCHUP_LIMIT": (timedelta(minutes=10), timedelta(days=90)),
    "DETECTOR_RECHECK_HORIZON": (timedelta(0), timedelta(days=14)),
    "DETECTOR_LOGS_SERVER_TIMEOUT": (timedelta(seconds=1), MAX_SERVER_TIMEOUT),
}
# DETECTOR_NOW replays recorded data; a year outside this range is a typo, and year 1 or 9999 would
# overflow the window arithmetic.
NOW_RANGE = (datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
MAX_VALUE_LENGTH = 4096  # longer than any real value (a webhook URL with its signature is a few hundred)
MAX_COMPUTER_LENGTH = 255  # a fully qualified DNS name is at most 253 characters
_STATE_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")  # Azure Table Storage's rule for table names
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _check_text(name: str, value: str) -> None:
    """Every value: bounded text on one line.

    NUL and lone surrogates reach us from settings files and from environment bytes that are not UTF-8
    (Python keeps them as surrogates); they break paths, HTTP headers and every message that would show them.
    """
    if len(value) > MAX_VALUE_LENGTH:
        raise ConfigError(name, f"is {len(value):,} characters long; a value holds at most {MAX_VALUE_LENGTH}")
    for index, char in enumerate(value):
        if char == "\x00":
            raise ConfigError(name, f"holds a NUL character at position {index}; remove it")
        if "\ud800" <= char <= "\udfff":
            raise ConfigError(
                name, f"holds a byte that is not UTF-8 (or a lone surrogate) at position {index}; write the value as UTF-8"
            )
        if not char.isprintable():
            raise ConfigError(name, f"holds the control character {char!a} at position {index}; a value is one line")


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
        endpoint = https_url("DETECTOR_LOGS_ENDPOINT", values["DETECTOR_LOGS_ENDPOINT"])
        mode = values["DETECTOR_LOGS_MODE"].lower()
        if mode not in LOGS_MODES:
            raise ConfigError(
                "DETECTOR_LOGS_MODE", f"'{shown(values['DETECTOR_LOGS_MODE'])}' is not one of {', '.join(LOGS_MODES)}"
            )
        table = values["DETECTOR_LOGS_TABLE"]
        if not TABLE_NAME.fullmatch(table):
            raise ConfigError(
                "DETECTOR_LOGS_TABLE",
                f"'{shown(table)}' is not a table name; use letters, digits and underscores only (e.g. W3CIISLog or IISLogs_CL)",
            )
        timeout = duration(values, "DETECTOR_LOGS_SERVER_TIMEOUT")
        if timeout.microseconds:
            raise ConfigError("DETECTOR_LOGS_SERVER_TIMEOUT", "must be whole seconds from 1s to 10m (the API's maximum)")
        client_id = values["AZURE_CLIENT_ID"]
        if client_id and not GUID.fullmatch(client_id):
            raise ConfigError(
                "AZURE_CLIENT_ID", f"'{shown(client_id)}' is not a client id (a GUID); leave it empty for developer credentials"
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
    # The Azure sinks. Defaults keep Settings constructible in tests.
    arm_endpoint: str = "https://management.azure.com"
    sentinel_workspace_resource_id: str = ""
    ingestion_endpoint: str = ""
    ingestion_dcr_immutable_id: str = ""
    ingestion_stream: str = "Custom-IISPortScanFindings_CL"
    webhook_url: str = field(default="", repr=False)  # a secret: never printed
    webhook_mode: str = "per-finding"
    logs: LogAnalyticsSettings = field(default_factory=LogAnalyticsSettings)
    strict: bool = False  # DETECTOR_STRICT / --strict: a malformed input line is an error, not a skipped line

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, source_required: bool = True) -> Settings:
        """Build settings from a mapping (default: os.environ); raise ConfigError naming the setting.

        The mapping may come from load_settings_file: an invalid value taken from the file is then
        reported with the file's name. source_required=False serves callers that only need the sink
        settings (the CLI's --sink).
        """
        source_env: Mapping[str, str] = os.environ if env is None else env
        origins = source_env.origins if isinstance(source_env, SettingValues) else {}
        try:
            return cls._validate(source_env, source_required=source_required)
        except ConfigError as exc:
            if exc.setting in origins and not exc.source:
                raise ConfigError(exc.setting, exc.problem, source=origins[exc.setting]) from None
            raise

    @classmethod
    def _validate(cls, source_env: Mapping[str, str], *, source_required: bool) -> Settings:
        values: dict[str, str] = {}
        for spec in SETTINGS:
            value = source_env.get(spec.name, "").strip()
            _check_text(spec.name, value)
            if not value:
                if spec.default is None and not (spec.name == "DETECTOR_SOURCE" and not source_required):
                    raise ConfigError(spec.name, f"is required ({spec.description})")
                value = spec.default or ""
            values[spec.name] = value

        check_schedule("DETECTOR_SCHEDULE", values["DETECTOR_SCHEDULE"])
        sinks = tuple(s.strip() for s in values["DETECTOR_SINKS"].split(",") if s.strip())
        if not sinks:
            raise ConfigError("DETECTOR_SINKS", "names no sink; use e.g. 'stdout'")
        for sink in sinks:
            if sinks.count(sink) > 1:
                raise ConfigError("DETECTOR_SINKS", f"names {shown(sink)} twice; name each sink once")
        computer = values["DETECTOR_COMPUTER"]
        if len(computer) > MAX_COMPUTER_LENGTH:
            raise ConfigError("DETECTOR_COMPUTER", f"is {len(computer)} characters long; a computer name has at most 255")
        delay = duration(values, "DETECTOR_INGESTION_DELAY")
        catchup_limit = duration(values, "DETECTOR_CATCHUP_LIMIT")
        recheck_horizon = duration(values, "DETECTOR_RECHECK_HORIZON")
        now_override = _now_override(values["DETECTOR_NOW"])
        _state_settings(values)
        logs = LogAnalyticsSettings.from_values(values)
        return cls(
            rules=values["DETECTOR_RULES"],
            source=values["DETECTOR_SOURCE"],
            computer=computer,
            sinks=sinks,
            ingestion_delay=delay,
            now_override=now_override,
            azure_client_id=values["AZURE_CLIENT_ID"],
            state=values["DETECTOR_STATE"],
            state_table_endpoint=values["DETECTOR_STATE_TABLE_ENDPOINT"],
            state_table_name=values["DETECTOR_STATE_TABLE_NAME"],
            catchup_limit=catchup_limit,
            recheck_horizon=recheck_horizon,
            **_sink_settings(values),
            logs=logs,
            strict=_boolean(values, "DETECTOR_STRICT"),
        )


def duration(values: Mapping[str, str], name: str) -> timedelta:
    """A duration setting as a timedelta, within DURATION_BOUNDS[name]."""
    low, high = DURATION_BOUNDS[name]
    text = values[name]
    bounds = f"from {format_timespan(low)} to {format_timespan(high)}"
    if not text.isascii():  # float() reads other scripts' digits; KQL does not
        raise ConfigError(name, f"'{shown(text)}' is not a timespan; write it as KQL does, e.g. 10m, 1h, 1d ({bounds})")
    try:
        span = parse_timespan(text)
    except (ValueError, OverflowError):
        raise ConfigError(name, f"'{shown(text)}' is not a timespan; write it as KQL does, e.g. 10m, 1h, 1d ({bounds})") from None
    if not low <= span <= high:
        raise ConfigError(name, f"'{shown(text)}' is out of range; use a timespan {bounds}")
    return span


def _now_override(text: str) -> datetime | None:
    if not text:
        return None
    out_of_range = ConfigError("DETECTOR_NOW", f"'{shown(text)}' is out of range; pretend a time from 1990-01-01 to 2100-01-01")
    try:
        now = parse_datetime(text)
    except (ValueError, OverflowError):
        if _is_iso_datetime(text):  # year 1 or 9999 with an offset: the UTC value is outside datetime's range
            raise out_of_range from None
        raise ConfigError("DETECTOR_NOW", f"'{shown(text)}' is not an ISO 8601 datetime such as 2026-11-26T00:00:00Z") from None
    low, high = NOW_RANGE
    if not low <= now < high:
        raise out_of_range
    return now


def _is_iso_datetime(text: str) -> bool:
    try:
        datetime.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


# NCRONTAB: {second} {minute} {hour} {day} {month} {day-of-week}, the form Azure Functions' timer
# trigger takes (the TimeSpan form hh:mm:ss is not supported on Consumption and Flex Consumption plans).
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    (
        "month",
        1,
        12,
        {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))},
    ),
    ("day of week", 0, 6, {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}),
)
_CRON_PART = re.compile(r"^(?P<range>\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")


def check_schedule(name: str, text: str) -> None:
    """Validate an NCRONTAB expression; the Functions host would otherwise reject it only when it loads."""
    fields = text.split()
    example = "e.g. '0 30 0 * * *' (00:30:00 UTC daily) or '0 */5 * * * *'"
    if len(fields) != 6:
        hint = " (hh:mm:ss is the TimeSpan form, which Consumption plans do not run; use NCRONTAB)" if ":" in text else ""
        raise ConfigError(
            name,
            f"'{shown(text)}' has {len(fields)} fields; NCRONTAB has 6 fields: second minute hour day month day-of-week, "
            f"{example}{hint}",
        )
    for value, (label, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.split(","):
            match = _CRON_PART.match(part)
            if not match:
                raise ConfigError(name, f"{label} field '{shown(value)}' is not NCRONTAB ({example})")
            if match.group("step") is not None and int(match.group("step")) == 0:
                raise ConfigError(name, f"{label} field '{shown(value)}': a step must be at least 1")
            if match.group("range") == "*":
                continue
            bounds = []
            for item in match.group("range").split("-"):
                number = plain_int(item)
                number = names.get(item.lower()) if number is None else number
                if number is None or not low <= number <= high:
                    raise ConfigError(name, f"{label} field '{shown(value)}': {shown(item)} is not from {low} to {high}")
                bounds.append(number)
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                raise ConfigError(name, f"{label} field '{shown(value)}': the range runs backwards")


def check_state_folder(name: str, folder: str) -> Path:
    """A state folder must be a folder where files can be created, or not exist yet under one.

    Nothing is created here: an existing folder is probed with an anonymous temporary file, a missing
    one is checked through its nearest existing parent.
    """
    path = Path(folder)
    try:
        probe = path
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise ConfigError(name, f"{shown(str(probe))} is a file, not a folder; name a folder for the state")
        if probe == path:
            with tempfile.TemporaryFile(dir=path):
                pass
        elif not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(name, f"cannot create folders in {shown(str(probe))}; name a writable place for the state")
    except OSError as exc:
        raise ConfigError(
            name, f"cannot create files in {shown(folder)} ({exc.strerror}); name a writable folder for the state"
        ) from None
    return path


def _state_settings(values: Mapping[str, str]) -> None:
    spec = values["DETECTOR_STATE"]
    scheme, _, argument = spec.partition(":")
    if scheme == "file" and argument:
        check_state_folder("DETECTOR_STATE", argument)
    elif spec == "table":
        if not values["DETECTOR_STATE_TABLE_ENDPOINT"]:
            raise ConfigError("DETECTOR_STATE_TABLE_ENDPOINT", "is required when DETECTOR_STATE is 'table'")
    else:
        raise ConfigError("DETECTOR_STATE", f"'{shown(spec)}' is not file:<folder> or table")
    endpoint = values["DETECTOR_STATE_TABLE_ENDPOINT"]
    if endpoint:
        # https even for Azurite: the tests run it with TLS, and a token must never cross plain http.
        https_url("DETECTOR_STATE_TABLE_ENDPOINT", endpoint, allow_path=True)
    table = values["DETECTOR_STATE_TABLE_NAME"]
    if not _STATE_TABLE_NAME.match(table):
        raise ConfigError(
            "DETECTOR_STATE_TABLE_NAME",
            f"'{shown(table)}' is not a table name: 3 to 63 letters and digits, starting with a letter",
        )
    if table.lower() == "tables":
        raise ConfigError("DETECTOR_STATE_TABLE_NAME", "'tables' is reserved by Table Storage; choose another name")


_WORKSPACE_RESOURCE_ID = re.compile(
    r"^/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/resourceGroups/[-\w._()]{1,90}"
    r"/providers/Microsoft\.OperationalInsights/workspaces/[-A-Za-z0-9]{4,63}$",
    re.IGNORECASE,
)
_DCR_IMMUTABLE_ID = re.compile(r"^dcr-[0-9a-f]{32}$")
_STREAM = re.compile(r"^Custom-[A-Za-z][A-Za-z0-9_]{0,62}$")
WEBHOOK_MODES = ("per-finding", "per-run")


def https_url(name: str, value: str, *, secret: bool = False, allow_path: bool = True, allow_query: bool = False) -> str:
    """Validate an https:// URL setting and return it (endpoints without a trailing slash).

    A secret URL (the webhook's) is never echoed back in an error, not even in part.
    """
    shown_value = "the value" if secret else f"'{shown(value)}'"
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when out of range
        host = parts.hostname
    except ValueError as exc:
        problem = "the port is not a number from 0 to 65535" if "port" in str(exc).lower() else str(exc)
        raise ConfigError(name, f"{shown_value} is not a URL ({problem}); write it as https://host/path") from None
    del port
    if parts.scheme.lower() != "https" or not host:
        raise ConfigError(name, f"{shown_value} is not an https:// URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(name, f"{shown_value} holds a user name or password before the host; remove them")
    if " " in value:
        raise ConfigError(name, f"{shown_value} holds a space; percent-encode it (%20)")
    if not host.isascii():
        raise ConfigError(name, f"{shown_value} has a host name that is not ASCII; write it in its ASCII (xn--) form")
    if not host.startswith("[") and ":" not in host and not _HOST.match(host):
        raise ConfigError(name, f"{shown_value} has no valid host name")
    if parts.fragment or value.endswith("#"):
        raise ConfigError(name, f"{shown_value} holds a #fragment; remove it")
    if (parts.query or "?" in value) and not allow_query:
        raise ConfigError(name, f"{shown_value} holds a ?query; an endpoint is scheme, host and path only")
    if parts.path.strip("/") and not allow_path:
        raise ConfigError(name, f"{shown_value} holds a path; an endpoint is scheme and host only")
    return value if secret or allow_query else value.rstrip("/")


def _sink_settings(values: Mapping[str, str]) -> dict[str, str]:
    """Parse the Azure sink settings. Emptiness is checked by the sink that needs a value, not here."""
    out = {
        "arm_endpoint": https_url("DETECTOR_ARM_ENDPOINT", values["DETECTOR_ARM_ENDPOINT"]),
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
            f"'{shown(workspace)}' is not a workspace resource id; copy it from the workspace's Properties page: "
            "/subscriptions/<subscription id>/resourceGroups/<group>/providers/Microsoft.OperationalInsights/workspaces/<name>",
        )
    if out["ingestion_endpoint"]:
        out["ingestion_endpoint"] = https_url("DETECTOR_INGESTION_ENDPOINT", out["ingestion_endpoint"])
    dcr = out["ingestion_dcr_immutable_id"]
    if dcr and not _DCR_IMMUTABLE_ID.match(dcr):
        raise ConfigError(
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID",
            f"'{shown(dcr)}' is not a DCR immutable id (dcr- and 32 hex digits); it is the DCR's immutableId property, "
            "not its name or resource id",
        )
    if not _STREAM.match(out["ingestion_stream"]):
        raise ConfigError(
            "DETECTOR_INGESTION_STREAM",
            f"'{shown(out['ingestion_stream'])}' is not a custom stream name such as Custom-IISPortScanFindings_CL",
        )
    if out["webhook_url"]:
        https_url("DETECTOR_WEBHOOK_URL", out["webhook_url"], secret=True, allow_query=True)
    if out["webhook_mode"] not in WEBHOOK_MODES:
        raise ConfigError("DETECTOR_WEBHOOK_MODE", f"'{shown(out['webhook_mode'])}' is not one of {', '.join(WEBHOOK_MODES)}")
    return out


def _boolean(values: Mapping[str, str], name: str) -> bool:
    value = values[name].lower()
    if value not in ("true", "false"):
        raise ConfigError(name, f"'{values[name]}' is not true or false")
    return value == "true"


def settings_or_env(settings: Settings | None) -> Settings:
    """The given settings, or (for CLI callers that pass none) those of the environment, source optional."""
    return settings if settings is not None else Settings.from_env(source_required=False)


# --- local.settings.json -----------------------------------------------------------------------------

LOCAL_SETTINGS_FILE = "local.settings.json"
MAX_SETTINGS_FILE_BYTES = 1 << 20
MAX_SETTINGS_FILE_NESTING = 32


class SettingValues(dict[str, str]):
    """Setting values merged from a settings file and the environment.

    `origins` names the file of each value taken from it, so Settings.from_env can say which copy of a
    bad value to fix.
    """

    def __init__(self, values: Mapping[str, str], origins: Mapping[str, str]) -> None:
        super().__init__(values)
        self.origins = dict(origins)


def environment() -> Mapping[str, str]:
    """The process environment.

    Read only through here: settings, and other tools' conventions the detector honours (COLUMNS for
    the table width, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE checked before the SDK uses them).
    """
    return os.environ


def load_settings_file(path: Path | None, environ: Mapping[str, str] | None = None) -> SettingValues:
    """The values of a Functions settings file (local.settings.json), overridden by the environment.

    `path` None means `local.settings.json` in the working folder when there is one (else the environment
    alone). `environ` None means os.environ. A variable set in the environment wins over the file even
    when empty, as `func start` does. The file is `{"IsEncrypted": false, "Values": {"NAME": "text", ...}}`;
    any other shape, a value that is not a string, a key given twice, or a DETECTOR_ key that is no
    setting raises ConfigError naming the file, the line where known and the key. Pass the result to
    Settings.from_env.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        default = Path(LOCAL_SETTINGS_FILE)
        if not default.is_file():
            return SettingValues(env, {})
        path = default
    where = str(path)
    file_values = _read_settings_file(path, where)
    merged = {**file_values, **env}
    origins = {key: where for key in file_values if key not in env}
    return SettingValues(merged, origins)


def _read_settings_file(path: Path, where: str) -> dict[str, str]:
    if path.is_dir():
        raise ConfigError("", "is a folder; name the settings file (local.settings.json)", source=where)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SETTINGS_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read the settings file ({exc.strerror})", source=where) from None
    if len(data) > MAX_SETTINGS_FILE_BYTES:
        raise ConfigError("", "is larger than 1 MiB; a settings file holds a few settings", source=where)
    try:
        text = decode_utf8(data, "a settings file")
    except ValueError as exc:
        raise ConfigError("", str(exc), source=where) from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"is not valid JSON ({exc.msg}, column {exc.colno})", source=f"{where}:{exc.lineno}") from None
    except _DuplicateKeyError as exc:
        raise ConfigError("", f"{shown(exc.key)}: appears twice; keep one", source=_line_of(text, exc.key, where)) from None
    except RecursionError:
        raise ConfigError("", "is nested too deeply to be a settings file", source=where) from None
    except ValueError as exc:  # a number json will not convert (4,300 digits or more)
        raise ConfigError("", f"is not a settings file ({shown(str(exc), 200)})", source=where) from None
    if not isinstance(document, dict):
        raise ConfigError("", 'must be a JSON object {"IsEncrypted": false, "Values": {...}}', source=where)
    if _depth(document) > MAX_SETTINGS_FILE_NESTING:
        raise ConfigError("", "is nested too deeply to be a settings file", source=where)
    if document.get("IsEncrypted") is True:
        raise ConfigError("", "is encrypted; run `func settings decrypt` first", source=where)
    values = document.get("Values", {})
    if not isinstance(values, dict):
        raise ConfigError(
            "", "'Values' must be an object of setting names and text values", source=_line_of(text, "Values", where)
        )
    out: dict[str, str] = {}
    for key, value in values.items():
        at = _line_of(text, key, where)
        if not isinstance(value, str):
            kind = {bool: "true/false", int: "a number", float: "a number", type(None): "null"}.get(type(value), "not text")
            raise ConfigError(f"Values.{shown(key)}", f"must be a string, not {kind}; write it in quotes", source=at)
        if key.startswith("DETECTOR_") and key not in SETTING_NAMES:
            close = difflib.get_close_matches(key, sorted(SETTING_NAMES), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see the README's settings table"
            raise ConfigError(f"Values.{shown(key)}", f"is not a setting{hint}", source=at)
        if key in SETTING_NAMES:
            try:
                _check_text(key, value.strip())
            except ConfigError as exc:
                raise ConfigError(f"Values.{key}", exc.problem, source=at) from None
        out[key] = value
    return out


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _depth(value: object) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        nxt: list[object] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        level = nxt
    return depth


def _line_of(text: str, key: str, where: str) -> str:
    """`where:N` for the last line that holds the key in quotes (`where` when none does), for messages."""
    needle = json.dumps(key)
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return f"{where}:{lines[-1]}" if lines else where


# What a file that is not UTF-8 text usually is, by its first bytes.
_MAGIC = (
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian, with a byte order mark)"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian, with a byte order mark)"),
    (b"\xff\xfe", "UTF-16 (little-endian, with a byte order mark)"),
    (b"\xfe\xff", "UTF-16 (big-endian, with a byte order mark)"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x7fELF", "a program (ELF)"),
    (b"%PDF", "a PDF document"),
)


def decode_utf8(data: bytes, what: str) -> str:
    """UTF-8 text (a UTF-8 byte order mark is dropped), or ValueError saying what the bytes look like instead."""
    for magic, looks_like in _MAGIC:
        if data.startswith(magic):
            raise ValueError(f"is {looks_like}, not UTF-8 text; save {what} as UTF-8")
    if len(data) >= 4 and data[1:4:2] == b"\x00\x00" and data[0:4:2] != b"\x00\x00":
        raise ValueError(f"looks like UTF-16 (little-endian) without a byte order mark; save {what} as UTF-8")
    if len(data) >= 4 and data[0:4:2] == b"\x00\x00" and data[1:4:2] != b"\x00\x00":
        raise ValueError(f"looks like UTF-16 (big-endian) without a byte order mark; save {what} as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save {what} as UTF-8") from None
    if "\x00" in text:
        offset = data.index(b"\x00")
        raise ValueError(f"holds NUL bytes (the first at offset {offset}); it looks binary, not like {what}")
    return text
