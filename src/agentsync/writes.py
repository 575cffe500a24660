"""The hub's write paths: how a batch gets its seqs, reaches the store, and is committed.

Theory of operation (the order, durability and idempotency of SPEC §2):

* A batch is prepared by the session core (seqs assigned, known ids answered with their
  seqs), stored durably, and only then committed to the core and fanned out. Batches
  commit in the order they were prepared.
* Alone (no bus), this node owns each session's log: batches are prepared in arrival
  order under ``live.prepare_lock`` and stored while the next ones are prepared
  (pipelined). Each waits for the batch prepared before it (``live.tail``) before it
  commits. A batch that fails to store is aborted; when that cannot be undone (a later
  batch was prepared on top of it) the session is dropped and reloads from the store.
* With a bus, any node may write the session. Batches queue on the session; whoever holds
  ``prepare_lock`` prepares every queued batch and stores them in one append (group
  commit). A seq another node stored first (SeqConflict) aborts the group, reads what this
  node missed from the store (``catch_up_locked``) and prepares again; ids stored
  meanwhile through another node become duplicates with their original seqs.
* ``catch_up_locked`` is also how events committed through other nodes reach this node's
  core: from the bus message when it follows on, else from the store, which is the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentsync.protocol import AgentsyncError, Event, Gone, NewEvent, Unavailable
from agentsync.session import Prepared, Session
from agentsync.store.base import SeqConflict, Store

if TYPE_CHECKING:
    from agentsync.hub import Hub, LiveSession

log = logging.getLogger("agentsync.hub")

LOAD_PAGE = 5000
CONFLICT_RETRIES = 20  # an append prepared again after another node took its seqs, at most


async def load_tail(store: Store, session_id: str, core: Session) -> None:
    """Fold every stored event after ``core.last_seq`` into ``core``, a page at a time."""
    while True:
        page = await store.read_events(session_id, core.last_seq, LOAD_PAGE)
        core.load(page)
        if len(page) < LOAD_PAGE:
            return


class Writes:
    """The write paths of one hub (see the module docstring)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def redact(self, batch: Sequence[NewEvent]) -> Sequence[NewEvent]:
        """Mask credentials in the batch's content before it is stored (``--redact``)."""
        redactor = self.hub.redactor
        if not redactor.enabled:
            return batch
        out: list[NewEvent] | None = None
        for i, event in enumerate(batch):
            data, found = redactor.redact_data(event.type, event.data)
            if data is event.data:
                continue
            if out is None:
                out = list(batch)
            out[i] = NewEvent(event.id, event.type, event.ts, data)
            for kind, count in found.items():
                self.hub.metrics.redactions.labels(kind).inc(count)
        return batch if out is None else out

    async def store(self, live: LiveSession, batch: Sequence[NewEvent]) -> Prepared:
        """Store ``batch`` durably and commit it to the session; raises Unavailable (retry)
        or the core's refusal of the batch."""
        if self.hub.relay is not None:
            return await self._store_exclusive(live, batch)
        return await self._store_pipelined(live, batch)

    async def _store_pipelined(self, live: LiveSession, batch: Sequence[NewEvent]) -> Prepared:
        """One node owns the session: batches are prepared in order and stored while the
        next ones are prepared; commits follow in prepared order (``live.tail``)."""
        hub = self.hub
        core = live.core
        # Batches are prepared in arrival order even when one must first ask the store
        # about old event ids (a session loaded from a snapshot): a pipelined writer's
        # second batch must never get seqs before its first. Uncontended, this lock
        # costs no await.
        async with live.prepare_lock:
            unknown = core.unknown_ids(e.id for e in batch)
            if unknown:
                core.learn_ids(await hub.store.find_event_ids(live.id, unknown))
            if live.gone is not None:
                raise Gone(f"share {live.id} was {live.gone}")
            prepared = core.prepare(batch, hub.config.max_event_bytes)
        previous = live.tail
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        live.tail = done
        try:
            if prepared.new_events:
                try:
                    await hub.store.append(live.id, prepared.new_events)
                except Exception as exc:
                    log.error("append to %s failed: %s", live.id, exc)
                    # A conflict means memory and store disagree: reload from the store.
                    if isinstance(exc, SeqConflict) or not core.abort(prepared):
                        log.warning("reloading session %s from the store", live.id)
                        await hub.drop(live, None)
                    raise Unavailable("the write could not be stored; retry it") from exc
            if previous is not None:
                try:
                    await previous
                except Exception as exc:
                    # An earlier batch failed; this one may hold retries of its ids (their
                    # seqs are void now) or was stored after it: start over from the store.
                    if prepared.new_events or not core.abort(prepared):
                        await hub.drop(live, None)
                    raise Unavailable("an earlier write failed; retry this one") from exc
            if live.gone is None:
                core.commit(prepared)
                if prepared.new_events:
                    hub.fan_out(live)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else Unavailable("write cancelled")
            done.set_exception(failure)
            done.exception()  # retrieved: only a later batch of this session may care
            raise
        else:
            done.set_result(None)
        finally:
            if live.tail is done:
                live.tail = None
        return prepared

    async def _store_exclusive(self, live: LiveSession, batch: Sequence[NewEvent]) -> Prepared:
        """Several nodes may write the session. Batches queue per session; whoever holds
        ``prepare_lock`` stores every queued batch in one append (one transaction), so a
        busy session still gets group commit. A seq another node took first (SeqConflict)
        makes this node read what it missed from the store and prepare them again; ids
        stored meanwhile through another node become duplicates with their original seqs,
        as on one node."""
        done: asyncio.Future[Prepared] = asyncio.get_running_loop().create_future()
        live.queued.append((batch, done))
        async with live.prepare_lock:
            if not done.done():
                await self._store_queued(live)
        return done.result()

    async def _store_queued(self, live: LiveSession) -> None:
        hub = self.hub
        assert hub.relay is not None
        core = live.core
        group, live.queued = live.queued, []
        for _ in range(CONFLICT_RETRIES):
            unknown = core.unknown_ids(e.id for batch, _ in group for e in batch)
            if unknown:
                core.learn_ids(await hub.store.find_event_ids(live.id, unknown))
            if live.gone is not None:
                _fail(group, Gone(f"share {live.id} was {live.gone}"))
                return
            prepared: list[tuple[Prepared, asyncio.Future[Prepared]]] = []
            for batch, done in group:
                try:
                    prepared.append((core.prepare(batch, hub.config.max_event_bytes), done))
                except AgentsyncError as err:  # this batch is refused, the others go on
                    done.set_exception(err)
            group = [(batch, done) for batch, done in group if not done.done()]
            events = [e for p, _ in prepared for e in p.new_events]
            if events:
                try:
                    await hub.store.append(live.id, events)
                except SeqConflict:
                    _abort_all(core, prepared)
                    hub.metrics.append_conflicts.inc()
                    await self.catch_up_locked(live, [])
                    continue
                except Exception as exc:
                    log.error("append to %s failed: %s", live.id, exc)
                    if not _abort_all(core, prepared):
                        await hub.drop(live, None)
                    _fail(group, Unavailable("the write could not be stored; retry it"))
                    return
            for p, _ in prepared:
                core.commit(p)
            if events:
                hub.fan_out(live)
                hub.relay.publish(live.id, events)
            for p, done in prepared:
                done.set_result(p)
            return
        _fail(group, Unavailable("the session is being written through other nodes; retry"))

    async def catch_up_locked(self, live: LiveSession, events: Sequence[Event]) -> None:
        """Apply events committed through other nodes (``live.prepare_lock`` held): from
        ``events`` when they follow on, else from the store."""
        hub = self.hub
        core = live.core
        fresh = [e for e in events if e.seq > core.last_seq]
        if events and not fresh:
            return
        contiguous = bool(fresh) and all(
            e.seq == core.last_seq + 1 + i for i, e in enumerate(fresh)
        )
        if contiguous:
            core.load(fresh)
        else:
            hub.metrics.bus_catch_ups.inc()
            before = core.last_seq
            await load_tail(hub.store, live.id, core)
            if core.last_seq == before:
                return
        hub.fan_out(live)


def _abort_all(core: Session, prepared: list[tuple[Prepared, Any]]) -> bool:
    """Undo prepared batches, newest first; False if one could not be undone."""
    return all([core.abort(p) for p, _ in reversed(prepared)])


def _fail(group: Sequence[tuple[Any, asyncio.Future[Prepared]]], err: Exception) -> None:
    for _, done in group:
        if not done.done():
            done.set_exception(err)
