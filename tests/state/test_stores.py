"""One contract, two stores: the local folder and Azure Table Storage (Azurite, over HTTPS, with the
real managed-identity credential and azure-data-tables client)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.config import Settings
from detector.errors import ConfigError, DetectorError, StateError
from detector.evaluate import evaluate
from detector.kql import parse_datetime
from detector.models import Finding
from detector.sources import ReadRequest, open_source
from detector.state import LeaseLostError, RuleState, StateStore, open_state_store
from detector.state.file import FileStateStore
from tests.conftest import create_state_table
from tests.fakes.server import FakeServer
from tests.helpers import DAY, FILES, RULE

BIN = timedelta(minutes=10)
T0 = parse_datetime("2026-11-27T00:00:00Z")
FINDINGS = evaluate(
    RULE,
    open_source(f"file:{FILES / 'w3ciislog.jsonl'}").read(ReadRequest(DAY, RULE.logic.columns, RULE.logic.required_columns)),
    DAY,
)
_tables = itertools.count()
CLIENT_ID = "5e3c2f8a-1111-2222-3333-444455556666"


@pytest.fixture(params=["file", pytest.param("table", marks=pytest.mark.azurite)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "file":
        yield FileStateStore(tmp_path / "state")
        return
    azure_env: FakeServer = request.getfixturevalue("azure_env")
    endpoint: str = request.getfixturevalue("azurite_table")
    table = f"state{next(_tables)}"
    create_state_table(endpoint, table)
    settings = Settings.from_env(
        {
            "DETECTOR_SOURCE": "file:x",
            "DETECTOR_STATE": "table",
            "DETECTOR_STATE_TABLE_ENDPOINT": endpoint,
            "DETECTOR_STATE_TABLE_NAME": table,
            "AZURE_CLIENT_ID": CLIENT_ID,
        }
    )
    yield open_state_store(settings)
    # The token came from the managed-identity endpoint, for Storage, for our user-assigned identity.
    assert {"resource": "https://storage.azure.com", "client_id": CLIENT_ID} in azure_env.state["requests"]


def test_lease_is_exclusive_until_it_expires(store: StateStore) -> None:
    ttl = timedelta(minutes=35)
    assert store.acquire_lease("rule", "a", ttl, T0)
    assert not store.acquire_lease("rule", "b", ttl, T0 + timedelta(minutes=34))
    assert store.acquire_lease("rule", "a", ttl, T0 + timedelta(minutes=34))  # renewal by the holder
    assert store.acquire_lease("rule", "b", ttl, T0 + timedelta(minutes=70))  # lapsed: taken over
    assert not store.acquire_lease("rule", "a", ttl, T0 + timedelta(minutes=71))
    store.release_lease("rule", "a")  # not the holder: no effect
    assert not store.acquire_lease("rule", "c", ttl, T0 + timedelta(minutes=72))
    store.release_lease("rule", "b")
    assert store.acquire_lease("rule", "c", ttl, T0 + timedelta(minutes=72))
    assert store.acquire_lease("other-rule", "a", ttl, T0)  # leases are per name


def test_state_round_trips_and_writes_are_fenced_by_the_lease(store: StateStore) -> None:
    assert store.load_rule_state("rule", BIN) == RuleState(BIN)
    store.acquire_lease("rule", "a", timedelta(minutes=35), T0)
    state = RuleState(BIN, T0, {T0 - BIN: T0, T0 - 2 * BIN: T0, T0 - 5 * BIN: T0 - timedelta(hours=1)})
    store.save_rule_state("rule", state, "a")
    assert store.load_rule_state("rule", BIN) == state
    store.acquire_lease("rule", "b", timedelta(minutes=35), T0 + timedelta(hours=1))  # a's lease lapsed
    with pytest.raises(LeaseLostError):
        store.save_rule_state("rule", replace(state, checkpoint=T0 + BIN), "a")
    assert store.load_rule_state("rule", BIN).checkpoint == T0


def test_outbox_stage_pending_and_delivered(store: StateStore) -> None:
    sinks = ["jsonl:/x", "sentinel"]
    assert store.stage(sinks, FINDINGS) == 2 * len(FINDINGS)
    pending = store.pending("sentinel")
    assert [e.finding for e in pending] == sorted(FINDINGS, key=lambda f: (f.window.start, f.id))
    assert all(isinstance(e.finding, Finding) for e in pending)
    store.mark_delivered("sentinel", pending[:3], T0)
    assert len(store.pending("sentinel")) == len(FINDINGS) - 3
    assert len(store.pending("jsonl:/x")) == len(FINDINGS)  # per sink

    # Re-staging the same findings (a retry, a re-check without new rows) changes nothing.
    assert store.stage(sinks, FINDINGS) == 0
    assert len(store.pending("sentinel")) == len(FINDINGS) - 3

    # A delivered finding that changed (late rows) is pending again, as an update of the same id.
    changed = replace(pending[0].finding, columns={**pending[0].finding.columns, "ConnectionsCount": 999})
    assert store.stage(["sentinel"], [changed]) == 1
    again = [e for e in store.pending("sentinel") if e.finding.id == changed.id]
    assert len(again) == 1
    assert again[0].finding.columns["ConnectionsCount"] == 999
    assert again[0].delivered_digest == pending[0].digest

    # Marking an older version delivered does not mark the newer one.
    store.mark_delivered("sentinel", [pending[0]], T0)
    assert changed.id in {e.finding.id for e in store.pending("sentinel")}


def test_delivered_entries_are_pruned_after_retention(store: StateStore) -> None:
    store.stage(["s"], FINDINGS[:2])
    store.mark_delivered("s", store.pending("s")[:1], T0 + timedelta(days=40))
    # The delivered one is forgotten: staging it again makes it pending (sinks upsert, so no duplicate).
    assert store.stage(["s"], FINDINGS[:2]) == 1
    assert len(store.pending("s")) == 2


def test_a_large_finding_survives_the_round_trip(store: StateStore) -> None:
    big = replace(
        FINDINGS[0], columns={**FINDINGS[0].columns, "set_csUserAgent": [f"agent-{i:03d}-" + "x" * 700 for i in range(128)]}
    )
    store.stage(["s"], [big])
    (entry,) = store.pending("s")
    assert entry.finding == big


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"DETECTOR_STATE": "table"}, "DETECTOR_STATE_TABLE_ENDPOINT"),
        ({"DETECTOR_STATE": "s3:bucket"}, "DETECTOR_STATE"),
        (
            {"DETECTOR_STATE": "table", "DETECTOR_STATE_TABLE_ENDPOINT": "https://x", "DETECTOR_STATE_TABLE_NAME": "a-b"},
            "DETECTOR_STATE_TABLE_NAME",
        ),
    ],
)
def test_bad_state_settings_are_named(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_state_store(Settings.from_env({"DETECTOR_SOURCE": "file:x", **values}))


def test_a_missing_state_table_is_a_clear_error(azure_env: FakeServer, azurite_table: str) -> None:
    settings = Settings.from_env(
        {
            "DETECTOR_SOURCE": "file:x",
            "DETECTOR_STATE": "table",
            "DETECTOR_STATE_TABLE_ENDPOINT": azurite_table,
            "DETECTOR_STATE_TABLE_NAME": "nosuchtable",
        }
    )
    with pytest.raises(DetectorError, match=r"state table nosuchtable does not exist.*deploy infra"):
        open_state_store(settings)


def _new_table_store(endpoint: str) -> StateStore:
    """A table state store on a table of its own (the identity from the test's managed-identity fake)."""
    table = f"state{next(_tables)}"
    create_state_table(endpoint, table)
    return open_state_store(
        Settings.from_env(
            {
                "DETECTOR_SOURCE": "file:x",
                "DETECTOR_STATE": "table",
                "DETECTOR_STATE_TABLE_ENDPOINT": endpoint,
                "DETECTOR_STATE_TABLE_NAME": table,
            }
        )
    )


def test_a_finding_too_big_for_one_table_entity_is_stored_shortened(azure_env: FakeServer, azurite_table: str) -> None:
    from detector.state.table import _stored_text

    # 128 distinct 2,000-character non-ASCII query strings: ~256,000 characters in one set, in five sets.
    huge = {f"set_{c}": [f"{i:03d}" + "é" * 2000 for i in range(128)] for c in ("a", "b", "c", "d", "e")}
    big = replace(FINDINGS[0], columns={**FINDINGS[0].columns, **huge})
    text = _stored_text(big)
    assert len(text.encode("utf-16-le")) < 1024 * 1024 * 0.9  # under Azure Table's 1 MiB per entity
    assert "shortened to fit" in text
    store = _new_table_store(azurite_table)
    store.stage(["s"], [big])
    (entry,) = store.pending("s")
    assert entry.finding.id == big.id
    assert entry.digest == big.digest()  # the outbox still tracks the real finding
    assert entry.finding.columns["portCount"] == big.columns["portCount"]
    stored = [v for c in "abcde" for v in entry.finding.columns[f"set_{c}"]]
    whole = [v for c in "abcde" for v in big.columns[f"set_{c}"]]
    # The longest texts are shortened first, only as many as it takes: every value is whole or its start.
    assert any(s != w for s, w in zip(stored, whole, strict=True))
    assert all(
        s == w or (len(s) <= 1000 + 120 and s.startswith(w[:15]) and "shortened to fit" in s)
        for s, w in zip(stored, whole, strict=True)
    )
    assert all(v.startswith(f"{i:03d}éé") for i, v in enumerate(entry.finding.columns["set_a"]))


def test_a_finding_with_one_huge_text_is_stored_shortened(azure_env: FakeServer, azurite_table: str) -> None:
    """One value past the entity's 1 MiB (a 9 MB user agent an attacker wrote into the log), quoted by
    the title and the summary too: stored shortened, not refused by the service at every run's staging."""
    from detector.state.table import _stored_text

    agent = "Mozilla/5.0 " + "A" * 9_000_000
    big = replace(
        FINDINGS[0],
        columns={**FINDINGS[0].columns, "UserAgent": agent},
        title=f"agent {agent}",
        summary=f"saw {agent}",
    )
    text = _stored_text(big)
    assert len(text.encode("utf-16-le")) < 1024 * 1024 * 0.9
    store = _new_table_store(azurite_table)
    store.stage(["s"], [big])
    (entry,) = store.pending("s")
    assert entry.digest == big.digest()
    assert (entry.finding.id, entry.finding.window, entry.finding.evidence) == (big.id, big.window, big.evidence)
    assert entry.finding.first_activity == big.first_activity
    for value in (entry.finding.columns["UserAgent"], entry.finding.title, entry.finding.summary):
        assert len(value) <= 1000 + 120 and "shortened to fit" in value
    assert entry.finding.columns["UserAgent"].startswith("Mozilla/5.0 AAA")
    assert entry.finding.columns["portCount"] == big.columns["portCount"]
    assert {k: v for k, v in entry.finding.columns.items() if k != "UserAgent"} == {
        k: v for k, v in big.columns.items() if k != "UserAgent"
    }  # the short texts (the group's keys among them) stay whole
    assert big.columns["UserAgent"] == agent  # the finding itself is not shortened, only its stored copy
    # The evidence query still finds the attacker's rows: it tests the whole user agent's hash.
    from detector.sinks.sentinel import key_condition

    whole = hashlib.sha256(agent.encode()).hexdigest()
    as_read = hashlib.sha256(entry.finding.columns["UserAgent"].encode()).hexdigest()
    condition = key_condition("csUserAgent", entry.finding.columns["UserAgent"])
    assert condition == f'hash_sha256(csUserAgent) in ("{whole}", "{as_read}")'


def test_a_finding_of_thousands_of_short_values_keeps_its_first_values() -> None:
    """Short texts cannot be shortened much: a set of 20,000 short non-BMP values (12 characters of JSON
    each) keeps its first values and says how many more there were; it still fits."""
    from detector.state.table import _MAX_STORED_CHARS, _stored_text

    many = [f"\U0001d54f{i}" for i in range(20_000)]
    big = replace(FINDINGS[0], columns={**FINDINGS[0].columns, "set_many": many})
    text = _stored_text(big)
    assert len(text) <= _MAX_STORED_CHARS
    stored = json.loads(text)["columns"]["set_many"]
    assert stored[:-1] == many[: len(stored) - 1] and stored[-1].endswith("more values shortened to fit the state store]")


@pytest.mark.parametrize(
    "columns",
    [
        {"set_nested": [["x" * 100] * 3000, ["y" * 100] * 3000]},  # a list of two big lists
        {f"c{i}": "z" * 100 for i in range(4000)},  # many short texts, no list
    ],
    ids=["two big lists", "many short texts"],
)
def test_a_finding_that_cannot_be_shortened_enough_is_one_state_error(columns: dict[str, Any]) -> None:
    """What no shortening brings under an entity's size is one clear StateError, never a hang (a review
    found the list halving looping for ever on a list of two)."""
    from detector.state.table import _stored_text

    big = replace(FINDINGS[0], columns={**FINDINGS[0].columns, **columns})
    with pytest.raises(StateError, match="does not fit one Azure Table entity even shortened"):
        _stored_text(big)


def test_restaging_the_delivered_version_is_not_pending(store: StateStore) -> None:
    original = FINDINGS[0]
    store.stage(["s"], [original])
    store.mark_delivered("s", store.pending("s"), T0)
    updated = replace(original, columns={**original.columns, "ConnectionsCount": 999})
    assert store.stage(["s"], [updated]) == 1
    # A re-evaluation finds the delivered version again (say, the late rows were a replay): nothing to send.
    assert store.stage(["s"], [original]) == 0
    assert store.pending("s") == []


def test_rejections_are_counted_per_version_and_park_the_entry(store: StateStore) -> None:
    store.stage(["s"], FINDINGS[:2])
    first = store.pending("s")[0]
    for attempt in range(1, 3):
        assert store.record_rejections("s", {first.finding.id: (first, "cannot carry it")}, limit=3) == []
        assert next(e for e in store.pending("s") if e.finding.id == first.finding.id).attempts == attempt
    (parked,) = store.record_rejections("s", {first.finding.id: (first, "cannot carry it")}, limit=3)
    assert parked.finding.id == first.finding.id and parked.parked
    assert [e.finding.id for e in store.pending("s")] == [
        FINDINGS[1].id if first.finding.id == FINDINGS[0].id else FINDINGS[0].id
    ]
    assert [(e.finding.id, e.attempts, e.error) for e in store.parked("s")] == [(first.finding.id, 3, "cannot carry it")]
    store.mark_delivered("s", [], T0 + timedelta(days=400))  # pruning keeps parked entries
    assert len(store.parked("s")) == 1
    # A new version of the finding (late rows) starts again: pending, no attempts.
    changed = replace(first.finding, columns={**first.finding.columns, "ConnectionsCount": 999})
    assert store.stage(["s"], [changed]) == 1
    again = next(e for e in store.pending("s") if e.finding.id == changed.id)
    assert (again.attempts, again.parked) == (0, False)
    assert store.parked("s") == []
