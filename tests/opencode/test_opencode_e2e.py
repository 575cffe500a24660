"""The real opencode (npm ``opencode-ai`` 1.18.33) shares into a real agentsync server.

opencode runs against a scripted fake model (``fake_llm.py``) with ``enterprise.url``
pointed at agentsync, all on loopback (``harness.py``). While the agent works, headless
Chromium watches the share URL opencode printed; the reply must arrive live, in order.
Then ``opencode import`` reads the share back into an empty opencode, and unsharing
removes it from agentsync and ends the open page.

Needs npm (the first run installs opencode into ``~/.cache/agentsync-tests``, ~10 s) and
Chromium; without them it skips, and under ``AGENTSYNC_REQUIRE_SERVICES=1`` (CI) it fails.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerFactory, service_missing
from web.conftest import browser, open_page  # noqa: F401  (browser is a fixture)

from .fake_llm import FakeLLM, default_script
from .harness import HarnessError, Opencode, binary_path, install_opencode

PROMPT = "Read notes.txt and count its lines"


def opencode_binary() -> Path:
    if shutil.which("npm") is None and not binary_path().exists():
        service_missing("npm is needed to install opencode-ai from the npm registry")
    try:
        return install_opencode()
    except HarnessError as exc:
        service_missing(f"could not install opencode-ai: {exc}")


def wait_for_share_url(oc: Opencode, timeout: float = 60.0) -> str:
    """The share URL, as soon as opencode's serve reports the new session shared."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for session in oc.sessions():
            url = (session.get("share") or {}).get("url")
            if url:
                return str(url)
        time.sleep(0.05)
    raise HarnessError(f"no session was shared within {timeout}s\n{oc.logs()}")


async def page_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => ({
            conn: document.body.dataset.conn,
            seq: Number(document.body.dataset.rendered || 0),
            ids: [...document.querySelectorAll('#transcript article.msg')].map(a => a.dataset.id),
            text: document.querySelector('#transcript').textContent,
            navigations: performance.getEntriesByType('navigation').length,
        })"""
    )
    return state


async def test_opencode_shares_live_into_agentsync_and_imports_back(
    server_factory: ServerFactory,
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    binary = opencode_binary()
    srv = server_factory()  # the default limits and redaction apply to opencode too
    project = tmp_path / "a" / "project"
    script = default_script(
        read_path=str(project / "notes.txt"),
        bash_command="sleep 1.5 && wc -l notes.txt",
        missing_path=str(project / "missing.txt"),
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        with FakeLLM(script=script) as llm, Opencode(binary, tmp_path / "a", srv.url) as oc:
            oc.setup(llm.base_url)
            oc.start_serve()
            run = asyncio.create_task(asyncio.to_thread(oc.run, PROMPT))
            share_url = await asyncio.to_thread(wait_for_share_url, oc)
            share_id = share_url.rsplit("/", 1)[1]
            assert share_url == f"{srv.url}/share/{share_id}"

            # Chromium opens the share while the agent is still working.
            page, errors = await open_page(browser, share_url)
            await page.wait_for_selector("body[data-conn=live]")
            opened_at = (await page_state(page))["seq"]
            result = await run
            session_id = result.session_id
            assert session_id
            await asyncio.to_thread(oc.wait_share_complete, share_id)

            snapshot = (await http.get(f"/v1/sessions/{share_id}")).json()
            final_seq = snapshot["seq"]
            assert opened_at < final_seq, "the page did not see the reply arrive live"
            # A function, not an expression string: Playwright re-evals an expression
            # on every poll, which the viewer's CSP (script-src 'self') refuses; a
            # function is evaluated once, by the DevTools call that CSP exempts.
            await page.wait_for_function(
                "seq => Number(document.body.dataset.rendered) >= seq",
                arg=final_seq,
                timeout=15_000,
            )
            shown = await page_state(page)

            # The log: ordinary events 1..N, no gap, no duplicate.
            events = (await http.get(f"/v1/sessions/{share_id}/events?limit=10000")).json()
            assert [e["seq"] for e in events["events"]] == list(range(1, final_seq + 1))
            assert len({e["id"] for e in events["events"]}) == final_seq

            # The page: live all along (one navigation), in creation order, with the reply.
            messages = sorted(snapshot["messages"], key=lambda m: m["metadata"]["order"])
            assert shown["conn"] == "live" and shown["navigations"] == 1
            assert shown["ids"] == [m["id"] for m in messages]
            assert PROMPT in shown["text"]
            assert "hello from the fixture" in shown["text"]
            text = shown["text"]
            assert (
                text.index(PROMPT)
                < text.index("Let me read")
                < text.index("hello from the fixture")
            )
            assert snapshot["session"]["title"] and snapshot["status"] == "idle"
            tools = {
                (m["toolCalls"][0]["name"], m["toolCalls"][0]["state"]["status"])
                for m in messages
                if m.get("toolCalls")
            }
            assert tools == {("read", "completed"), ("bash", "completed"), ("read", "error")}
            assert not errors.exceptions and not errors.console, errors.__dict__

            # opencode import reads the share back into an empty opencode.
            with oc.sibling("b") as other:
                imported = await asyncio.to_thread(other.import_share, share_url)
                assert f"Imported session: {session_id}" in imported.stdout(), other.logs()
                exported = await asyncio.to_thread(other.export, session_id)
            original = oc.messages(session_id)
            assert [m["info"]["id"] for m in exported["messages"]] == [
                m["info"]["id"] for m in original
            ]
            assert [len(m["parts"]) for m in exported["messages"]] == [
                len(m["parts"]) for m in original
            ]

            # Unsharing deletes it from agentsync and ends the open page.
            await asyncio.to_thread(oc.unshare, session_id)
            assert (await http.get(f"/api/share/{share_id}/data")).status_code == 410
            assert (await http.get(f"/v1/sessions/{share_id}")).status_code == 410
            await page.wait_for_selector("body[data-conn=ended]", timeout=10_000)
