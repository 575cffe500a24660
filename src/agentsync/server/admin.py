"""The operator's API (``/v1/admin``): list, inspect, expire and delete any share.

Every route needs ``Authorization: Bearer <--admin-key>``; without a configured key the
admin API answers 403.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agentsync.hub import Hub
from agentsync.protocol import NotFound
from agentsync.server.http import _int_param, hub_of, json_response, require_admin
from agentsync.store.base import ShareRecord

log = logging.getLogger("agentsync.admin")


def _describe(hub: Hub, share: ShareRecord) -> dict[str, Any]:
    live = hub.sessions.get(share.id)
    out: dict[str, Any] = {
        "session_id": share.id,
        "title": share.title,
        "created_at": share.created_at,
        "expires_at": share.expires_at,
        "read": share.read,
        "epoch": share.epoch,
        "loaded": live is not None,
        "readers": hub.readers_per_session.count(share.id),
    }
    if live is not None:
        out["seq"] = live.core.last_seq
        out["title"] = live.core.state.info.get("title", share.title)
    return out


async def list_shares(request: Request) -> Response:
    require_admin(request)
    hub = hub_of(request)
    limit = _int_param(request, "limit", 100, 1, 1000)
    after = request.query_params.get("after") or None
    shares = await hub.store.list_shares(limit, after)
    return json_response(
        {
            "shares": [_describe(hub, s) for s in shares],
            "next": shares[-1].id if len(shares) == limit else None,
            "total": await hub.store.count_shares(),
        }
    )


async def _share(request: Request) -> tuple[Hub, ShareRecord]:
    require_admin(request)
    hub = hub_of(request)
    share_id = request.path_params["session_id"]
    share = await hub.store.get_share(share_id)
    if share is None:
        raise NotFound(f"no live share with id {share_id}")
    return hub, share


async def show_share(request: Request) -> Response:
    hub, share = await _share(request)
    out = _describe(hub, share)
    if "seq" not in out:
        out["seq"] = await hub.store.last_seq(share.id)
    return json_response(out)


async def expire_share(request: Request) -> Response:
    hub, share = await _share(request)
    await hub.delete(share.id, "expired")
    log.info("share %s expired by the operator", share.id)
    return Response(status_code=204)


async def delete_share(request: Request) -> Response:
    hub, share = await _share(request)
    await hub.delete(share.id)
    log.info("share %s deleted by the operator", share.id)
    return Response(status_code=204)
