"""A login that resists guessing: accounts from the command line, a file or the environment, kept as
salted hashes, and a lockout in front of Gradio's ``POST /login``.

* :class:`LoginThrottle` counts failed sign-ins per user name and per client address. After
  ``limit`` (5) failures of one key within ``window`` seconds (10 minutes) that key is locked for
  1 minute, then 2, 4, ... (capped at an hour); while either key of an attempt is locked, the attempt
  is answered ``429 Too many failed sign-ins; try again in N minutes`` without checking the password,
  the right one included. A successful sign-in clears its user name's record (not its address's: one
  good account must not reset an address's count of guesses at other accounts). Each lockout writes
  one WARNING line naming the user name and address (never the password). Memory is bounded: records
  with nothing left to remember are dropped, and past ``max_keys`` the oldest go first.
* :class:`LoginGuard` is the ASGI middleware that applies it. Gradio 6.31 builds its FastAPI app inside
  ``launch()``; ``launch(app_kwargs={"middleware": [...]})`` hands the middleware to that app's
  constructor (:func:`guarded_launch_kwargs`), so it runs before Gradio's ``/login`` route. The client
  address is the TCP peer's: behind a reverse proxy every user shares the proxy's address.
* :class:`PasswordBook` holds the accounts as scrypt hashes with a per-user salt and checks a password
  with :func:`hmac.compare_digest`, in a worker thread so the server's event loop never waits on scrypt.
  Gradio accepts its :meth:`~PasswordBook.check` as ``launch(auth=...)``.
* :func:`collect_credentials` reads ``--auth USER:PASSWORD`` values, ``--auth-file PATH`` (one
  ``user:password`` a line; blank lines and ``#`` comments ignored) and ``CALIBPROMPT_AUTH`` (the same,
  comma- or newline-separated).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from calibprompt.app.asgi import read_body, replay, route_path, send_text

logger = logging.getLogger("calibprompt.app.login")

#: The environment variable that may hold accounts: ``user:password`` items, comma- or newline-separated.
AUTH_ENV = "CALIBPROMPT_AUTH"
LOGIN_PATHS = ("/login", "/login/")
MAX_LOGIN_BODY = 64 * 1024


@dataclass
class _Record:
    """What the throttle remembers of one key (a user name or an address)."""

    failures: deque = field(default_factory=deque)  # times of recent failures, oldest first
    level: int = 0  # lockouts so far: the next one lasts first_lock * 2**level
    locked_until: float = 0.0
    pending: int = 0  # attempts admitted and not yet answered
    last: float = 0.0  # last time anything happened to this key


class LoginThrottle:
    """Failed sign-ins per user name and per client address, and the lockouts they cause (thread-safe).

    Use :meth:`begin` before checking a password (it answers how many seconds to refuse, 0 to go on) and
    :meth:`finish` after. ``clock`` returns seconds (monotonic); tests pass a fake one."""

    def __init__(self, *, limit: int = 5, window: float = 600.0, first_lock: float = 60.0,
                 max_lock: float = 3600.0, forget_after: float = 86400.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.first_lock, self.max_lock = limit, window, first_lock, max_lock
        self.forget_after, self.max_keys, self.clock = forget_after, max_keys, clock
        self._records: dict[tuple[str, str], _Record] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    @staticmethod
    def _keys(user: str, address: str) -> list[tuple[str, str]]:
        return ([("user", user)] if user else []) + [("address", address)]

    def _record(self, key: tuple[str, str], now: float) -> _Record:
        record = self._records.get(key)
        if record is None:
            if len(self._records) >= self.max_keys:
                self._prune(now)
            record = self._records[key] = _Record()
        while record.failures and record.failures[0] <= now - self.window:
            record.failures.popleft()
        record.last = now
        return record

    def begin(self, user: str, address: str) -> float:
        """Seconds this attempt must wait (a lockout of its user name or address, or ``limit`` attempts of
        one key already in flight); 0 admits it, and then :meth:`finish` must follow."""
        with self._lock:
            now = self.clock()
            records = [self._record(key, now) for key in self._keys(user, address)]
            wait = max(r.locked_until - now for r in records)
            if wait > 0:
                return wait
            if any(len(r.failures) + r.pending >= self.limit for r in records):
                return 1.0  # many guesses at once: answer them one lockout's worth at a time
            for record in records:
                record.pending += 1
            return 0.0

    def finish(self, user: str, address: str, succeeded: bool | None) -> float:
        """Record the outcome of an admitted attempt (None: neither, e.g. a malformed request). Returns
        the lockout this failure started, in seconds (0 if none)."""
        with self._lock:
            now = self.clock()
            keys = self._keys(user, address)
            records = [self._record(key, now) for key in keys]
            for record in records:
                record.pending = max(0, record.pending - 1)
            if succeeded and user:
                self._records[("user", user)] = _Record(pending=records[0].pending, last=now)
            if succeeded is not False:
                return 0.0
            started = [self._fail(record, now) for record in records]
        period = max(started)
        if period:
            locked = " and ".join(kind.replace("user", "user name") for (kind, _), p in zip(keys, started) if p)
            logger.warning("Sign-in locked for %d min after %d failed attempts within %d min: user %r from "
                           "address %s (locked: %s).", math.ceil(period / 60), self.limit,
                           math.ceil(self.window / 60), user, address, locked)
        return period

    def _fail(self, record: _Record, now: float) -> float:
        record.failures.append(now)
        if len(record.failures) < self.limit:
            return 0.0
        period = min(self.first_lock * 2 ** record.level, self.max_lock)
        record.locked_until, record.level = now + period, record.level + 1
        record.failures.clear()
        return period

    def prune(self) -> int:
        """Drop what no longer matters (and, past ``max_keys``, the oldest records); returns how many."""
        with self._lock:
            return self._prune(self.clock())

    def _prune(self, now: float) -> int:
        def idle(r: _Record) -> bool:
            recent = r.failures and r.failures[-1] > now - self.window
            return (not r.pending and r.locked_until <= now and not recent
                    and (r.level == 0 or r.last <= now - self.forget_after))

        before = len(self._records)
        self._records = {k: r for k, r in self._records.items() if not idle(r)}
        excess = len(self._records) - self.max_keys + 1
        if excess > 0:
            def age(k):  # unlocked records go first, oldest first
                return self._records[k].locked_until > now, self._records[k].last

            for key in sorted(self._records, key=age)[:excess]:
                del self._records[key]
        return before - len(self._records)


def refusal_message(seconds: float) -> str:
    """What a refused attempt reads: how long to wait, in whole minutes."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"Too many failed sign-ins; try again in {minutes} minute{'s' if minutes > 1 else ''}."


class LoginGuard:
    """ASGI middleware: applies a :class:`LoginThrottle` to ``POST /login`` (Gradio's login route) and
    passes every other request through untouched. Gradio answers a login 200 (signed in) or 400 (wrong
    user name or password); those outcomes are what the throttle counts."""

    def __init__(self, app, throttle: LoginThrottle | None = None, max_body: int = MAX_LOGIN_BODY) -> None:
        self.app, self.throttle, self.max_body = app, throttle or LoginThrottle(), max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, self.max_body)
        if body is None:
            await send_text(send, 413, "The sign-in form is too large; send only a user name and a password.")
            return
        user = await _form_user(scope, body)
        address = (scope.get("client") or ("unknown",))[0]
        wait = self.throttle.begin(user, address)
        if wait > 0:
            await send_text(send, 429, refusal_message(wait), {"retry-after": str(math.ceil(wait))})
            return
        status: list[int] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, replay(body), watch)
        finally:
            code = status[0] if status else None
            self.throttle.finish(user, address, True if code == 200 else False if code == 400 else None)


async def _form_user(scope, body: bytes) -> str:
    """The ``username`` field of a login form (URL-encoded or multipart), stripped as Gradio does; "" if none."""
    from starlette.requests import Request

    try:
        form = await Request(scope, replay(body)).form()
    except Exception:  # noqa: BLE001 - a malformed form: Gradio refuses it; it counts for the address
        return ""
    try:
        value = form.get("username")
        return value.strip() if isinstance(value, str) else ""
    finally:
        await form.close()


class PasswordBook:
    """Accounts as salted scrypt hashes; :meth:`check` is Gradio's ``auth`` callable. The plain passwords
    given to the constructor are not kept."""

    def __init__(self, accounts: Iterable[tuple[str, str]], *, n: int = 2 ** 14, r: int = 8, p: int = 1) -> None:
        self._cost = {"n": n, "r": r, "p": p}
        self._hashes: dict[str, tuple[bytes, bytes]] = {}
        for user, password in accounts:
            salt = secrets.token_bytes(16)
            self._hashes[user] = (salt, self._hash(password, salt))
        self._unknown = (secrets.token_bytes(16), secrets.token_bytes(64))  # same work for unknown users

    def __len__(self) -> int:
        return len(self._hashes)

    def users(self) -> list[str]:
        """The user names, sorted."""
        return sorted(self._hashes)

    def _hash(self, password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(password.encode(), salt=salt, dklen=64, **self._cost)

    def verify(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s (as long for an unknown user as for a known one)."""
        salt, digest = self._hashes.get(user, self._unknown)
        return hmac.compare_digest(self._hash(password, salt), digest) and user in self._hashes

    async def check(self, user: str, password: str) -> bool:
        """:meth:`verify` in a worker thread: Gradio awaits it, and the event loop serves others meanwhile."""
        return await asyncio.to_thread(self.verify, user, password)


def parse_accounts(text: str, source: str, *, commas: bool = False) -> list[tuple[str, str]]:
    """``user:password`` lines (also comma-separated items with ``commas``) as pairs; blank lines and
    ``#`` comments are skipped, and each line's surrounding spaces. A malformed line stops with a message
    that names ``source`` and the line number, never the password."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        for item in line.split(",") if commas else [line]:
            item = item.strip()
            if not item or item.startswith("#"):
                continue
            user, sep, password = item.partition(":")
            where = f"{source}, line {number}" + (" (comma-separated items)" if commas and "," in line else "")
            if not sep:
                raise SystemExit(f"{where}: no ':' between user name and password; write it as user:password.")
            if not user.strip() or not password:
                missing = "user name" if not user.strip() else "password"
                raise SystemExit(f"{where}: the {missing} is empty; write it as user:password.")
            pairs.append((user.strip(), password))
    return pairs


def collect_credentials(cli: list[tuple[str, str]] | None, auth_file: str | os.PathLike | None,
                        environ: Mapping[str, str]) -> list[tuple[str, str]] | None:
    """Every account given: ``--auth`` pairs, ``--auth-file``'s lines, ``CALIBPROMPT_AUTH``'s items (None
    without any). A user name given twice stops with a message naming where."""
    sources: list[tuple[str, list[tuple[str, str]]]] = [("--auth", list(cli or []))]
    if auth_file:
        path = Path(auth_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(f"--auth-file {path}: cannot read it ({exc.strerror}); check the path.") from None
        sources.append((f"--auth-file {path}", parse_accounts(text, f"--auth-file {path}")))
    if environ.get(AUTH_ENV, "").strip():
        sources.append((AUTH_ENV, parse_accounts(environ[AUTH_ENV], AUTH_ENV, commas=True)))
    seen: dict[str, str] = {}
    pairs = []
    for source, accounts in sources:
        for user, password in accounts:
            if user in seen:
                raise SystemExit(f"User {user!r} is given twice ({seen[user]} and {source}); keep one.")
            seen[user] = source
            pairs.append((user, password))
    return pairs or None


def guarded_launch_kwargs(accounts: Iterable[tuple[str, str]],
                          throttle: LoginThrottle | None = None) -> dict:
    """``launch()`` arguments for a guarded login: ``auth`` (a :class:`PasswordBook`'s check) and
    ``app_kwargs`` that put :class:`LoginGuard` and :class:`~calibprompt.app.page_binding.PageBinding` (a page
    serves only the sign-in that opened it) in Gradio's app."""
    from starlette.middleware import Middleware

    from calibprompt.app.page_binding import PageBinding

    book = PasswordBook(accounts)
    return {"auth": book.check,
            "app_kwargs": {"middleware": [Middleware(LoginGuard, throttle=throttle or LoginThrottle()),
                                          Middleware(PageBinding)]}}
