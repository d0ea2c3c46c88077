"""A page belongs to the sign-in that opened it.

Gradio keeps a page's state (its ``gr.State`` values: the images a user compared, the cases they are
reviewing) under the page's *session hash*, a random id the page makes for itself, and the queue routes
take that id from the request: ``POST /gradio_api/queue/join`` and ``/cancel`` in the JSON body,
``GET /gradio_api/queue/data`` in the query, ``/heartbeat/<id>`` and ``/stream/<id>/...`` in the path.
Gradio 6.31 does not tie the id to the login, so with ``--auth`` a signed-in user who learnt another
user's session hash could run events in that page (its state as inputs) and read its results stream.

:class:`PageBinding` closes that: with logins on, the first signed-in request naming a session hash binds
the hash to that user, and a request from anyone else naming it is refused (HTTP 403) before Gradio sees
it. The handlers then take the owner from the request's login (:func:`calibprompt.app.common.page_owner`),
so a bound page is always its user's. Without logins a page's session hash is its only handle (never
shown, 11 random characters) and each browser's data is keyed by its own identity token.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from urllib.parse import parse_qs

from calibprompt.app.asgi import read_body, replay, route_path, send_json

__all__ = ["PageBinding", "Bindings", "REFUSAL", "MAX_EVENT_BODY"]

REFUSAL = "This page belongs to another sign-in. Reload the page to open your own."
#: the largest queue request read to find its session hash (a Compare with its typed classes is far below)
MAX_EVENT_BODY = 4 * 1024 * 1024
_BODY_ROUTES = ("/gradio_api/queue/join", "/gradio_api/cancel")
_QUERY_ROUTES = ("/gradio_api/queue/data",)
_PATH_ROUTES = ("/gradio_api/heartbeat/", "/gradio_api/stream/")


class Bindings:
    """Session hash -> the user who first used it; bounded (the oldest pages are forgotten first)."""

    def __init__(self, size: int = 100_000) -> None:
        self._users: OrderedDict[str, str] = OrderedDict()
        self._size, self._lock = int(size), threading.Lock()

    def admit(self, session_hash: str, user: str) -> bool:
        """Bind ``session_hash`` to ``user`` if it is free; whether ``user`` may use it."""
        with self._lock:
            owner = self._users.setdefault(session_hash, user)
            self._users.move_to_end(session_hash)
            while len(self._users) > self._size:
                self._users.popitem(last=False)
            return owner == user


def _user(scope: Mapping) -> str | None:
    """The signed-in user of the request, as Gradio's own ``get_current_user`` finds it (its cookie)."""
    app = scope.get("app")
    tokens = getattr(app, "tokens", None)
    if not tokens:
        return None
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                cookies[key] = val
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


def _logins_on(scope: Mapping) -> bool:
    app = scope.get("app")
    return getattr(app, "auth", None) is not None or getattr(app, "auth_dependency", None) is not None


class PageBinding:
    """ASGI middleware: with logins on, a session hash serves only the user who first used it."""

    def __init__(self, app, bindings: Bindings | None = None) -> None:
        self.app, self.bindings = app, bindings or Bindings()

    async def __call__(self, scope, receive, send) -> None:
        route = route_path(scope) if scope["type"] == "http" else ""
        if not route.startswith("/gradio_api/") or not _logins_on(scope):
            await self.app(scope, receive, send)
            return
        user = _user(scope)
        if route in _BODY_ROUTES and scope["method"] == "POST":
            body = await read_body(receive, MAX_EVENT_BODY)
            if body is None:
                await send_json(send, 413, "The request is too large; send fewer or smaller values.")
                return
            session, receive = _body_session(body), replay(body)
        elif route in _QUERY_ROUTES:
            session = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash") or [None])[0]
        else:
            prefix = next((p for p in _PATH_ROUTES if route.startswith(p)), None)
            session = route[len(prefix):].split("/", 1)[0] if prefix else None
        if session and user and not self.bindings.admit(str(session), user):
            await send_json(send, 403, REFUSAL)
            return
        await self.app(scope, receive, send)


def _body_session(body: bytes) -> str | None:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return None  # Gradio refuses a malformed body itself
    return value.get("session_hash") if isinstance(value, dict) else None
