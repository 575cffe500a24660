"""Drive the real opencode CLI (npm ``opencode-ai``) against a loopback share server.

Typical use from a test::

    binary = install_opencode()                    # npm, cached, reused across runs
    with FakeLLM(script=default_script(...)) as llm, Opencode(binary, tmp, share_url) as oc:
        oc.setup(llm.base_url)                     # temp HOME/XDG, opencode.json, git project
        oc.start_serve()                           # ``opencode serve --port 0`` on loopback
        run = oc.run("read notes.txt")             # ``opencode run --attach URL --share``
        items = oc.wait_share_complete(run.share_id)
        imported = oc.import_share(run.share_url)  # ``opencode import URL``
        oc.unshare(run.session_id)                 # ``DELETE /session/<id>/share`` on serve

Everything runs on 127.0.0.1 with ``HOME`` and the XDG directories inside the temporary
directory, so the user's own opencode state is never read or written. Every process is
started in its own session and ended by its process-group id (its own PID) on
:meth:`Opencode.close`; its stdout/stderr go to files under ``<root>/logs`` and
:meth:`Opencode.logs` returns their tails for failure messages. :attr:`Opencode.timings` holds
the seconds each step took.

Why ``serve`` + ``run --attach``: a standalone ``opencode run --share`` exits as soon as the
agent loop ends, before the client's last 1 s share batch is posted, so the share misses the
final updates. A long-lived ``serve`` keeps flushing.

Environment knobs: ``AGENTSYNC_OPENCODE_CACHE`` (install directory root, default
``~/.cache/agentsync-tests``), ``AGENTSYNC_OPENCODE_BIN`` (use this binary, skip npm).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

VERSION = "1.18.33"
PROVIDER = "fake"
MODEL_ID = "fake-model"
MODEL = f"{PROVIDER}/{MODEL_ID}"
NOTES = "hello from the fixture\nline two\nline three\n"
# opencode's own knobs: no self-update, no models.dev fetch, no LSP downloads, no telemetry.
QUIET_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "NO_COLOR": "1",
}
_LISTENING = re.compile(r"server listening on (http://127\.0\.0\.1:\d+)")
_CREATED = re.compile(r"message=created id=(ses_[A-Za-z0-9]+)")
_SHARE_URL = re.compile(r"https?://[^\s/]+/share/([A-Za-z0-9_-]+)")


class HarnessError(RuntimeError):
    """A step failed; the message carries the command, its exit status and log tails."""


def cache_root() -> Path:
    env = os.environ.get("AGENTSYNC_OPENCODE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "agentsync-tests"


def _platform_package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    system = {"linux": "linux", "darwin": "darwin"}.get(platform.system().lower())
    if arch is None or system is None:
        raise HarnessError(f"opencode has no npm binary for {platform.system()}/{machine}")
    return f"opencode-{system}-{arch}"


def binary_path(version: str = VERSION) -> Path:
    """Where :func:`install_opencode` puts the binary for ``version`` (may not exist yet)."""
    pkg = _platform_package()
    return cache_root() / f"opencode-{version}" / "node_modules" / pkg / "bin" / "opencode"


def _version_of(binary: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **QUIET_ENV},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def install_opencode(version: str = VERSION, timeout: float = 600.0) -> Path:
    """The opencode binary for ``version``, installed with npm into the cache on first use.

    ``npm install opencode-ai@VERSION`` pulls the platform package (~180 MB binary) from the
    npm registry; later calls find it and only run ``--version``. A file lock serialises
    concurrent installers (pytest-xdist workers, parallel CI jobs).
    """
    override = os.environ.get("AGENTSYNC_OPENCODE_BIN")
    if override:
        return Path(override)
    binary = binary_path(version)
    if binary.exists() and _version_of(binary) == version:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise HarnessError("npm is not on PATH; it is needed to install opencode-ai")
    prefix = binary.parents[3]
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f"opencode-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists() and _version_of(binary) == version:
            return binary
        cmd = [
            npm,
            "install",
            "--prefix",
            str(prefix),
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            f"opencode-ai@{version}",
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{' '.join(cmd)} timed out after {timeout}s") from exc
        if out.returncode != 0 or not binary.exists():
            raise HarnessError(
                f"{' '.join(cmd)} exited {out.returncode}; binary {binary} "
                f"{'exists' if binary.exists() else 'missing'}\n{out.stdout[-2000:]}"
                f"\n{out.stderr[-4000:]}"
            )
    found = _version_of(binary)
    if found != version:
        raise HarnessError(f"{binary} --version printed {found!r}, expected {version}")
    return binary


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A small JSON request with the stdlib (no event loop, usable from sync tests)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
        exc.close()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


@dataclass
class Proc:
    """A started process with its output in files."""

    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM then SIGKILL this process's own group (it was started as a new session).

        Only while the leader is unreaped: until then its PID, and so the group id, cannot
        have been reused by anything else.
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            if self.wait(grace) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.wait(grace)
        for f in self._files:
            f.close()
        self._files.clear()
        return self.popen.returncode

    def tail(self, chars: int = 3000) -> str:
        return (
            f"--- {self.name} (pid {self.pid}, rc {self.popen.poll()}): {' '.join(self.args)}\n"
            f"[stdout]\n{self.stdout()[-chars:]}\n[stderr]\n{self.stderr()[-chars:]}"
        )


@dataclass
class RunResult:
    """What ``opencode run`` left: its output, the session and the share it created."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    session_id: str | None = None
    share_url: str | None = None

    @property
    def share_id(self) -> str | None:
        if self.share_url is None:
            return None
        m = _SHARE_URL.search(self.share_url)
        return m.group(1) if m else None


@dataclass
class Opencode:
    """One isolated opencode installation state (HOME, XDG dirs, project) under ``root``."""

    binary: Path
    root: Path
    share_server: str  # base URL written as ``enterprise.url``, e.g. http://127.0.0.1:PORT
    timings: dict[str, float] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    serve_url: str | None = None
    extra_config: dict[str, Any] = field(default_factory=dict)
    llm_base_url: str | None = None

    # -- layout ----------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def config_path(self) -> Path:
        return self.home / ".config" / "opencode" / "opencode.json"

    def env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(QUIET_ENV)
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
            # opencode resolves its directory from $PWD before cwd: keep them in step.
            PWD=str(self.project),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_AUTHOR_NAME="agentsync-tests",
            GIT_AUTHOR_EMAIL="tests@agentsync.invalid",
            GIT_COMMITTER_NAME="agentsync-tests",
            GIT_COMMITTER_EMAIL="tests@agentsync.invalid",
        )
        return env

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - start, 3)

    def setup(self, llm_base_url: str, git: bool = True) -> None:
        """Write the config (custom provider ``fake`` -> ``llm_base_url``) and the project.

        The project holds ``notes.txt``; with ``git`` it is a repository with one commit, so
        opencode's snapshots can compute the session diff of files the agent changes.
        """
        self.llm_base_url = llm_base_url
        with self.step("setup"):
            for sub in (".config/opencode", ".local/share", ".cache", ".local/state"):
                (self.home / sub).mkdir(parents=True, exist_ok=True)
            self.project.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            config: dict[str, Any] = {
                "$schema": "https://opencode.ai/config.json",
                "autoupdate": False,
                "share": "manual",
                "enterprise": {"url": self.share_server},
                "model": MODEL,
                "small_model": MODEL,
                "provider": {
                    PROVIDER: {
                        "npm": "@ai-sdk/openai-compatible",
                        "name": "Fake LLM",
                        "options": {"baseURL": llm_base_url, "apiKey": "x"},
                        "models": {MODEL_ID: {"name": "Fake model"}},
                    }
                },
            }
            config.update(self.extra_config)
            self.config_path.write_text(json.dumps(config, indent=2))
            # opencode "installs" @opencode-ai/plugin into every config directory in the
            # background (npm registry, ~/.npm cache) unless node_modules exists and the lock
            # file lists it: seed both so no run ever touches the network.
            (self.config_path.parent / "node_modules").mkdir(exist_ok=True)
            lock = {"packages": {"": {"dependencies": {"@opencode-ai/plugin": VERSION}}}}
            (self.config_path.parent / "package-lock.json").write_text(json.dumps(lock))
            (self.project / "notes.txt").write_text(NOTES)
            if git:
                for cmd in (
                    ["git", "init", "-q", "-b", "main"],
                    ["git", "add", "notes.txt"],
                    ["git", "commit", "-q", "-m", "fixture"],
                ):
                    subprocess.run(cmd, cwd=self.project, env=self.env(), check=True, timeout=30)

    # -- processes -------------------------------------------------------------------------

    def spawn(self, name: str, *args: str, cwd: Path | None = None) -> Proc:
        n = sum(1 for p in self.procs if p.name == name)
        tag = f"{name}-{n}" if n else name
        out_path = self.log_dir / f"{tag}.stdout"
        err_path = self.log_dir / f"{tag}.stderr"
        out = open(out_path, "wb")  # noqa: SIM115 - closed by Proc.stop
        err = open(err_path, "wb")  # noqa: SIM115
        argv = [str(self.binary), *args]
        popen = subprocess.Popen(
            argv,
            cwd=cwd or self.project,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        proc = Proc(tag, argv, popen, out_path, err_path, [out, err])
        self.procs.append(proc)
        return proc

    def cli(self, name: str, *args: str, timeout: float = 60.0) -> Proc:
        """Run ``opencode ARGS`` to completion; :class:`HarnessError` on timeout."""
        proc = self.spawn(name, *args)
        if proc.wait(timeout) is None:
            proc.stop()
            raise HarnessError(f"{name} timed out after {timeout}s\n{self.logs()}")
        proc.stop()
        return proc

    def start_serve(self, timeout: float = 60.0) -> str:
        """Start ``opencode serve --port 0`` on loopback; return its URL once it answers."""
        with self.step("serve_start"):
            # --port 0: the kernel picks a free port, serve prints it (no bind race).
            proc = self.spawn(
                "serve", "serve", "--print-logs", "--port", "0", "--hostname", "127.0.0.1"
            )
            deadline = time.monotonic() + timeout
            while True:
                if proc.popen.poll() is not None:
                    raise HarnessError(f"opencode serve exited early\n{self.logs()}")
                m = _LISTENING.search(proc.stdout())
                if m:
                    url = m.group(1)
                    with contextlib.suppress(OSError):
                        status, _ = http_json("GET", f"{url}/session", timeout=5)
                        if status == 200:
                            break
                if time.monotonic() > deadline:
                    raise HarnessError(f"opencode serve not ready in {timeout}s\n{self.logs()}")
                time.sleep(0.1)
        self.serve_url = url
        return url

    def run(
        self,
        prompt: str,
        share: bool = True,
        attach: bool = True,
        timeout: float = 120.0,
        extra: tuple[str, ...] = (),
    ) -> RunResult:
        """``opencode run [--attach SERVE] [--share] --model fake/fake-model PROMPT``."""
        args = ["run", "--print-logs", "--model", MODEL]
        if attach:
            if self.serve_url is None:
                raise HarnessError("start_serve() first, or pass attach=False")
            args += ["--attach", self.serve_url, "--dir", str(self.project)]
        if share:
            args.append("--share")
        # run joins its message words with spaces but wraps any word that contains a space
        # in double quotes, so pass the prompt word by word to get it verbatim.
        args += [*extra, *prompt.split()]
        with self.step("run"):
            start = time.monotonic()
            proc = self.cli("run", *args, timeout=timeout)
            seconds = time.monotonic() - start
        result = RunResult(proc.popen.returncode, proc.stdout(), proc.stderr(), round(seconds, 3))
        if result.returncode != 0:
            raise HarnessError(f"opencode run exited {result.returncode}\n{self.logs()}")
        # The share URL is printed on stderr ("~  URL"), the session id only in the logs.
        m = _SHARE_URL.search(result.stderr) or _SHARE_URL.search(result.stdout)
        result.share_url = m.group(0) if m else None
        created = _CREATED.search(result.stderr)
        result.session_id = created.group(1) if created else None
        if attach:
            sessions = self.sessions()
            if sessions:
                newest = max(sessions, key=lambda s: s.get("time", {}).get("created", 0))
                result.session_id = newest.get("id")
                info = newest.get("share") or {}
                result.share_url = result.share_url or info.get("url")
        if share and result.share_url is None:
            raise HarnessError(f"opencode run --share printed no share URL\n{self.logs()}")
        return result

    # -- the serve API ---------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.serve_url is None:
            raise HarnessError("opencode serve is not running")
        sep = "&" if "?" in path else "?"
        query = urllib.parse.quote(str(self.project))
        return http_json(method, f"{self.serve_url}{path}{sep}directory={query}", body)

    def sessions(self) -> list[dict[str, Any]]:
        status, body = self.api("GET", "/session")
        if status != 200 or not isinstance(body, list):
            raise HarnessError(f"GET /session -> {status} {body!r}")
        return body

    def share(self, session_id: str) -> dict[str, Any]:
        """``POST /session/<id>/share`` on serve: (re)share a session; returns the session."""
        with self.step("share"):
            status, body = self.api("POST", f"/session/{session_id}/share")
        if status != 200:
            raise HarnessError(f"POST /session/{session_id}/share -> {status} {body!r}")
        return dict(body)

    def unshare(self, session_id: str) -> dict[str, Any]:
        """``DELETE /session/<id>/share`` on serve: the client sends ``DELETE /api/share/<id>``."""
        with self.step("unshare"):
            status, body = self.api("DELETE", f"/session/{session_id}/share")
        if status != 200:
            raise HarnessError(
                f"DELETE /session/{session_id}/share -> {status} {body!r}\n{self.logs()}"
            )
        return dict(body)

    def revert(self, session_id: str, message_id: str) -> dict[str, Any]:
        """``POST /session/<id>/revert``: undo file changes from ``message_id`` on.

        The only path in 1.18.33 that publishes a non-empty ``session_diff`` to the share.
        """
        with self.step("revert"):
            status, body = self.api(
                "POST", f"/session/{session_id}/revert", {"messageID": message_id}
            )
        if status != 200:
            raise HarnessError(f"POST /session/{session_id}/revert -> {status} {body!r}")
        return dict(body)

    def unrevert(self, session_id: str) -> dict[str, Any]:
        with self.step("unrevert"):
            status, body = self.api("POST", f"/session/{session_id}/unrevert")
        if status != 200:
            raise HarnessError(f"POST /session/{session_id}/unrevert -> {status} {body!r}")
        return dict(body)

    def delete_session(self, session_id: str) -> None:
        """``DELETE /session/<id>``: a shared session's share is removed with it."""
        with self.step("delete_session"):
            status, body = self.api("DELETE", f"/session/{session_id}")
        if status != 200:
            raise HarnessError(f"DELETE /session/{session_id} -> {status} {body!r}")

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """``GET /session/<id>/message``: ``[{"info", "parts"}]`` as serve holds them."""
        status, body = self.api("GET", f"/session/{session_id}/message")
        if status != 200 or not isinstance(body, list):
            raise HarnessError(f"GET /session/{session_id}/message -> {status} {body!r}")
        return body

    def sibling(self, name: str) -> Opencode:
        """Another isolated state (own HOME and database) beside this one, set up the same
        way: import a share there to see it arrive in an empty opencode."""
        other = Opencode(
            self.binary, self.root.parent / name, self.share_server, extra_config=self.extra_config
        )
        if self.llm_base_url is None:
            raise HarnessError("setup() first")
        other.setup(self.llm_base_url)
        return other

    # -- share server side -----------------------------------------------------------------

    def share_data(self, share_id: str) -> tuple[int, Any]:
        return http_json("GET", f"{self.share_server}/api/share/{share_id}/data")

    def wait_share_complete(self, share_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll ``GET /api/share/<id>/data`` until the last assistant turn is finished.

        Finished means: a ``session`` item, every assistant message has ``time.completed``,
        the newest one has ``finish`` other than ``tool-calls`` and a ``step-finish`` part.
        """
        with self.step("wait_synced"):
            deadline = time.monotonic() + timeout
            last: Any = None
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    status, last = self.share_data(share_id)
                    if status == 200 and isinstance(last, list) and share_complete(last):
                        return last
                time.sleep(0.2)
        raise HarnessError(
            f"share {share_id} not complete after {timeout}s; last data: "
            f"{json.dumps(last)[-2000:]}\n{self.logs()}"
        )

    def import_share(self, url: str, timeout: float = 60.0) -> Proc:
        """``opencode import URL`` (standalone, no serve needed); check its stdout."""
        with self.step("import"):
            return self.cli("import", "import", "--print-logs", url, timeout=timeout)

    def export(self, session_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """``opencode export SESSION`` parsed: ``{"info", "messages": [{"info", "parts"}]}``."""
        with self.step("export"):
            proc = self.cli("export", "export", session_id, timeout=timeout)
        text = proc.stdout()
        try:
            return dict(json.loads(text[text.index("{") :]))
        except ValueError as exc:
            raise HarnessError(f"opencode export printed no JSON\n{self.logs()}") from exc

    # -- teardown --------------------------------------------------------------------------

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(p.tail(chars) for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def __enter__(self) -> Opencode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def share_complete(items: list[dict[str, Any]]) -> bool:
    """True when merged share ``items`` hold a finished last assistant turn."""
    if not any(i.get("type") == "session" for i in items):
        return False
    assistants = [
        i["data"]
        for i in items
        if i.get("type") == "message" and (i.get("data") or {}).get("role") == "assistant"
    ]
    if not assistants or not all((a.get("time") or {}).get("completed") for a in assistants):
        return False
    last = max(assistants, key=lambda a: str(a.get("id")))
    if last.get("finish") in (None, "tool-calls"):
        return False
    return any(
        i.get("type") == "part"
        and (i.get("data") or {}).get("messageID") == last.get("id")
        and (i.get("data") or {}).get("type") == "step-finish"
        for i in items
    )
