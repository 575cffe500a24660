"""Shared fixtures: real ``agentsync serve`` processes on loopback, and an S3-compatible
server (``s3_endpoint``, ``s3_archive_url``) for the archive tests.

``server_factory(**flags)`` starts a server subprocess on a free port and a temporary data
directory and returns a :class:`ServerProcess`; ``server`` is one such server with the
write rate limit disabled. Every process a test started is SIGKILLed at teardown if it is
still running; no other process is ever touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def service_missing(reason: str) -> NoReturn:
    """A test's service (PostgreSQL, Redis, Chromium, npm…) is not there: skip, except under
    ``AGENTSYNC_REQUIRE_SERVICES=1`` (CI), where the test fails instead."""
    if os.environ.get("AGENTSYNC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"needed by this test: {reason}")
    pytest.skip(reason)


PG_URL = os.environ.get("AGENTSYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def fresh_pg_schema(prefix: str) -> AsyncIterator[str]:
    """A fresh schema name on the test PostgreSQL, dropped (with everything in it) after."""
    try:
        import asyncpg
    except ImportError:
        service_missing("asyncpg is not installed")
    schema = prefix + uuid.uuid4().hex[:10]
    try:
        conn = await asyncpg.connect(PG_URL, timeout=3)
    except Exception as exc:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
    try:
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flag_args(flags: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in flags.items():
        name = "--" + key.replace("_", "-")
        if value is True:
            args.append(name)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [name, str(value)]
    return args


class ServerProcess:
    """One ``agentsync serve`` subprocess; ``restart`` keeps its port and data directory."""

    def __init__(self, data_dir: Path, log_dir: Path, flags: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.flags = flags
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[subprocess.Popen[bytes]] = []  # every process we spawned
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.runs}.log"

    def logs(self) -> str:
        out = []
        for i in range(1, self.runs + 1):
            path = self.log_dir / f"server-{i}.log"
            if path.exists():
                out.append(f"--- run {i} ---\n" + path.read_text(errors="replace"))
        return "\n".join(out)

    def start(self) -> ServerProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        cmd = [
            sys.executable, "-m", "agentsync.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--data", str(self.data_dir),
            "--log-level", "warning",
            *_flag_args(self.flags),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSYNC_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.started.append(self.proc)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
                try:
                    if client.get(self.url + "/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.03)
        self.kill()
        raise RuntimeError(f"server not ready within {READY_TIMEOUT}s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise AssertionError(f"server ignored SIGTERM for {STOP_TIMEOUT}s") from None

    def restart(self) -> ServerProcess:
        """Start again on the same port and data directory (kills a running one first)."""
        self.kill()
        return self.start()

    # awaitable forms, so that an async test's other tasks keep running meanwhile

    async def aterminate(self) -> int:
        return await asyncio.to_thread(self.terminate)

    async def arestart(self) -> ServerProcess:
        return await asyncio.to_thread(self.restart)

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT)


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Start servers with extra flags: ``server_factory(rate_limit=0, max_reader_lag=50)``."""
    servers: list[ServerProcess] = []

    def start(**flags: Any) -> ServerProcess:
        # Per-address limits would throttle a suite that talks from one address;
        # tests of those limits turn them on with address_limits=True.
        flags.setdefault("address_limits", False)
        n = len(servers)
        data_dir = tmp_path / f"data{n}"
        log_dir = tmp_path / f"logs{n}"
        data_dir.mkdir()
        log_dir.mkdir()
        srv = ServerProcess(data_dir, log_dir, flags)
        servers.append(srv)
        return srv.start()

    yield start
    for srv in servers:
        srv.cleanup()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for srv in servers:
            print(f"\n=== server log ({srv.url}) ===\n{srv.logs()[-8000:]}")


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A fresh server with the write rate limit disabled."""
    return server_factory(rate_limit=0)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the ``server`` fixture's URL."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        yield client


# --- an S3-compatible server on loopback (archive tests) -------------------------------

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "agentsync-test",
    "AWS_SECRET_ACCESS_KEY": "agentsync-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a fresh S3-compatible server; AWS_* test credentials are exported so
    that servers the tests start find them too."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture
def s3_archive_url(s3_endpoint: str) -> str:
    """``--archive`` for a fresh, empty bucket on the loopback S3 server."""
    bucket = "b" + os.urandom(6).hex()
    make_bucket(s3_endpoint, bucket)
    return f"s3://{bucket}/agentsync?endpoint={s3_endpoint}&region=us-east-1"
