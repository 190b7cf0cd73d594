"""Getting a token fails at once, in one line that says which step failed and what to set."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError

from detector import cli
from detector.config import LogAnalyticsSettings
from detector.errors import ConfigError, SourceError
from detector.identity import CredentialError, ExplainedCredential, credential_for
from detector.models import Window
from detector.runner import evaluate_window
from detector.sources.loganalytics import LogAnalyticsSource
from tests.fakes import tls
from tests.fakes.loganalytics import LogAnalyticsFake, serve_log_analytics
from tests.fakes.server import FakeServer
from tests.helpers import FILES, RULE

WS = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DAY = datetime(2026, 11, 26, tzinfo=UTC)
HOUR = ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-26T01:00:00Z"]

DEFAULT_CHAIN_TEXT = (
    "DefaultAzureCredential failed to retrieve a token from the included credentials.\nAttempted credentials:\n"
    "\tEnvironmentCredential: EnvironmentCredential authentication unavailable.\n"
    "\tAzureCliCredential: Azure CLI not found on path\n"
)


class Raising:
    """A credential that fails the way azure-identity's do (the boundary: no real identity here)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        self.calls += 1
        raise self.error

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("client_id", "error", "says"),
    [
        (
            "",
            ClientAuthenticationError(message=DEFAULT_CHAIN_TEXT),
            ["no Azure credential was found", "`az login`", "AZURE_CLIENT_ID"],
        ),
        (
            CLIENT_ID,
            CredentialUnavailableError(message="ManagedIdentityCredential authentication unavailable."),
            [
                "managed identity endpoint gave no token (ManagedIdentityCredential authentication unavailable.)",
                "IDENTITY_ENDPOINT",
                "`az login`",
            ],
        ),
        (
            CLIENT_ID,
            ClientAuthenticationError(message="Identity not found\nmore"),
            [f"{CLIENT_ID} (AZURE_CLIENT_ID) was refused: Identity not found;"],
        ),
        (
            "",
            ClientAuthenticationError(message="AADSTS70043: The refresh token has expired\n..."),
            ["refused: AADSTS70043", "`az login`"],
        ),
    ],
    ids=["nothing-found", "no-identity-endpoint", "identity-refused", "developer-token-refused"],
)
def test_each_failure_is_one_line_naming_the_token_step_and_what_to_set(
    client_id: str, error: Exception, says: list[str]
) -> None:
    credential = ExplainedCredential(Raising(error), client_id)
    for call in (credential.get_token, credential.get_token_info):
        with pytest.raises(CredentialError) as raised:
            call("https://api.loganalytics.io/.default")
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith("getting an Azure token for https://api.loganalytics.io/.default failed")
        assert "no request was sent" in message
        for part in says:
            assert part in message
        # What the sinks and the state store already catch, and what a run reports as a source failure.
        assert isinstance(raised.value, ClientAuthenticationError)
        assert isinstance(raised.value, SourceError)


@pytest.fixture
def workspace(azure_env: FakeServer, pki: tls.TestPki) -> Iterator[tuple[LogAnalyticsFake, FakeServer]]:
    fake = LogAnalyticsFake(WS)
    fake.load_jsonl(FILES / "w3ciislog.jsonl")
    with serve_log_analytics(pki, fake) as server:
        yield fake, server


def test_a_refused_managed_identity_is_not_retried_and_sends_no_query(
    workspace: tuple[LogAnalyticsFake, FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = workspace
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-platform-header")  # the fake identity endpoint answers 401
    sleeps: list[float] = []
    source = LogAnalyticsSource(WS, LogAnalyticsSettings(endpoint=server.url, client_id=CLIENT_ID), sleep=sleeps.append)
    with pytest.raises(CredentialError, match=r"getting an Azure token .* endpoint gave no token \(App Service managed identity"):
        evaluate_window(RULE, source, Window(DAY, DAY + timedelta(hours=1)))
    assert fake.requests == []
    assert sleeps == []
    assert source.stats.retries == 0


def test_cli_prints_one_error_line_and_exits_1_without_waiting(
    workspace: tuple[LogAnalyticsFake, FakeServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, server = workspace
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-platform-header")
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DETECTOR_LOGS_ENDPOINT", server.url)
    monkeypatch.setattr("time.sleep", lambda seconds: pytest.fail(f"slept {seconds}s"))
    code = cli.main(["run", "--source", f"loganalytics:{WS}", *HOUR])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert err.count("\n") == 1, err
    assert err.startswith("error: getting an Azure token")
    assert fake.requests == []


def test_a_missing_ca_bundle_is_one_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ConfigError, match=r"setting REQUESTS_CA_BUNDLE: '.*no-such-ca\.pem' does not exist"):
        credential_for("", {"REQUESTS_CA_BUNDLE": str(missing)})
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(missing))
    code = cli.main(["run", "--source", f"loganalytics:{WS}", *HOUR])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert err.splitlines() == [
        f"error: setting REQUESTS_CA_BUNDLE: '{missing}' does not exist; point it at a PEM file "
        "of trusted CA certificates, or unset it to use the defaults"
    ]
