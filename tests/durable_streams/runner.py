"""Run the official Durable Streams server conformance suite against a URL.

The suite is npm ``@durable-streams/server-conformance-tests`` (pinned in
``conformance/package-lock.json``); it exports ``runConformanceTests({ baseUrl })`` and
nothing runs it well from inside ``node_modules`` (its CLI hands vitest a file there, which
vitest's default ``exclude`` skips). So ``conformance/`` is a tiny npm project whose one test
file calls the suite, and this module:

1. installs that project with ``npm ci`` once into
   ``~/.cache/agentsync-tests/durable-streams-conformance-<VERSION>`` (re-installed when
   ``package.json`` or ``package-lock.json`` change; a file lock serialises installers);
2. lays the project out in ``workdir`` with ``node_modules`` a symlink to the cached one;
3. runs ``vitest run`` with the JSON reporter (``DS_BASE_URL`` = the server under test) in its
   own session, ended by its process-group id on timeout;
4. parses the report into a :class:`ConformanceResult`: passed, failed (with messages) and
   skipped test names, ``"Area > Sub-area > test title"`` as vitest shows them.

Typical use::

    result = run_conformance("http://127.0.0.1:8080", tmp_path, timeout=600)
    assert not result.failed, result.summary()

or from a shell: ``python tests/durable_streams/runner.py http://127.0.0.1:4437``.

Environment knobs: ``AGENTSYNC_DS_CACHE`` (cache root, default ``~/.cache/agentsync-tests``).
Needs ``node`` >= 20.19 and ``npm`` on PATH, and the npm registry for the first install.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "0.3.6"  # @durable-streams/server-conformance-tests, as pinned in conformance/
PROJECT_DIR = Path(__file__).resolve().parent / "conformance"
PROJECT_FILES = ("package.json", "package-lock.json", "vitest.config.mjs", "conformance.test.mjs")
REPORT_NAME = "conformance-report.json"
# Environment passed through to vitest; everything else is dropped so a developer's
# NODE_OPTIONS or VITEST_* settings cannot change the run.
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE")


class ConformanceError(RuntimeError):
    """The suite could not be installed or run (not: some tests failed)."""


@dataclass
class ConformanceResult:
    """What one run of the suite found. Test names are ``"A > B > title"``."""

    base_url: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> failure message(s)
    skipped: list[str] = field(default_factory=list)
    durations_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # file-level errors (import, hooks)
    seconds: float = 0.0  # wall time of the vitest run (not the install)
    returncode: int | None = None
    report_path: Path | None = None
    stdout_path: Path | None = None
    stderr_path: Path | None = None

    @property
    def total(self) -> int:
        return len(self.passed) + len(self.failed) + len(self.skipped)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors and bool(self.passed)

    def summary(self, max_message: int = 400) -> str:
        lines = [
            f"Durable Streams conformance {VERSION} against {self.base_url}: "
            f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped "
            f"of {self.total} in {self.seconds:.1f}s (vitest exit {self.returncode})"
        ]
        lines += [f"ERROR {e[:max_message]}" for e in self.errors]
        for name, message in self.failed.items():
            first = " ".join(message.split())[:max_message]
            lines.append(f"FAIL {name}\n     {first}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "base_url": self.base_url,
            "total": self.total,
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "errors": self.errors,
            "seconds": self.seconds,
            "returncode": self.returncode,
        }


def cache_root() -> Path:
    env = os.environ.get("AGENTSYNC_DS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "agentsync-tests"


def install_dir(version: str = VERSION) -> Path:
    """Where :func:`install_conformance` keeps ``node_modules`` (may not exist yet)."""
    return cache_root() / f"durable-streams-conformance-{version}"


def _lock_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update(name.encode() + b"\0" + (PROJECT_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()


def _installed(prefix: Path, digest: str) -> bool:
    stamp = prefix / ".agentsync-installed"
    vitest = prefix / "node_modules" / "vitest" / "vitest.mjs"
    return vitest.exists() and stamp.exists() and stamp.read_text().strip() == digest


def _node_ok() -> None:
    node = shutil.which("node")
    if node is None:
        raise ConformanceError("node is not on PATH; the conformance suite needs Node >= 20.19")
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    parts = out.stdout.strip().lstrip("v").split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError) as exc:
        raise ConformanceError(f"node --version printed {out.stdout!r}") from exc
    if (major, minor) < (20, 19):
        raise ConformanceError(f"node {out.stdout.strip()}: vitest 4 / vite 8 need >= 20.19")


def install_conformance(timeout: float = 600.0) -> Path:
    """The cached npm project (its directory), installed with ``npm ci`` on first use.

    ``npm ci`` installs exactly ``conformance/package-lock.json``; the digest of
    ``package.json`` + lock is stamped in the directory, so editing either re-installs and
    later calls cost a stat. A file lock serialises concurrent installers.
    """
    prefix = install_dir()
    digest = _lock_digest()
    if _installed(prefix, digest):
        return prefix
    npm = shutil.which("npm")
    if npm is None:
        raise ConformanceError("npm is not on PATH; it is needed to install the conformance suite")
    _node_ok()
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f"durable-streams-conformance-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(prefix, digest):
            return prefix
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PROJECT_DIR / name, prefix / name)
        (prefix / ".agentsync-installed").unlink(missing_ok=True)
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            out = subprocess.run(cmd, cwd=prefix, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ConformanceError(
                f"{' '.join(cmd)} in {prefix} timed out after {timeout}s"
            ) from exc
        if out.returncode != 0 or not (prefix / "node_modules" / "vitest" / "vitest.mjs").exists():
            raise ConformanceError(
                f"{' '.join(cmd)} in {prefix} exited {out.returncode}\n"
                f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
            )
        (prefix / ".agentsync-installed").write_text(digest + "\n")
    return prefix


def _prepare(workdir: Path, prefix: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copyfile(PROJECT_DIR / name, workdir / name)
    link = workdir / "node_modules"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == (prefix / "node_modules").resolve():
            return
        raise ConformanceError(f"{link} exists and is not the cached node_modules")
    link.symlink_to(prefix / "node_modules", target_is_directory=True)


def _name(assertion: dict[str, Any]) -> str:
    return " > ".join([*assertion.get("ancestorTitles", []), assertion.get("title", "?")])


def parse_report(report: dict[str, Any], result: ConformanceResult) -> None:
    """Fill ``result`` from vitest's JSON reporter output (Jest-compatible shape)."""
    for file_result in report.get("testResults", []):
        assertions = file_result.get("assertionResults", [])
        if (
            file_result.get("status") == "failed"
            and file_result.get("message")
            and not any(a.get("status") == "failed" for a in assertions)
        ):
            result.errors.append(str(file_result["message"]))
        for a in assertions:
            name = _name(a)
            if name in result.durations_ms or name in result.failed:
                # Duplicate titles exist in the suite; keep both apart.
                n = 2
                while f"{name} #{n}" in result.durations_ms or f"{name} #{n}" in result.failed:
                    n += 1
                name = f"{name} #{n}"
            status = a.get("status")
            if a.get("duration") is not None:
                result.durations_ms[name] = float(a["duration"])
            if status == "passed":
                result.passed.append(name)
            elif status == "failed":
                result.failed[name] = "\n".join(a.get("failureMessages") or ["(no message)"])
            else:  # skipped, pending, todo
                result.skipped.append(name)


_FAIL_LINE = re.compile(r"^ FAIL  \S+ > (.+)$")


def _add_console_messages(result: ConformanceResult, console: str) -> None:
    """Prefix each failure with vitest's console summary of it ("Test timed out in 5000ms.",
    "AssertionError: expected 404 to be 200 ..."): the JSON report keeps only the error's
    stack, which for timeouts is a bare ``Error: STACK_TRACE_ERROR``."""
    lines = console.splitlines()
    for i, line in enumerate(lines):
        m = _FAIL_LINE.match(line)
        if not m or m.group(1) not in result.failed:
            continue
        summary: list[str] = []
        for follow in lines[i + 1 : i + 12]:
            if (
                follow.startswith((" FAIL ", " \u276f ", "\u23af"))
                or follow.strip() == "- Expected"
            ):
                break
            if follow.strip():
                summary.append(follow.strip())
        if summary:
            result.failed[m.group(1)] = "\n".join(summary) + "\n\n" + result.failed[m.group(1)]


def run_conformance(
    base_url: str,
    workdir: Path,
    timeout: float = 900.0,
    *,
    long_poll_timeout_ms: int | None = None,
    test_name_pattern: str | None = None,
    install_timeout: float = 600.0,
) -> ConformanceResult:
    """Run the suite against ``base_url`` (e.g. ``http://127.0.0.1:8080``) in ``workdir``.

    ``workdir`` receives the project files, a ``node_modules`` symlink to the cache, the
    JSON report (``conformance-report.json``) and vitest's stdout/stderr. ``timeout`` bounds
    the vitest run (the install has ``install_timeout``); on expiry the process group is
    killed and :class:`ConformanceError` raised. ``long_poll_timeout_ms`` tells the suite
    the server's long-poll timeout (its default assumes <= 20 s). ``test_name_pattern`` is
    vitest's ``-t`` (a regex on the full test name) to run a subset.
    A run where tests fail returns normally; check :attr:`ConformanceResult.failed`.
    """
    prefix = install_conformance(install_timeout)
    workdir = Path(workdir).resolve()
    _prepare(workdir, prefix)
    report = workdir / REPORT_NAME
    report.unlink(missing_ok=True)
    result = ConformanceResult(
        base_url=base_url,
        report_path=report,
        stdout_path=workdir / "vitest.stdout",
        stderr_path=workdir / "vitest.stderr",
    )
    node = shutil.which("node") or "node"
    cmd = [
        node,
        str(workdir / "node_modules" / "vitest" / "vitest.mjs"),
        "run",
        "--config",
        str(workdir / "vitest.config.mjs"),
        "--root",
        str(workdir),
        "--reporter=default",
        "--reporter=json",
        f"--outputFile.json={report}",
    ]
    if test_name_pattern:
        cmd += ["-t", test_name_pattern]
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
    env.update(DS_BASE_URL=base_url, NO_COLOR="1", FORCE_COLOR="0", CI="1")
    if long_poll_timeout_ms is not None:
        env["DS_LONG_POLL_TIMEOUT_MS"] = str(long_poll_timeout_ms)
    assert result.stdout_path is not None and result.stderr_path is not None
    start = time.monotonic()
    with open(result.stdout_path, "wb") as out, open(result.stderr_path, "wb") as err:
        popen = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            result.returncode = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(popen)
            raise ConformanceError(
                f"vitest did not finish in {timeout}s against {base_url}\n"
                f"{_tail(result.stdout_path)}\n{_tail(result.stderr_path)}"
            ) from None
        finally:
            _stop_group(popen)
    result.seconds = round(time.monotonic() - start, 2)
    if not report.exists():
        raise ConformanceError(
            f"vitest exited {result.returncode} without writing {report}\n"
            f"{_tail(result.stdout_path)}\n{_tail(result.stderr_path)}"
        )
    parse_report(json.loads(report.read_text()), result)
    _add_console_messages(result, result.stderr_path.read_text(errors="replace"))
    if result.total == 0 and not result.errors:
        result.errors.append(f"vitest ran no tests\n{_tail(result.stdout_path)}")
    return result


def _stop_group(popen: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM then SIGKILL the group led by ``popen`` (its own session).

    Only while the leader is unreaped: until then its PID, and so the group id, cannot have
    been reused by anything else. vitest's pool workers are in that group and end with it.
    """
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(grace)


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url", help="server under test, e.g. http://127.0.0.1:4437")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--long-poll-timeout-ms", type=int, default=None)
    parser.add_argument("-t", "--test-name-pattern", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    workdir = args.workdir
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="ds-conformance-"))
    result = run_conformance(
        args.base_url,
        workdir,
        args.timeout,
        long_poll_timeout_ms=args.long_poll_timeout_ms,
        test_name_pattern=args.test_name_pattern,
    )
    print(result.summary())
    print(f"report: {result.report_path}")
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
