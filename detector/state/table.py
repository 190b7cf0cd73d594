"""`table`: the production state store, Azure Table Storage through azure-data-tables and the managed identity.

Entities (one table, DETECTOR_STATE_TABLE_NAME):
- PartitionKey "rule", RowKey <name key>: State (JSON), LeaseOwner, LeaseExpires. The lease and the
  state share one entity, so every state write is fenced by its ETag: a run whose lease was taken over
  cannot overwrite the new owner's checkpoint.
- PartitionKey "outbox-<sink key>", RowKey <finding id>: the finding (JSON, split in 30,000-character
  properties to stay under the 64 KiB property limit), Digest, DeliveredDigest, Pending, WindowEnd.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from detector.errors import ConfigError, DetectorError
from detector.identity import build_credential
from detector.models import Finding
from detector.state import DELIVERED_RETENTION, LeaseLostError, OutboxEntry, RuleState, StateStore

if TYPE_CHECKING:
    from detector.config import Settings

_CHUNK = 30_000  # characters per property: a property holds at most 64 KiB, strings are UTF-16
# An entity holds at most 1 MiB. Findings are far smaller, but 128 long, distinct, non-ASCII values in
# several sets could exceed it; then the stored copy keeps a shortened form of each long set value.
# Stored as ASCII JSON (non-ASCII escaped), so characters = bytes on the wire, and 2 bytes each as the
# service counts strings (UTF-16): 300,000 characters stay well under 1 MiB either way.
_MAX_STORED_CHARS = 300_000
_SHORTENED_VALUE_CHARS = 1_000
_SHORTENED = "…[shortened to fit the state store]"
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_RULE_PARTITION = "rule"


def _key(name: str) -> str:
    """A RowKey/PartitionKey-safe key for any name (keys may not hold / \\ # ? or control characters)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stored_text(finding: Finding) -> str:
    """The finding as stored JSON; if it would not fit in one entity, long set values are shortened
    (halving their kept length until it fits), keeping their start and a marker."""
    state = finding.to_state()
    text = json.dumps(state)
    keep = _SHORTENED_VALUE_CHARS
    original = dict(state["columns"])
    while len(text) > _MAX_STORED_CHARS and keep >= 16:
        for column, value in original.items():
            if isinstance(value, list):
                state["columns"][column] = [v[:keep] + _SHORTENED if isinstance(v, str) and len(v) > keep else v for v in value]
        text = json.dumps(state)
        keep //= 2
    return text


class TableStateStore(StateStore):
    """State in an Azure Storage table."""

    def __init__(self, table: TableClient, description: str) -> None:
        self.table = table
        self._description = description

    @classmethod
    def from_settings(cls, settings: Settings) -> TableStateStore:
        """Connect with the app's managed identity to DETECTOR_STATE_TABLE_ENDPOINT / _NAME, creating the table."""

        name = settings.state_table_name
        if not _TABLE_NAME.match(name):
            raise ConfigError("DETECTOR_STATE_TABLE_NAME", f"'{name}' is not a table name (3-63 letters and digits)")
        service = TableServiceClient(endpoint=settings.state_table_endpoint, credential=build_credential(settings))
        # The table is not created here: infra creates it, and the identity's role is scoped to that one
        # table (least privilege), which does not allow creating tables. A cheap read checks access now.
        table = service.get_table_client(name)
        try:
            table.get_entity(_RULE_PARTITION, "access-check")
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "TableNotFound":
                raise DetectorError(
                    f"state table {name} does not exist at {settings.state_table_endpoint}; deploy infra/ (it creates "
                    "it) or create it, or fix DETECTOR_STATE_TABLE_NAME"
                ) from None
        except ClientAuthenticationError as exc:
            raise DetectorError(f"state table {name}: authentication failed ({exc.message})") from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise DetectorError(
                    f"state table {name} at {settings.state_table_endpoint}: access denied; grant the Function App's "
                    "identity 'Storage Table Data Contributor' on the table"
                ) from None
            raise DetectorError(f"state table {name}: {exc.message}") from None
        return cls(table, f"table:{settings.state_table_endpoint}/{name}")

    def describe(self) -> str:
        return self._description

    # -- lease and checkpoint ---------------------------------------------------------------------
    def _get(self, partition: str, row: str) -> Any:

        try:
            return self.table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None

    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        key = _key(name)
        for _ in range(3):
            entity = self._get(_RULE_PARTITION, key)
            lease = {"LeaseOwner": owner, "LeaseExpires": now + ttl}
            if entity is None:
                try:
                    self.table.create_entity({"PartitionKey": _RULE_PARTITION, "RowKey": key, "Name": name, "State": "", **lease})
                except ResourceExistsError:
                    continue  # created by a concurrent run: read it again
                return True
            holder, expires = entity.get("LeaseOwner") or "", entity.get("LeaseExpires")
            if holder and holder != owner and expires is not None and _utc(expires) > now:
                return False
            try:
                self.table.update_entity(
                    {"PartitionKey": _RULE_PARTITION, "RowKey": key, **lease},
                    mode=UpdateMode.MERGE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue  # someone else moved first: read again
            return True
        return False

    def release_lease(self, name: str, owner: str) -> None:
        entity = self._get(_RULE_PARTITION, _key(name))
        if entity is None or entity.get("LeaseOwner") != owner:
            return
        with contextlib.suppress(ResourceModifiedError):  # taken over meanwhile: nothing of ours to release
            self.table.update_entity(
                {"PartitionKey": _RULE_PARTITION, "RowKey": _key(name), "LeaseOwner": ""},
                mode=UpdateMode.MERGE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )

    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        entity = self._get(_RULE_PARTITION, _key(name))
        raw = entity.get("State") if entity else ""
        return RuleState.from_json(json.loads(raw) if raw else None, time_bin)

    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:

        key = _key(name)
        entity = self._get(_RULE_PARTITION, key)
        if entity is None or entity.get("LeaseOwner") != owner:
            raise LeaseLostError(f"lease on {name} was taken by another run; this run stops writing its state")
        try:
            self.table.update_entity(
                {"PartitionKey": _RULE_PARTITION, "RowKey": key, "State": json.dumps(state.to_json())},
                mode=UpdateMode.MERGE,
                etag=entity.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise LeaseLostError(f"state of {name} changed under this run (lease taken over); stopping") from None

    # -- outbox -------------------------------------------------------------------------------------
    @staticmethod
    def _partition(sink: str) -> str:
        return "outbox-" + hashlib.sha256(sink.encode()).hexdigest()[:24]

    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        findings = list(findings)
        staged = 0
        for sink in sinks:
            partition = self._partition(sink)
            for finding in findings:
                digest = finding.digest()
                old = self._get(partition, finding.id)
                if old is not None and old.get("Digest") == digest:
                    continue  # unchanged: delivered stays delivered, pending stays pending
                text = _stored_text(finding)
                chunks = {f"Finding{i}": text[i * _CHUNK : (i + 1) * _CHUNK] for i in range(-(-len(text) // _CHUNK))}
                delivered = old.get("DeliveredDigest", "") if old is not None else ""
                pending = delivered != digest
                self.table.upsert_entity(
                    {
                        "PartitionKey": partition,
                        "RowKey": finding.id,
                        "Sink": sink,
                        "Chunks": len(chunks),
                        **chunks,
                        "Digest": digest,
                        "DeliveredDigest": delivered,
                        "Pending": pending,
                        "WindowEnd": finding.window.end,
                    },
                    mode=UpdateMode.REPLACE,
                )
                staged += pending
        return staged

    def pending(self, sink: str) -> list[OutboxEntry]:
        entities = self.table.query_entities("PartitionKey eq @pk and Pending eq true", parameters={"pk": self._partition(sink)})
        entries = []
        for entity in entities:
            text = "".join(entity[f"Finding{i}"] for i in range(entity["Chunks"]))
            entry = OutboxEntry(sink, Finding.from_state(json.loads(text)), entity["Digest"], entity["DeliveredDigest"] or None)
            if entry.pending:  # the column is an index; the digests are the truth
                entries.append(entry)
        return sorted(entries, key=lambda e: (e.finding.window.start, e.finding.id))

    def mark_delivered(self, sink: str, entries: Iterable[OutboxEntry], now: datetime) -> None:
        partition = self._partition(sink)
        for entry in entries:
            current = self._get(partition, entry.finding.id)
            if current is None or current.get("Digest") != entry.digest:
                continue  # a newer version was staged meanwhile: it stays pending
            try:
                self.table.update_entity(
                    {"PartitionKey": partition, "RowKey": entry.finding.id, "DeliveredDigest": entry.digest, "Pending": False},
                    mode=UpdateMode.MERGE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue  # restaged concurrently: the next run delivers the new version
        old = self.table.query_entities(
            "PartitionKey eq @pk and Pending eq false and WindowEnd lt @cutoff",
            parameters={"pk": partition, "cutoff": now - DELIVERED_RETENTION},
            select=["PartitionKey", "RowKey"],
        )
        for entity in old:
            self.table.delete_entity(entity["PartitionKey"], entity["RowKey"])
