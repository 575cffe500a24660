"""Real headless Chromium (Debian's ``chromium``) driven by Playwright's Python package.

The browser is never downloaded: Playwright launches ``/usr/bin/chromium``. Without it
these tests skip, except under ``AGENTSYNC_REQUIRE_SERVICES=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import service_missing

CHROMIUM = os.environ.get("AGENTSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _missing() -> str | None:
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e .[dev])"
    return None


class PageErrors:
    """Everything the page reported: console errors, uncaught exceptions, dialogs."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.dialogs: list[str] = []


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    reason = _missing()
    if reason is not None:
        service_missing(f"browser tests need Chromium: {reason}")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Any, url: str, **context: Any) -> tuple[Any, PageErrors]:
    """A new page at ``url`` that records errors and dismisses (and records) any dialog."""
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    errors = PageErrors()

    def on_console(msg: Any) -> None:
        # The favicon and similar resource misses are not script errors.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            errors.console.append(msg.text)

    async def on_dialog(dialog: Any) -> None:
        errors.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.exceptions.append(str(exc)))
    page.on("dialog", on_dialog)
    await page.goto(url)
    return page, errors


async def transcript(page: Any) -> list[dict[str, Any]]:
    """What the page shows: per message, its id, role, text and tool calls."""
    return list(
        await page.evaluate(
            """() => [...document.querySelectorAll('#transcript article.msg')].map(a => ({
                id: a.dataset.id,
                role: a.querySelector('.role').textContent,
                text: a.querySelector('.body').textContent.trim(),
                tools: [...a.querySelectorAll('details.tool')].map(d => ({
                    id: d.dataset.call,
                    name: d.querySelector('.tool-name').textContent,
                    state: d.querySelector('.tool-state').textContent,
                })),
            }))"""
        )
    )
