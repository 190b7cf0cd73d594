"""A failing sink does not stop the others: the runner delivers to every sink and reports the failure."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest.mock import ANY

import pytest

from detector import runner
from detector.config import Settings
from detector.models import Finding
from detector.sinks import Sink, open_sink
from detector.sources import open_source
from tests.fakes.arm import ArmHandler
from tests.fakes.ingestion import IngestionHandler, stream_columns
from tests.fakes.server import FakeServer, serve
from tests.fakes.webhook import WebhookHandler
from tests.helpers import DAY, ROOT
from tests.sink_support import CLIENT_ID, DCR_ID, FIXTURE, WORKSPACE, the_rule

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki

SCHEMA = ROOT / "infra" / "schema" / "findings-columns.json"


@pytest.fixture
def services(pki: TestPki, azure_env: FakeServer) -> Iterator[dict[str, FakeServer]]:
    with (
        serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}, forbidden=True) as arm,
        serve(IngestionHandler, pki, streams={DCR_ID: stream_columns(SCHEMA)}) as ingestion,
        serve(WebhookHandler, pki) as webhook,
    ):
        yield {"arm": arm, "ingestion": ingestion, "webhook": webhook}


def state(server: FakeServer) -> dict[str, Any]:
    return server.state


def test_a_failing_sink_leaves_the_others_delivered_and_is_reported(services: dict[str, FakeServer], tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "DETECTOR_SOURCE": f"file:{FIXTURE}",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_ARM_ENDPOINT": services["arm"].url,
            "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE,
            "DETECTOR_INGESTION_ENDPOINT": services["ingestion"].url,
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID": DCR_ID,
            "DETECTOR_WEBHOOK_URL": f"{services['webhook'].url}/hook?sig=s3cret",
        }
    )
    out = tmp_path / "findings.jsonl"
    # The failing sink comes first, so the others run after a failure, not merely before one.
    specs = ["sentinel", f"jsonl:{out}", "loganalytics-table", "webhook"]
    sinks = [open_sink(spec, settings, setting="DETECTOR_SINKS") for spec in specs]
    source = open_source(settings.source, settings, setting="DETECTOR_SOURCE")

    summary = runner.run([(the_rule(), DAY)], source, sinks)

    found = summary.findings
    assert len(found) == 7
    assert not summary.ok
    assert list(summary.delivery_errors) == ["sentinel:law-soc"]
    assert "IIS detector incident writer" in summary.delivery_errors["sentinel:law-soc"]
    assert summary.deliveries == {
        f"jsonl:{out}": 7,
        "loganalytics-table:Custom-IISPortScanFindings_CL": 7,
        "webhook:per-finding": 7,
    }
    ids = {f.id for f in found}
    assert {json.loads(line)["FindingId"] for line in out.read_text().splitlines()} == ids
    assert {row["FindingId"] for row in state(services["ingestion"])["rows"]} == ids
    assert set(state(services["webhook"])["accepted"]) == ids
    assert state(services["arm"])["incidents"] == {}
    assert summary.to_json()["deliveryErrors"]["sentinel:law-soc"].startswith("sentinel:law-soc: 403 Forbidden")


# -- a finding a sink still rejects is isolated, retried a bounded number of times, then parked ----------


class Utf8Sink(Sink):
    """A real sink that writes findings as UTF-8 JSON lines: a lone surrogate cannot be encoded."""

    name = "utf8"

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"utf8:{self.path.name}"

    def deliver(self, findings: Sequence[Finding]) -> None:
        lines = [json.dumps(f.to_json(), ensure_ascii=False, default=str).encode("utf-8") for f in findings]
        with self.path.open("ab") as out:
            for line in lines:
                out.write(line + b"\n")

    def ids(self) -> list[str]:
        return [json.loads(line)["FindingId"] for line in self.path.read_text(encoding="utf-8").splitlines()]


def test_a_finding_a_sink_cannot_carry_never_blocks_the_others_and_is_parked(tmp_path: Path) -> None:
    from detector.runner import deliver_outbox, wall_clock
    from detector.sinks.jsonl import JsonlSink
    from detector.state import MAX_REJECTIONS
    from detector.state.file import FileStateStore
    from tests.state.test_stores import FINDINGS

    store = FileStateStore(tmp_path / "state")
    hostile = replace(FINDINGS[0], id="f" * 32, columns={**FINDINGS[0].columns, "set_csUserAgent": ["Mozilla\ud800"]})
    utf8, jsonl = Utf8Sink(tmp_path / "utf8.jsonl"), JsonlSink(tmp_path / "findings.jsonl")
    good = FINDINGS[1:]
    store.stage([utf8.describe(), jsonl.describe()], [hostile, *good])  # the hostile one sorts first

    summaries = []
    for _ in range(MAX_REJECTIONS + 1):
        summary = runner.RunSummary(source="test")
        deliver_outbox(store, [utf8, jsonl], summary, wall_clock)
        summaries.append(summary)
    first = summaries[0]
    assert sorted(utf8.ids()) == sorted(f.id for f in good)  # everything else went through, on the first run
    # The jsonl sink carries the lone surrogate as a JSON escape, so it takes every finding; only the
    # sink that cannot carry it isolates and parks it.
    assert first.deliveries == {utf8.describe(): len(good), jsonl.describe(): len(good) + 1}
    written = {r["FindingId"] for r in map(json.loads, jsonl.path.read_text(encoding="utf-8").splitlines())}
    assert written == {f.id for f in [hostile, *good]}
    assert "rejected (UnicodeEncodeError" in first.delivery_errors[utf8.describe()]
    json.dumps(first.to_json(), ensure_ascii=False).encode("utf-8")  # and printable: no lone surrogate in it
    assert all(s.parked == [] for s in summaries[: MAX_REJECTIONS - 1])
    parked = summaries[MAX_REJECTIONS - 1]
    assert parked.parked == [
        {"sink": utf8.describe(), "findingId": hostile.id, "ruleId": hostile.rule_id, "attempts": MAX_REJECTIONS, "error": ANY}
    ]
    assert not parked.ok and parked.to_json()["parked"] == parked.parked
    after = summaries[MAX_REJECTIONS]
    assert after.ok and after.deliveries[utf8.describe()] == 0  # no longer offered...
    assert after.parked_held == {utf8.describe(): 1}  # ...but kept and reported
    assert [e.finding.id for e in store.parked(utf8.describe())] == [hostile.id]
    assert sorted(utf8.ids()) == sorted(f.id for f in good)  # nothing delivered twice


def test_a_sink_that_is_down_parks_nothing(tmp_path: Path) -> None:
    from detector.errors import SinkError
    from detector.runner import deliver_outbox, wall_clock
    from detector.state import MAX_REJECTIONS
    from detector.state.file import FileStateStore
    from tests.state.test_stores import FINDINGS

    class Down(Sink):
        name = "down"

        def deliver(self, findings: Sequence[Finding]) -> None:
            raise SinkError("down: 503 Service Unavailable")

    store = FileStateStore(tmp_path / "state")
    store.stage(["down"], FINDINGS)
    for _ in range(MAX_REJECTIONS + 2):
        summary = runner.RunSummary(source="test")
        deliver_outbox(store, [Down()], summary, wall_clock)
        assert summary.parked == [] and "503" in summary.delivery_errors["down"]
    assert len(store.pending("down")) == len(FINDINGS)  # an outage counts against no finding


def test_a_sink_that_fails_every_finding_alone_parks_none_of_them(tmp_path: Path) -> None:
    """A sink answering HTML where JSON belongs fails every finding with a json error, not a SinkError:
    no finding got through, so the sink is what fails (an outage), and no finding is parked and lost."""
    from detector.runner import deliver_outbox, wall_clock
    from detector.state import MAX_REJECTIONS
    from detector.state.file import FileStateStore
    from tests.state.test_stores import FINDINGS

    class Html(Sink):
        name = "html"

        def deliver(self, findings: Sequence[Finding]) -> None:
            json.loads("<html>Service Unavailable</html>")

    store = FileStateStore(tmp_path / "state")
    store.stage(["html"], FINDINGS)
    for _ in range(MAX_REJECTIONS + 2):
        summary = runner.RunSummary(source="test")
        deliver_outbox(store, [Html()], summary, wall_clock)
        assert summary.parked == [] and not summary.ok
        assert "none got through, so the sink is taken as failing: JSONDecodeError" in summary.delivery_errors["html"]
    assert len(store.pending("html")) == len(FINDINGS) and store.parked("html") == []


@pytest.mark.parametrize("broken", [1, 7], ids=["one finding refused", "every finding refused"])
def test_a_finding_sentinel_refuses_is_parked_only_beside_findings_that_get_through(
    pki: TestPki, azure_env: FakeServer, tmp_path: Path, broken: int
) -> None:
    """The incidents API answers 400 for an incident it cannot take (here: a severity it does not know).
    A refusal counts against the finding only in a run where another finding got through: so a finding
    refused beside others is parked after MAX_REJECTIONS such runs instead of being retried for ever,
    and when every finding is refused (a retired API version, a policy, a receiver that starts refusing
    everything) nothing is parked and lost: it stays pending and every run says why."""
    from detector.runner import deliver_outbox, wall_clock
    from detector.state import MAX_REJECTIONS
    from detector.state.file import FileStateStore
    from tests.sink_support import findings

    found = findings()
    bad = {f.id for f in found[:broken]}
    refused = [replace(f, severity="Severe") for f in found if f.id in bad]
    good = [f for f in found if f.id not in bad]
    with serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}) as arm:
        arm.state["audience"] = arm.url
        settings = Settings.from_env(
            {
                "DETECTOR_SOURCE": "file:unused",
                "AZURE_CLIENT_ID": CLIENT_ID,
                "DETECTOR_ARM_ENDPOINT": arm.url,
                "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE,
            }
        )
        sink = open_sink("sentinel", settings)
        store = FileStateStore(tmp_path / "state")
        summaries = []
        for run in range(MAX_REJECTIONS + 2):
            # Each run has a new finding that gets through (one at most: the others were found before).
            fresh = [good[run]] if run < len(good) else []
            store.stage([sink.describe()], [*refused, *fresh])
            summary = runner.RunSummary(source="test")
            deliver_outbox(store, [sink], summary, wall_clock)
            summaries.append(summary)
        incidents = {key[1] for key in arm.state["incidents"]}
    assert incidents == {f.id for f in good[: MAX_REJECTIONS + 2]}
    assert all("400" in s.delivery_errors[sink.describe()] for s in summaries[:MAX_REJECTIONS])
    if good:
        assert [p["findingId"] for p in summaries[MAX_REJECTIONS - 1].parked] == sorted(bad)
        assert [e.finding.id for e in store.parked(sink.describe())] == sorted(bad)
    else:
        assert all(s.parked == [] for s in summaries)
        assert store.parked(sink.describe()) == [] and len(store.pending(sink.describe())) == len(found)


def test_a_refused_finding_alone_is_retried_not_parked(pki: TestPki, azure_env: FakeServer, tmp_path: Path) -> None:
    """Once the others are delivered, the refused finding is offered alone: no proof that it is the
    finding rather than the API, so it is reported every run and stays pending, never parked."""
    from detector.runner import deliver_outbox, wall_clock
    from detector.state import MAX_REJECTIONS
    from detector.state.file import FileStateStore
    from tests.sink_support import findings

    found = findings()
    staged = [replace(found[0], severity="Severe"), *found[1:]]
    with serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}) as arm:
        arm.state["audience"] = arm.url
        sink = open_sink(
            "sentinel",
            Settings.from_env(
                {
                    "DETECTOR_SOURCE": "file:unused",
                    "AZURE_CLIENT_ID": CLIENT_ID,
                    "DETECTOR_ARM_ENDPOINT": arm.url,
                    "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE,
                }
            ),
        )
        store = FileStateStore(tmp_path / "state")
        store.stage([sink.describe()], staged)
        for _ in range(MAX_REJECTIONS + 2):
            summary = runner.RunSummary(source="test")
            deliver_outbox(store, [sink], summary, wall_clock)
            assert summary.parked == [] and "400" in summary.delivery_errors[sink.describe()]
    assert [e.finding.id for e in store.pending(sink.describe())] == [found[0].id]


@pytest.mark.parametrize("others_get_through", [True, False])
def test_offered_one_at_a_time_a_refused_finding_does_not_stop_the_others(tmp_path: Path, others_get_through: bool) -> None:
    """After a failure that is no SinkError, the findings are offered alone; one the service refuses
    there (SinkError.refused) is counted like the finding that failed, not taken for an outage that
    leaves the rest unoffered; and when nothing gets through, neither counts (the sink is failing)."""
    from detector.errors import SinkError
    from detector.runner import deliver_outbox, wall_clock
    from detector.state import MAX_REJECTIONS
    from detector.state.file import FileStateStore
    from tests.state.test_stores import FINDINGS

    broken, refused = FINDINGS[0].id, FINDINGS[1].id
    taken: list[str] = []

    class Picky(Sink):
        name = "picky"

        def deliver(self, findings: Sequence[Finding]) -> None:
            ids = [f.id for f in findings]
            if broken in ids:
                raise TypeError("cannot carry it")
            if refused in ids:
                raise SinkError("picky: 400", refused={refused: "400 BadRequest"})
            if not others_get_through:
                raise TypeError("nothing gets through")
            taken.extend(ids)

    store = FileStateStore(tmp_path / "state")
    store.stage(["picky"], FINDINGS)
    summaries = []
    for _ in range(MAX_REJECTIONS):
        summary = runner.RunSummary(source="test")
        deliver_outbox(store, [Picky()], summary, wall_clock)
        summaries.append(summary)
    if others_get_through:
        assert sorted(taken) == sorted(f.id for f in FINDINGS[2:])
        assert "400" in summaries[0].delivery_errors["picky"]
        # The one that cannot be carried counts alone too; the refused one only beside a delivery (run 1).
        assert {p["findingId"] for p in summaries[-1].parked} == {broken}
        assert [e.finding.id for e in store.pending("picky")] == [refused]
    else:
        assert taken == [] and all(s.parked == [] for s in summaries)
        assert len(store.pending("picky")) == len(FINDINGS)
