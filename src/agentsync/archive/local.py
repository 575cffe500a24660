"""The embedded Archive: one directory, ``<root>/<session id>/<name>``.

``put`` writes a temporary file in the session's directory, fsyncs it, renames it over
the final name and fsyncs the directory (and the root, when the session's directory is
new): after ``put`` returns, a crash of the process or of the machine leaves either no
object or the whole object, never a part. File I/O runs on threads: the event loop never
waits for the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import shutil
from pathlib import Path
from typing import IO

from agentsync.archive.base import check_key
from agentsync.protocol import Unavailable

TEMP_PREFIX = ".tmp-"
COPY_CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArchive:
    """The Archive protocol (archive/base.py) over a local directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalArchive({str(self.root)!r})"

    async def open(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        if not await asyncio.to_thread(os.access, self.root, os.W_OK | os.X_OK):
            raise Unavailable(f"the archive directory {self.root} is not writable")

    def _dir(self, session_id: str) -> Path:
        return self.root / check_key(session_id)

    # -- the protocol -------------------------------------------------------------------

    async def put(self, session_id: str, name: str, blob: bytes) -> None:
        await self.put_file(session_id, name, io.BytesIO(blob))

    async def put_file(self, session_id: str, name: str, source: IO[bytes]) -> None:
        await asyncio.to_thread(self._put, self._dir(session_id), check_key(name), source)

    def _put(self, folder: Path, name: str, source: IO[bytes]) -> None:
        created = not folder.is_dir()
        if created:
            folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}-{name}"
        try:
            with open(temp, "wb") as fh:
                shutil.copyfileobj(source, fh, COPY_CHUNK)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        _fsync_dir(folder)
        if created:
            _fsync_dir(self.root)

    async def get(self, session_id: str, name: str) -> bytes | None:
        sink = io.BytesIO()
        return sink.getvalue() if await self.get_file(session_id, name, sink) else None

    async def get_file(self, session_id: str, name: str, sink: IO[bytes]) -> bool:
        path = self._dir(session_id) / check_key(name)

        def read() -> bool:
            try:
                with open(path, "rb") as fh:
                    shutil.copyfileobj(fh, sink, COPY_CHUNK)
            except FileNotFoundError:  # from open: nothing was written
                return False
            return True

        return await asyncio.to_thread(read)

    async def delete(self, session_id: str, name: str) -> None:
        folder = self._dir(session_id)
        path = folder / check_key(name)

        def remove() -> None:
            try:
                path.unlink()
            except FileNotFoundError:
                return
            _fsync_dir(folder)

        await asyncio.to_thread(remove)

    async def delete_session(self, session_id: str) -> None:
        folder = self._dir(session_id)

        def remove_all() -> None:
            try:
                entries = list(folder.iterdir())
            except FileNotFoundError:
                return
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            with contextlib.suppress(FileNotFoundError):
                folder.rmdir()
            _fsync_dir(self.root)

        await asyncio.to_thread(remove_all)

    async def names(self, session_id: str) -> list[str]:
        folder = self._dir(session_id)

        def listing() -> list[str]:
            try:
                return sorted(
                    p.name for p in folder.iterdir() if not p.name.startswith(TEMP_PREFIX)
                )
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(listing)
