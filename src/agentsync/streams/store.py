"""The storage interface of Durable Streams, one module per backend (``sqlite`` now).

Contract every backend keeps:

* Each write (create, append, close, delete, touch) is one transaction of the store's
  writer, decided there on the row it reads (see :func:`rules.decide_append`): the unit,
  the producer state, ``Stream-Seq`` and ``closed`` commit together or not at all, and
  writes to a stream are applied in the order they were submitted.
* A call returns only after its transaction committed (acknowledged = durable).
* The ``listener`` given to :meth:`StreamStore.observe` is called on the event loop,
  in commit order, with ``(path, state after the job)`` for every job that committed,
  before the caller of that job resumes: a node's cache fed only by it is never older than
  what its own callers have been told, and never goes back in time. ``load`` is ordered
  with the writes for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agentsync.streams.rules import (
    AppendRequest,
    CreateRequest,
    Duplicate,
    StreamState,
    Write,
)

Listener = Callable[[str, StreamState | None], None]


@dataclass(frozen=True, slots=True)
class Created:
    state: StreamState
    new: bool  # False: it existed with the same configuration (200, not 201)


@dataclass(frozen=True, slots=True)
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

    async def create(self, path: str, req: CreateRequest, now_ms: int, accessed_ms: int) -> Created:
        """Create (or confirm) the stream; an expired one at the path is replaced.
        Raises StreamError (409 other configuration)."""

    async def append(
        self, path: str, req: AppendRequest, now_ms: int, accessed_ms: int
    ) -> Appended:
        """Decide and apply one append or close. Raises StreamError (404 for a missing
        or expired stream, and the refusals of :func:`rules.decide_append`)."""

    async def delete(self, path: str, now_ms: int, accessed_ms: int) -> bool:
        """Remove the stream, its units and producers; False when there was none (or it
        had expired)."""

    async def delete_expired(
        self, path: str, stream_id: int, now_ms: int, accessed_ms: int
    ) -> bool:
        """Remove incarnation ``stream_id`` of ``path`` if it is still expired then."""

    async def touch(self, path: str, stream_id: int, accessed_ms: int) -> None:
        """Persist a later access time (sliding TTL), never an earlier one."""

    async def read_units(
        self, stream_id: int, after_seq: int, up_to_seq: int, max_bytes: int
    ) -> list[tuple[int, bytes]]:
        """Units ``after_seq < seq <= up_to_seq`` in order, at least one when any, and no
        more once ``max_bytes`` are reached."""

    async def expired(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Paths and ids of streams expired by their stored access times."""
