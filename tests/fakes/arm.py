"""Fake Azure Resource Manager for Microsoft.SecurityInsights incidents and incident comments.

Speaks the wire protocol of api-version 2025-09-01 (Incidents.json, kql-and-sentinel.md §5.b):
GET / PUT .../providers/Microsoft.SecurityInsights/incidents/{id} and PUT .../incidents/{id}/comments/{cid}.

What it enforces, like the service:
* a Bearer token whose audience is this endpoint (the scope the client derives from its ARM endpoint);
* the api-version; required title, severity and status with their enums; classification when Closed;
* optimistic concurrency: a PUT with an etag (If-Match header or body) that is not the current one fails
  with 409 Conflict "Newer version of resource ... exists" (what Sentinel answers, Azure-Sentinel#909;
  `conflict_status=412` gives the generic HTTP answer instead); every write gets a new etag;
* PUT is create-or-replace: 201 on create, 200 on replace; read-only properties are the server's.
Failure modes for tests: `forbidden` (403 AuthorizationFailed), unknown workspace (404 ResourceNotFound),
`throttle` (that many 429s with Retry-After), `before_update` (a callback run before an update PUT is
handled, e.g. an analyst editing the incident in between).

State (`FakeServer.state`, `JsonHandler.state`): workspaces (set of lower-case resource ids), incidents, comments, requests.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.server import JsonHandler

API_VERSION = "2025-09-01"
_PATH = re.compile(
    r"^(?P<ws>/subscriptions/[^/]+/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.OperationalInsights/workspaces/(?P<name>[^/]+))"
    r"/providers/Microsoft\.SecurityInsights/incidents/(?P<id>[^/]+)(?:/comments/(?P<cid>[^/]+))?$",
    re.IGNORECASE,
)
SEVERITIES = {"High", "Medium", "Low", "Informational"}
STATUSES = {"New", "Active", "Closed"}
CLASSIFICATIONS = {"Undetermined", "TruePositive", "BenignPositive", "FalsePositive"}
WRITABLE = {
    "title",
    "description",
    "severity",
    "status",
    "classification",
    "classificationReason",
    "classificationComment",
    "owner",
    "labels",
    "firstActivityTimeUtc",
    "lastActivityTimeUtc",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _etag() -> str:
    return f'"{uuid.uuid4()}"'


def token_audience(authorization: str) -> str | None:
    """The aud claim of a Bearer JWT (unverified: the fake identity endpoint does not sign)."""
    if not authorization.startswith("Bearer "):
        return None
    parts = authorization[len("Bearer ") :].split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    return str(claims.get("aud")) if isinstance(claims, dict) else None


def analyst_edit(state: dict[str, Any], workspace: str, incident_id: str, **properties: Any) -> None:
    """What an analyst does in the portal: change properties; the incident gets a new etag."""
    incident = state["incidents"][(workspace.lower(), incident_id)]
    incident["properties"].update(properties)
    incident["properties"]["lastModifiedTimeUtc"] = _now()
    incident["etag"] = _etag()


class ArmHandler(JsonHandler):
    """Security Insights incidents and comments over HTTPS."""

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.state
        for key, default in (("incidents", {}), ("comments", {}), ("requests", []), ("workspaces", set())):
            state.setdefault(key, default)
        return state

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.send_json(
            status, {"error": {"code": code, "message": message}}, {"x-ms-request-id": str(uuid.uuid4()), **(headers or {})}
        )

    def _common(self, method: str) -> tuple[dict[str, Any], re.Match[str] | None, Any] | None:
        """Checks every request passes; None when an error was already sent."""
        state = self._state()
        url = urlsplit(self.path)
        body = self.read_body() if method == "PUT" else b""
        parsed = json.loads(body) if body else None
        state["requests"].append({"method": method, "path": url.path, "if_match": self.headers.get("If-Match"), "body": parsed})
        expected = state.get("audience")
        if expected and token_audience(self.headers.get("Authorization", "")) != expected:
            self._error(401, "InvalidAuthenticationToken", "The access token is invalid or has the wrong audience.")
            return None
        if state.get("throttle", 0) > 0:
            state["throttle"] -= 1
            self._error(
                429,
                "TooManyRequests",
                "The request was throttled.",
                {"Retry-After": str(state.get("retry_after", "1"))},
            )
            return None
        if parse_qs(url.query).get("api-version") != [API_VERSION]:
            self._error(400, "InvalidApiVersionParameter", f"The api-version '{url.query}' is invalid.")
            return None
        match = _PATH.match(url.path)
        if match and state.get("forbidden"):
            self._error(
                403,
                "AuthorizationFailed",
                "The client 'fake-client' with object id 'fake-oid' does not have authorization to perform action "
                f"'Microsoft.SecurityInsights/incidents/{'write' if method == 'PUT' else 'read'}' over scope '{url.path}' "
                "or the scope is invalid.",
            )
            return None
        if match is None:
            self._error(404, "NotFound", f"No route for {url.path}")
            return None
        if match["ws"].lower() not in state["workspaces"]:
            self._error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.OperationalInsights/workspaces/{match['name']}' under resource group "
                f"'{match['rg']}' was not found.",
            )
            return None
        return state, match, parsed

    def do_GET(self) -> None:
        checked = self._common("GET")
        if checked is None:
            return
        state, match, _ = checked
        assert match is not None
        key = (match["ws"].lower(), match["id"])
        if match["cid"]:
            comment = state["comments"].get((*key, match["cid"]))
            if comment is None:
                self._error(404, "NotFound", "Comment not found")
            else:
                self.send_json(200, comment)
            return
        incident = state["incidents"].get(key)
        if incident is None:
            self._error(404, "NotFound", f"Incident {match['id']} was not found.")
            return
        self.send_json(200, incident, {"ETag": incident["etag"]})

    def do_PUT(self) -> None:
        checked = self._common("PUT")
        if checked is None:
            return
        state, match, body = checked
        assert match is not None
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            self._error(400, "BadRequest", "The request body must be an object with 'properties'.")
            return
        key = (match["ws"].lower(), match["id"])
        if match["cid"]:
            self._put_comment(state, key, match["cid"], body)
        else:
            self._put_incident(state, key, match["ws"], body)

    def _put_comment(self, state: dict[str, Any], key: tuple[str, str], comment_id: str, body: dict[str, Any]) -> None:
        incident = state["incidents"].get(key)
        if incident is None:
            self._error(404, "NotFound", f"Incident {key[1]} was not found.")
            return
        message = body["properties"].get("message")
        if not isinstance(message, str) or not message:
            self._error(400, "BadRequest", "'message' is required.")
            return
        existing = state["comments"].get((*key, comment_id))
        comment = {
            "id": f"{incident['id']}/comments/{comment_id}",
            "name": comment_id,
            "type": "Microsoft.SecurityInsights/Incidents/Comments",
            "etag": _etag(),
            "properties": {
                "message": message,
                "createdTimeUtc": existing["properties"]["createdTimeUtc"] if existing else _now(),
                "lastModifiedTimeUtc": _now(),
                "author": {"objectId": "fake-oid", "name": "detector", "userPrincipalName": None},
            },
        }
        state["comments"][(*key, comment_id)] = comment
        incident["properties"]["additionalData"]["commentsCount"] = sum(1 for k in state["comments"] if k[:2] == key)
        self.send_json(200 if existing else 201, comment)

    def _put_incident(self, state: dict[str, Any], key: tuple[str, str], workspace: str, body: dict[str, Any]) -> None:
        props = body["properties"]
        problems = [name for name in ("title", "severity", "status") if not props.get(name)]
        if problems:
            self._error(400, "BadRequest", f"Required properties are missing: {', '.join(problems)}")
            return
        if props["severity"] not in SEVERITIES or props["status"] not in STATUSES:
            self._error(400, "BadRequest", "severity or status has a value outside its enum")
            return
        if props["status"] == "Closed" and props.get("classification") not in CLASSIFICATIONS:
            self._error(400, "BadRequest", "Classification is required when closing an incident.")
            return
        existing = state["incidents"].get(key)
        if existing is not None and state.get("before_update") is not None:
            hook: Callable[[], None] = state.pop("before_update")
            hook()
        etag = self.headers.get("If-Match") or body.get("etag")
        if existing is not None and etag and etag != existing["etag"]:
            self._error(
                int(state.get("conflict_status", 409)),
                "Conflict",
                f"Newer version of resource '{key[1]}' exists. Data was not saved",
            )
            return
        now = _now()
        stored: dict[str, Any] = {name: value for name, value in props.items() if name in WRITABLE}
        stored["labels"] = [{"labelName": label["labelName"], "labelType": "User"} for label in props.get("labels") or []]
        stored.setdefault(
            "owner", {"objectId": None, "email": None, "assignedTo": None, "userPrincipalName": None, "ownerType": "Unknown"}
        )
        if existing is None:
            state["number"] = state.get("number", 0) + 1
            number, created = state["number"], now
        else:
            number, created = existing["properties"]["incidentNumber"], existing["properties"]["createdTimeUtc"]
        comments = sum(1 for k in state["comments"] if k[:2] == key)
        stored.update(
            {
                "incidentNumber": number,
                "createdTimeUtc": created,
                "lastModifiedTimeUtc": now,
                "incidentUrl": f"https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident{workspace}/providers/Microsoft.SecurityInsights/Incidents/{key[1]}",
                "providerName": "Azure Sentinel",
                "providerIncidentId": str(number),
                "relatedAnalyticRuleIds": [],
                "additionalData": {
                    "alertsCount": 0,
                    "bookmarksCount": 0,
                    "commentsCount": comments,
                    "alertProductNames": [],
                    "tactics": [],
                },
            }
        )
        incident: dict[str, Any] = {
            "id": f"{workspace}/providers/Microsoft.SecurityInsights/Incidents/{key[1]}",
            "name": key[1],
            "type": "Microsoft.SecurityInsights/Incidents",
            "etag": _etag(),
            "properties": stored,
        }
        state["incidents"][key] = incident
        self.send_json(201 if existing is None else 200, incident, {"ETag": incident["etag"]})
