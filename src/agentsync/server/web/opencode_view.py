"""opencode sessions on the share page: the server's first paint of them.

``agentsync.opencode`` stores each opencode message and each of its parts as an agentsync
message whose ``metadata.opencode`` says which (``kind`` is ``message`` or ``part``). This
renders them as one group per opencode message: a compact header article (role, agent,
model, tokens, cost, time, "working…" until it completes), then one article per part
(markdown text, a folded reasoning block, a tool call, a step line…), with no role label
of their own. :func:`display_order` puts each part right under its message.

``viewer/src/opencode.js`` is the client's twin and must produce the same markup, down to
the number formats: counts, costs and durations are formatted with integer arithmetic (or
rounding that JavaScript's ``toFixed`` also does) so both sides print the same digits.
Everything from the session is text: escaped here, ``textContent`` there; markdown goes
through :func:`markdown`; a file part's URL is a link only when it is http(s).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from agentsync.server.web.render import call_key, clock, markdown, message_html, tool_html

_LIMIT = 10**15  # larger "numbers" are nonsense; JavaScript would print them differently
_TOOL_STATES = {
    "pending": ("pending", "running"),
    "running": ("pending", "running"),
    "completed": ("ok", "done"),
    "error": ("error", "error"),
}
_PATH_TOOLS = frozenset({"read", "edit", "write", "multiedit", "list"})
_PATTERN_TOOLS = frozenset({"grep", "glob"})
_YEAR_10000 = 253_402_300_800_000  # ms
_OPEN_DIFFS = 8  # the session's list of changed files starts open up to this many files
MINUS = "\u2212"  # before a count of deleted lines: a minus sign, as wide as the plus


@dataclass(frozen=True, slots=True)
class Context:
    """What rendering a part needs from the session: paths under ``directory`` (the
    opencode session's working directory, "" when unknown) are shown relative to it."""

    directory: str = ""

    @classmethod
    def of(cls, info: dict[str, Any]) -> Context:
        session = _dict(_dict(info.get("metadata")).get("opencode.session"))
        directory = session.get("directory")
        return cls(directory.rstrip("/") if isinstance(directory, str) else "")


def opencode_meta(message: dict[str, Any]) -> dict[str, Any] | None:
    """``metadata.opencode`` of an opencode message or part, else None."""
    meta = _dict(message.get("metadata")).get("opencode")
    if isinstance(meta, dict) and meta.get("kind") in ("message", "part"):
        return meta
    return None


def article_html(message: dict[str, Any], context: Context | None = None) -> str:
    """The article of any message: opencode's own markup, or :func:`message_html`."""
    meta = opencode_meta(message)
    if meta is None:
        return message_html(message)
    context = context or Context()
    role = _str(message.get("role"))
    if meta["kind"] == "message":
        classes, inner = "oc-message", _message_inner(message, role, _dict(meta.get("info")))
    else:
        classes, inner = _part_inner(message, _dict(meta.get("part")), context)
    return (
        f'<article class="msg role-{re.sub("[^a-z]", "", role)} oc {classes}"'
        f' data-id="{_esc(str(message.get("id")))}" data-rev="0.0">{inner}</article>'
    )


# --- one opencode message: the group's header -----------------------------------------


def _message_inner(message: dict[str, Any], role: str, info: dict[str, Any]) -> str:
    out = [_span("role", role)]
    agent = _str(info.get("agent")) or _str(info.get("mode"))
    if agent:
        out.append(_span("oc-agent", agent, "agent"))
    model = _model_id(info)
    if model:
        out.append(_span("oc-model", model, "model"))
    out.append(_tokens(info.get("tokens")))
    out.append(_cost(info.get("cost"), "cost"))
    times = _dict(info.get("time"))
    created = _moment(times.get("created"))
    iso, hms = clock(created if created is not None else message.get("ts"))
    if iso:
        out.append(f'<time datetime="{iso}">{hms}</time>')
    took = _elapsed(times.get("created"), times.get("completed"))
    if took:
        out.append(_span("oc-duration", took, "duration"))
    failed = _is_error(info.get("error"))
    if role == "assistant" and times.get("completed") is None and not failed:
        out.append(_span("oc-working", "working…"))
    inner = f"<header>{_row(out)}</header>"
    content = message.get("content")
    if isinstance(content, str) and content:
        inner += f'<div class="body md">{markdown(content)}</div>'
    if failed:
        inner += _error(info.get("error"))
    return inner


def _model_id(info: dict[str, Any]) -> str:
    """``providerID/modelID``: an assistant message names them, a user message has them
    under ``model``."""
    model = _dict(info.get("model"))
    provider = _str(info.get("providerID")) or _str(model.get("providerID"))
    model_id = _str(info.get("modelID")) or _str(model.get("modelID"))
    return "/".join(part for part in (provider, model_id) if part)


def _error(error: Any) -> str:
    if isinstance(error, dict):
        name = _str(error.get("name")) or "error"
        text = _str(_dict(error.get("data")).get("message")) or _str(error.get("message"))
    else:
        name, text = "error", _str(error)
    detail = _span("oc-error-message", text) if text else ""
    return f'<div class="oc-error">{_row([_span("oc-error-name", name), detail])}</div>'


# --- one part -------------------------------------------------------------------------


def _part_inner(message: dict[str, Any], part: dict[str, Any], context: Context) -> tuple[str, str]:
    """(article classes, inner markup) of a part."""
    kind = part.get("type")
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    if kind == "text":
        synthetic = " oc-synthetic" if part.get("synthetic") is True else ""
        return f"oc-part part-text{synthetic}", f'<div class="body md">{markdown(text)}</div>'
    if kind == "reasoning":
        times = _dict(part.get("time"))
        done = times.get("end") is not None
        took = _elapsed(times.get("start"), times.get("end")) if done else ""
        label = _span("oc-fold-label", "Reasoning" if done else "Thinking…")
        summary = _row([label, _span("oc-duration", took, "duration") if took else ""])
        return "oc-part part-reasoning", (
            f'<details class="oc-fold"><summary>{summary}</summary>'
            f'<div class="body md">{markdown(text)}</div></details>'
        )
    if kind == "tool":
        return "oc-part part-tool", _tool_inner(message, part, context)
    if kind == "step-start":
        return "oc-part part-step-start", ""
    if kind == "step-finish":
        reason = _str(part.get("reason"))
        return "oc-part part-step-finish", _line(
            _span("oc-kind", "step"),
            _span("oc-reason", reason, "finish reason") if reason else "",
            _tokens(part.get("tokens")),
            _cost(part.get("cost"), "cost"),
        )
    if kind == "patch":
        listed = part.get("files")
        files = [f for f in listed if isinstance(f, str)] if isinstance(listed, list) else []
        names = ", ".join(rel_path(f, context.directory) for f in files)
        files_span = _span("oc-files", names, "\n".join(files))
        return "oc-part part-patch", _line(_span("oc-kind", "changed:"), files_span)
    if kind == "file":
        return "oc-part part-file", _line(*_file(part))
    return "oc-part part-other", _line(*_other(part))


def _tool_inner(message: dict[str, Any], part: dict[str, Any], context: Context) -> str:
    calls = _dicts(message.get("toolCalls"))
    results = {call_key(r.get("toolCallId")): r for r in _dicts(message.get("toolResults"))}
    if not calls and not results:
        name = _str(part.get("tool")) or "tool"
        return _line(_span("oc-kind", "tool"), _span("tool-name", name))
    out = []
    for call in calls:
        result = results.pop(call_key(call.get("id")), None)
        state = _dict(call.get("state"))
        out.append(
            tool_html(
                call,
                result,
                state=_TOOL_STATES.get(_str(state.get("status"))),
                summary=tool_summary(call, context.directory),
                extra=_tool_diff(state),
            )
        )
    out.extend(tool_html(None, result) for result in results.values())
    return "".join(out)


def tool_summary(call: dict[str, Any], directory: str = "") -> str:
    """The gist of a tool call for its one-line summary: a command, a path, a pattern;
    else the title opencode gave the call."""
    name = _str(call.get("name"))
    args = _dict(call.get("arguments"))
    gist = ""
    if name == "bash":
        gist = _str(args.get("command"))
    elif name in _PATH_TOOLS:
        gist = rel_path(_str(args.get("filePath")) or _str(args.get("path")), directory)
    elif name in _PATTERN_TOOLS:
        gist = _str(args.get("pattern"))
    elif name == "webfetch":
        gist = _str(args.get("url"))
    elif name == "task":
        gist = _str(args.get("description"))
    return gist or _str(_dict(call.get("state")).get("title"))


def _tool_diff(state: dict[str, Any]) -> str:
    """An edit's diff, from the metadata opencode keeps beside its output."""
    diff = _dict(state.get("metadata")).get("diff")
    if not isinstance(diff, str) or not diff:
        return ""
    return f'<div class="tool-label">diff</div><pre class="oc-diff">{diff_html(diff)}</pre>'


def _file(part: dict[str, Any]) -> tuple[str, str, str]:
    url = _str(part.get("url"))
    name = _str(part.get("filename")) or "file"
    if url.lower().startswith(("http://", "https://")):
        shown = (
            f'<a class="oc-filename" href="{_esc(url)}" target="_blank"'
            f' rel="noopener noreferrer nofollow">{_esc(name)}</a>'
        )
    else:
        shown = _span("oc-filename", name)
    mime = _str(part.get("mime"))
    return _span("oc-kind", "file:"), shown, _span("oc-mime", mime) if mime else ""


def _other(part: dict[str, Any]) -> tuple[str, str]:
    """agent, subtask, retry, compaction, snapshot…: the type and, where there is one,
    the part's own one-line description."""
    kind = _str(part.get("type")) or "part"
    if kind == "retry":
        error = _dict(part.get("error"))
        detail = _str(_dict(error.get("data")).get("message")) or _str(error.get("name"))
    else:
        detail = _str(part.get("description")) or _str(part.get("name"))
    return _span("oc-kind", kind), _span("oc-detail", detail) if detail else ""


# --- the session: model, totals and changed files, beside the title --------------------


def session_info_html(info: dict[str, Any], messages: Iterable[dict[str, Any]]) -> str:
    """The inner markup of ``#session-info``: models, total tokens and cost (the sum over
    the assistant messages), opencode's version; "" for a session that is not opencode's."""
    meta = _dict(info.get("metadata"))
    session = _dict(meta.get("opencode.session"))
    models = meta.get("opencode.model")
    if "opencode.session" not in meta and "opencode.model" not in meta:
        return ""
    out = []
    seen = set()
    for model in _dicts(models):
        ident = _ident(model)
        name = _str(model.get("name")) or ident
        if name and ident not in seen:
            seen.add(ident)
            out.append(_span("oc-model", name, ident or "model"))
    if not out:
        fallback = _dict(session.get("model"))
        ident = _ident(fallback)
        if ident:
            out.append(_span("oc-model", ident, "model"))
    cost, tokens = usage(messages)
    if tokens is not None:
        out.append(_tokens(tokens, "total tokens"))
    if cost is not None:
        out.append(_cost(cost, "total cost"))
    version = _str(session.get("version"))
    if version:
        out.append(_span("oc-version", f"opencode {version}"))
    return _row(out)


def usage(messages: Iterable[dict[str, Any]]) -> tuple[float | None, dict[str, Any] | None]:
    """(total cost, total tokens shaped like one message's) over the assistant messages,
    each None when no message says; added in snapshot order, as the client adds them."""
    cost: float | None = None
    sums: dict[str, int] | None = None
    for message in messages:
        meta = opencode_meta(message)
        if meta is None or meta["kind"] != "message" or message.get("role") != "assistant":
            continue
        info = _dict(meta.get("info"))
        spent = _number(info.get("cost"))
        if spent is not None and spent >= 0:
            cost = spent if cost is None else cost + spent
        tokens = _dict(info.get("tokens"))
        cache = _dict(tokens.get("cache"))
        found = {
            "input": whole(tokens.get("input")),
            "output": whole(tokens.get("output")),
            "reasoning": whole(tokens.get("reasoning")),
            "read": whole(cache.get("read")),
            "write": whole(cache.get("write")),
        }
        if found["input"] is None and found["output"] is None:
            continue
        sums = sums or dict.fromkeys(found, 0)
        for key, value in found.items():
            sums[key] += value or 0
    if sums is None:
        return cost, None
    total = {
        "input": sums["input"],
        "output": sums["output"],
        "reasoning": sums["reasoning"],
        "cache": {"read": sums["read"], "write": sums["write"]},
    }
    return cost, total


def session_diff_html(info: dict[str, Any]) -> str:
    """The inner markup of ``#session-diff``: the session's changed files with their
    patches; "" when there are none."""
    diffs = _dicts(_dict(info.get("metadata")).get("opencode.session_diff"))
    if not diffs:
        return ""
    added = removed = 0
    files = []
    for diff in diffs:
        plus, minus = whole(diff.get("additions")) or 0, whole(diff.get("deletions")) or 0
        added, removed = added + plus, removed + minus
        status = _str(diff.get("status"))
        summary = _row(
            [
                _span("oc-diff-name", _str(diff.get("file")) or "?"),
                _span("oc-diff-status", status) if status else "",
                _span("oc-add", f"+{plus}"),
                _span("oc-del", f"{MINUS}{minus}"),
            ]
        )
        patch = _str(diff.get("patch"))
        body = f'<pre class="oc-diff">{diff_html(patch)}</pre>' if patch else ""
        files.append(
            f'<li><details class="oc-diff-file"><summary>{summary}</summary>{body}</details></li>'
        )
    count_text = f"{len(diffs)} file" + ("" if len(diffs) == 1 else "s")
    summary = _row(
        [
            _span("oc-kind", "changes"),
            _span("oc-count", count_text),
            _span("oc-add", f"+{added}"),
            _span("oc-del", f"{MINUS}{removed}"),
        ]
    )
    opened = " open" if len(diffs) <= _OPEN_DIFFS else ""
    return (
        f'<details class="oc-diffs"{opened}><summary>{summary}</summary>'
        f'<ul class="oc-diff-files">{"".join(files)}</ul></details>'
    )


def diff_html(patch: str) -> str:
    """A unified diff, one span per changed, hunk or header line."""
    out = []
    for line in patch.split("\n"):
        css = _diff_class(line)
        out.append(f'<span class="{css}">{_esc(line)}</span>' if css else _esc(line))
    return "\n".join(out)


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---", "Index:", "===")):
        return "d-meta"
    if line.startswith("@@"):
        return "d-hunk"
    if line.startswith("+"):
        return "d-add"
    if line.startswith("-"):
        return "d-del"
    return ""


# --- formats, the same digits as the client's ------------------------------------------


def whole(value: Any) -> int | None:
    """A count: a number from 0 to 10^15, rounded down."""
    number = _number(value)
    if number is None or number < 0 or number >= _LIMIT:
        return None
    return math.floor(number)


def count(n: int) -> str:
    """1234 -> "1.2k", 5_000_000 -> "5M": rounded down, so never overstated."""
    if n < 1000:
        return str(n)
    unit, scale = ("k", 100) if n < 1_000_000 else ("M", 100_000)
    units, tenth = divmod(n // scale, 10)
    return f"{units}{unit}" if tenth == 0 else f"{units}.{tenth}{unit}"


def money(value: Any) -> str:
    """Dollars with four decimals, rounded half up as JavaScript's toFixed does; "" for
    anything that is not a plausible cost."""
    number = _number(value)
    if number is None or number < 0 or number >= _LIMIT:
        return ""
    exact = Decimal(number + 0.0)  # + 0.0: -0.0 becomes 0.0
    return f"${exact.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms // 1000}.{ms % 1000 // 100}s"
    return f"{ms // 60_000}m {ms % 60_000 // 1000}s"


def rel_path(path: str, directory: str) -> str:
    """``path`` relative to ``directory`` when it is inside it."""
    if directory and path.startswith(directory + "/"):
        return path[len(directory) + 1 :]
    return path


def _elapsed(start: Any, end: Any) -> str:
    first, last = whole(start), whole(end)
    if first is None or last is None or last < first:
        return ""
    return duration(last - first)


def _moment(value: Any) -> int | None:
    """A timestamp in ms that both Python and JavaScript can show (before year 10000)."""
    ms = whole(value)
    return ms if ms is not None and ms < _YEAR_10000 else None


def _is_error(error: Any) -> bool:
    return isinstance(error, dict) or (isinstance(error, str) and error != "")


def _tokens(raw: Any, label: str = "tokens") -> str:
    tokens = _dict(raw)
    given = whole(tokens.get("input")), whole(tokens.get("output"))
    if given == (None, None):
        return ""
    reasoning = whole(tokens.get("reasoning"))
    cache = _dict(tokens.get("cache"))
    text = f"{count(given[0] or 0)} in · {count(given[1] or 0)} out"
    if reasoning:
        text += f" · {count(reasoning)} reasoning"
    numbers = (
        ("input", given[0]),
        ("output", given[1]),
        ("reasoning", reasoning),
        ("cache read", whole(cache.get("read"))),
        ("cache write", whole(cache.get("write"))),
    )
    title = f"{label}: " + ", ".join(f"{n} {name}" for name, n in numbers if n is not None)
    return _span("oc-tokens", text, title)


def _cost(value: Any, title: str) -> str:
    text = money(value)
    return _span("oc-cost", text, title) if text else ""


def _ident(model: dict[str, Any]) -> str:
    return "/".join(p for p in (_str(model.get("providerID")), _str(model.get("id"))) if p)


def _line(*pieces: str) -> str:
    return f'<div class="oc-line">{_row(pieces)}</div>'


def _row(pieces: Iterable[str]) -> str:
    """Pieces of a line, a space apart: flex layout does not show the spaces, but copied
    text and text-only readers keep the words apart."""
    return " ".join(piece for piece in pieces if piece)


def _span(css: str, text: str, title: str = "") -> str:
    hint = f' title="{_esc(title)}"' if title else ""
    return f'<span class="{css}"{hint}>{_esc(text)}</span>'


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(items: Any) -> list[dict[str, Any]]:
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
