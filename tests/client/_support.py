"""Helpers of the SDK tests: read the server's log and compare it with what was produced."""

from __future__ import annotations

from typing import Any

import httpx

Item = tuple[str, str, str]  # (type, key, text): deltas merged per message


def read_log(base_url: str, session_id: str) -> list[dict[str, Any]]:
    """The whole log of a session, paged through GET /v1/sessions/{id}/events."""
    out: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        while True:
            resp = http.get(f"/v1/sessions/{session_id}/events", params={"since": len(out)})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            out += body["events"]
            if not body["events"] or out[-1]["seq"] >= body["last_seq"]:
                break
    assert [e["seq"] for e in out] == list(range(1, len(out) + 1))
    assert len({e["id"] for e in out}) == len(out), "duplicate event ids"
    return out


def normalize(events: list[tuple[str, dict[str, Any]]]) -> list[Item]:
    """Events as (type, data) → items, consecutive deltas to one message merged, so a
    stream compares equal however its deltas were coalesced."""
    items: list[Item] = []
    for type_, data in events:
        if type_ == "message.delta":
            if items and items[-1][0] == "delta" and items[-1][1] == data["id"]:
                items[-1] = ("delta", data["id"], items[-1][2] + data["delta"])
            else:
                items.append(("delta", data["id"], data["delta"]))
        elif type_ == "message":
            items.append(("message", data["id"], data.get("content") or ""))
        elif type_ == "tool_call":
            items.append(("tool_call", data["id"], repr(data.get("arguments"))))
        elif type_ == "tool_result":
            items.append(("tool_result", data["toolCallId"], repr(data.get("output"))))
        elif type_ == "status":
            items.append(("status", "", data["status"]))
        else:
            items.append((type_, "", repr(data)))
    return items


def of_log(log: list[dict[str, Any]]) -> list[Item]:
    return normalize([(e["type"], e["data"]) for e in log])
