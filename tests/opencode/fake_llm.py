"""A scripted OpenAI-compatible chat-completions server on a loopback port.

opencode talks to it through its ``@ai-sdk/openai-compatible`` provider (``baseURL`` is
:attr:`FakeLLM.base_url`). Every ``POST /v1/chat/completions`` is answered from a script of
:class:`Turn` objects: the turn played is the number of ``role: "tool"`` messages already in
the request, so a reply that calls a tool is followed, on the next request, by the next turn.
Streamed requests get SSE ``chat.completion.chunk`` frames (reasoning deltas as
``reasoning_content``, text deltas as ``content``, a tool call split in two argument pieces
with an optional pause between them so the client shows the call as *pending*), a usage
frame, then ``data: [DONE]``. Requests without tools whose prompt asks for a title (opencode's
title generator) get :attr:`FakeLLM.title`. ``GET /v1/models`` lists the one model.

Every request body is kept, in order, in :attr:`FakeLLM.requests`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-model"


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model makes: opencode's tool ``name`` with JSON ``arguments``."""

    name: str
    arguments: dict[str, Any]
    # Seconds to wait between the two halves of the arguments: the client has seen the call
    # start but cannot parse its input yet, so the tool part stays ``pending`` meanwhile.
    pause: float = 0.0


@dataclass(frozen=True)
class Turn:
    """One model reply: reasoning deltas, text deltas, then optionally one tool call."""

    text: tuple[str, ...] = ()
    reasoning: tuple[str, ...] = ()
    tool: ToolCall | None = None


def default_script(
    read_path: str | None = None,
    bash_command: str | None = None,
    missing_path: str | None = None,
    pause: float = 1.3,
) -> list[Turn]:
    """The reply used by the harness: reason, read a file, run a command, fail, answer.

    * ``read_path``: ``read`` it, with a ``pause`` mid-arguments (tool part ``pending``).
    * ``bash_command``: run it with ``bash`` (make it ``sleep`` to see it ``running``).
    * ``missing_path``: ``read`` a file that does not exist (tool part ``error``).

    Each given call is a turn of its own; the last turn is a markdown answer.
    """
    turns: list[Turn] = []
    if read_path is not None:
        turns.append(
            Turn(
                reasoning=("The user wants ", "the notes file. ", "I will read it."),
                text=("Let me read ", "the notes file."),
                tool=ToolCall("read", {"filePath": read_path}, pause=pause),
            )
        )
    if bash_command is not None:
        turns.append(
            Turn(
                reasoning=("Now I will ", "count its lines."),
                text=("Counting the lines ", "with a shell command."),
                tool=ToolCall(
                    "bash", {"command": bash_command, "description": "Count lines in notes"}
                ),
            )
        )
    if missing_path is not None:
        turns.append(
            Turn(
                text=("Checking for ", "a second file."),
                tool=ToolCall("read", {"filePath": missing_path}),
            )
        )
    turns.append(
        Turn(
            reasoning=("I have ", "everything ", "I need."),
            text=(
                "The notes file ",
                "says **hello from the fixture**.\n\n",
                "- it has three lines\n",
                "- there is no second file\n",
            ),
        )
    )
    return turns


@dataclass
class FakeLLM:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    script: list[Turn] = field(default_factory=default_script)
    title: str = "Fake session title"
    chunk_delay: float = 0.02
    host: str = "127.0.0.1"
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeLLM:
        llm = self

        class Handler(_Handler):
            owner = llm

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def completions(self) -> list[dict[str, Any]]:
        """The chat-completion request bodies received so far."""
        with self._lock:
            return list(self.requests)

    def pick(self, body: dict[str, Any]) -> Turn:
        """The turn that answers ``body``."""
        messages = body.get("messages") or []
        if not body.get("tools") and _asks_for_title(messages):
            return Turn(text=(self.title,))
        done = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")
        turn = self.script[min(done, len(self.script) - 1)]
        if turn.tool is not None and not _offers(body, turn.tool.name):
            # The client did not offer this tool: skip to the final answer.
            return self.script[-1]
        return turn


def _asks_for_title(messages: list[Any]) -> bool:
    for m in messages:
        if not isinstance(m, dict) or m.get("role") != "system":
            continue
        content = m.get("content")
        if isinstance(content, str) and "title" in content.lower():
            return True
    return False


def _offers(body: dict[str, Any], name: str) -> bool:
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == name:
            return True
    return False


class _Handler(BaseHTTPRequestHandler):
    owner: FakeLLM
    server_version = "fake-llm/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [_model_entry()]})
            return
        self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "invalid JSON"}})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        self.owner.record(body)
        turn = self.owner.pick(body)
        if body.get("stream"):
            self._stream(turn, body)
        else:
            self._json(200, _completion(turn))

    def _stream(self, turn: Turn, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        delay = self.owner.chunk_delay
        ident = f"chatcmpl-{int(time.time() * 1000)}"

        def send(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> None:
            chunk: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": MODEL,
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            chunk.update(extra)
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
            if delay:
                time.sleep(delay)

        try:
            send({"role": "assistant", "content": ""})
            for piece in turn.reasoning:
                send({"reasoning_content": piece})
            for piece in turn.text:
                send({"content": piece})
            finish = "stop"
            if turn.tool is not None:
                finish = "tool_calls"
                args = json.dumps(turn.tool.arguments)
                cut = max(1, len(args) // 2)
                call_id = f"call_{turn.tool.name}_{len(body.get('messages') or [])}"
                send(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": turn.tool.name, "arguments": args[:cut]},
                            }
                        ]
                    }
                )
                if turn.tool.pause:
                    time.sleep(turn.tool.pause)
                send({"tool_calls": [{"index": 0, "function": {"arguments": args[cut:]}}]})
            send({}, finish)
            completion_tokens = sum(len(p) for p in (*turn.reasoning, *turn.text)) // 4 + 1
            send(
                None,
                usage={
                    "prompt_tokens": 100,
                    "completion_tokens": completion_tokens,
                    "total_tokens": 100 + completion_tokens,
                },
            )
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def _model_entry() -> dict[str, Any]:
    return {"id": MODEL, "object": "model", "created": 0, "owned_by": "agentsync-tests"}


def _completion(turn: Turn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(turn.text)}
    if turn.reasoning:
        message["reasoning_content"] = "".join(turn.reasoning)
    finish = "stop"
    if turn.tool is not None:
        finish = "tool_calls"
        message["tool_calls"] = [
            {
                "id": f"call_{turn.tool.name}",
                "type": "function",
                "function": {
                    "name": turn.tool.name,
                    "arguments": json.dumps(turn.tool.arguments),
                },
            }
        ]
    return {
        "id": f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }
