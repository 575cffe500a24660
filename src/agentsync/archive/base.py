"""The Archive protocol (object storage for cold sessions) and the archive format.

An archive holds, per session, objects named by the caller. The hub writes one object per
archiving of a session, under a name of its own that is never reused (``new_name``): a
stale writer (a slow node, a retry) can then never overwrite the object another node
archived, and the store records which object holds the log (``ShareRecord.archive``).

Callers rely on this contract, whatever the backend:

* ``put`` returns only once the object is durably stored and whole: a reader sees either
  nothing or every byte, never a part (local: temp file, fsync, rename, fsync of the
  directory; S3: one PUT).
* ``get`` returns the bytes last put under that name, or None when there is no object.
* ``delete`` and ``delete_session`` succeed when there is nothing to delete.
* Errors of the backend (unreachable, denied) raise; a missing object is not an error.

The format of one object (``encode``/``decode``): gzip of JSON lines,

    {"format": "agentsync-archive/1", "session_id", "epoch", "share": {...}}   header
    {"seq": 1, "id": ..., "type": ..., "ts": ..., "data": {...}}               each event,
    ...                                                                        in seq order
    {"end": true, "last_seq": N, "count": N, "sha256": ..., "snapshot": {...}} trailer

The whole log is kept, not only the snapshot: event ids must answer retries with their
original seqs after a restore (SPEC §2.3). ``sha256`` covers the event lines; with the
count, the dense seqs and gzip's own CRC, ``decode`` refuses a truncated or altered object.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from agentsync.protocol import Event

FORMAT: Final = "agentsync-archive/1"
SAFE_KEY: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
NAME: Final = re.compile(r"v(\d+)-([A-Za-z0-9_-]+)\.jsonl\.gz")


class ArchiveCorrupt(ValueError):
    """An archive object that does not decode to a whole, consistent session log."""


class Archive(Protocol):
    async def open(self) -> None:
        """Connect (or create the directory) so that ``put`` can succeed."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the archive cannot serve requests."""

    async def put(self, session_id: str, name: str, blob: bytes) -> None:
        """Store ``blob`` durably and atomically as the object ``name`` of the session."""

    async def get(self, session_id: str, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    async def delete(self, session_id: str, name: str) -> None:
        """Remove one object; no error when it does not exist."""

    async def delete_session(self, session_id: str) -> None:
        """Remove every object of the session."""

    async def names(self, session_id: str) -> list[str]:
        """The names of the session's objects, sorted."""


def check_key(part: str) -> str:
    """Session ids and names become paths and object keys: refuse anything that could
    escape the archive's directory or prefix."""
    if not SAFE_KEY.fullmatch(part) or ".." in part:
        raise ValueError(f"not usable as an archive key: {part!r}")
    return part


def new_name(last_seq: int) -> str:
    """A fresh object name for an archive of a log ending at ``last_seq``."""
    return f"v{last_seq}-{secrets.token_urlsafe(9)}.jsonl.gz"


def seq_of(name: str) -> int:
    """The last seq that the object ``name`` (from ``new_name``) holds."""
    match = NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not an archive object name: {name!r}")
    return int(match.group(1))


@dataclass(frozen=True, slots=True)
class Archived:
    """A decoded archive: the log, and the snapshot at its last seq."""

    session_id: str
    epoch: str
    share: dict[str, Any]
    events: list[Event]
    snapshot: dict[str, Any]

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0


def encode(
    session_id: str,
    epoch: str,
    share: dict[str, Any],
    lines: Sequence[bytes],
    snapshot: dict[str, Any],
) -> bytes:
    """The archive object for a log given as encoded event envelopes, in seq order.

    CPU-bound (gzip): call it from a thread for large logs.
    """
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
        digest.update(b"\n")
    last_seq = int(orjson.loads(lines[-1])["seq"]) if lines else 0
    header = {"format": FORMAT, "session_id": session_id, "epoch": epoch, "share": share}
    trailer = {
        "end": True,
        "last_seq": last_seq,
        "count": len(lines),
        "sha256": digest.hexdigest(),
        "snapshot": snapshot,
    }
    body = b"\n".join([orjson.dumps(header), *lines, orjson.dumps(trailer)]) + b"\n"
    return gzip.compress(body, compresslevel=6, mtime=0)


def decode(blob: bytes) -> Archived:
    """Parse and check an archive object; raises ArchiveCorrupt unless it is whole."""
    try:
        body = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveCorrupt(f"not a whole gzip stream: {exc}") from exc
    lines = body.split(b"\n")
    if len(lines) < 3 or lines[-1] != b"":
        raise ArchiveCorrupt("truncated: no header or no trailer")
    try:
        header = orjson.loads(lines[0])
        trailer = orjson.loads(lines[-2])
    except orjson.JSONDecodeError as exc:
        raise ArchiveCorrupt(f"header or trailer is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveCorrupt(f"unknown format: {str(header)[:100]}")
    if not isinstance(trailer, dict) or trailer.get("end") is not True:
        raise ArchiveCorrupt("truncated: the last line is not the trailer")
    event_lines = lines[1:-2]
    digest = hashlib.sha256()
    events: list[Event] = []
    try:
        for seq, line in enumerate(event_lines, start=1):
            digest.update(line)
            digest.update(b"\n")
            obj = orjson.loads(line)
            if obj["seq"] != seq:
                raise ArchiveCorrupt(f"event {seq} has seq {obj['seq']}: the log has a gap")
            events.append(Event(seq, obj["id"], obj["type"], obj["ts"], obj["data"], line))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArchiveCorrupt(f"an event line does not parse: {exc!r}") from exc
    if trailer.get("count") != len(events) or trailer.get("last_seq") != len(events):
        raise ArchiveCorrupt(
            f"the trailer announces {trailer.get('count')} events, the object holds {len(events)}"
        )
    if trailer.get("sha256") != digest.hexdigest():
        raise ArchiveCorrupt("checksum mismatch: the event lines were altered")
    snapshot = trailer.get("snapshot")
    if not isinstance(snapshot, dict) or snapshot.get("seq") != len(events):
        raise ArchiveCorrupt("the snapshot is missing or not at the last seq")
    return Archived(
        str(header["session_id"]), str(header["epoch"]), header["share"], events, snapshot
    )
