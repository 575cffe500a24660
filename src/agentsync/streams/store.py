"""The storage interface of Durable Streams, one module per backend (``sqlite``, ``postgres``).

Contract every backend keeps:

* Each write (create, append, close, delete, touch) is one transaction of the store's
  writer, decided there on the row it reads (see :func:`rules.decide_append`): the unit,
  the producer state, ``Stream-Seq`` and ``closed`` commit together or not at all, and
  writes to a stream are applied in the order they were submitted.
* A call returns only after its transaction committed (acknowledged = durable).
* The ``listener`` given to :meth:`StreamStore.observe` is called on the event loop,
  in commit order, with ``(path, state after the job)`` for every stream a committed
  job changed (a fork's source, the chain a removal cascaded up, not only its path),
  before the caller of that job resumes: a node's cache fed only by it is never older than
  what its own callers have been told, and never goes back in time. ``load`` is ordered
  with the writes for the same reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agentsync.streams.rules import (
    AppendRequest,
    CreateRequest,
    Duplicate,
    Segment,
    StreamState,
    Write,
)
from agentsync.values import value

Listener = Callable[[str, StreamState | None], None]


@dataclass(frozen=True, slots=True)
class Created:
    state: StreamState
    new: bool  # False: it existed with the same configuration (200, not 201)


@value
class Appended:
    state: StreamState  # after the append
    outcome: Write | Duplicate


class StreamStore(Protocol):
    """Durable storage of streams: rows, units and producer states."""

    def observe(self, listener: Listener) -> None:
        """Report every committed job's resulting state (see the module docstring)."""

    async def open(self) -> None:
        """Create the tables if needed; the underlying store is already open."""

    async def load(self, path: str) -> StreamState | None:
        """The stream's row, ordered after every write submitted before."""

    async def has_row(self, path: str) -> bool:
        """Whether ``path`` has a row (live, expired or soft-deleted), read outside the
        writer: a cheap first look before :meth:`load`, which is ordered with writes."""

    async def create(
        self,
        path: str,
        req: CreateRequest,
        now_ms: int,
        accessed_ms: int,
        source_accessed_ms: int = 0,
    ) -> Created:
        """Create (or confirm) the stream, or fork ``req.fork.source`` (whose latest
        access this node knows is ``source_accessed_ms``); an expired stream at the path
        is replaced. Raises StreamError (409 other configuration or soft-deleted, and
        for forks 404 no source, 409 source soft-deleted or content type, 400 offsets);
        a refused fork takes no reference on its source."""

    def append(
        self, path: str, req: AppendRequest, now_ms: int, accessed_ms: int
    ) -> asyncio.Future[Appended]:
        """Decide and apply one append or close: a future, not a coroutine, so that the
        HTTP protocol can answer from its callback without a task. It fails with
        StreamError (404 for a missing or expired stream, and the refusals of
        :func:`rules.decide_append`)."""

    async def delete(self, path: str, now_ms: int, accessed_ms: int) -> None:
        """Soft-delete the stream if forks hold references on it, else remove it (units,
        producers) and release its source's reference, cascading up soft-deleted
        sources left without references. Raises StreamError 404 (none, or expired
        without forks) or 410 (soft-deleted already, or expired with forks)."""

    async def delete_expired(
        self, path: str, stream_id: int, now_ms: int, accessed_ms: int
    ) -> bool:
        """Retire incarnation ``stream_id`` of ``path`` (as :meth:`delete`) if it is
        still expired then; False if it was not."""

    async def touch(self, path: str, stream_id: int, accessed_ms: int) -> None:
        """Persist a later access time (sliding TTL), never an earlier one."""

    async def read_units(
        self, pieces: Sequence[Segment], max_bytes: int
    ) -> list[tuple[int, bytes]]:
        """The units of ``pieces`` (see :func:`forks.segments`) in order, at least one
        when any, and no more once ``max_bytes`` are reached."""

    async def expired(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Paths and ids of streams expired by their stored access times (not those
        already soft-deleted)."""
