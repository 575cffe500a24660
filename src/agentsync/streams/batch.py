"""Appends decided one by one and written together: the bookkeeping both stores share.

A store's append job takes every append a node received in one turn of its event loop.
For each, in order, the store loads what the decision needs (the stream's row the first
time the batch meets the path, a producer's state the first time it meets the producer)
and calls :meth:`AppendBatch.decide`, which asks :mod:`rules` exactly as a job of its own
would and records the outcome against the rows *as the earlier appends of the batch left
them*. Then the store writes it all at once: the new units, each touched stream's row
once, each producer once. :class:`AppendQueue` gathers the appends of a loop turn and hands
them to the store's writer. No I/O here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentsync.protocol import Unavailable
from agentsync.streams import rules
from agentsync.streams.rules import (
    AppendRequest,
    Duplicate,
    ProducerState,
    StreamError,
    StreamState,
)
from agentsync.streams.store import Appended

Changes = dict[str, StreamState | None]  # path -> state after a job (None: removed)
Result = tuple[Changes, Any]  # what a job changed, and its caller's answer
AppendItem = tuple[str, AppendRequest, int, int]  # path, request, now_ms, accessed_ms
ProducerKey = tuple[int, str]  # stream id, producer id


@dataclass(slots=True)
class AppendBatch:
    rows: dict[str, StreamState | None] = field(default_factory=dict)  # as left so far
    producers: dict[ProducerKey, ProducerState | None] = field(default_factory=dict)
    units: list[tuple[int, int, bytes]] = field(default_factory=list)  # id, seq, unit
    final: dict[int, StreamState] = field(default_factory=dict)  # stream id -> row to write
    first: dict[int, StreamState] = field(default_factory=dict)  # stream id -> row before
    upserts: dict[ProducerKey, tuple[ProducerState, int]] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)  # one per decided append

    def producer_to_load(self, path: str, req: AppendRequest) -> ProducerKey | None:
        """The producer state :meth:`decide` will need and the batch lacks."""
        state = self.rows.get(path)
        if req.producer is None or state is None or state.deleted:
            return None
        key = (state.id, req.producer.id)
        return None if key in self.producers else key

    def decide(self, path: str, req: AppendRequest, now_ms: int, changes: Changes) -> None:
        """Decide one append on ``rows[path]`` (loaded by the store) and record it;
        ``changes``: what loading the row changed (an expired stream retired)."""
        state = self.rows[path]
        if state is None:
            self.results.append((changes, rules.not_found(path)))
            return
        if state.deleted:
            self.results.append((changes, rules.gone(path)))
            return
        key = None if req.producer is None else (state.id, req.producer.id)
        current = None if key is None else self.producers[key]
        try:
            outcome = rules.decide_append(state, current, req)
        except StreamError as refusal:
            self.results.append((changes, refusal))
            return
        if isinstance(outcome, Duplicate):
            after = rules.appended_state(state, req, None, now_ms)
        else:
            after = rules.appended_state(state, req, outcome, now_ms)
            if outcome.unit is not None:
                self.units.append((state.id, after.tail, outcome.unit))
            if outcome.producer_state is not None and key is not None:
                self.producers[key] = outcome.producer_state
                self.upserts[key] = (outcome.producer_state, now_ms)
        self.first.setdefault(state.id, state)
        self.final[state.id] = after
        self.rows[path] = changes[path] = after
        self.results.append((changes, Appended(after, outcome)))

    def stream_rows(self, tails_derived: bool = False) -> list[tuple[Any, ...]]:
        """(tail, closed, closed_by, stream_seq, accessed_at, id) of every touched stream;
        with ``tails_derived`` (the store reads a row's tail from its units), only of those
        whose row changed in more than tail and access time, or whose access time counts
        (a stream with a TTL)."""
        return [
            (
                row.tail,
                row.closed,
                rules.closed_by_json(row.closed_by),
                row.stream_seq,
                row.accessed_at,
                stream_id,
            )
            for stream_id, row in self.final.items()
            if not tails_derived or _row_moved(self.first[stream_id], row)
        ]

    def producer_rows(self) -> list[tuple[int, str, int, int, int]]:
        """(stream id, producer, epoch, seq, updated_at) of every producer that moved."""
        return [(sid, pid, ps.epoch, ps.seq, now) for (sid, pid), (ps, now) in self.upserts.items()]


def _row_moved(before: StreamState, after: StreamState) -> bool:
    return (
        after.ttl_seconds is not None
        or after.closed != before.closed
        or after.closed_by != before.closed_by
        or after.stream_seq != before.stream_seq
    )


Futures = list["asyncio.Future[Appended]"]


class AppendQueue:
    """The appends asked for during one turn of the event loop, handed to ``submit``
    together at its end (or at ``flush``, when another job must queue behind them)."""

    def __init__(self, submit: Callable[[list[AppendItem], Futures], None]) -> None:
        self._submit = submit
        self._waiting: list[tuple[AppendItem, asyncio.Future[Appended]]] = []

    def append(self, item: AppendItem) -> asyncio.Future[Appended]:
        """The append's answer, once its batch commits: Appended, or the StreamError
        that refused it. A plain future, not a coroutine: the append path awaits it
        directly (each coroutine level costs the hot path a frame per resume)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Appended] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self.flush)
        self._waiting.append((item, future))
        return future

    def flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        futures = [future for _, future in waiting]
        try:
            self._submit([item for item, _ in waiting], futures)
        except Exception as exc:  # the store is closed
            _fail(futures, exc)


def answer_all(futures: Futures, results: list[Result], heard: Callable[[Result], None]) -> None:
    """The batch committed: ``heard`` (the store's listener) gets every append in order,
    also one whose caller has gone away, and then each caller its answer."""
    for result, future in zip(results, futures, strict=True):
        heard(result)
        if not future.done():
            answer = result[1]
            if isinstance(answer, StreamError):
                future.set_exception(answer)
            else:
                future.set_result(answer)


def fail_unless_committed(futures: Futures) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback for the batch's job: if it did not commit, every append in it fails
    with the reason."""

    def check(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            _fail(futures, Unavailable("the write was cancelled"))
        elif (exc := done.exception()) is not None:
            _fail(futures, exc)

    return check


def _fail(futures: Futures, exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
