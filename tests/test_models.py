"""Value objects: windows refuse what is not a window, finding ids are stable, state round-trips losslessly."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from detector.models import Entity, Finding, Window, finding_id
from tests.helpers import DAY

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_a_window_is_half_open_and_refuses_naive_or_empty_bounds() -> None:
    window = Window(START, START + timedelta(minutes=10))
    assert window.contains(START) and not window.contains(START + timedelta(minutes=10))
    with pytest.raises(ValueError, match="timezone-aware"):
        Window(START.replace(tzinfo=None), START + timedelta(minutes=10))
    with pytest.raises(ValueError, match="is not before end"):
        Window(START, START)


def test_finding_ids_depend_on_the_rule_and_key_only() -> None:
    same_moment_elsewhere = START.astimezone(timezone(timedelta(hours=2)))
    assert finding_id("rule", START, "203.0.113.9") == finding_id("rule", same_moment_elsewhere, "203.0.113.9")
    assert finding_id("rule", START, "203.0.113.9") != finding_id("other", START, "203.0.113.9")
    # Never change: sinks key on these ids (Sentinel incident ids, the outbox), across versions. The README's
    # example finding has this id.
    key = (datetime(2026, 11, 26, 18, 40, tzinfo=UTC), "203.0.113.80", "web02.contoso.com", "10.0.0.4")
    assert finding_id("44a555d8-ecee-4a25-95ce-055879b4b14b", *key) == "231270bd-0e28-5fe2-8f0c-8377ee153a31"


HOSTILE_KEYS = st.lists(st.text(alphabet="ab\x1e\x1f", max_size=4), max_size=4)


@given(HOSTILE_KEYS, HOSTILE_KEYS)
@example(["a", "b"], ["a\x1fb"])  # a value holding the separator
@example(["a\x1e", "b"], ["a\x1e\x1fb"])  # and one holding the escape
def test_different_keys_never_share_an_id(one: list[str], other: list[str]) -> None:
    """Key parts cannot run together, whatever separator-like characters a hostile value holds."""
    assert (finding_id("rule", *one) == finding_id("rule", *other)) == (one == other)


def _finding(columns: dict[str, Any], title: str = "t", rank: int = 0) -> Finding:
    return Finding(
        id=finding_id("rule", START, *columns),
        rule_id="rule",
        rule_name="A rule",
        rule_version="1.0.0",
        severity="Medium",
        tactics=("InitialAccess",),
        techniques=("T1190",),
        window=DAY,
        columns=columns,
        entities=(Entity("IP", {"Address": "203.0.113.9"}),),
        first_activity=START,
        last_activity=START + timedelta(minutes=10),
        title=title,
        summary="s",
        evidence=(("Client IP", "cIP"),),
        rank=rank,
    )


# hypothesis takes naive bounds and attaches the timezone itself.
NAIVE_MIN, NAIVE_MAX = datetime(1990, 1, 1), datetime(2100, 1, 1)  # noqa: DTZ001
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.datetimes(min_value=NAIVE_MIN, max_value=NAIVE_MAX, timezones=st.just(UTC)),
    st.lists(st.one_of(st.integers(min_value=0, max_value=65535), st.text(max_size=10)), max_size=5),
)


@given(st.dictionaries(st.text(min_size=1, max_size=12), VALUES, max_size=8))
def test_state_round_trips_every_column_through_json(columns: dict[str, Any]) -> None:
    finding = _finding(columns)
    again = Finding.from_state(json.loads(json.dumps(finding.to_state())))
    assert again == finding
    assert list(again.columns) == list(finding.columns)  # KQL's column order survives


def test_the_digest_follows_what_a_finding_says_not_which_window_found_it() -> None:
    finding = _finding({"cIP": "203.0.113.9", "portCount": 30})
    assert replace(finding, window=Window(START, START + timedelta(hours=1))).digest() == finding.digest()
    assert replace(finding, columns={"cIP": "203.0.113.9", "portCount": 31}).digest() != finding.digest()
