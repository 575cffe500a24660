"""The rules of forks that need no I/O: headers, what a fork inherits, where it reads.

Theory of operation:

* A fork shares its source's offset space. Seqs up to the fork offset are read from the
  source chain, each level capped at the offset its child forked it at; the fork's own
  units (a sub-offset prefix first, then the initial body, then appends) are stored
  under the fork's id with the following seqs. The pieces, root first, are fixed when
  the fork is created (:func:`lineage`) and kept in its row, so a read needs no walk.
* Each fork holds a reference on its source (``refs``). Deleting or expiring a stream
  with references soft-deletes it (410/409, data kept); removing a stream releases its
  source's reference, and a soft-deleted source whose last reference goes is removed
  too, up the chain. The store makes each of these decisions in one write job.
* A rejected fork takes no reference: everything is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final
from urllib.parse import unquote, urlsplit

import orjson

from agentsync.streams.rules import (
    CreateRequest,
    ForkRequest,
    Segment,
    StreamError,
    StreamState,
    bad_request,
    media_type,
    same_config,
)

_SUB_OFFSET: Final = re.compile(r"0|[1-9][0-9]*")
_FORK_OFFSET: Final = re.compile(r"([0-9]+)_([0-9]+)")
BEYOND: Final = 2**63 - 1  # an offset no stream reaches (400 once compared with the tail)
# A read walks one piece per stream of the lineage, and every fork stores its lineage:
# without a bound, a chain of forks makes reads (and the rows) grow without end.
MAX_LINEAGE: Final = 64


def parse_fork(
    forked_from: str | None, offset: str | None, sub_offset: str | None, route_prefix: str
) -> ForkRequest | None:
    """The fork headers of a PUT, or None for a plain create. ``Stream-Forked-From`` is
    a path under ``route_prefix`` (or a full URL of one); the offset is one this server
    issued; the sub-offset ``0|[1-9][0-9]*``. Either without ``Forked-From`` is 400."""
    if forked_from is None:
        if offset is not None or sub_offset is not None:
            raise bad_request(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From",
                "bad_fork",
            )
        return None
    path = unquote(urlsplit(forked_from.strip()).path)
    if not path.startswith(route_prefix) or len(path) == len(route_prefix):
        raise bad_request(
            f"Stream-Forked-From must name a stream, like {route_prefix}NAME", "bad_fork"
        )
    seq: int | None = None
    if offset is not None:
        m = _FORK_OFFSET.fullmatch(offset)
        if m is None:
            raise bad_request(f"{offset!r} is not a Stream-Fork-Offset", "bad_fork_offset")
        seq = int(m.group(2)) if int(m.group(1)) == 0 else BEYOND
    sub = 0
    if sub_offset is not None:
        if not _SUB_OFFSET.fullmatch(sub_offset):
            raise bad_request(
                "Stream-Fork-Sub-Offset must be a whole number without leading zeros",
                "bad_fork_sub_offset",
            )
        sub = int(sub_offset)
    return ForkRequest(path[len(route_prefix) :], seq, sub)


def resolve(source: StreamState, req: CreateRequest) -> CreateRequest:
    """``req`` with what the fork inherits filled in: the content type (409 when another
    is asked for), the fork offset (the source's tail when omitted; 400 beyond it) and
    the expiry: its own TTL or Expires-At, else the source's, never capped by it."""
    fork = req.fork
    assert fork is not None
    content_type = req.content_type
    if content_type is None:
        content_type = source.content_type
    elif media_type(content_type) != media_type(source.content_type):
        raise StreamError(
            409,
            "content_type_mismatch",
            f"the source holds {source.content_type}, not {content_type}",
        )
    offset = source.tail if fork.offset is None else fork.offset
    if offset > source.tail:
        raise bad_request(
            f"Stream-Fork-Offset is beyond the tail of {fork.source!r}", "bad_fork_offset"
        )
    ttl, expires_at, expires_at_ms = req.ttl_seconds, req.expires_at, req.expires_at_ms
    if ttl is None and expires_at is None:
        ttl, expires_at = source.ttl_seconds, source.expires_at
        expires_at_ms = source.expires_at_ms
    return CreateRequest(
        content_type,
        ttl,
        expires_at,
        expires_at_ms,
        req.closed,
        req.body,
        ForkRequest(fork.source, offset, fork.sub_offset),
    )


def check_repeat(
    path: str, state: StreamState, source: StreamState | None, req: CreateRequest
) -> None:
    """A PUT to ``path``, which holds ``state``: idempotent (returns) when it asks for
    what is there, else 409. A fork's request is compared with what it inherits filled
    in; an omitted fork offset matches the fork's, however far the source has grown."""
    if state.deleted:
        raise StreamError(
            409,
            "stream_gone",
            f"stream {path!r} was deleted but forks still read it; the path can be "
            "reused once they are gone",
        )
    fork = req.fork
    if source is not None and fork is not None and source.path == fork.source:
        try:
            resolved = resolve(source, req)
        except StreamError:
            req = dataclasses.replace(req, fork=None)  # cannot be the same: 409
        else:
            if fork.offset is None and resolved.fork is not None:
                resolved = dataclasses.replace(
                    resolved, fork=dataclasses.replace(resolved.fork, offset=None)
                )
            req = resolved
    if not same_config(state, req):
        raise StreamError(
            409, "stream_exists", f"stream {path!r} exists with another configuration"
        )


def own_start(state: StreamState) -> int:
    """The seq after which the stream's own units begin."""
    return 0 if state.fork is None else state.fork.offset


def lineage(source: StreamState, offset: int) -> tuple[Segment, ...]:
    """Where a fork of ``source`` at ``offset`` reads seqs up to ``offset``, root first."""
    pieces = [] if source.fork is None else list(source.fork.inherited)
    pieces.append(Segment(source.id, own_start(source), source.tail))
    capped = (Segment(p.stream_id, p.after, min(p.up_to, offset)) for p in pieces)
    inherited = tuple(p for p in capped if p.up_to > p.after)
    if len(inherited) > MAX_LINEAGE:
        raise bad_request(
            f"a fork may read through at most {MAX_LINEAGE} streams and this one would "
            f"read through {len(inherited)}; fork a stream nearer the root, or copy this one",
            code="fork_too_deep",
        )
    return inherited


def segments(state: StreamState, after: int, up_to: int) -> list[Segment]:
    """The pieces of a read of ``after < seq <= up_to``, in seq order."""
    pieces = [] if state.fork is None else list(state.fork.inherited)
    pieces.append(Segment(state.id, own_start(state), state.tail))
    out = []
    for p in pieces:
        lo, hi = max(p.after, after), min(p.up_to, up_to)
        if hi > lo:
            out.append(Segment(p.stream_id, lo, hi))
    return out


def sub_offset_prefix(next_unit: bytes | None, sub_offset: int, *, json: bool) -> bytes:
    """The first ``sub_offset`` bytes (JSON: messages) of the source's unit after the
    fork offset, which becomes the fork's first own unit; 400 when there is no such
    unit or it is shorter."""
    if next_unit is None:
        raise bad_request(
            "Stream-Fork-Sub-Offset needs data after the fork offset", "bad_fork_sub_offset"
        )
    if json:
        values = orjson.loads(b"[" + next_unit + b"]")
        if sub_offset > len(values):
            raise bad_request(
                f"Stream-Fork-Sub-Offset {sub_offset} is past the {len(values)} messages "
                "of the append after the fork offset",
                "bad_fork_sub_offset",
            )
        return b",".join(orjson.dumps(v) for v in values[:sub_offset])
    if sub_offset > len(next_unit):
        raise bad_request(
            f"Stream-Fork-Sub-Offset {sub_offset} is past the {len(next_unit)} bytes of "
            "the append after the fork offset",
            "bad_fork_sub_offset",
        )
    return next_unit[:sub_offset]
