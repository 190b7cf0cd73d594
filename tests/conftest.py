"""Shared fixtures: the test PKI and the fake managed-identity endpoint, wired through the standard
environment variables production code reads (REQUESTS_CA_BUNDLE, IDENTITY_ENDPOINT, IDENTITY_HEADER)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.identity import IDENTITY_HEADER, IdentityHandler
from tests.fakes.server import FakeServer, serve
from tests.fakes.tls import TestPki, make_pki

FILES = Path(__file__).resolve().parent / "files"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A test CA and a server certificate for 127.0.0.1."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def identity_server() -> Iterator[FakeServer]:
    """The fake managed-identity endpoint (plain HTTP on loopback, as App Service's is)."""
    with serve(IdentityHandler) as server:
        yield server


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch, pki: TestPki, identity_server: FakeServer) -> FakeServer:
    """Environment of a Function App with a managed identity, trusting the test CA."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity_server.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_cert))
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    identity_server.server.state.clear()  # type: ignore[attr-defined]
    return identity_server
