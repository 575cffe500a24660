"""The durable outbox: every event an agent publishes is written here before it is sent.

Theory of operation. ``enqueue`` appends to an in-memory buffer under a lock and, when
the buffer was empty, wakes the writer thread; that is all the agent pays. The writer
thread waits ``group_delay`` for more events, then commits the whole buffer in one SQLite
transaction (so a group is committed within ~50 ms of its first event) and hands the
committed rows to the listeners of their share. While an event is still in the buffer, a
``message.delta`` to the same message as the event just before it is folded into that one
(deltas concatenated, the first event's id kept). A committed row never changes: it is
sent with the same id until the server acknowledges it (the server deduplicates by id),
and is deleted once acknowledged. Rows left by a previous process are returned by
``attach`` in their original order, before anything committed later.

Durability: WAL with ``synchronous=NORMAL`` survives a killed process; ``FULL`` also a
power loss. Events still in the buffer when the process dies are lost, never reordered.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from agentsync.protocol import new_id

GROUP_DELAY: Final = 0.005  # seconds the writer waits for more events before committing
MAX_COALESCED_DELTA: Final = 32 * 1024  # characters; keeps a folded event far below 256 KiB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    ord      INTEGER PRIMARY KEY AUTOINCREMENT,
    share_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type     TEXT NOT NULL,
    data     BLOB NOT NULL,
    ts       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_share ON outbox (share_id, ord);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def default_path() -> Path:
    """``$XDG_DATA_HOME/agentsync/outbox.db``, else ``~/.local/share/agentsync/outbox.db``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "agentsync" / "outbox.db"


@dataclass(slots=True)
class OutboxRow:
    """One committed event waiting for its acknowledgement. ``ord`` is the global order."""

    ord: int
    share_id: str
    id: str
    type: str
    data: dict[str, Any]
    ts: int

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "ts": self.ts, "data": self.data}


# A buffered event: [share_id, event_id, type, data, ts]. A list, so a delta can be folded
# into it in place while it is still buffered.
_Buffered = list[Any]
Listener = Callable[[list[OutboxRow], int], None]


class OutboxClosed(RuntimeError):
    """``enqueue`` after ``close``."""


class Outbox:
    """A local SQLite outbox shared by any number of shares (rows are keyed by share id).

    Thread-safe: ``enqueue`` may be called from any thread; listeners are called from the
    writer thread and must only hand the rows over (e.g. ``loop.call_soon_threadsafe``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        synchronous: str = "NORMAL",
        group_delay: float = GROUP_DELAY,
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self.client_id = self._client_id()
        self._group_delay = group_delay
        self._lock = threading.Lock()  # guards the buffer, the generation counters, acks
        self._db_lock = threading.Lock()  # guards the SQLite connection and the listeners
        self._buffer: list[_Buffered] = []
        self._acked: list[int] = []
        self._generation = 0  # bumped by every enqueue (folded or not)
        self.committed_generation = 0  # every enqueue up to this one is committed
        self._listeners: dict[str, list[Listener]] = {}
        self._wake = threading.Event()
        self._closing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"agentsync-outbox-{self.path.name}", daemon=True
        )
        self._thread.start()

    def _client_id(self) -> str:
        """A stable id of this outbox, the prefix of the event ids it makes."""
        with self._db:
            row = self._db.execute("SELECT value FROM meta WHERE key='client_id'").fetchone()
            if row is not None:
                return str(row[0])
            value = new_id(6)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('client_id', ?)", (value,))
            row = self._db.execute("SELECT value FROM meta WHERE key='client_id'").fetchone()
            return str(row[0])

    # --- the agent's side: microseconds ------------------------------------------------

    def enqueue(
        self, share_id: str, event_id: str, type_: str, data: dict[str, Any], ts: int
    ) -> int:
        """Buffer one event; it is committed within ~50 ms. Returns its generation.

        ``data`` is owned by the outbox from here on.
        """
        with self._lock:
            if self._closing:
                raise OutboxClosed("the outbox is closed")
            buffer = self._buffer
            if type_ == "message.delta" and buffer:
                last = buffer[-1]
                if (
                    last[2] == "message.delta"
                    and last[0] == share_id
                    and last[3]["id"] == data["id"]
                    and len(last[3]["delta"]) < MAX_COALESCED_DELTA
                ):
                    last[3]["delta"] += data["delta"]
                    self._generation += 1
                    return self._generation
            buffer.append([share_id, event_id, type_, data, ts])
            self._generation += 1
            if len(buffer) == 1:
                self._wake.set()
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    def ack(self, ords: list[int]) -> None:
        """Forget acknowledged rows (deleted by the writer thread with its next group)."""
        with self._lock:
            self._acked.extend(ords)
        self._wake.set()

    # --- the connection's side ---------------------------------------------------------

    def attach(self, share_id: str, listener: Listener) -> list[OutboxRow]:
        """Register ``listener`` for rows of ``share_id`` committed from now on, and return
        the rows committed before (left by an earlier process), oldest first."""
        with self._db_lock:
            rows = [
                OutboxRow(ord_, sid, eid, typ, orjson.loads(data), ts)
                for ord_, sid, eid, typ, data, ts in self._db.execute(
                    "SELECT ord, share_id, event_id, type, data, ts FROM outbox"
                    " WHERE share_id=? ORDER BY ord",
                    (share_id,),
                )
            ]
            self._listeners.setdefault(share_id, []).append(listener)
        return rows

    def detach(self, share_id: str, listener: Listener) -> None:
        with self._db_lock:
            listeners = self._listeners.get(share_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(share_id, None)

    def pending_count(self, share_id: str | None = None) -> int:
        """Rows committed and not yet acknowledged (a diagnostic; takes the DB lock)."""
        with self._db_lock:
            if share_id is None:
                row = self._db.execute("SELECT count(*) FROM outbox").fetchone()
            else:
                row = self._db.execute(
                    "SELECT count(*) FROM outbox WHERE share_id=?", (share_id,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Commit what is buffered, apply pending acks, stop the writer thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        self._thread.join()
        with self._db_lock:
            self._db.close()

    # --- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._group_delay and not self._closing:
                # Let a burst of events gather into one transaction (and deltas fold).
                threading.Event().wait(self._group_delay)
            with self._lock:
                self._wake.clear()
                buffer, self._buffer = self._buffer, []
                acked, self._acked = self._acked, []
                generation = self._generation
                closing = self._closing
            try:
                self._commit(buffer, acked, generation)
            except BaseException as exc:  # surfaced by the connection and flush()
                self.error = exc
                return
            if closing:
                with self._lock:
                    if not self._buffer and not self._acked:
                        return

    def _commit(self, buffer: list[_Buffered], acked: list[int], generation: int) -> None:
        with self._db_lock:
            db = self._db
            rows: list[OutboxRow] = []
            db.execute("BEGIN IMMEDIATE")
            try:
                if acked:
                    db.executemany("DELETE FROM outbox WHERE ord=?", [(o,) for o in acked])
                for share_id, event_id, type_, data, ts in buffer:
                    cur = db.execute(
                        "INSERT INTO outbox (share_id, event_id, type, data, ts)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (share_id, event_id, type_, orjson.dumps(data), ts),
                    )
                    assert cur.lastrowid is not None
                    rows.append(OutboxRow(cur.lastrowid, share_id, event_id, type_, data, ts))
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            self.committed_generation = generation
            by_share: dict[str, list[OutboxRow]] = {}
            for row in rows:
                by_share.setdefault(row.share_id, []).append(row)
            for share_id, listeners in self._listeners.items():
                for listener in listeners:
                    listener(by_share.get(share_id, []), generation)
