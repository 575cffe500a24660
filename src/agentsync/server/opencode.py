"""opencode's share API, so an unmodified opencode shares into agentsync.

opencode's share client (its config key ``enterprise.url``) calls four routes:

* ``POST /api/share {sessionID}`` -> ``{id, secret, url}``: a new public share; ``url`` is
  the viewer page, whose ``/share/<id>`` path ``opencode import`` reads the id from.
* ``POST /api/share/<id>/sync {secret, data: [{type, data}, ...]}``: items, translated to
  events of the share's log by :mod:`agentsync.opencode`; answered with the seqs.
* ``GET /api/share/<id>/data``: the merged items (what ``opencode import`` reads).
* ``DELETE /api/share/<id> {secret}``: unshare. A share already deleted or expired answers
  204, so opencode can forget it; an unknown one 404.

The secret travels in the JSON body, never in a header. Errors use agentsync's JSON error
shape and status codes: a wrong secret is 403 and stores nothing, a missing one 401.
Syncs of one share are translated and stored one at a time on a node, because each is
computed against the state the previous one left.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agentsync import auth, opencode
from agentsync.hub import LiveSession
from agentsync.protocol import BadRequest, Forbidden, Gone, Unauthorized
from agentsync.server.http import (
    admit_creation,
    hub_of,
    json_response,
    new_share_from,
    read_json_object,
    readable_session,
)
from agentsync.store.base import ShareRecord

log = logging.getLogger("agentsync.opencode")

_sync_locks: weakref.WeakKeyDictionary[LiveSession, asyncio.Lock] = weakref.WeakKeyDictionary()


def _require_secret(body: dict[str, Any], share: ShareRecord) -> None:
    """opencode sends the secret in the body: 401 without it, 403 when it is wrong."""
    secret = body.get("secret")
    if not isinstance(secret, str) or not secret:
        raise Unauthorized('this needs the share\'s secret in the body: {"secret": "..."}')
    if not auth.matches(secret, share.secret_hash):
        raise Forbidden("the secret does not match this share")


async def create_share(request: Request) -> Response:
    hub = hub_of(request)
    await admit_creation(request)
    body = await read_json_object(request, optional=True)
    session_id = body.get("sessionID")
    if not isinstance(session_id, str) or not session_id:
        raise BadRequest('the body must be {"sessionID": "ses_..."}', code="missing_field")
    share, secret, _ = new_share_from(hub, {})
    await hub.store.create_share(share)
    log.info("share %s created for opencode session %s", share.id, session_id[:64])
    url = f"{hub.config.base_url}/share/{share.id}"
    return json_response({"id": share.id, "secret": secret, "url": url})


async def sync(request: Request) -> Response:
    hub = hub_of(request)
    live = await hub.get(request.path_params["session_id"])
    body = await read_json_object(request)
    _require_secret(body, live.share)
    items = opencode.parse_items(body.get("data"), max_items=hub.config.max_batch)
    if hub.redactor.enabled:
        # Compare redacted with redacted: the state holds what was stored.
        items = [opencode.Item(i.type, _redacted(hub.redactor, i.data)) for i in items]
    lock = _sync_locks.setdefault(live, asyncio.Lock())
    async with lock:
        core = live.core
        core.snapshot()  # joins streamed deltas into the messages' content
        state = core.state
        events = opencode.Translator(
            state.info,
            state.messages,
            state.status,
            max_event_bytes=hub.config.max_event_bytes,
            deltas=hub.relay is None,
        ).translate(items)
        if not events:
            return json_response({"seqs": [], "last_seq": core.last_seq})
        result = await hub.append(live, events)
    return json_response({"seqs": result.seqs, "last_seq": result.last_seq})


def _redacted(redactor: Any, data: Any) -> Any:
    masked, _ = redactor.redact_data("opencode", {"data": data})
    return masked["data"]


async def share_data(request: Request) -> Response:
    live = await readable_session(request)
    return json_response(opencode.merged_items(live.core.snapshot()))


async def delete_share(request: Request) -> Response:
    hub = hub_of(request)
    body = await read_json_object(request, optional=True)
    try:
        # The record only: unsharing an archived share does not restore it first.
        share = await hub.get_share(request.path_params["session_id"])
    except Gone:
        return Response(status_code=204)
    _require_secret(body, share)
    await hub.delete(share.id)
    log.info("share %s deleted by opencode (unshare)", share.id)
    return Response(status_code=204)
