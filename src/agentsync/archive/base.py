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
* ``put_file`` and ``get_file`` are ``put`` and ``get`` for objects too large to hold in
  memory: the bytes go from and to a file, a part at a time.
* ``delete`` and ``delete_session`` succeed when there is nothing to delete.
* Errors of the backend (unreachable, denied) raise; a missing object is not an error.

The format of one object (``ArchiveWriter``/``ArchiveReader``, which stream it in bounded
memory; ``encode``/``decode`` for a log held in memory): gzip of JSON lines,

    {"format": "agentsync-archive/1", "session_id", "epoch", "share": {...}}   header
    {"seq": 1, "id": ..., "type": ..., "ts": ..., "data": {...}}               each event,
    ...                                                                        in seq order
    {"end": true, "last_seq": N, "count": N, "sha256": ..., "snapshot": {...}} trailer

The whole log is kept, not only the snapshot: event ids must answer retries with their
original seqs after a restore (SPEC §2.3). ``sha256`` covers the event lines; with the
count, the dense seqs and gzip's own CRC, the reader refuses a truncated or altered object.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import secrets
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, Protocol

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

    async def put_file(self, session_id: str, name: str, source: IO[bytes]) -> None:
        """``put`` the bytes of ``source`` from its position to its end, read a part at
        a time: an object of any size in bounded memory."""

    async def get_file(self, session_id: str, name: str, sink: IO[bytes]) -> bool:
        """Write the object's bytes to ``sink``, a part at a time; False, with nothing
        written, when the object does not exist."""

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


class ArchiveWriter:
    """Writes one archive object to ``out``, a page of events at a time: memory stays
    bounded by what one call to ``add`` holds, however long the log.

    CPU-bound (gzip): call it from a thread for large logs. ``out`` is left open.
    """

    def __init__(self, out: IO[bytes], session_id: str, epoch: str, share: dict[str, Any]) -> None:
        self._gzip = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)
        self._digest = hashlib.sha256()
        self._count = 0
        self._last_line = b""
        header = {"format": FORMAT, "session_id": session_id, "epoch": epoch, "share": share}
        self._gzip.write(orjson.dumps(header) + b"\n")

    def add(self, lines: Iterable[bytes]) -> None:
        """Append events given as encoded envelopes, in seq order."""
        for line in lines:
            self._digest.update(line)
            self._digest.update(b"\n")
            self._gzip.write(line + b"\n")
            self._count += 1
            self._last_line = line

    def finish(self, snapshot: dict[str, Any]) -> None:
        """Write the trailer (with ``snapshot``, the state at the last seq) and end the
        gzip stream."""
        last_seq = int(orjson.loads(self._last_line)["seq"]) if self._count else 0
        trailer = {
            "end": True,
            "last_seq": last_seq,
            "count": self._count,
            "sha256": self._digest.hexdigest(),
            "snapshot": snapshot,
        }
        self._gzip.write(orjson.dumps(trailer) + b"\n")
        self._gzip.close()

    def close(self) -> None:
        """End the gzip stream, finished or not (an unfinished object has no trailer)."""
        self._gzip.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArchiveReader:
    """Reads one archive object from ``source`` event by event, checking it as it goes:
    memory stays bounded by one event, however long the log.

    The header is read (and checked) on construction; ``events`` yields the log, and only
    once it has been read to its end with no ArchiveCorrupt raised is the object known
    to be whole, with ``last_seq`` and ``snapshot`` set. CPU-bound (gzip), like the writer.
    """

    def __init__(self, source: IO[bytes]) -> None:
        self._gzip = gzip.GzipFile(fileobj=source, mode="rb")
        try:
            self._read_header()
        except BaseException:
            self._gzip.close()
            raise
        self.last_seq = 0
        self.snapshot: dict[str, Any] | None = None

    def _read_header(self) -> None:
        header = self._json(self._line(), "the header")
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ArchiveCorrupt(f"unknown format: {str(header)[:100]}")
        if not all(key in header for key in ("session_id", "epoch", "share")):
            raise ArchiveCorrupt("the header does not name the session")
        self.session_id = str(header["session_id"])
        self.epoch = str(header["epoch"])
        self.share: dict[str, Any] = header["share"]

    def events(self) -> Iterator[Event]:
        """The log in seq order; raises ArchiveCorrupt (at the latest once the last event
        was yielded) unless the object is whole."""
        digest = hashlib.sha256()
        line = self._line()
        seq = 0
        while True:
            following = self._line()
            if not following:  # ``line`` was the last: the trailer
                break
            seq += 1
            digest.update(line[:-1])
            digest.update(b"\n")
            try:
                obj = orjson.loads(line)
                if obj["seq"] != seq:
                    raise ArchiveCorrupt(f"event {seq} has seq {obj['seq']}: the log has a gap")
                yield Event(seq, obj["id"], obj["type"], obj["ts"], obj["data"], line[:-1])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise ArchiveCorrupt(f"an event line does not parse: {exc!r}") from exc
            line = following
        trailer = self._json(line, "the trailer")
        if not isinstance(trailer, dict) or trailer.get("end") is not True:
            raise ArchiveCorrupt("truncated: the last line is not the trailer")
        if trailer.get("count") != seq or trailer.get("last_seq") != seq:
            raise ArchiveCorrupt(
                f"the trailer announces {trailer.get('count')} events, the object holds {seq}"
            )
        if trailer.get("sha256") != digest.hexdigest():
            raise ArchiveCorrupt("checksum mismatch: the event lines were altered")
        snapshot = trailer.get("snapshot")
        if not isinstance(snapshot, dict) or snapshot.get("seq") != seq:
            raise ArchiveCorrupt("the snapshot is missing or not at the last seq")
        self.last_seq, self.snapshot = seq, snapshot

    def check(self) -> ArchiveReader:
        """Read the whole object, keeping nothing of the log; raises ArchiveCorrupt."""
        for _ in self.events():
            pass
        return self

    def close(self) -> None:
        self._gzip.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> bytes:
        """The next line with its newline, b"" at the end of the stream."""
        try:
            line = self._gzip.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise ArchiveCorrupt(f"not a whole gzip stream: {exc}") from exc
        if line and not line.endswith(b"\n"):
            raise ArchiveCorrupt("truncated: the last line does not end")
        return line

    @staticmethod
    def _json(line: bytes, what: str) -> Any:
        if not line:
            raise ArchiveCorrupt(f"truncated: no {what}")
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ArchiveCorrupt(f"{what} is not JSON: {exc}") from exc


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
    out = io.BytesIO()
    with ArchiveWriter(out, session_id, epoch, share) as writer:
        writer.add(lines)
        writer.finish(snapshot)
    return out.getvalue()


def decode(blob: bytes) -> Archived:
    """Parse and check an archive object; raises ArchiveCorrupt unless it is whole."""
    with ArchiveReader(io.BytesIO(blob)) as reader:
        events = list(reader.events())
    assert reader.snapshot is not None  # set once the events were read without error
    return Archived(reader.session_id, reader.epoch, reader.share, events, reader.snapshot)
