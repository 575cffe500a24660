"""Server-side rendering of a share page: the whole transcript, readable with no script.

All content is untrusted. Markdown is rendered by markdown-it-py with raw HTML off, links
limited to http(s) and mailto, and images shown as links (a remote image is a tracking
pixel at best). Code is highlighted by Pygments. The result then goes through nh3
(ammonia) with an allow-list of tags, attributes and URL schemes, so a bug in either of
the first two still cannot put a script or an event handler on the page.

The markup here is a contract with the client (``viewer/src/viewer.js``), which renders
the same structure for messages that change after the first paint:

    <article class="msg role-ROLE" data-id=ID data-rev=GEN.N> header, .body, details.tool*

Articles are shown in :func:`agentsync.opencode.display_order`; opencode's messages and parts
have their own markup (``opencode_view.py``, ``viewer/src/opencode.js``) in the same kind of
article.

Rendered markdown is cached by its source text: a page of a 10,000-event session is
mostly messages that no longer change.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

import nh3
import orjson
from markdown_it import MarkdownIt
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_SCHEMES = ("http:", "https:", "mailto:")
MAX_HIGHLIGHT = 64 * 1024  # longer code blocks are shown plain: Pygments is slow on them

_FORMATTER = HtmlFormatter(nowrap=True)

_TAGS = {
    "a", "p", "br", "hr", "em", "strong", "s", "code", "pre", "span", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "span": {"class"}, "ol": {"start"}}


def _safe_link(url: str) -> bool:
    lowered = url.strip().lower()
    if lowered.startswith(("#", "/")) and not lowered.startswith("//"):
        return True
    return lowered.startswith(ALLOWED_SCHEMES)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    if not lang or len(code) > MAX_HIGHLIGHT:
        return ""
    try:
        lexer = get_lexer_by_name(lang.split()[0])
    except ClassNotFound:
        return ""
    return str(pygments_highlight(code, lexer, _FORMATTER))


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    md.validateLink = _safe_link  # type: ignore[method-assign]  # markdown-it-py's hook
    return md


_MD = _markdown()


@functools.lru_cache(maxsize=8192)
def markdown(text: str) -> str:
    """Markdown to sanitised HTML; raw HTML in ``text`` is shown as text, never parsed."""
    return nh3.clean(
        _MD.render(text),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )


def _text(value: Any) -> str:
    """Tool arguments and outputs: strings as they are, anything else as indented JSON."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return str(value)


def clock(ts: Any) -> tuple[str, str]:
    """(ISO datetime, HH:MM:SS) in UTC for a timestamp in ms; the client shows local time."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "", ""
    try:
        moment = datetime.fromtimestamp(ts / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return "", ""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"), moment.strftime(
        "%H:%M:%S"
    )


def tool_state(result: dict[str, Any] | None) -> tuple[str, str]:
    """(css state, label) of a tool call from its result."""
    if result is None:
        return "pending", "running"
    if result.get("error"):
        return "error", "error"
    return "ok", "done"


def call_key(value: Any) -> Hashable:
    """A tool call's id as a key that matches a result's ``toolCallId`` as the client's Map
    matches them: strings and numbers by value (True is not 1), an object or array never.
    Ids inside a ``message`` event are not validated, and a dict is not hashable."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if value is None or isinstance(value, str):
        return value
    return object()


def _dicts(items: Any) -> list[dict[str, Any]]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def tool_html(
    call: dict[str, Any] | None,
    result: dict[str, Any] | None,
    *,
    state: tuple[str, str] | None = None,
    summary: str = "",
    extra: str = "",
) -> str:
    """``details.tool`` of one call and its result. ``state`` overrides the (css state,
    label) read from the result, ``summary`` is a one-line gist shown after the tool's
    name, ``extra`` more of the tool-io markup after the output."""
    call_id = (call or {}).get("id") if call else (result or {}).get("toolCallId")
    name = str((call or {}).get("name") or "tool result")
    css, label = state or tool_state(result)
    gist = f'<span class="tool-summary">{html.escape(summary)}</span>' if summary else ""
    parts = [
        f'<details class="tool state-{css}" data-call="{html.escape(str(call_id))}">',
        f'<summary><span class="tool-name">{html.escape(name)}</span>{gist}',
        f'<span class="tool-state">{label}</span></summary><div class="tool-io">',
    ]
    if call is not None:
        parts.append('<div class="tool-label">arguments</div>')
        parts.append(f'<pre class="tool-args">{html.escape(_text(call.get("arguments")))}</pre>')
    if result is not None:
        kind = "error" if result.get("error") else "result"
        output = result.get("output")
        if result.get("error") and not output:
            output = result.get("error")
        parts.append(f'<div class="tool-label">{kind}</div>')
        parts.append(f'<pre class="tool-out">{html.escape(_text(output))}</pre>')
    parts.append(extra)
    parts.append("</div></details>")
    return "".join(parts)


def message_html(message: dict[str, Any]) -> str:
    role = html.escape(str(message.get("role", "")))
    iso, hms = clock(message.get("ts"))
    content = message.get("content")
    parts = [
        f'<article class="msg role-{role}" data-id="{html.escape(str(message.get("id")))}"'
        ' data-rev="0.0">',
        f'<header><span class="role">{role}</span>',
        f'<time datetime="{iso}">{hms}</time></header>' if iso else "</header>",
        f'<div class="body md">{markdown(content) if isinstance(content, str) else ""}</div>',
    ]
    calls = _dicts(message.get("toolCalls"))
    results = {call_key(r.get("toolCallId")): r for r in _dicts(message.get("toolResults"))}
    for call in calls:
        parts.append(tool_html(call, results.pop(call_key(call.get("id")), None)))
    for result in results.values():
        parts.append(tool_html(None, result))
    parts.append("</article>")
    return "".join(parts)


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>' or '&'."""
    raw = orjson.dumps(obj)
    return (
        raw.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026").decode()
    )
