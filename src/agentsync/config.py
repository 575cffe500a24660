"""Configuration: defaults, then a TOML file, then AGENTSYNC_* env vars, then flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of a node. Each field is also a flag (--max-batch) and an env var
    (AGENTSYNC_MAX_BATCH); ``help`` metadata documents it in ``agentsync serve --help``."""

    host: str = dataclasses.field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = dataclasses.field(default=8787, metadata={"help": "port to listen on"})
    data: str = dataclasses.field(
        default="./agentsync-data", metadata={"help": "data directory (SQLite database)"}
    )
    store: str = dataclasses.field(
        default="sqlite",
        metadata={
            "help": "where shares and logs live: sqlite (a file in --data) or "
            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME] (shared by nodes)"
        },
    )
    bus: str = dataclasses.field(
        default="",
        metadata={
            "help": "cross-node fan-out when several nodes share a PostgreSQL store: "
            "redis://HOST[:PORT][/DB] (default: none, this node alone)"
        },
    )
    public_url: str = dataclasses.field(
        default="", metadata={"help": "base URL in share links (default http://HOST:PORT)"}
    )
    sqlite_synchronous: str = dataclasses.field(
        default="NORMAL",
        metadata={"help": "NORMAL survives a killed server, FULL also a power loss"},
    )
    rate_limit: float = dataclasses.field(
        default=200.0, metadata={"help": "events per second per session (0 disables)"}
    )
    rate_burst: float = dataclasses.field(
        default=2000.0, metadata={"help": "events a session may write in a burst"}
    )
    address_limits: bool = dataclasses.field(
        default=True, metadata={"help": "apply the per-address limits below"}
    )
    ip_rate_limit: float = dataclasses.field(
        default=50.0, metadata={"help": "HTTP requests per second per client address"}
    )
    ip_rate_burst: float = dataclasses.field(
        default=200.0, metadata={"help": "HTTP requests per address in a burst"}
    )
    ws_connect_rate: float = dataclasses.field(
        default=10.0, metadata={"help": "WebSocket connects per second per address"}
    )
    ws_connect_burst: float = dataclasses.field(
        default=50.0, metadata={"help": "WebSocket connects per address in a burst"}
    )
    ws_publish_rate: float = dataclasses.field(
        default=100.0, metadata={"help": "WebSocket publish frames per second per address"}
    )
    ws_publish_burst: float = dataclasses.field(
        default=500.0, metadata={"help": "WebSocket publish frames per address in a burst"}
    )
    shares_per_hour: float = dataclasses.field(
        default=60.0, metadata={"help": "shares one address may create per hour (0: no limit)"}
    )
    max_connections_per_address: int = dataclasses.field(
        default=256, metadata={"help": "open WebSocket and SSE connections per address"}
    )
    max_connections_per_session: int = dataclasses.field(
        default=10_000, metadata={"help": "open WebSocket and SSE readers per session"}
    )
    max_session_events: int = dataclasses.field(
        default=1_000_000, metadata={"help": "events one session may hold (413 above)"}
    )
    max_frame_bytes: int = dataclasses.field(
        default=1024 * 1024, metadata={"help": "largest WebSocket frame a client may send"}
    )
    trusted_proxies: str = dataclasses.field(
        default="",
        metadata={"help": "comma list of proxy IPs/CIDRs whose X-Forwarded-For is believed"},
    )
    admin_key: str = dataclasses.field(
        default="", metadata={"help": "operator key for /v1/admin and share creation"}
    )
    open_create: bool = dataclasses.field(
        default=False,
        metadata={"help": "let anyone create shares on a non-loopback bind (no admin key)"},
    )
    allowed_origins: str = dataclasses.field(
        default="",
        metadata={
            "help": "browser origins allowed to open WebSockets ('*': any; default: "
            "this server's own)"
        },
    )
    cors_origins: str = dataclasses.field(
        default="*", metadata={"help": "origins allowed to call the HTTP API from browsers"}
    )
    redact: bool = dataclasses.field(
        default=True, metadata={"help": "mask credentials (API keys, tokens) before storing"}
    )
    max_event_bytes: int = dataclasses.field(
        default=256 * 1024, metadata={"help": "largest event, encoded (413 above)"}
    )
    max_batch: int = dataclasses.field(
        default=1000, metadata={"help": "most events in one append (413 above)"}
    )
    max_body_bytes: int = dataclasses.field(
        default=8 * 1024 * 1024, metadata={"help": "largest request body or WS frame"}
    )
    default_ttl_seconds: int = dataclasses.field(
        default=30 * 24 * 3600, metadata={"help": "share lifetime when create gives none"}
    )
    max_ttl_seconds: int = dataclasses.field(
        default=365 * 24 * 3600, metadata={"help": "longest share lifetime accepted"}
    )
    backlog_events: int = dataclasses.field(
        default=10_000, metadata={"help": "recent events kept in memory per live session"}
    )
    backlog_bytes: int = dataclasses.field(
        default=16 * 1024 * 1024, metadata={"help": "bytes of recent events kept per session"}
    )
    max_reader_lag: int = dataclasses.field(
        default=5_000,
        metadata={"help": "events a WebSocket reader may fall behind before it is cut off"},
    )
    max_frame_events: int = dataclasses.field(
        default=1000, metadata={"help": "most events coalesced into one frame"}
    )
    fanout_pause: float = dataclasses.field(
        default=1.0,
        metadata={"help": "after a fan-out round taking T, wait T x this before the next"},
    )
    ws_compression: bool = dataclasses.field(
        default=False, metadata={"help": "offer permessage-deflate (costs ~3x CPU per send)"}
    )
    snapshot_every: int = dataclasses.field(
        default=1000, metadata={"help": "events between stored snapshots of a session"}
    )
    idle_evict_seconds: float = dataclasses.field(
        default=60.0, metadata={"help": "unload a session with no readers after this long"}
    )
    archive: str = dataclasses.field(
        default="",
        metadata={
            "help": "where idle sessions go cold: a directory or file:///PATH (default "
            "archive/ in --data; none with --bus), s3://BUCKET/PREFIX[?endpoint=URL&region=R] "
            "(credentials from the AWS_* variables), or none"
        },
    )
    archive_after: float = dataclasses.field(
        default=7 * 24 * 3600.0,
        metadata={"help": "seconds a session stays unused before it is archived"},
    )
    sweep_interval_seconds: float = dataclasses.field(
        default=30.0, metadata={"help": "how often expired shares are deleted"}
    )
    stream_key: str = dataclasses.field(
        default="",
        metadata={
            "help": "bearer key that may create, append to and delete Durable Streams at "
            "/v1/stream/ (the admin key works too; without either, writes are open only on "
            "a loopback bind with no --public-url and no --trusted-proxies)"
        },
    )
    stream_long_poll_seconds: float = dataclasses.field(
        default=20.0,
        metadata={"help": "how long a Durable Streams long-poll waits for data (then 204)"},
    )
    stream_stall_seconds: float = dataclasses.field(
        default=30.0,
        metadata={
            "help": "a Durable Streams SSE reader whose socket takes nothing for this long "
            "is cut off (it resumes from its offset)"
        },
    )
    keep_alive_seconds: float = dataclasses.field(
        default=5.0,
        metadata={"help": "idle HTTP connections are closed after this (longer than a proxy's)"},
    )
    gil_switch_ms: float = dataclasses.field(
        default=0.5, metadata={"help": "Python's thread switch interval (latency vs. CPU)"}
    )
    log_level: str = dataclasses.field(default="info", metadata={"help": "debug/info/warning"})

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def loopback(self) -> bool:
        """True when bound to a loopback address only."""
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")

    @property
    def create_needs_admin(self) -> bool:
        """Share creation is open on loopback, else needs the admin key (or --open-create)."""
        if self.open_create:
            return False
        return bool(self.admin_key) or not self.loopback

    def check(self) -> None:
        """Refuse settings that cannot work, with a message that says what to do."""
        if not self.loopback and not self.admin_key and not self.open_create:
            raise SystemExit(
                f"agentsync: bound to {self.host}, share creation needs an operator key: "
                "pass --admin-key KEY (env AGENTSYNC_ADMIN_KEY), or --open-create to let "
                "anyone create shares"
            )

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data) / "agentsync.db"

    @property
    def store_backend(self) -> str:
        """``sqlite`` or ``postgresql``, as ``--store`` names it."""
        scheme = self.store.partition("://")[0].lower()
        if scheme in ("", "sqlite"):
            return "sqlite"
        if scheme in ("postgresql", "postgres"):
            return "postgresql"
        raise SystemExit(
            f"agentsync: unknown store {_without_password(self.store)!r}: use sqlite "
            "(the default) or postgresql://USER@HOST:PORT/DB"
        )

    @property
    def store_label(self) -> str:
        """Where the data lives, for the log: the data directory or the database URL."""
        if self.store_backend == "sqlite":
            return self.data
        return _without_password(self.store)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _convert(name: str, kind: type, raw: Any) -> Any:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise SystemExit(
            f"agentsync: setting {name!r} must be {kind.__name__}, got {raw!r}"
        ) from None


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Config field; unset flags stay None so lower layers show through."""
    parser.add_argument("--config", help="TOML file of settings (env AGENTSYNC_CONFIG)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        env = "AGENTSYNC_" + f.name.upper()
        help_text = f"{f.metadata.get('help', '')} [env {env}, default {f.default!r}]"
        if _TYPES[str(f.type)] is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = (getattr(args, "config", None) if args else None) or env.get("AGENTSYNC_CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                document = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"agentsync: cannot read config file {config_file}: {exc}") from exc
        known = {f.name for f in fields(Config)}
        for key, value in document.items():
            name = key.replace("-", "_")
            if name not in known:
                raise SystemExit(f"agentsync: unknown setting {key!r} in {config_file}")
            values[name] = value
    for f in fields(Config):
        raw = env.get("AGENTSYNC_" + f.name.upper())
        if raw is not None:
            values[f.name] = raw
        if args is not None and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    converted = {
        name: _convert(name, _TYPES[str(f.type)], values[name])
        for f in fields(Config)
        if (name := f.name) in values
    }
    return Config(**converted)


def from_argv(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(list(argv)))
