"""Small ASGI pieces the app's middleware share (:mod:`~calibprompt.app.login`, :mod:`~calibprompt.app.guards`,
:mod:`~calibprompt.app.page_binding`): the route of a request, its body read with a bound, and short answers."""
from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["route_path", "read_body", "replay", "send_json", "send_text"]


def route_path(scope: Mapping) -> str:
    """The request's path without the app's root path (behind a proxy that mounts the app under a prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def read_body(receive, limit: int) -> bytes | None:
    """The request's whole body, or None as soon as it passes ``limit`` bytes (nothing more is read)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def replay(body: bytes):
    """A ``receive`` callable that hands the app a body already read."""
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _send(send, status: int, body: bytes, content_type: bytes, headers: Mapping[str, str] | None) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(send, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
    """Answer ``{"detail": detail}`` (the shape of Gradio's and FastAPI's own errors)."""
    await _send(send, status, json.dumps({"detail": detail}).encode(), b"application/json", headers)


async def send_text(send, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
    """Answer plain text."""
    await _send(send, status, text.encode(), b"text/plain; charset=utf-8", headers)
