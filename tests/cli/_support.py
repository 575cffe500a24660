"""Running the ``agentsync`` CLI as a user would: a subprocess, and for the live views a
pseudo-terminal whose output is read back as a person would see it."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\r")


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSYNC_")}
    env["AGENTSYNC_HOME"] = str(home)
    return env


def run_cli(
    *args: str, home: Path, timeout: float = 30, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsync.cli", *args],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input.decode() if input is not None else None,
    )


class PtyProcess:
    """The CLI in a 120x40 pseudo-terminal; a thread keeps everything it draws."""

    def __init__(self, *args: str, home: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = cli_env(home)
        env["TERM"] = "xterm-256color"
        env.pop("NO_COLOR", None)
        env.pop("COLUMNS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentsync.cli", *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self._master = master
        self._raw = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self._raw += chunk

    @property
    def text(self) -> str:
        """Everything drawn so far, without escape sequences."""
        with self._lock:
            raw = bytes(self._raw)
        return ANSI.sub("", raw.decode(errors="replace"))

    def wait_for(self, needle: str, timeout: float = 5.0) -> float:
        """Seconds until ``needle`` appeared; fails with the screen so far if it does not."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if needle in self.text:
                return time.monotonic() - start
            if self.proc.poll() is not None and needle not in self.text:
                time.sleep(0.1)
                if needle in self.text:
                    break
                raise AssertionError(
                    f"exited {self.proc.returncode} before showing {needle!r}:\n{self.text}"
                )
            time.sleep(0.02)
        if needle in self.text:
            return time.monotonic() - start
        raise AssertionError(f"{needle!r} not shown within {timeout}s; screen:\n{self.text}")

    def wait(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(2)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._reader.join(2)
        os.close(self._master)
