"""Shared fixtures: the test PKI and the fake managed-identity endpoint, wired through the standard
environment variables production code reads (REQUESTS_CA_BUNDLE, IDENTITY_ENDPOINT, IDENTITY_HEADER)."""

from __future__ import annotations

import ast
import inspect
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from tests.fakes.identity import IDENTITY_HEADER, IdentityHandler
from tests.fakes.server import FakeServer, serve
from tests.fakes.tls import TestPki, make_pki
from tests.helpers import FILES

# CI runs the property tests on a fixed sequence of examples (HYPOTHESIS_PROFILE=ci, set by `make test`), so a
# landing never depends on luck; a developer's runs draw new examples and keep what fails in .hypothesis/.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# When the fixture files "arrived": the morning after their day. A file source's late-data re-check compares
# a file's modification time with when a bin was evaluated (less a 5-minute margin); right after a git clone
# or checkout the fixtures' mtimes are "now", so a scheduled run in the first minutes would re-check bins
# that no row reached late. Tests that exercise late data copy and touch their own files.
FIXTURES_ARRIVED = datetime(2026, 11, 27, 0, 30, tzinfo=UTC).timestamp()


@pytest.fixture(scope="session", autouse=True)
def settled_fixture_files() -> None:
    """Fixture files carry the time they arrived, whenever the checkout was made."""
    for path in FILES.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, (FIXTURES_ARRIVED, FIXTURES_ARRIVED))


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
    identity_server.state.clear()
    return identity_server


ROOT = Path(__file__).resolve().parent.parent
AZURITE_TABLE = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-table"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def azurite_table(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's Table service over HTTPS (test CA) with OAuth on: the endpoint URL of its dev account.

    The real azure-data-tables client and ManagedIdentityCredential talk to it as to Azure Table Storage.
    """
    import socket
    import subprocess
    import time

    if not AZURITE_TABLE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE_TABLE}: run `make azurite` (make test does it)")
    port = _free_port()
    process = subprocess.Popen(
        [
            str(AZURITE_TABLE),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
            "--oauth",
            "basic",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
        ],
        cwd=tmp_path_factory.mktemp("azurite"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"Azurite did not start: {output}")
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}/devstoreaccount1"  # tables: create them with create_state_table()
    finally:
        process.terminate()
        process.wait(timeout=10)


def create_state_table(endpoint: str, name: str) -> None:
    """What infra/ does in Azure: create the state table (the detector's identity may not create tables)."""
    from azure.data.tables import TableServiceClient
    from azure.identity import ManagedIdentityCredential

    TableServiceClient(endpoint=endpoint, credential=ManagedIdentityCredential()).create_table_if_not_exists(name)


# -- markers for the fast loop (`make test-fast`): applied here, from what a test uses ---------------------

# A fixture that needs a tool outside the venv marks every test that uses it, directly or through another fixture.
_FIXTURE_MARKERS = {"azurite_table": "azurite", "checkov": "checkov"}
_SPAWNS = {("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "check_output"), ("subprocess", "check_call")}
_SPAWNS |= {("sys", "executable")}


def _spawns(function: Callable[..., Any], module: ModuleType | None, seen: set[object]) -> bool:
    """Whether `function`, or a function of its own module that it names, starts a process."""
    if function in seen or module is None:
        return False
    seen.add(function)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in _SPAWNS:
            return True
        if isinstance(node, ast.Name):
            named = getattr(module, node.id, None)
            if inspect.isfunction(named) and named.__module__ == module.__name__ and _spawns(named, module, seen):
                return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests `azurite`, `checkov` and `subprocess` from the fixtures they use and the code they run."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        names = set(item.fixturenames)
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in names:
                item.add_marker(marker)
        functions: list[Callable[..., Any]] = [item.function]
        for definitions in item._fixtureinfo.name2fixturedefs.values():
            functions.extend(definition.func for definition in definitions)
        if any(_spawns(f, sys.modules.get(f.__module__), set()) for f in functions):
            item.add_marker("subprocess")
