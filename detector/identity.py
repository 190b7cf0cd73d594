"""The one place that chooses the Azure credential, so every Azure client authenticates the same way.

In Azure the Function App runs as a user-assigned managed identity named by AZURE_CLIENT_ID. On a developer
machine AZURE_CLIENT_ID is empty and DefaultAzureCredential finds `az login`, VS Code or environment
credentials (and still a managed identity, when one exists). No secret is ever read from settings.

Getting a token is a step of its own: when it fails (no credential found, or the identity refused), the
credential raises CredentialError at once with one line that says which step failed and what to set. It is
never retried as if the service had answered badly: a missing `az login` does not fix itself in a minute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ClientAuthenticationError

from detector.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential

    from detector.config import Settings

log = logging.getLogger(__name__)

# requests (under every azure-core client) reads these for the CA bundle to trust; a wrong path is an
# OSError deep inside the first request otherwise.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class CredentialError(ClientAuthenticationError, SourceError):
    """No Azure token could be had: nothing was sent to the service.

    A ClientAuthenticationError, so the sinks and the state store that already turn authentication
    failures into their own errors keep doing so; a SourceError, so a run reports it like a source that
    cannot answer, without retrying.
    """

    def __init__(self, message: str) -> None:
        ClientAuthenticationError.__init__(self, message=message)

    def __str__(self) -> str:
        return str(self.message)


def credential_failure(exc: BaseException) -> CredentialError | None:
    """The CredentialError behind an SDK error, if any (azure-monitor-query re-raises it as a bare HttpResponseError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CredentialError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# At most 3 tries of 5 s (connect) + 20 s (read) with 0.8 s, 1.6 s backoff: about 80 s in the worst case.
TOKEN_REQUEST_LIMITS: dict[str, float] = {
    "retry_total": 2,
    "retry_backoff_factor": 0.8,
    "connection_timeout": 5,
    "read_timeout": 20,
}


def build_credential(settings: Settings) -> TokenCredential:
    """ManagedIdentityCredential for AZURE_CLIENT_ID, or the developer credential chain when it is empty."""
    return credential_for(settings.azure_client_id)


def credential_for(client_id: str, environ: Mapping[str, str] | None = None) -> TokenCredential:
    """The user-assigned managed identity with this client id; developer credentials when it is empty.

    DefaultAzureCredential also tries a system-assigned managed identity, so an app without a
    user-assigned identity still works; on a laptop it uses `az login`, VS Code or environment credentials.
    The credential is wrapped so that a failure to get a token is one CredentialError (see module doc).
    """
    from detector.config import environment

    check_ca_bundle(environment() if environ is None else environ)
    # Imported here: azure.identity is slow to import and `import function_app` must stay fast.
    if client_id:
        from azure.identity import ManagedIdentityCredential

        # Bounded token requests: azure-core's defaults (10 retries, 300 s read timeout) could hold a run
        # far past its deadline when the identity endpoint hangs; these fit inside the run's delivery reserve.
        # At most 3 tries of 5 s (connect) + 20 s (read) with 0.8 s and 1.6 s between them: about 80 s.
        return ExplainedCredential(
            ManagedIdentityCredential(
                client_id=client_id, retry_total=2, retry_backoff_factor=0.8, connection_timeout=5, read_timeout=20
            ),
            client_id,
        )
    from azure.identity import DefaultAzureCredential

    return ExplainedCredential(DefaultAzureCredential(), client_id)


def check_ca_bundle(environ: Mapping[str, str]) -> None:
    """Refuse a CA bundle setting that names no file or folder, before any client tries to use it."""
    for name in CA_BUNDLE_VARIABLES:
        value = environ.get(name, "")
        if value and not Path(value).exists():
            raise ConfigError(
                name,
                f"'{value}' does not exist; point it at a PEM file of trusted CA certificates, or unset it to use the defaults",
            )


class ExplainedCredential:
    """A TokenCredential that turns a failure to get a token into one CredentialError naming what to set."""

    def __init__(self, inner: Any, client_id: str) -> None:
        self.inner = inner
        self.client_id = client_id

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            token: AccessToken = self.inner.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as exc:
            raise self._explain(exc, scopes) from None
        return token

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        try:
            token: AccessTokenInfo = self.inner.get_token_info(*scopes, options=options)
        except ClientAuthenticationError as exc:
            raise self._explain(exc, scopes) from None
        return token

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> ExplainedCredential:
        self.inner.__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        self.inner.__exit__(*args)

    def _explain(self, exc: ClientAuthenticationError, scopes: tuple[str, ...]) -> CredentialError:
        if isinstance(exc, CredentialError):
            return exc
        detail = str(exc.message or exc)
        log.debug("getting a token failed: %s", detail)  # the SDK's full text, for --debug
        from azure.identity import CredentialUnavailableError

        unavailable = isinstance(exc, CredentialUnavailableError)
        return CredentialError(explain_token_failure(self.client_id, detail, scopes, unavailable=unavailable))


def explain_token_failure(client_id: str, detail: str, scopes: tuple[str, ...], *, unavailable: bool = False) -> str:
    """One line: the token step failed, why in short, and what to set."""
    scope = ", ".join(scopes) or "(no scope)"
    step = f"getting an Azure token for {scope} failed (no request was sent to the service)"
    first_line = detail.strip().splitlines()[0] if detail.strip() else "no reason given"
    if client_id:
        if unavailable:
            return (
                f"{step}: the managed identity endpoint gave no token ({first_line}); it is IDENTITY_ENDPOINT in "
                "Functions and App Service, IMDS on a VM. AZURE_CLIENT_ID selects a managed identity, which exists only "
                "in Azure: on a developer machine leave AZURE_CLIENT_ID empty and run `az login`"
            )
        return (
            f"{step}: the managed identity {client_id} (AZURE_CLIENT_ID) was refused: {first_line}; check that "
            "AZURE_CLIENT_ID is the client id of a user-assigned identity attached to this Function App"
        )
    if detail.startswith("DefaultAzureCredential failed to retrieve a token from the included credentials"):
        return (
            f"{step}: no Azure credential was found; on a developer machine run `az login`, in Azure set "
            "AZURE_CLIENT_ID to the client id of the Function App's user-assigned managed identity (its identity "
            "endpoint, IDENTITY_ENDPOINT, is set by the platform)"
        )
    return f"{step}: the credential was refused: {first_line}; run `az login` again, or set AZURE_CLIENT_ID in Azure"


def scope_of(endpoint: str) -> str:
    """The token scope of an Azure Resource Manager endpoint: https://management.azure.com -> .../.default."""
    return endpoint.rstrip("/") + "/.default"
