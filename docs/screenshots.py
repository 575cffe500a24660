"""Screenshots of the share page for the docs: desktop, phone and dark mode.

Starts ``agentsync serve`` on a free loopback port with a temporary data directory, runs the
scripted demo session into it (``agentsync demo --fast``), opens the viewer link in headless
Chromium (``/usr/bin/chromium``, driven by Playwright; never downloaded), expands one tool
call so its arguments and output show, and saves viewport screenshots:

    docs/viewer-desktop.png   1280x900
    docs/viewer-phone.png     390x844, device scale factor 2, mobile
    docs/viewer-dark.png      1280x900, prefers-color-scheme: dark
    docs/viewer-opencode.png  1280x900, the opencode session recorded in tests/opencode/fixtures
                              replayed through the opencode share API

    python docs/screenshots.py
    python docs/screenshots.py --out /tmp/shots --call t3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

HOST = "127.0.0.1"
CHROMIUM = os.environ.get("AGENTSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
HERE = Path(__file__).resolve().parent
OPENCODE_CAPTURE = HERE.parent / "tests" / "opencode" / "fixtures" / "capture-1.18.33.json"
OPENCODE_CALL = "call_bash_4"
SHOTS: dict[str, dict[str, Any]] = {
    "viewer-desktop.png": {"viewport": {"width": 1280, "height": 900}},
    "viewer-phone.png": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
    "viewer-dark.png": {"viewport": {"width": 1280, "height": 900}, "color_scheme": "dark"},
}


def agentsync_exe() -> str:
    return shutil.which("agentsync") or str(Path(sys.executable).with_name("agentsync"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(data: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        agentsync_exe(), "serve", "--host", HOST, "--port", str(port), "--data", data,
        "--rate-limit", "0", "--no-address-limits", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"agentsync serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("agentsync serve did not get ready in 30 s")
        time.sleep(0.1)


def run_demo(url: str, state: str) -> str:
    """Stream the demo session into the server; its viewer link."""
    out = subprocess.run(
        [agentsync_exe(), "demo", "--server", url, "--fast", "--state", state],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("viewer:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no 'viewer:' line in the demo's output:\n{out}")


def share_opencode(url: str) -> str:
    """Replay the syncs a real opencode sent (tests/opencode/fixtures); the viewer link."""
    capture = json.loads(OPENCODE_CAPTURE.read_text())
    path = f"/api/share/{capture['meta']['share_id']}/sync"
    with httpx.Client(base_url=url, timeout=10) as http:
        share = http.post("/api/share", json={"sessionID": capture["meta"]["session_id"]}).json()
        for request in capture["requests"]:
            if request["method"] == "POST" and request["path"] == path:
                body = {"secret": share["secret"], "data": request["body"]["data"]}
                http.post(f"/api/share/{share['id']}/sync", json=body).raise_for_status()
    return str(share["url"])


def shoot(
    browser: Browser, link: str, seq: int, call: str, path: Path, opts: dict[str, Any]
) -> None:
    ctx = browser.new_context(locale="en-US", timezone_id="UTC", **opts)
    try:
        page = ctx.new_page()
        page.goto(link, wait_until="load")
        page.wait_for_selector("body[data-conn=live]")
        page.wait_for_function(
            "(n) => Number(document.body.dataset.rendered) >= n", arg=seq, timeout=30_000
        )
        summary = page.locator(f"details.tool[data-call='{call}'] > summary")
        summary.click()
        page.wait_for_selector(f"details.tool[data-call='{call}'][open]")
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)  # let the pulse animation and fonts settle
        page.screenshot(path=str(path))
        width = page.evaluate("document.documentElement.scrollWidth")
        inner = page.evaluate("window.innerWidth")
        note = "" if width <= inner else f"  (horizontal overflow: {width}px > {inner}px)"
        print(f"{path}{note}")
    finally:
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE, help="directory for the PNGs")
    ap.add_argument("--call", default="t2", help="data-call of the tool call to expand")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="agentsync-shots-")
    proc, url = start_server(os.path.join(tmp, "data"))
    try:
        link = run_demo(url, os.path.join(tmp, "shares.json"))
        seq = int(httpx.get(url + "/v1/sessions/" + link.rsplit("/", 1)[1]).json()["seq"])
        opencode = share_opencode(url)
        opencode_seq = int(
            httpx.get(url + "/v1/sessions/" + opencode.rsplit("/", 1)[1]).json()["seq"]
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for name, opts in SHOTS.items():
                    shoot(browser, link, seq, a.call, a.out / name, opts)
                shoot(
                    browser,
                    opencode,
                    opencode_seq,
                    OPENCODE_CALL,
                    a.out / "viewer-opencode.png",
                    SHOTS["viewer-desktop.png"],
                )
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
