"""Hand-corrupted state is one clear error naming the record and what to do: never a traceback, a silent
stall or a silent loss. The same checks for the local folder and for Azure Table Storage (Azurite)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient, UpdateMode
from azure.identity import ManagedIdentityCredential

from detector.cli import EXIT_BAD_INPUT, EXIT_OK, main
from detector.config import Settings
from detector.errors import StateError
from detector.kql import parse_datetime
from detector.runner import RunSummary, run_incremental
from detector.state import open_state_store
from detector.state.file import FileStateStore, _file_name
from tests.conftest import create_state_table
from tests.fakes.server import FakeServer
from tests.helpers import FILES, RULE, expected_findings
from tests.test_runner import NOW, Clock, FlakySource, RecordingSink, settings

_tables = itertools.count()


def run_once(store: Any, sink: RecordingSink | None = None) -> RunSummary:
    return run_incremental(
        [RULE], FlakySource(FILES / "w3ciislog.jsonl"), [sink or RecordingSink()], store, NOW, settings(), Clock()
    )


def rule_file(state: Path) -> Path:
    return state / "rules" / _file_name(RULE.id)


def outbox_file(state: Path) -> Path:
    return state / "outbox" / _file_name("recording")


FileCorruption = Callable[[Path], None]


def _write(path: Path, content: bytes | str | dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


FILE_CASES: dict[str, tuple[FileCorruption, str]] = {
    "binary garbage": (lambda s: _write(rule_file(s), b"\xff\xfe\x00\x9c garbage"), "is not UTF-8 text"),
    "not JSON": (lambda s: _write(rule_file(s), "{checkpoint: tomorrow"), "is not valid JSON"),
    "a number json will not read": (lambda s: _write(rule_file(s), '{"x": ' + "9" * 5000 + "}"), "is not valid JSON"),
    "a JSON list": (lambda s: _write(rule_file(s), "[1, 2]"), "holds a JSON list"),
    "checkpoint a number": (lambda s: _write(rule_file(s), {"state": {"checkpoint": 12}}), "checkpoint is int"),
    "checkpoint not a date": (lambda s: _write(rule_file(s), {"state": {"checkpoint": "soon"}}), "is not a date"),
    "evaluated a string": (lambda s: _write(rule_file(s), {"state": {"evaluated": "x"}}), "'evaluated' is not a list"),
    "evaluated triple wrong": (lambda s: _write(rule_file(s), {"state": {"evaluated": [[1]]}}), "not \\[first bin"),
    "state a list": (lambda s: _write(rule_file(s), {"state": [1]}), "not an object"),
    "lease a string": (lambda s: _write(rule_file(s), {"lease": "mine"}), "'lease' is not"),
    "lease until 9999": (
        lambda s: _write(rule_file(s), {"lease": {"owner": "someone-else", "expires": "9999-12-31T00:00:00Z"}}),
        "further ahead than any run",
    ),
    "checkpoint in the future": (
        lambda s: _write(rule_file(s), {"state": {"checkpoint": "2030-01-01T00:00:00Z", "evaluated": []}}),
        "is after now",
    ),
    "rules folder is a file": (lambda s: _write(s / "rules", "x"), "unreadable|cannot be written"),
    "outbox garbage": (lambda s: _write(outbox_file(s), {"id": "x", "entries": []}), "is not an outbox"),
    # An outbox is restored, never deleted to start over: that would drop the findings it holds.
    "outbox not JSON": (lambda s: _write(outbox_file(s), "{entries"), "is not valid JSON.*deleting it drops the findings"),
    "outbox entry malformed": (
        lambda s: _write(
            outbox_file(s), {"id": "x", "entries": {"f1": {"digest": "d", "delivered_digest": None, "finding": {"id": 1}}}}
        ),
        "the stored finding is malformed",
    ),
}


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
def test_corrupt_file_state_is_one_clear_error(case: str, tmp_path: Path) -> None:
    corrupt, message = FILE_CASES[case]
    state = tmp_path / "state"
    state.mkdir()
    corrupt(state)
    with pytest.raises(StateError, match=message) as caught:
        run_once(FileStateStore(state))
    text = str(caught.value)
    assert text.startswith("state ") and str(state) in text
    assert any(word in text for word in ("restore", "delete", "remove", "set", "check", "if "))  # what to do


def test_the_state_folder_being_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    with pytest.raises(StateError, match="cannot be used as the state folder"):
        run_once(FileStateStore(tmp_path / "state"))


@pytest.mark.parametrize("case", ["binary garbage", "lease until 9999", "checkpoint in the future", "rules folder is a file"])
def test_the_cli_prints_one_error_line_and_exits_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    FILE_CASES[case][0](state)
    monkeypatch.setenv("DETECTOR_SOURCE", f"file:{FILES / 'w3ciislog.jsonl'}")
    monkeypatch.setenv("DETECTOR_STATE", f"file:{state}")
    monkeypatch.setenv("DETECTOR_SINKS", f"jsonl:{tmp_path / 'f.jsonl'}")
    monkeypatch.setenv("DETECTOR_NOW", "2026-11-27T00:35:00Z")
    assert main(["scheduled"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: state "), err


def test_a_deleted_outbox_with_pending_findings_is_noticed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    down = RecordingSink()
    down.failures = 1
    assert not run_once(FileStateStore(state), down).ok  # staged, not delivered
    outbox_file(state).unlink()  # pending findings gone with it
    with pytest.raises(StateError, match=r"outbox of sink recording.*is missing or was replaced"):
        run_once(FileStateStore(state))
    # Replaced by an empty outbox (another rule staged into a new one): noticed just the same.
    FileStateStore(state).stage(["recording"], [])
    with pytest.raises(StateError, match="is missing or was replaced"):
        run_once(FileStateStore(state))


def test_valid_state_still_runs(tmp_path: Path) -> None:
    sink = RecordingSink()
    assert run_once(FileStateStore(tmp_path / "state"), sink).complete
    assert run_once(FileStateStore(tmp_path / "state"), sink).complete
    assert len(sink.received) == len(expected_findings())


# -- Azure Table Storage ----------------------------------------------------------------------------------


@pytest.fixture
def table_store(azure_env: FakeServer, azurite_table: str) -> tuple[Any, TableClient]:
    name = f"validate{next(_tables)}"
    create_state_table(azurite_table, name)
    store = open_state_store(
        Settings.from_env(
            {
                "DETECTOR_SOURCE": "file:x",
                "DETECTOR_STATE": "table",
                "DETECTOR_STATE_TABLE_ENDPOINT": azurite_table,
                "DETECTOR_STATE_TABLE_NAME": name,
            }
        )
    )
    return store, TableClient(endpoint=azurite_table, table_name=name, credential=ManagedIdentityCredential())


def _rule_entity(table: TableClient) -> dict[str, Any]:
    return next(e for e in table.query_entities("PartitionKey eq 'rule'") if e.get("Name") == RULE.id)


def _merge(table: TableClient, entity: dict[str, Any], **values: Any) -> None:
    table.update_entity({"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], **values}, mode=UpdateMode.MERGE)


def _merge_all(table: TableClient, query: str, **values: Any) -> None:
    for entity in table.query_entities(query):
        _merge(table, entity, **values)


def _delete_all(table: TableClient, query: str) -> None:
    for entity in table.query_entities(query):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])


OUTBOX_ENTRIES = "PartitionKey ne 'rule' and PartitionKey ne 'outboxes'"

TABLE_CASES: dict[str, tuple[Callable[[TableClient], None], str]] = {
    "State not JSON": (lambda t: _merge(t, _rule_entity(t), State="{garbage"), "State is not valid JSON"),
    "State a number": (lambda t: _merge(t, _rule_entity(t), State=5), "State is int"),
    "checkpoint wrong type": (lambda t: _merge(t, _rule_entity(t), State=json.dumps({"checkpoint": [1]})), "checkpoint is list"),
    "checkpoint in the future": (
        lambda t: _merge(t, _rule_entity(t), State=json.dumps({"checkpoint": "2030-01-01T00:00:00Z"})),
        "is after now",
    ),
    "lease until 9999": (
        lambda t: _merge(t, _rule_entity(t), LeaseOwner="someone-else", LeaseExpires=datetime(9999, 1, 1, tzinfo=UTC)),
        "further ahead than any run",
    ),
    "lease expiry not a date": (
        lambda t: _merge(t, _rule_entity(t), LeaseOwner="x", LeaseExpires="never"),
        "LeaseExpires is not a DateTime",
    ),
    "outbox deleted": (
        lambda t: _delete_all(t, "PartitionKey ne 'rule'"),
        "is missing or was replaced",
    ),
    "outbox entry malformed": (
        lambda t: _merge_all(t, OUTBOX_ENTRIES, Chunks="x"),
        "is not an outbox entry",
    ),
    "stored finding not JSON": (
        lambda t: _merge_all(t, OUTBOX_ENTRIES, Finding0="{x"),
        "stored finding is not valid JSON",
    ),
    "State a number json will not read": (
        lambda t: _merge(t, _rule_entity(t), State='{"x": ' + "9" * 5000 + "}"),
        "State is not valid JSON",
    ),
}


@pytest.mark.parametrize("case", TABLE_CASES, ids=list(TABLE_CASES))
def test_corrupt_table_state_is_one_clear_error(case: str, table_store: tuple[Any, TableClient]) -> None:
    store, table = table_store
    down = RecordingSink()
    down.failures = 1
    first = run_once(store, down)  # leaves a rule entity, and pending outbox entities
    assert first.errors == {} and "recording" in first.delivery_errors
    TABLE_CASES[case][0](table)
    with pytest.raises(StateError, match=TABLE_CASES[case][1]) as caught:
        run_once(store)
    assert f"table {table.table_name} entity PartitionKey=" in str(caught.value) or "outbox of sink" in str(caught.value)


def test_checkpoint_origin_survives_a_failed_first_run(tmp_path: Path) -> None:
    state = FileStateStore(tmp_path / "state")
    failed = run_incremental(
        [RULE], FlakySource(FILES / "w3ciislog.jsonl", fail_on={1}), [RecordingSink()], state, NOW, settings(), Clock()
    )
    assert not failed.ok
    assert state.load_rule_state(RULE.id, RULE.logic.time_bin).checkpoint == parse_datetime("2026-11-26T00:00:00Z")
    # The next first-day run comes an hour later: it still starts where the schedule began.
    later = run_incremental(
        [RULE],
        FlakySource(FILES / "w3ciislog.jsonl"),
        [RecordingSink()],
        state,
        NOW.replace(hour=1, minute=35),
        settings(),
        Clock(),
    )
    assert later.ok
    assert next(str(r.window.start) for r in later.rules if r.kind == "window") == "2026-11-26 00:00:00+00:00"
    assert EXIT_OK == 0
