"""The share page: a server-rendered transcript, readable without JavaScript.

This is the first paint only; the live viewer (markdown, highlighting, live updates,
replay) is a later issue. Everything from the session is escaped.
"""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from agentsync.server.http import readable_session

CSP = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self'; base-uri 'none'"


def render(snapshot: dict[str, Any]) -> str:
    info = snapshot["session"]
    title = html.escape(str(info.get("title") or "agentsync session"))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{title}</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;"
        "padding:0 1rem}article{border-left:3px solid #ccc;padding:.2rem 1rem;margin:1rem 0}"
        "article.user{border-color:#2a7}article.assistant{border-color:#27a}"
        "pre{white-space:pre-wrap;background:#f4f4f4;padding:.5rem}</style></head><body>",
        f"<h1>{title}</h1>",
        f"<p>status: <b>{html.escape(str(snapshot['status']))}</b> · seq {snapshot['seq']}</p>",
    ]
    for message in snapshot["messages"]:
        role = html.escape(str(message.get("role", "")))
        parts.append(f"<article class='{role}'><h3>{role}</h3>")
        parts.append(f"<pre>{html.escape(str(message.get('content') or ''))}</pre>")
        results = {r.get("toolCallId"): r for r in message.get("toolResults") or []}
        for call in message.get("toolCalls") or []:
            name = html.escape(str(call.get("name", "")))
            args = html.escape(str(call.get("arguments", "")))
            parts.append(f"<details><summary>tool: {name}</summary><pre>{args}</pre>")
            result = results.get(call.get("id"))
            if result is not None:
                output = html.escape(str(result.get("output", "")))
                parts.append(f"<pre>{output}</pre>")
            parts.append("</details>")
        parts.append("</article>")
    parts.append("</body></html>")
    return "".join(parts)


async def share_page(request: Request) -> HTMLResponse:
    live = await readable_session(request)
    return HTMLResponse(
        render(live.core.snapshot()),
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
