"""A scripted OpenAI-compatible upstream on loopback, for tests and benchmarks.

Real HTTP (uvicorn), non-streamed and streamed chat completions, tool calls, embeddings, errors
and latency on demand. It records every request it receives, so tests assert what reached the
upstream, and notices when a client goes away mid-stream.

Replies are scripted by queueing `Reply` objects (first in, first out); with nothing queued it
answers "scripted reply to: <last user message>". Run alone (for benchmarks) with
`python -m tests.scripted_upstream --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tests import scripted_messages, scripted_responses

Scope = dict[str, Any]


@dataclass
class Reply:
    """One scripted answer. Defaults: a 200 chat completion echoing the last user message."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    error: dict[str, Any] | None = None  # the "error" object for status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the response starts
    hold: bool = False  # before the response starts: wait until `release()` (at most 60 s)
    chunk_delay_s: float = 0.0  # between streamed chunks
    chunk_count: int = 3  # content pieces when streaming
    hang: bool = False  # streaming: after the first chunk, wait until the client goes away
    cut_after: int | None = None  # streaming: drop the connection after this many events
    drop: bool = False  # close the connection without answering
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    raw: bytes | None = None  # send these bytes as the body (with `status`), whatever was asked
    content_type: str = "application/json"  # of a `raw` body


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def json(self) -> dict[str, Any]:
        assert isinstance(self.body, dict)
        return self.body


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class ScriptedUpstream:
    """The ASGI app and its recordings; `start()` serves it on a free loopback port."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.disconnects = 0  # streams the client abandoned before the end
        self.completed_streams = 0
        self.record = True
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._released = threading.Event()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self.replies.clear()
            self.disconnects = 0
            self.completed_streams = 0
            self._released.clear()

    def release(self) -> None:
        """Let every held reply (`Reply(hold=True)`) answer, now and from now on."""
        self._released.set()

    def last(self) -> Received:
        return self.received[-1]

    def _next_reply(self) -> Reply:
        with self._lock:
            return self.replies.popleft() if self.replies else Reply()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if self.record:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.received.append(Received(scope["method"], scope["path"], headers, body))
        reply = self._next_reply()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        deadline = time.monotonic() + 60
        while reply.hold and not self._released.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if reply.drop:
            raise ConnectionAbortedError("scripted drop")  # uvicorn closes without a response
        path = scope["path"].removeprefix("/v1")
        if reply.raw is not None:
            await _send_raw(send, reply.status, reply.raw, reply.content_type)
        elif reply.status >= 400:
            error = reply.error or {
                "message": f"scripted error {reply.status}",
                "type": "scripted",
                "param": None,
                "code": None,
            }
            await _send_json(send, reply.status, {"error": error}, reply.headers)
        elif path.startswith("/messages") and isinstance(body, dict):  # Anthropic's API
            await scripted_messages.answer(path, body, reply, send)
        elif path == "/chat/completions" and isinstance(body, dict) and body.get("stream"):
            await self._stream(body, reply, receive, send)
        elif path == "/chat/completions" and isinstance(body, dict):
            await _send_json(send, 200, self._completion(body, reply), reply.headers)
        elif path.startswith("/responses") and isinstance(body, dict):
            await scripted_responses.answer(path, body, reply, send)
        elif path == "/embeddings" and isinstance(body, dict):
            await _send_json(send, 200, _embeddings(body), reply.headers)
        elif path == "/models":
            await _send_json(send, 200, {"object": "list", "data": []}, reply.headers)
        else:
            error = {"message": f"no route {path}", "type": "invalid_request_error"}
            await _send_json(send, 404, {"error": error}, {})

    def _text(self, body: dict[str, Any], reply: Reply) -> str:
        if reply.content is not None:
            return reply.content
        return f"scripted reply to: {_last_user_text(body)}"

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        else:
            message["content"] = self._text(body, reply)
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        return {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": reply.usage
            or {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }

    async def _stream(self, body: dict[str, Any], reply: Reply, receive: Any, send: Any) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if reply.tool_calls:
            for i, call in enumerate(reply.tool_calls):
                args = call["function"]["arguments"]
                half = len(args) // 2
                deltas.append(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call["id"],
                                "type": "function",
                                "function": {
                                    "name": call["function"]["name"],
                                    "arguments": args[:half],
                                },
                            }
                        ]
                    }
                )
                deltas.append(
                    {"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]}
                )
        else:
            deltas += [
                {"content": piece} for piece in _split(self._text(body, reply), reply.chunk_count)
            ]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        events = [
            {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if include_usage:
            events.append(
                {
                    **base,
                    "choices": [],
                    "usage": reply.usage
                    or {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                }
            )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    *[(k.encode(), v.encode()) for k, v in reply.headers.items()],
                ],
            }
        )
        try:
            for i, event in enumerate(events):
                payload = b"data: " + json.dumps(event).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": payload, "more_body": True})
                if reply.cut_after is not None and i + 1 >= reply.cut_after:
                    raise ConnectionAbortedError("scripted cut mid-stream")
                if reply.hang and i == 0:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self.disconnects += 1
                    return
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
            await send(
                {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False}
            )
            self.completed_streams += 1
        except OSError:
            self.disconnects += 1

    def start(self) -> ScriptedUpstream:
        """Serve on a free 127.0.0.1 port in a background thread; returns self (url set)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_level="critical", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


async def _send_json(send: Any, status: int, payload: Any, headers: dict[str, str]) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *[(k.encode(), v.encode()) for k, v in headers.items()],
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _send_raw(send: Any, status: int, body: bytes, content_type: str) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(str(t))), 0.5, -0.5]}
        for i, t in enumerate(texts)
    ]
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    upstream = ScriptedUpstream()
    upstream.record = False  # a benchmark run would otherwise grow without bound
    uvicorn.run(
        upstream,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
