"""A failing sink does not stop the others: the runner delivers to every sink and reports the failure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from detector import runner
from detector.config import Settings
from detector.sinks import open_sink
from detector.sources import open_source
from tests.fakes.arm import ArmHandler
from tests.fakes.ingestion import IngestionHandler, stream_columns
from tests.fakes.server import FakeServer, serve
from tests.fakes.webhook import WebhookHandler
from tests.sink_support import CLIENT_ID, DAY, DCR_ID, FIXTURE, WORKSPACE, the_rule

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki

SCHEMA = Path(__file__).resolve().parents[1] / "infra" / "schema" / "findings-columns.json"


@pytest.fixture
def services(pki: TestPki, azure_env: FakeServer) -> Iterator[dict[str, FakeServer]]:
    with (
        serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}, forbidden=True) as arm,
        serve(IngestionHandler, pki, streams={DCR_ID: stream_columns(SCHEMA)}) as ingestion,
        serve(WebhookHandler, pki) as webhook,
    ):
        yield {"arm": arm, "ingestion": ingestion, "webhook": webhook}


def state(server: FakeServer) -> dict[str, Any]:
    return server.server.state  # type: ignore[no-any-return, attr-defined]


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
    assert "Microsoft Sentinel Responder" in summary.delivery_errors["sentinel:law-soc"]
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
