"""Fake App Service / Functions managed-identity endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER).

ManagedIdentityCredential calls GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=<scope>[&client_id=..]
with header X-IDENTITY-HEADER: $IDENTITY_HEADER, as on Azure. The fake checks the header, records which
resources and client ids were asked for, and issues an unsigned JWT-shaped token naming them.
"""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlparse

from tests.fakes.server import JsonHandler

IDENTITY_HEADER = "test-identity-header-secret"


def fake_jwt(audience: str, client_id: str) -> str:
    """An unsigned JWT with the claims services check (Azurite reads iss/aud/iat/nbf/exp)."""
    now = int(time.time())

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {
        "aud": audience,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "appid": client_id,
        "oid": client_id,
    }
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


class IdentityHandler(JsonHandler):
    """GET /msi/token: the App Service managed identity protocol (api-version 2019-08-01)."""

    def do_GET(self) -> None:
        state = self.state
        if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            self.send_json(401, {"error": "invalid X-IDENTITY-HEADER"})
            return
        query = parse_qs(urlparse(self.path).query)
        resource = query.get("resource", [""])[0]
        client_id = query.get("client_id", [""])[0]
        state.setdefault("requests", []).append({"resource": resource, "client_id": client_id})
        if not resource:
            self.send_json(400, {"error": "resource is required"})
            return
        audience = resource[: -len("/.default")] if resource.endswith("/.default") else resource
        self.send_json(
            200,
            {
                "access_token": fake_jwt(audience, client_id or "system-assigned"),
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            },
        )
