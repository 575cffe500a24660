"""The terminal view shared by ``watch`` and ``replay``: a transcript folded from events
with the server's own fold (:class:`agentsync.session.SessionState`), drawn with rich.

Drawing is append-only where it can be: every message but the newest is printed once into
the scrollback (and printed again, marked "updated", if it changes later), and only the
newest message and a status line live in a rich ``Live`` region at the bottom. A long
session therefore never has to fit on one screen, and a pipe gets plain, complete text.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.text import Text

from agentsync.opencode import META, display_order
from agentsync.protocol import Event
from agentsync.session import SessionState

ROLE_STYLES = {"user": "bold cyan", "assistant": "bold green", "system": "bold magenta"}
MAX_RESULT_LINES = 12


class Transcript:
    """A session as a reader sees it: snapshot plus the events after it, in seq order."""

    def __init__(self) -> None:
        self.state = SessionState({})
        self.epoch: str | None = None
        self.participants: list[dict[str, Any]] = []

    @property
    def seq(self) -> int:
        return self.state.seq

    @property
    def title(self) -> str:
        return str(self.state.info.get("title") or "")

    @property
    def status(self) -> str:
        return self.state.status

    def load(self, snapshot: dict[str, Any]) -> None:
        self.state = SessionState.from_json(snapshot)
        self.epoch = snapshot.get("epoch")

    def apply(self, event: dict[str, Any]) -> bool:
        """Fold one event envelope; False when it was already folded (a replayed seq)."""
        if event["seq"] <= self.state.seq:
            return False
        try:
            self.state.apply(
                Event(event["seq"], event["id"], event["type"], event["ts"], event["data"], b"")
            )
        except KeyError:
            # The server never sends an event about a message it does not hold; a
            # hand-edited export might. Show what can be shown rather than stop.
            self.state.seq = event["seq"]
        return True

    def messages(self) -> list[dict[str, Any]]:
        return display_order(self.state.to_json(self.epoch or "")["messages"])


def render_message(message: dict[str, Any], *, updated: bool = False) -> RenderableType | None:
    """The message as terminal text; None when there is nothing to show (an opencode
    step boundary)."""
    metadata = message.get("metadata")
    oc = metadata.get(META) if isinstance(metadata, dict) else None
    if isinstance(oc, dict):
        return _render_opencode(message, oc, updated)
    role = str(message.get("role", "?"))
    head = Text(f"{role}", style=ROLE_STYLES.get(role, "bold yellow"))
    if updated:
        head.append("  (updated)", style="dim")
    parts: list[RenderableType] = [head]
    content = str(message.get("content") or "")
    if content:
        parts.append(Padding(Text(content), (0, 0, 0, 2), expand=False))
    parts.extend(_render_tools(message))
    parts.append(Text(""))
    return Group(*parts)


def _render_tools(message: dict[str, Any]) -> list[RenderableType]:
    parts: list[RenderableType] = []
    results = {r.get("toolCallId"): r for r in message.get("toolResults") or []}
    for call in message.get("toolCalls") or []:
        parts.append(_render_call(call))
        result = results.pop(call.get("id"), None)
        if result is not None:
            parts.append(_render_result(result))
    for result in results.values():  # results whose call was never announced
        parts.append(_render_result(result))
    return parts


def _render_opencode(
    message: dict[str, Any], oc: dict[str, Any], updated: bool
) -> RenderableType | None:
    """opencode's messages (a header line) and parts (text, reasoning, tools, steps)."""
    marker = "  (updated)" if updated else ""
    if oc.get("kind") == "message":
        info = _dict(oc.get("info"))
        role = str(message.get("role", "?"))
        head = Text(role, style=ROLE_STYLES.get(role, "bold yellow"))
        model = _dict(info.get("model"))
        provider = info.get("providerID") or model.get("providerID")
        model_id = info.get("modelID") or model.get("modelID")
        details = [str(info.get("agent") or ""), f"{provider}/{model_id}" if model_id else ""]
        if role == "assistant":
            details.append(_usage(info))
            if not _dict(info.get("time")).get("completed") and not info.get("error"):
                details.append("working…")
        head.append("".join(f" · {d}" for d in details if d) + marker, style="dim")
        error = info.get("error")
        if isinstance(error, dict):
            text = _dict(error.get("data")).get("message") or error.get("name")
            return Group(Text(""), head, Text(f"  ✗ {text}", style="red"))
        return Group(Text(""), head)
    part = _dict(oc.get("part"))
    kind = part.get("type")
    content = str(message.get("content") or "")
    if kind == "text":
        return Padding(Text(content + marker), (0, 0, 0, 2), expand=False) if content else None
    if kind == "reasoning":
        return Padding(Text(content, style="dim italic"), (0, 0, 0, 2), expand=False)
    if kind == "tool":
        return Group(*_render_tools(message)) if message.get("toolCalls") else None
    if kind == "step-finish":
        line = f"step: {part.get('reason', '')} · {_usage(part)}"
        return Padding(Text(line, style="dim"), (0, 0, 0, 2), expand=False)
    if kind == "patch":
        files = [str(f).rsplit("/", 1)[-1] for f in part.get("files") or []]
        return Padding(Text("changed: " + ", ".join(files), style="dim"), (0, 0, 0, 2))
    if kind == "step-start":
        return None
    return Padding(Text(f"[{kind}]", style="dim"), (0, 0, 0, 2), expand=False)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _usage(obj: dict[str, Any]) -> str:
    tokens = _dict(obj.get("tokens"))
    cost = obj.get("cost")
    text = f"{tokens.get('input', 0)} in · {tokens.get('output', 0)} out"
    return text + (f" · ${cost:.4f}" if isinstance(cost, int | float) else "")


def _render_call(call: dict[str, Any]) -> RenderableType:
    text = Text("⚙ ", style="yellow")
    text.append(str(call.get("name", "?")), style="bold yellow")
    arguments = call.get("arguments")
    if arguments is not None:
        text.append(" " + _compact(arguments), style="yellow")
    return Padding(text, (0, 0, 0, 2), expand=False)


def _render_result(result: dict[str, Any]) -> RenderableType:
    error = result.get("error")
    output = result.get("output")
    body = "" if output is None else output if isinstance(output, str) else _compact(output)
    lines = body.splitlines() or [""]
    if len(lines) > MAX_RESULT_LINES:
        lines = [*lines[:MAX_RESULT_LINES], f"… {len(lines) - MAX_RESULT_LINES} more lines"]
    if error:
        head = Text("✗ error", style="bold red")
        if isinstance(error, str):
            head.append(": " + error, style="red")
        style = "red"
    else:
        head = Text("↳ result", style="dim green")
        style = "dim"
    if not body:
        return Padding(head, (0, 0, 0, 2), expand=False)
    return Padding(
        Group(head, Padding(Text("\n".join(lines), style=style), (0, 0, 0, 2), expand=False)),
        (0, 0, 0, 2),
        expand=False,
    )


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return repr(value)


def _fingerprint(message: dict[str, Any]) -> str:
    return json.dumps(message, sort_keys=True, default=str)


class TerminalView:
    """Draws a :class:`Transcript` as it changes; call :meth:`update` after each change
    and :meth:`close` at the end (which leaves the whole transcript in the scrollback)."""

    def __init__(self, console: Console, transcript: Transcript) -> None:
        self.console = console
        self.transcript = transcript
        self.connection = ""
        self.extra = ""
        self._printed: dict[str, str] = {}
        self._title_shown: str | None = None
        self._live = Live(
            console=console, auto_refresh=False, transient=True, redirect_stdout=False
        )

    def __enter__(self) -> TerminalView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self) -> None:
        messages = self.transcript.messages()
        self._show_title()
        for message in messages[:-1]:
            self._print_if_changed(message)
        tail: RenderableType | None = None
        if messages:
            last = messages[-1]
            if self._printed.get(last["id"]) != _fingerprint(last):
                tail = render_message(last, updated=last["id"] in self._printed)
        bottom = self.status_line()
        self._live.update(Group(tail, bottom) if tail is not None else bottom, refresh=True)

    def close(self) -> None:
        if not self._live.is_started:
            return
        self._show_title()
        for message in self.transcript.messages():
            self._print_if_changed(message)
        self._live.update(Text(""), refresh=True)
        self._live.stop()
        self.console.print(self.status_line())

    def status_line(self) -> Text:
        t = self.transcript
        text = Text("── ", style="dim")
        status = t.status or "idle"
        text.append(f"● {status}", style="bold blue" if status != "idle" else "dim blue")
        text.append(f" · {len(t.state.messages)} messages · seq {t.seq}", style="dim")
        names = [str(p.get("name")) for p in t.participants if p.get("name")]
        if names:
            text.append(" · watching: " + ", ".join(names), style="dim")
        if self.connection:
            text.append(f" · {self.connection}", style="yellow")
        if self.extra:
            text.append(f" · {self.extra}", style="dim")
        return text

    def note(self, line: str, style: str = "dim") -> None:
        """A line for the scrollback that is not part of the transcript."""
        self.console.print(Text(line, style=style))

    def _show_title(self) -> None:
        title = self.transcript.title
        if title != self._title_shown and (title or self._title_shown is not None):
            self.console.print(Text(f"# {title or '(untitled)'}", style="bold"))
            self.console.print()
            self._title_shown = title

    def _print_if_changed(self, message: dict[str, Any]) -> None:
        fingerprint = _fingerprint(message)
        previous = self._printed.get(message["id"])
        if previous != fingerprint:
            shown = render_message(message, updated=previous is not None)
            if shown is not None:
                self.console.print(shown)
            self._printed[message["id"]] = fingerprint
