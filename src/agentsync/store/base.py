"""The Store protocol: durable shares, event logs and snapshots.

A Store is the only durable state of agentsync. Callers (the hub) rely on this contract,
whatever the backend:

* ``append`` returns only after the events are committed (durable across SIGKILL of the
  server). Concurrent appends may share one transaction (group commit), but each call
  succeeds or fails as a whole.
* Seqs are dense per session: an append whose first seq is not ``last_seq + 1``, or whose
  seq or event id the session already holds, raises :class:`SeqConflict` and stores
  nothing. This is what lets several nodes share one database (optimistic concurrency):
  the loser reloads the tail and retries.
* ``read_events`` returns events in seq order with no gap.
* ``delete_share`` removes the share, its log and its snapshots, and leaves a tombstone so
  that later requests can answer 410 rather than 404.
* Archiving (archive/base.py, archiver.py): ``archive_session`` swaps a session's log and
  snapshots for the name of an archive object, atomically and only if the log still ends
  where the caller archived it; ``restore_session`` swaps them back. While a share is
  archived its log reads empty and every append raises :class:`SessionArchived` (a
  SeqConflict), so no write can land on an empty log and get seq 1 again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from agentsync.protocol import Event

T = TypeVar("T")


def tombstone_key(share_id: str) -> str:
    """What a tombstone keeps of a deleted share: a one-way hash of its id, enough to
    answer 410 for the link and refuse reuse of the id, and nothing readable."""
    return hashlib.sha256(share_id.encode()).hexdigest()


class SeqConflict(Exception):
    """The append raced another writer (seq taken, gap, or duplicate event id)."""


class SessionArchived(SeqConflict):
    """The session's log is in the archive: restore it, then append again."""


def restored_log(session_id: str, events: Iterable[Event]) -> Iterator[Event]:
    """``events`` as they pass, checked to be the seqs 1, 2, 3 ... of a whole log
    (``restore_session``); raises SeqConflict at the first that is not."""
    for seq, event in enumerate(events, start=1):
        if event.seq != seq:
            raise SeqConflict(f"session {session_id}: a restored log must be dense from 1")
        yield event


def pages(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    iterator = iter(items)
    while page := list(itertools.islice(iterator, size)):
        yield page


@dataclass(frozen=True, slots=True)
class ShareRecord:
    id: str
    title: str
    created_at: int  # ms since the epoch
    expires_at: int | None  # ms since the epoch; None never expires
    read: str  # "public" or "token"
    secret_hash: bytes
    read_token_hash: bytes | None
    epoch: str
    # The archive object holding the log (archive/base.py), None while the log is here.
    archive: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    session_id: str
    seq: int
    state: bytes  # JSON of the materialized session state at ``seq``


class Store(Protocol):
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Finish pending commits and release every resource."""

    async def ping(self) -> None:
        """Raise if the store cannot serve requests (used by /readyz)."""

    # shares
    async def create_share(self, share: ShareRecord) -> None: ...

    async def get_share(self, share_id: str) -> ShareRecord | None:
        """The share, or None when unknown, deleted or purged."""

    async def is_tombstoned(self, share_id: str) -> bool:
        """True when the share existed and was deleted or expired."""

    async def delete_share(self, share_id: str) -> bool:
        """Delete share, log and snapshots; leave a tombstone. False when unknown."""

    async def expired_shares(self, now_ms: int, limit: int) -> list[str]:
        """Ids of live shares whose ``expires_at`` is at or before ``now_ms``."""

    async def list_shares(self, limit: int, after: str | None = None) -> list[ShareRecord]:
        """Live shares ordered by id, the first ``limit`` with id > ``after``."""

    async def count_shares(self) -> int: ...

    async def touch_share(self, share_id: str, now_ms: int) -> None:
        """Record activity (the share was just used): it is not idle before ``now_ms``."""

    async def idle_shares(self, before_ms: int, limit: int) -> list[str]:
        """Ids of shares not archived whose last recorded activity (creation, touch,
        restore) is at or before ``before_ms``, least recently active first."""

    # archiving
    async def archive_session(self, session_id: str, last_seq: int, archive: str) -> bool:
        """Atomically delete the session's events and snapshots and record that the
        object ``archive`` holds them; False (and change nothing) unless the share exists,
        is not archived, and its log ends at ``last_seq``."""

    async def restore_session(
        self, session_id: str, archive: str, events: Iterable[Event], snapshot: Snapshot
    ) -> bool:
        """Atomically put back the log ``events`` (seqs 1..N) and ``snapshot`` of a share
        archived as ``archive`` and clear the mark; False (and change nothing) when the
        share is gone or not archived as ``archive`` (restored already: idempotent).

        ``events`` is read once, as it is inserted, and only after the mark was checked:
        a generator restores a log of any length in bounded memory. Should it raise, or
        not be dense from seq 1 (SeqConflict), nothing is changed and the error raised."""

    # the log
    async def append(self, session_id: str, events: Sequence[Event]) -> None:
        """Durably store ``events`` (consecutive seqs) or raise SeqConflict."""

    async def read_events(self, session_id: str, after_seq: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with seq > ``after_seq``, in seq order."""

    async def last_seq(self, session_id: str) -> int:
        """The highest stored seq, 0 for an empty log."""

    async def find_event_ids(self, session_id: str, ids: Sequence[str]) -> dict[str, int]:
        """Map each of ``ids`` the session already holds to its seq."""

    # snapshots
    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` as the session's latest if it is newer than the stored one."""

    async def load_snapshot(self, session_id: str) -> Snapshot | None: ...


def resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Answer a write's caller: its result, or the exception (``ok`` False). A caller that
    was cancelled is skipped; the write happened (or not) regardless."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
