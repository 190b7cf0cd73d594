"""The one place that chooses the Azure credential, so every Azure client authenticates the same way.

In Azure the Function App runs as a user-assigned managed identity named by AZURE_CLIENT_ID. On a developer
machine AZURE_CLIENT_ID is empty and DefaultAzureCredential finds `az login`, VS Code or environment
credentials (and still a managed identity, when one exists). No secret is ever read from settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from detector.config import Settings


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


def credential_for(client_id: str) -> TokenCredential:
    """The user-assigned managed identity with this client id; developer credentials when it is empty.

    DefaultAzureCredential also tries a system-assigned managed identity, so an app without a
    user-assigned identity still works; on a laptop it uses `az login`, VS Code or environment credentials.
    """
    # Imported here: azure.identity is slow to import and `import function_app` must stay fast.
    if client_id:
        from azure.identity import ManagedIdentityCredential

        # Bounded token requests: azure-core's defaults (10 retries, 300 s read timeout) could hold a run
        # far past its deadline when the identity endpoint hangs; these fit inside the run's delivery reserve.
        # At most 3 tries of 5 s (connect) + 20 s (read) with 0.8 s and 1.6 s between them: about 80 s.
        return ManagedIdentityCredential(
            client_id=client_id, retry_total=2, retry_backoff_factor=0.8, connection_timeout=5, read_timeout=20
        )
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def scope_of(endpoint: str) -> str:
    """The token scope of an Azure Resource Manager endpoint: https://management.azure.com -> .../.default."""
    return endpoint.rstrip("/") + "/.default"
