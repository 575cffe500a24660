"""What every client command of the CLI shares: where the server is, what a share link
names, the local record of shares this machine created, and how failures reach the user.

A command raises :class:`CliError` with a message meant for a person and an exit code;
``cli.main`` prints it on stderr and exits. Exit codes: 0 done, 1 the server refused or
could not be reached, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8787"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report to the user in one or two lines, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def default_server() -> str:
    return os.environ.get("AGENTSYNC_URL", DEFAULT_SERVER)


# --- share links ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A session on a server, as named by a share link, an API URL or a bare id."""

    server: str
    session_id: str
    token: str | None = None

    @property
    def api(self) -> str:
        return f"{self.server}/v1/sessions/{self.session_id}"

    @property
    def ws(self) -> str:
        scheme, rest = self.server.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/sessions/{self.session_id}/ws"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def parse_target(link: str, *, server: str | None = None, token: str | None = None) -> Target:
    """Understand ``http://host/share/ID``, ``http://host/v1/sessions/ID[/...]`` (a
    ``?token=`` in it is kept) or a bare ``ID`` on ``server``."""
    if "://" not in link:
        if not link or "/" in link:
            raise CliError(f"{link!r} is neither a share URL nor a session id", EXIT_USAGE)
        return Target((server or default_server()).rstrip("/"), link, token)
    parts = urlsplit(link)
    segments = [s for s in parts.path.split("/") if s]
    session_id = None
    for i, segment in enumerate(segments[:-1]):
        if segment == "share" or (segment == "sessions" and i > 0 and segments[i - 1] == "v1"):
            session_id = segments[i + 1]
            base = "/".join(segments[:i])
            break
    if session_id is None:
        raise CliError(f"{link!r} is not a share URL (expected http://HOST/share/ID)", EXIT_USAGE)
    query_token = parse_qs(parts.query).get("token", [None])[0]
    root = f"{parts.scheme}://{parts.netloc}" + (f"/{base}" if base else "")
    return Target(root, session_id, token or query_token)


# --- talking to the server --------------------------------------------------------------


def unreachable(url: str, exc: Exception) -> CliError:
    return CliError(
        f"cannot reach the agentsync server at {url} ({type(exc).__name__}: {exc}).\n"
        "Is it running? Start one with `agentsync serve`, or point at another with "
        "--server URL or AGENTSYNC_URL."
    )


def checked(response: httpx.Response) -> Any:
    """The response's JSON body, or a CliError carrying the server's own explanation."""
    if response.status_code >= 400:
        response.read()
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = response.text[:200] or response.reason_phrase
        raise CliError(f"the server answered {response.status_code} ({detail})")
    return response.json() if response.content else None


# --- local state: the shares this machine created ---------------------------------------


@dataclass
class ShareEntry:
    session_id: str
    share_url: str
    server: str
    secret: str
    title: str = ""
    created_at: int = 0
    expires_at: int | None = None
    read: str = "public"
    read_token: str | None = None

    def expired(self, now_ms: int | None = None) -> bool:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return self.expires_at is not None and self.expires_at <= now


def state_path(override: str | None = None) -> Path:
    """``--state``, else ``$AGENTSYNC_HOME/shares.json``, else the XDG data directory."""
    if override:
        return Path(override)
    home = os.environ.get("AGENTSYNC_HOME")
    if home:
        return Path(home) / "shares.json"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "agentsync" / "shares.json"


class ShareBook:
    """The JSON file of shares created here. It holds secrets, so it is written 0600,
    and atomically, so a crash mid-write leaves the previous version."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[ShareEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the share list {self.path}: {exc}") from None
        fields = set(ShareEntry.__dataclass_fields__)
        return [
            ShareEntry(**{k: v for k, v in row.items() if k in fields})
            for row in raw.get("shares", [])
        ]

    def save(self, entries: list[ShareEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"shares": [asdict(e) for e in entries]}, indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".shares-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, entry: ShareEntry) -> None:
        entries = [e for e in self.load() if e.session_id != entry.session_id]
        self.save([*entries, entry])

    def find(self, session_id: str) -> ShareEntry | None:
        return next((e for e in self.load() if e.session_id == session_id), None)

    def remove(self, session_id: str) -> None:
        self.save([e for e in self.load() if e.session_id != session_id])


def entry_from_created(body: dict[str, Any], server: str, title: str) -> ShareEntry:
    """A ShareBook entry from the 201 body of ``POST /v1/shares`` or an import."""
    return ShareEntry(
        session_id=body["session_id"],
        share_url=body["share_url"],
        server=server.rstrip("/"),
        secret=body["secret"],
        title=title,
        created_at=int(time.time() * 1000),
        expires_at=body.get("expires_at"),
        read=body.get("read", "public"),
        read_token=body.get("read_token"),
    )


def print_created(body: dict[str, Any], path: Path) -> None:
    """What a person needs after creating a share: the link, and the credentials."""
    print(body["share_url"])
    print(f"  session  {body['session_id']}")
    print(f"  secret   {body['secret']}   (the write credential: keep it)")
    if body.get("read_token"):
        print(f"  token    {body['read_token']}   (give it to readers)")
    if body.get("expires_at"):
        print(f"  expires  {format_time(body['expires_at'])}")
    print(f"  saved in {path}")


def format_time(ms: int | None) -> str:
    if ms is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))
