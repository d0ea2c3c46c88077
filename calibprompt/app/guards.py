"""ASGI middleware that turns two faults Gradio answers in its own words into plain ones.

* **A full queue.** Above the queue's ``max_size`` waiting events Gradio answers ``POST .../queue/join``
  with HTTP 503 and ``{"detail": "Queue is full. Max size is N and size is N."}``; Gradio 6.31 has no
  setting for that text. :class:`PlainFaults` rewrites that answer to 503 with :data:`BUSY` (and a
  ``Retry-After`` of a minute); every other answer passes untouched.
* **A full or read-only disk under a route of Gradio's own** (an upload it writes to its cache folder,
  before any handler of the app runs): instead of a bare HTTP 500, the plain message of
  :func:`calibprompt.errors.user_message` (507 for a full disk, 503 otherwise).

:func:`with_guards` adds it to ``launch(app_kwargs=...)``, before any other middleware (the login's).
"""
from __future__ import annotations

import errno
import logging
import sqlite3

from calibprompt.app.asgi import route_path, send_json

__all__ = ["PlainFaults", "PublicApiOnly", "PUBLIC_API", "BUSY", "with_guards"]

logger = logging.getLogger("calibprompt.app")

#: What a caller of a full queue reads
BUSY = "The app is busy: every place in the queue is taken. Try again in a minute."
_QUEUE_FULL = b"Queue is full"
_MAX_HELD = 64 * 1024  # a 503 answer larger than this is not Gradio's queue-full answer: passed on as it comes


def _is_join(scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith("/queue/join")


class PlainFaults:
    """ASGI middleware: a full queue answers 503 with :data:`BUSY`; a disk fault raised before an answer
    started answers its plain message (see the module's docstring)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: list[bool] = []
        out = self._rewrite_queue_full(send) if _is_join(scope) else send

        async def tracked(message):
            if message["type"] == "http.response.start":
                started.append(True)
            await out(message)

        try:
            await self.app(scope, receive, tracked)
        except (OSError, sqlite3.Error) as exc:
            from calibprompt.errors import user_message

            message = user_message(exc)
            if started or message is None:
                raise
            logger.warning("Request %s failed: %s", scope.get("path", ""), exc)
            full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            await send_json(send, 507 if full else 503, message)

    @staticmethod
    def _rewrite_queue_full(send):
        """A ``send`` that holds back a 503 answer until its body shows whether it is Gradio's queue-full one."""
        held: dict = {}
        chunks: list[bytes] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                if message["status"] != 503:
                    await send(message)
                    return
                held["start"] = message
                return
            if message["type"] != "http.response.body" or "start" not in held:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False) and sum(map(len, chunks)) <= _MAX_HELD:
                return
            body = b"".join(chunks)
            start = held.pop("start")
            if _QUEUE_FULL in body and not message.get("more_body", False):
                logger.warning("The queue is full: a request was answered 'busy'.")
                await send_json(send, 503, BUSY, {"retry-after": "60"})
                return
            await send(start)
            await send({**message, "body": body})

        return watch


#: the app's public endpoints (``api_name`` of the Compare tab's two API events); every other event is private
PUBLIC_API = ("compare", "assess")
_BY_NAME = ("/gradio_api/run/", "/gradio_api/api/", "/gradio_api/call/v2/", "/gradio_api/call/")


class PublicApiOnly:
    """ASGI middleware: Gradio 6.31 runs *any* event by its name on ``/gradio_api/run|api|call/<name>``,
    private ones included, though the page only ever uses the queue route. Those routes answer 404 for
    every name but :data:`PUBLIC_API`, so a private event is reachable only as the page reaches it (and
    is authorised there from the request)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            route = route_path(scope)
            prefix = next((p for p in _BY_NAME if route.startswith(p)), None)
            name = route[len(prefix):].split("/", 1)[0] if prefix else None
            if name is not None and name not in PUBLIC_API:
                await send_json(send, 404, f"No public endpoint named {name!r}; the API has "
                                           + " and ".join(f"/{n}" for n in PUBLIC_API) + ".")
                return
        await self.app(scope, receive, send)


def with_guards(app_kwargs: dict | None = None) -> dict:
    """``app_kwargs`` for ``launch()`` with :class:`PlainFaults` and :class:`PublicApiOnly` first among its
    middleware (the others, such as the login's, kept in their order)."""
    from starlette.middleware import Middleware

    kwargs = dict(app_kwargs or {})
    kwargs["middleware"] = [Middleware(PlainFaults), Middleware(PublicApiOnly), *kwargs.get("middleware", [])]
    return kwargs
