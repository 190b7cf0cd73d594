"""Settings: every value is validated at start into one ConfigError naming the setting, never a traceback."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import DURATION_BOUNDS, SETTINGS, LogAnalyticsSettings, Settings, load_settings_file
from detector.errors import ConfigError, shown
from detector.kql import format_timespan
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
URL_SETTINGS = (
    "DETECTOR_ARM_ENDPOINT",
    "DETECTOR_INGESTION_ENDPOINT",
    "DETECTOR_WEBHOOK_URL",
    "DETECTOR_LOGS_ENDPOINT",
    "DETECTOR_STATE_TABLE_ENDPOINT",
)
SECRET = "s3cr3t-path-token"


def _settings(**values: str) -> Settings:
    return Settings.from_env({"DETECTOR_SOURCE": "file:x", **values})


def _outcome(**values: str) -> ConfigError | None:
    """None when the values make settings, else the ConfigError; any other exception fails the test."""
    try:
        _settings(**values)
    except ConfigError as exc:
        return exc
    return None


def _error(**values: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _settings(**values)
    text = str(caught.value)
    assert "\n" not in text and len(text) < 600, text  # one short line, whatever the value held
    return text


# Every setting, with values real deployments and attackers produce. Each must give settings or one
# ConfigError naming the setting; nothing else may escape.
HOSTILE = [
    "",
    "   ",
    "9" * 400,
    "-5",
    "-1d",
    "ü日本",
    "a\x00b",
    "a\ud800b",
    "a\udcffb",  # what os.environ holds for a byte that is not UTF-8
    "x" * 100_000,
    "1000000d",
    "99999999999999999999d",
    "1e400d",
    "https://[::1",
    "https://host:99999",
    "https://user:pass@host",
    "http://127.0.0.1:1",
    "line\nbreak",
    "\x1b[31mred",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "file:/etc/hostname",
    "file:/proc/1",
    "jsonl:-",
    ",,,",
    "\u0665m",  # an Arabic-Indic digit five: float() reads it, KQL does not
]


@pytest.mark.parametrize("name", [s.name for s in SETTINGS])
def test_hostile_values_give_settings_or_one_error_naming_the_setting(name: str) -> None:
    for value in HOSTILE:
        error = _outcome(**{name: value})
        if error is not None:
            text = str(error)
            assert error.setting == name or (name == "DETECTOR_SOURCE" and not value.strip()), (value, text)
            assert "\n" not in text and len(text) < 600, (value[:20], text[:200])
            text.encode("utf-8")  # printable anywhere: no lone surrogate reaches a message


@given(st.sampled_from([s.name for s in SETTINGS]), st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_gives_settings_or_a_config_error(name: str, value: str) -> None:
    error = _outcome(**{name: value})
    if error is not None:
        assert "\n" not in str(error)
        str(error).encode("utf-8")


@pytest.mark.parametrize("name", list(DURATION_BOUNDS))
@pytest.mark.parametrize("value", ["1000000d", "99999999999999999999d", "1e400d", "-1d", "\u0665m"])
def test_a_duration_out_of_bounds_names_the_bounds(name: str, value: str) -> None:
    low, high = DURATION_BOUNDS[name]
    text = _error(**{name: value})
    assert text.startswith(f"setting {name}: ")
    if value[0].isdigit() and value.isascii():
        assert f"from {format_timespan(low)} to {format_timespan(high)}" in text


@pytest.mark.parametrize("name", list(DURATION_BOUNDS))
def test_the_duration_bounds_are_in_the_readme(name: str) -> None:
    low, high = DURATION_BOUNDS[name]
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
    assert f"{format_timespan(low)} to {format_timespan(high)}" in row


@pytest.mark.parametrize("name", list(DURATION_BOUNDS))
def test_the_duration_bounds_themselves_are_accepted(name: str) -> None:
    low, high = DURATION_BOUNDS[name]
    for span in (low, high):
        _settings(**{name: format_timespan(span)})


def test_a_long_duration_does_not_overflow_later() -> None:
    # The largest catch-up with the earliest pretend-now must still plan windows.
    settings = _settings(DETECTOR_CATCHUP_LIMIT="90d", DETECTOR_NOW="1990-01-01T00:00:00Z", DETECTOR_RECHECK_HORIZON="14d")
    assert settings.now_override is not None
    assert settings.now_override - settings.catchup_limit - settings.recheck_horizon - timedelta(days=14)


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://[::1", "is not a URL"),
        ("https://host:99999", "port"),
        ("https://user:hunter2@host.example", "user name or password"),
        ("http://host.example", "https://"),
        ("https://bücher.example", "ASCII"),
        ("https:///path", "https://"),
        ("https://host.example/a b", "space"),
        (f"https://host.example/{SECRET}#x", "fragment"),
    ],
)
def test_every_url_setting_rejects_bad_urls_in_one_line(name: str, value: str, message: str) -> None:
    extra = {"DETECTOR_STATE": "table"} if name == "DETECTOR_STATE_TABLE_ENDPOINT" else {}
    text = _error(**{name: value}, **extra)
    assert text.startswith(f"setting {name}: ")
    assert message in text
    if name == "DETECTOR_WEBHOOK_URL":
        assert SECRET not in text and "hunter2" not in text  # a secret is never echoed


@pytest.mark.parametrize("name", URL_SETTINGS)
def test_good_urls_are_accepted(name: str) -> None:
    extra = {"DETECTOR_STATE": "table"} if name == "DETECTOR_STATE_TABLE_ENDPOINT" else {}
    _settings(**{name: "https://[::1]:8443/devstoreaccount1"}, **extra)
    _settings(**{name: "https://xn--bcher-kva.example"}, **extra)


def test_the_webhook_url_may_carry_a_query_but_endpoints_may_not() -> None:
    assert _settings(DETECTOR_WEBHOOK_URL="https://hooks.example/x?sig=abc").webhook_url.endswith("?sig=abc")
    assert "query" in _error(DETECTOR_ARM_ENDPOINT="https://management.azure.com/?a=1")


def test_a_state_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "hostname"
    blocker.write_text("x", encoding="utf-8")
    assert "is a file, not a folder" in _error(DETECTOR_STATE=f"file:{blocker}")
    assert "is a file, not a folder" in _error(DETECTOR_STATE=f"file:{blocker}/state")


def test_a_state_folder_where_no_file_can_be_created_is_refused() -> None:
    text = _error(DETECTOR_STATE="file:/proc/1")
    assert "cannot create files in /proc/1" in text
    assert "writable" in text


def test_a_state_folder_that_does_not_exist_yet_is_fine(tmp_path: Path) -> None:
    assert _settings(DETECTOR_STATE=f"file:{tmp_path}/a/b").state == f"file:{tmp_path}/a/b"
    assert not (tmp_path / "a").exists()  # validating creates nothing


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"DETECTOR_STATE": "table"}, "DETECTOR_STATE_TABLE_ENDPOINT: is required"),
        ({"DETECTOR_STATE": "table", "DETECTOR_STATE_TABLE_ENDPOINT": "http://127.0.0.1:10002/x"}, "https://"),
        ({"DETECTOR_STATE": "table:x"}, "DETECTOR_STATE"),
        ({"DETECTOR_STATE": "file:"}, "DETECTOR_STATE"),
        ({"DETECTOR_STATE_TABLE_NAME": "a-b"}, "DETECTOR_STATE_TABLE_NAME"),
        ({"DETECTOR_STATE_TABLE_NAME": "tables"}, "reserved"),
    ],
)
def test_bad_state_settings(values: dict[str, str], message: str) -> None:
    assert message in _error(**values)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0 30 0 * *", "6 fields"),
        ("0 0 30 0 * * *", "6 fields"),
        ("61 * * * * *", "second"),
        ("0 60 * * * *", "minute"),
        ("0 0 24 * * *", "hour"),
        ("0 0 0 0 * *", "day"),
        ("0 0 0 * 13 *", "month"),
        ("0 0 0 * * 8", "day of week"),
        ("0 */0 * * * *", "step"),
        ("0 5-1 * * * *", "range"),
        ("00:05:00", "NCRONTAB"),
        ("@daily", "6 fields"),
        ("0 \u00b2 * * * *", "minute"),  # isdigit() takes "²"
        ("0 " + "9" * 4000 + " * * * *", "minute"),  # many digits (a value holds at most 4096 characters)
    ],
)
def test_a_schedule_that_is_not_ncrontab_is_refused(value: str, message: str) -> None:
    text = _error(DETECTOR_SCHEDULE=value)
    assert text.startswith("setting DETECTOR_SCHEDULE: ")
    assert message in text


@pytest.mark.parametrize(
    "value", ["0 30 0 * * *", "0 */5 * * * *", "0 30 9 * * Mon-Fri", "0 0 0 1,15 Jan,Jul *", "*/30 * * * * *"]
)
def test_real_schedules_are_accepted(value: str) -> None:
    _settings(DETECTOR_SCHEDULE=value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0001-01-01T00:00:00+05:00", "from 1990-01-01"),
        ("9999-12-31T23:59:59-05:00", "from 1990-01-01"),
        ("1900-01-01T00:00:00Z", "from 1990-01-01"),
    ],
)
def test_a_pretend_now_far_from_today_is_refused(value: str, message: str) -> None:
    assert message in _error(DETECTOR_NOW=value)


def test_a_computer_name_must_be_one_printable_line() -> None:
    assert "DETECTOR_COMPUTER" in _error(DETECTOR_COMPUTER="web\nfake-line")
    assert "at most 255" in _error(DETECTOR_COMPUTER="w" * 256)
    assert _settings(DETECTOR_COMPUTER="WEB-01.contoso.com").computer == "WEB-01.contoso.com"


def test_a_sink_named_twice_is_refused() -> None:
    assert "names stdout twice" in _error(DETECTOR_SINKS="stdout, stdout")


def test_values_that_are_not_text_say_so() -> None:
    assert "NUL" in _error(DETECTOR_RULES="rules\x00x")
    assert "not UTF-8" in _error(DETECTOR_RULES="rules\udcff")
    assert "at most 4096" in _error(DETECTOR_RULES="r" * 5000)


def test_error_messages_show_hostile_values_escaped_and_short() -> None:
    text = _error(DETECTOR_LOGS_MODE="x" * 1000)
    assert len(text) < 300
    assert "control character '\\x1b'" in _error(DETECTOR_LOGS_MODE="\x1b[31mred")
    assert shown("a\x1b[31m\ud800\n" + "x" * 100) == "a\\x1b[31m\\ud800\\n" + "x" * 72 + "..."


def test_settings_keep_no_copy_of_the_raw_values() -> None:
    settings = _settings(DETECTOR_WEBHOOK_URL=f"https://hooks.example/{SECRET}")
    assert not hasattr(settings, "raw")
    assert SECRET not in repr(settings)


# --- local.settings.json -----------------------------------------------------------------------


def _write_settings(folder: Path, values: object, **extra: object) -> Path:
    path = folder / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values, **extra}, indent=2), encoding="utf-8")
    return path


def test_settings_file_values_are_read_and_the_environment_wins(tmp_path: Path) -> None:
    path = _write_settings(
        tmp_path, {"DETECTOR_SOURCE": "file:a.jsonl", "DETECTOR_SINKS": "stdout", "FUNCTIONS_WORKER_RUNTIME": "python"}
    )
    values = load_settings_file(path, {"DETECTOR_SINKS": "jsonl:out.jsonl", "HOME": "/srv/x"})
    assert values["DETECTOR_SOURCE"] == "file:a.jsonl"
    assert values["DETECTOR_SINKS"] == "jsonl:out.jsonl"
    assert values["HOME"] == "/srv/x"
    settings = Settings.from_env(values)
    assert (settings.source, settings.sinks) == ("file:a.jsonl", ("jsonl:out.jsonl",))


def test_an_empty_environment_variable_still_wins_as_func_start_does(tmp_path: Path) -> None:
    path = _write_settings(tmp_path, {"DETECTOR_NOW": "2026-11-27T00:30:00Z"})
    assert load_settings_file(path, {"DETECTOR_NOW": ""})["DETECTOR_NOW"] == ""


def test_local_settings_json_in_the_working_folder_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_settings(tmp_path, {"DETECTOR_SOURCE": "file:from-cwd.jsonl"})
    monkeypatch.chdir(tmp_path)
    assert load_settings_file(None, {})["DETECTOR_SOURCE"] == "file:from-cwd.jsonl"
    (tmp_path / "local.settings.json").unlink()
    assert load_settings_file(None, {"A": "b"}) == {"A": "b"}  # no file: the environment alone


def test_the_template_is_a_valid_settings_file() -> None:
    template = ROOT / "local.settings.json.template"
    values = load_settings_file(template, {})
    assert {s.name for s in SETTINGS} <= set(values)
    Settings.from_env(values)


def test_a_bad_value_from_the_file_names_the_file(tmp_path: Path) -> None:
    path = _write_settings(tmp_path, {"DETECTOR_SOURCE": "file:x", "DETECTOR_INGESTION_DELAY": "1000000d"})
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(load_settings_file(path, {}))
    assert str(caught.value).startswith(f"{path}: DETECTOR_INGESTION_DELAY: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"Values": {"DETECTOR_SOURCE": "file:x",}}', ":1: is not valid JSON"),
        ('{"IsEncrypted": false, "Values": ["a"]}', "'Values' must be an object"),
        ('{"IsEncrypted": false, "Values": {"DETECTOR_NOW": 5}}', ":1: Values.DETECTOR_NOW: must be a string, not a number"),
        ('{"IsEncrypted": false,\n "Values": {\n  "DETECTOR_SINKS": null}}', ":3: Values.DETECTOR_SINKS: must be a string"),
        ('{"IsEncrypted": true, "Values": {}}', "is encrypted"),
        ('{"Values": {"A": "1", "A": "2"}}', ":1: A: appears twice"),
        ('{"Values": {"DETECTOR_SORUCE": "file:x"}}', "did you mean DETECTOR_SOURCE"),
        ("[1, 2]", "must be a JSON object"),
        ('{"Values": {"DETECTOR_RULES": "a\\u0000b"}}', "NUL"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"Values": {"A": ' + "9" * 5000 + "}}", "is not a settings file (Exceeds the limit"),  # json's digit limit
    ],
)
def test_a_bad_settings_file_is_one_error_naming_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(load_settings_file(path, {}))
    text = str(caught.value)
    assert text.startswith(str(path)), text
    assert message in text, text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"Values": {}}'.encode("utf-16"), "UTF-16"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip"),
        (b'{"Values": {"A": "\xff"}}', "not UTF-8 (byte 0xff at offset 18)"),
    ],
)
def test_a_settings_file_that_is_not_utf8_says_what_it_looks_like(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings_file(path, {})


def test_a_settings_file_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"Values": {"DETECTOR_SOURCE": "file:x"}}')
    assert load_settings_file(path, {})["DETECTOR_SOURCE"] == "file:x"


def test_a_missing_or_unreadable_settings_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read"):
        load_settings_file(tmp_path / "nope.json", {})
    with pytest.raises(ConfigError, match="is a folder"):
        load_settings_file(tmp_path, {})


def test_nothing_but_config_reads_the_environment() -> None:
    package = ROOT / "detector"
    readers = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if "os.environ" in p.read_text(encoding="utf-8") or "getenv" in p.read_text(encoding="utf-8")
    )
    assert readers == ["config.py"], readers
    assert os.environ is not None


# -- Log Analytics settings -------------------------------------------------------------------------------

WS = "11111111-2222-3333-4444-555555555555"


def logs_settings(env: dict[str, str]) -> LogAnalyticsSettings:
    return Settings.from_env(env, source_required=False).logs


def test_injection_through_table_setting_is_a_config_error_naming_it() -> None:
    env = {"DETECTOR_SOURCE": f"loganalytics:{WS}", "DETECTOR_LOGS_TABLE": 'W3CIISLog | where cIP != "x"'}
    with pytest.raises(ConfigError, match="DETECTOR_LOGS_TABLE") as caught:
        Settings.from_env(env)
    assert caught.value.setting == "DETECTOR_LOGS_TABLE"
    with pytest.raises(ConfigError, match="DETECTOR_LOGS_TABLE"):
        logs_settings(env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DETECTOR_LOGS_ENDPOINT", "http://api.loganalytics.io", "https://"),
        ("DETECTOR_LOGS_ENDPOINT", "https://x/?q=1", "https://"),
        ("DETECTOR_LOGS_MODE", "fast", "two-step, raw"),
        ("DETECTOR_LOGS_SERVER_TIMEOUT", "11m", "1s to 10m"),
        ("DETECTOR_LOGS_SERVER_TIMEOUT", "1.5s", "1s to 10m"),
        ("DETECTOR_LOGS_SERVER_TIMEOUT", "soon", "timespan"),
        ("AZURE_CLIENT_ID", "my-identity", "GUID"),
    ],
)
def test_bad_settings_name_the_setting(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        logs_settings({name: value})
    assert caught.value.setting == name


def test_settings_defaults_and_parsing() -> None:
    assert logs_settings({}) == LogAnalyticsSettings()
    parsed = logs_settings(
        {
            "DETECTOR_LOGS_ENDPOINT": "https://api.loganalytics.us/",
            "DETECTOR_LOGS_MODE": "RAW",
            "DETECTOR_LOGS_TABLE": "IISLogs_CL",
            "DETECTOR_LOGS_SERVER_TIMEOUT": "10m",
            "AZURE_CLIENT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        }
    )
    assert parsed == LogAnalyticsSettings(
        "https://api.loganalytics.us", "raw", "IISLogs_CL", timedelta(minutes=10), "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    )
    settings = Settings.from_env({"DETECTOR_SOURCE": f"loganalytics:{WS}", "DETECTOR_LOGS_MODE": "raw"})
    assert settings.logs.mode == "raw"
