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


def build_credential(settings: Settings) -> TokenCredential:
    """ManagedIdentityCredential for AZURE_CLIENT_ID, or the developer credential chain when it is empty."""
    # Imported here: azure.identity is slow to import and `import function_app` must stay fast.
    if settings.azure_client_id:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=settings.azure_client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def scope_of(endpoint: str) -> str:
    """The token scope of an Azure Resource Manager endpoint: https://management.azure.com -> .../.default."""
    return endpoint.rstrip("/") + "/.default"
