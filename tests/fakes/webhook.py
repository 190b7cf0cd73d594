"""A local webhook receiver (HTTPS): records every POST, answers with scripted statuses first.

State (`FakeServer.state`, `JsonHandler.state`): `script` a list of (status, headers) answered to the next POSTs in order, then
200; `received` every POST (path, headers, JSON body); `accepted` bodies by Idempotency-Key, keeping
the first (what a receiver that honours the header keeps).
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.server import JsonHandler


class WebhookHandler(JsonHandler):
    def do_POST(self) -> None:
        state: dict[str, Any] = self.state
        body = self.read_body()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        state.setdefault("received", []).append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": payload}
        )
        script: list[tuple[int, dict[str, str]]] = state.setdefault("script", [])
        if script:
            status, headers = script.pop(0)
            self.send_json(status, {"error": f"scripted {status}"}, headers)
            return
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json" or payload is None:
            self.send_json(400, {"error": "expected a JSON body"})
            return
        key = self.headers.get("Idempotency-Key", "")
        state.setdefault("accepted", {}).setdefault(key, payload)
        self.send_json(200, {"ok": True})
