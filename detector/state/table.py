"""`table`: the production state store, Azure Table Storage through azure-data-tables and the managed identity.

Entities (one table, DETECTOR_STATE_TABLE_NAME):
- PartitionKey "rule", RowKey <name key>: State (JSON), LeaseOwner, LeaseExpires. The lease and the
  state share one entity, so every state write is fenced by its ETag: a run whose lease was taken over
  cannot overwrite the new owner's checkpoint.
- PartitionKey "outbox-<sink key>", RowKey <finding id>: the finding (JSON, split in 30,000-character
  properties to stay under the 64 KiB property limit), Digest, DeliveredDigest, Pending, WindowEnd,
  Attempts (rejections by the sink), Parked, Error.
- PartitionKey "outboxes", RowKey <sink key>: Sink, Id: the outbox's id, recorded by the rules that staged
  findings in it, so an outbox deleted under them is noticed.

Every entity is validated when read (StateError naming the table, PartitionKey and RowKey).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
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

from detector.errors import ConfigError, DetectorError, StateError
from detector.identity import build_credential
from detector.models import SHORTENED_TAIL, Finding, shortened_text
from detector.state import (
    DELIVERED_RETENTION,
    RESET_HINT,
    LeaseLostError,
    OutboxEntry,
    RuleState,
    StateStore,
    check_lease_expiry,
    finding_from_state,
    lease_is_held,
)

if TYPE_CHECKING:
    from detector.config import Settings

_CHUNK = 30_000  # characters per property: a property holds at most 64 KiB, strings are UTF-16
# An entity holds at most 1 MiB. Findings are far smaller, but 128 long, distinct, non-ASCII values in
# several sets could exceed it; then the stored copy keeps a shortened form of each long set value.
# Stored as ASCII JSON (non-ASCII escaped), so characters = bytes on the wire, and 2 bytes each as the
# service counts strings (UTF-16): 300,000 characters stay well under 1 MiB either way.
_MAX_STORED_CHARS = 300_000
_SHORTENED_VALUE_CHARS = 1_000
_MARKER_CHARS = len(json.dumps(shortened_text("", 0))) - 2  # what shortened_text adds, as JSON (no quotes)
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_RULE_PARTITION = "rule"
_OUTBOXES_PARTITION = "outboxes"
_OUTBOX_HINT = "restore the entity from a backup; deleting it drops that finding for that sink"


def _key(name: str) -> str:
    r"""A RowKey/PartitionKey-safe key for any name (keys may not hold / \ # ? or control characters)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _stored_text(finding: Finding) -> str:
    """The finding as stored JSON, shortened to fit one entity.

    If it would not fit, its longest texts are shortened first, one at a time, each to its start and a
    marker holding the whole text's SHA-256 (`shortened_text`; the Sentinel sink's evidence query tests
    that hash, so it still finds the rows): a set's values, a column's value, a title or summary quoting
    it, an entity field. A 9 MB user agent is one value an attacker can write into a log; left whole,
    the service refused the entity and every run failed at staging. Short texts (the group's keys, such
    as Computer) stay whole unless the long ones are not enough, and names, times and the finding's
    identity never change. Should even that not fit (thousands of short values), the longest lists
    keep their first values and a marker; a finding that still does not fit is a StateError.
    """
    state = finding.to_state()
    text = json.dumps(state)
    if len(text) <= _MAX_STORED_CHARS:
        return text
    excess = len(text) - _MAX_STORED_CHARS
    state = json.loads(text)  # a copy to shorten: to_state shares the finding's own lists
    leaves = _text_leaves(state)
    for keep in (_SHORTENED_VALUE_CHARS >> halved for halved in range(7)):  # 1,000 characters down to 15
        for container, key, original in sorted(leaves, key=lambda leaf: len(leaf[2]), reverse=True):
            if excess <= 0 or len(original) <= keep + _MARKER_CHARS:
                break
            current, shortened = container[key], shortened_text(original, keep)
            excess -= len(json.dumps(current)) - len(json.dumps(shortened))
            container[key] = shortened
    while excess > 0:
        # Halving a list of two would leave two (a value and the marker): only longer lists shrink.
        lists = [(column, v) for column, v in state["columns"].items() if isinstance(v, list) and len(v) > 2]
        if not lists:
            break
        column, values = max(lists, key=lambda item: len(json.dumps(item[1])))
        half = [*values[: len(values) // 2], f"…[{len(values) - len(values) // 2} more values {SHORTENED_TAIL}]"]
        saved = len(json.dumps(values)) - len(json.dumps(half))
        if saved <= 0:
            break
        excess -= saved
        state["columns"][column] = half
    text = json.dumps(state)
    if len(text) > _MAX_STORED_CHARS:
        raise StateError(
            f"finding {finding.id} of rule {finding.rule_id}",
            f"does not fit one Azure Table entity even shortened ({len(text):,} characters of JSON)",
            "use the file state store (DETECTOR_STATE=file) for this rule, or lower its set sizes",
        )
    return text


_TEXTS = ("columns", "entities", "title", "summary")  # what a log's values can make long


def _text_leaves(state: dict[str, Any]) -> list[tuple[Any, Any, str]]:
    """(container, key, text) of every text in the state's values (_TEXTS, at any depth).

    Not the column names, times (`{"$dt": ...}`), evidence names or the finding's identity.
    """
    leaves: list[tuple[Any, Any, str]] = []

    def visit(container: Any, key: Any) -> None:
        value = container[key]
        if isinstance(value, str):
            leaves.append((container, key, value))
        elif isinstance(value, list):
            for index in range(len(value)):
                visit(value, index)
        elif isinstance(value, dict) and "$dt" not in value:
            for name in value:
                visit(value, name)

    for key in _TEXTS:
        if key in state:
            visit(state, key)
    return leaves


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
                    "identity the custom role 'IIS detector state table entities' on this table (infra/app/rbac.bicep does; "
                    "docs/deploy.md lists every role and why)"
                ) from None
            raise DetectorError(f"state table {name}: {exc.message}") from None
        return cls(table, f"table:{settings.state_table_endpoint}/{name}")

    def describe(self) -> str:
        return self._description

    def _where(self, partition: str, row: str, name: str = "") -> str:
        named = f" ({name})" if name else ""
        return f"table {self.table.table_name} entity PartitionKey={partition!r} RowKey={row!r}{named}"

    # -- lease and checkpoint ---------------------------------------------------------------------
    def _get(self, partition: str, row: str) -> Any:
        try:
            return self.table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None

    def _lease(self, entity: Any, name: str) -> tuple[str, datetime] | None:
        holder, expires = entity.get("LeaseOwner") or "", entity.get("LeaseExpires")
        if not holder:
            return None
        if not isinstance(holder, str) or not isinstance(expires, datetime):
            raise StateError(
                self._where(_RULE_PARTITION, entity["RowKey"], name),
                "LeaseOwner is not text or LeaseExpires is not a DateTime",
                "clear LeaseOwner if no run is active",
            )
        return holder, _utc(expires)

    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        key = _key(name)
        for _ in range(5):
            entity = self._get(_RULE_PARTITION, key)
            lease = {"LeaseOwner": owner, "LeaseExpires": now + ttl}
            if entity is None:
                try:
                    self.table.create_entity({"PartitionKey": _RULE_PARTITION, "RowKey": key, "Name": name, "State": "", **lease})
                except ResourceExistsError:
                    continue  # created by a concurrent run: read it again
                return True
            held = self._lease(entity, name)
            if held is not None:
                if held[0] != owner:
                    check_lease_expiry(self._where(_RULE_PARTITION, key, name), held[0], held[1], now)
                if lease_is_held(held[0], held[1], owner, now):
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

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        entity = self._get(_RULE_PARTITION, _key(name))
        return None if entity is None else self._lease(entity, name)

    def release_lease(self, name: str, owner: str) -> None:
        for _ in range(5):
            entity = self._get(_RULE_PARTITION, _key(name))
            if entity is None or entity.get("LeaseOwner") != owner:
                return
            try:
                self.table.update_entity(
                    {"PartitionKey": _RULE_PARTITION, "RowKey": _key(name), "LeaseOwner": ""},
                    mode=UpdateMode.MERGE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue  # renewed by our heartbeat, or taken over: look again
            return

    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        key = _key(name)
        entity = self._get(_RULE_PARTITION, key)
        raw = entity.get("State") if entity else ""
        where = self._where(_RULE_PARTITION, key, name)
        if raw is None or raw == "":
            return RuleState(time_bin, where=where)
        if not isinstance(raw, str):
            raise StateError(where, f"State is {type(raw).__name__}, not JSON text", RESET_HINT)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number of 4,300+ digits
            raise StateError(where, f"State is not valid JSON ({str(exc)[:100]})", RESET_HINT) from None
        return RuleState.from_json(data, time_bin, where)

    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:
        key = _key(name)
        # The ETag also changes when our own heartbeat renews the lease: then the write is simply retried.
        for _ in range(5):
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
                continue
            return
        raise LeaseLostError(f"state of {name} kept changing under this run; stopping")

    # -- outbox -------------------------------------------------------------------------------------
    @staticmethod
    def _partition(sink: str) -> str:
        return "outbox-" + hashlib.sha256(sink.encode()).hexdigest()[:24]

    def outbox_id(self, sink: str) -> str | None:
        row = self._partition(sink)
        entity = self._get(_OUTBOXES_PARTITION, row)
        if entity is None:
            return None
        if not isinstance(entity.get("Id"), str):
            raise StateError(self._where(_OUTBOXES_PARTITION, row, sink), "Id is not text", _OUTBOX_HINT)
        return str(entity["Id"])

    def _ensure_outbox(self, sink: str) -> None:
        if self.outbox_id(sink) is None:
            with contextlib.suppress(ResourceExistsError):  # a concurrent run created it: that one stands
                self.table.create_entity(
                    {"PartitionKey": _OUTBOXES_PARTITION, "RowKey": self._partition(sink), "Sink": sink, "Id": str(uuid.uuid4())}
                )

    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        findings = list(findings)
        staged = 0
        for sink in sinks:
            self._ensure_outbox(sink)
            partition = self._partition(sink)
            for finding in findings:
                digest = finding.digest()
                old = self._get(partition, finding.id)
                if old is not None and old.get("Digest") == digest:
                    continue  # unchanged: delivered stays delivered, pending (or parked) stays so
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
                        "Attempts": 0,
                        "Parked": False,
                        "Error": "",
                    },
                    mode=UpdateMode.REPLACE,
                )
                staged += pending
        return staged

    def _entry(self, sink: str, entity: Any) -> OutboxEntry:
        where = self._where(entity["PartitionKey"], entity["RowKey"], sink)
        chunks, digest, delivered = entity.get("Chunks"), entity.get("Digest"), entity.get("DeliveredDigest")
        attempts, parked = entity.get("Attempts", 0) or 0, bool(entity.get("Parked", False))
        if not (
            isinstance(chunks, int)
            and 0 < chunks <= 40
            and all(isinstance(entity.get(f"Finding{i}"), str) for i in range(chunks))
            and isinstance(digest, str)
            and isinstance(delivered, str | None)
            and isinstance(attempts, int)
        ):
            raise StateError(where, "is not an outbox entry (Chunks, Finding0.., Digest, DeliveredDigest)", _OUTBOX_HINT)
        text = "".join(entity[f"Finding{i}"] for i in range(chunks))
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number of 4,300+ digits
            raise StateError(where, f"the stored finding is not valid JSON ({str(exc)[:100]})", _OUTBOX_HINT) from None
        return OutboxEntry(
            sink, finding_from_state(raw, where), digest, delivered or None, attempts, parked, str(entity.get("Error") or "")
        )

    def pending(self, sink: str) -> list[OutboxEntry]:
        entities = self.table.query_entities("PartitionKey eq @pk and Pending eq true", parameters={"pk": self._partition(sink)})
        entries = [entry for entry in (self._entry(sink, e) for e in entities) if entry.pending]  # the column is an index
        return sorted(entries, key=lambda e: (e.finding.window.start, e.finding.id))

    def parked(self, sink: str) -> list[OutboxEntry]:
        entities = self.table.query_entities("PartitionKey eq @pk and Parked eq true", parameters={"pk": self._partition(sink)})
        return [self._entry(sink, e) for e in entities]

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
            select=["PartitionKey", "RowKey", "Parked"],
        )
        for entity in old:
            if not entity.get("Parked"):  # parked entries are kept until someone looks at them
                self.table.delete_entity(entity["PartitionKey"], entity["RowKey"])

    def record_rejections(self, sink: str, rejected: Mapping[str, tuple[OutboxEntry, str]], limit: int) -> list[OutboxEntry]:
        partition = self._partition(sink)
        parked: list[OutboxEntry] = []
        for fid, (entry, error) in rejected.items():
            current = self._get(partition, fid)
            if current is None or current.get("Digest") != entry.digest:
                continue  # changed meanwhile: the new version gets its own attempts
            attempts = int(current.get("Attempts") or 0) + 1
            park = attempts >= limit
            try:
                self.table.update_entity(
                    {
                        "PartitionKey": partition,
                        "RowKey": fid,
                        "Attempts": attempts,
                        "Error": error[:500],
                        **({"Parked": True, "Pending": False} if park else {}),
                    },
                    mode=UpdateMode.MERGE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                continue  # restaged concurrently
            if park:
                parked.append(OutboxEntry(sink, entry.finding, entry.digest, entry.delivered_digest, attempts, True, error))
        return parked
