"""``GET /share/{id}`` and the viewer's static assets.

The page is complete without JavaScript: a plain fetcher gets the whole transcript. It also
carries the snapshot it was rendered from (as inert JSON) and its ``seq``/``epoch``, so the
script picks up exactly where the HTML ends: it resumes from that seq over WebSocket (SSE
when WebSocket fails) and re-renders only the messages that change afterwards.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agentsync.opencode import display_order
from agentsync.protocol import NotFound
from agentsync.server.http import hub_of, readable_session
from agentsync.server.web.opencode_view import (
    Context,
    article_html,
    session_diff_html,
    session_info_html,
)
from agentsync.server.web.render import clock, json_for_script
from agentsync.store.base import ShareRecord

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
GZIP_MIN = 4096  # smaller pages go as they are


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    version: str


def _load_assets() -> dict[str, Asset]:
    files = resources.files("agentsync.server.web") / "static"
    found: dict[str, bytes] = {}
    for name in ("viewer.js", "viewer.css"):
        path = files / name
        found[name] = path.read_bytes() if path.is_file() else b""
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    return {
        name: Asset(body, types[name[name.rindex(".") :]], hashlib.sha256(body).hexdigest()[:12])
        for name, body in found.items()
    }


ASSETS = _load_assets()


def asset_url(name: str) -> str:
    return f"/static/{name}?v={ASSETS[name].version}"


async def static_asset(request: Request) -> Response:
    asset = ASSETS.get(request.path_params["name"])
    if asset is None:
        raise NotFound("no such static file")
    return Response(
        asset.body,
        media_type=asset.media_type,
        headers={
            "Cache-Control": "public, max-age=31536000, immutable"
            if request.query_params.get("v") == asset.version
            else "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


def render_page(
    snapshot: dict[str, Any], participants: list[dict[str, Any]], share: ShareRecord
) -> str:
    session_id = html.escape(share.id)
    info = snapshot["session"]
    title = html.escape(str(info.get("title") or "Untitled session"))
    status = html.escape(str(snapshot["status"]))
    iso, _ = clock(share.created_at)
    names = ", ".join(html.escape(str(p.get("name"))) for p in participants)
    session_info = session_info_html(info, snapshot["messages"])
    session_diff = session_diff_html(info)
    head = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title} · agentsync</title>"
        "<meta name='referrer' content='no-referrer'><link rel='icon' href='data:,'>"
        f"<link rel='stylesheet' href='{asset_url('viewer.css')}'>"
        f"<script src='{asset_url('viewer.js')}' defer></script></head>"
    )
    body = [
        f"<body data-session='{session_id}' data-seq='{int(snapshot['seq'])}'"
        f" data-epoch='{html.escape(str(snapshot['epoch']))}'>",
        "<header class='top'><div class='title-row'>",
        f"<h1 id='title'>{title}</h1>",
        f"<span id='status' class='status status-{status}' title='agent status'>{status}</span>",
        "</div><div class='meta'>",
        f"<time id='created' datetime='{iso}'>{iso[:10]}</time>" if iso else "",
        "<span id='conn' class='conn conn-static' title='connection'>static page</span>",
        f"<span id='watchers' title='{names}'>{len(participants)} watching</span>",
        f"<span id='seq' title='events in the log'>{int(snapshot['seq'])} events</span>",
        "<span class='actions'>",
        "<button type='button' id='copy-link' hidden>Copy link</button>",
        f"<a id='download' href='/v1/sessions/{session_id}/export' download>Download export</a>",
        "<button type='button' id='replay-toggle' hidden>Replay</button>",
        "</span></div>",
        "<div id='replay' class='replay' hidden>",
        "<button type='button' id='replay-play'>Play</button>",
        "<select id='replay-speed' aria-label='speed'><option value='1'>1x</option>"
        "<option value='4' selected>4x</option><option value='16'>16x</option></select>",
        "<input type='range' id='replay-scrubber' min='0' max='0' value='0' step='1'"
        " aria-label='timeline'>",
        "<span id='replay-position'>0 / 0</span>",
        "<button type='button' id='replay-exit'>Back to live</button>",
        "</div>",
        f"<div id='session-info' class='session-info'{'' if session_info else ' hidden'}>",
        session_info,
        "</div></header>",
        f"<section id='session-diff' class='session-diff'{'' if session_diff else ' hidden'}>",
        session_diff,
        "</section>",
        "<main id='transcript'>",
    ]
    context = Context.of(info)
    body.extend(article_html(m, context) for m in display_order(snapshot["messages"]))
    body.append("</main>")
    body.append(
        f"<script type='application/json' id='snapshot'>{json_for_script(snapshot)}</script>"
    )
    body.append("</body></html>")
    return head + "".join(body)


def _detached(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A copy the fold will not touch: it edits a message's tool lists in place."""
    messages = [
        {
            **m,
            "toolCalls": list(m.get("toolCalls") or []),
            "toolResults": list(m.get("toolResults") or []),
        }
        for m in snapshot["messages"]
    ]
    return {**snapshot, "session": dict(snapshot["session"]), "messages": messages}


def _encode_page(
    snapshot: dict[str, Any], participants: list[dict[str, Any]], share: ShareRecord, gz: bool
) -> bytes:
    page = render_page(snapshot, participants, share).encode()
    return gzip.compress(page, compresslevel=1) if gz and len(page) > GZIP_MIN else page


async def share_page(request: Request) -> Response:
    live = await readable_session(request)
    hub = hub_of(request)
    snapshot = _detached(live.core.snapshot())
    gz = "gzip" in request.headers.get("accept-encoding", "")
    # Rendering a big session's markdown and code the first time takes a while: off the
    # event loop, so readers and writers of every session keep going meanwhile.
    page = await asyncio.to_thread(_encode_page, snapshot, hub.participants(live), live.share, gz)
    headers = {
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Vary": "Accept-Encoding",
    }
    if page[:2] == b"\x1f\x8b":
        headers["Content-Encoding"] = "gzip"
    return Response(page, media_type="text/html; charset=utf-8", headers=headers)
