"""``python app.py``: start the app for one user or a team.

    python app.py [--model auto|NAME] [--host 127.0.0.1] [--port 7860] [--share] [--data-dir DIR]
                  [--auth USER:PASSWORD ...] [--auth-file PATH]

Start-up order, fastest first answer on a small CPU machine: the data directory and the demo world's
registries, the model choice (a bundled model is not loaded yet), Gradio and the interface, the
server; the default model loads in a background thread from the moment the server listens (the
page is served meanwhile; a request for the model waits for that load, never a second one). Imports
run one after the other rather than in parallel threads: in CPython they hold the interpreter lock,
so overlapping them only adds switching costs. The cyclic garbage collector is off during start-up
(imports make hundreds of thousands of long-lived objects, and every full collection would scan them
all again: 1 to 3 s of CPU on a 2-core machine); once the model is ready, everything loaded so far is frozen
(:func:`gc.freeze`: never scanned again) and the collector is back on.

With ``--auth``, ``--auth-file`` or ``CALIBPROMPT_AUTH`` a login page comes first; it names the app and its
purpose (:data:`AUTH_MESSAGE`), and inside, the header says who is signed in and links to Gradio's
``/logout``. Passwords are kept only as salted hashes, and repeated failed sign-ins lock the user name and
the address for a growing while (:mod:`calibprompt.app.login`).

What a hosted app serves: the bundled sample images, and the files it makes for the requesting user
(uploads it echoes back, exports, figures) from Gradio's upload folder inside the data directory,
under unguessable names. The run store, datasets, uploaded archives, checkpoints and feature caches
are never served.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gc
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger("calibprompt.app")

MAX_UPLOAD = "25mb"
#: Events Gradio's queue holds waiting (4 run at once). Above it Gradio itself refuses new events with HTTP
#: 503 "Queue is full. Max size is N and size is N."; Gradio 6.31 has no setting for that text, so
#: :class:`calibprompt.app.guards.PlainFaults` rewrites it to "The app is busy: ... Try again in a minute."
#: (gradio_client raises QueueError("Queue is full! Please try again."), and the page shows its own notice).
#: The queue is long enough that only a real overload reaches it (training runs wait in the JobRunner's
#: queue, not here).
QUEUE_SIZE = 256
QUEUE_CONCURRENCY = 4
PRIVATE_ENTRIES = ("runs.db", "runs.db-wal", "runs.db-shm", "runs", "datasets", "uploads", "features", "exports",
                   "models", "logs")


def private_paths() -> list[str]:
    """Everything in the data directory except Gradio's upload folder: refused on every file route."""
    from calibprompt.paths import data_dir

    root = data_dir()
    names = set(PRIVATE_ENTRIES) | ({p.name for p in root.iterdir()} if root.is_dir() else set())
    return sorted(str(root / n) for n in names if n != "tmp")


#: What Gradio's login page says above its fields (HTML, shown as is; a constant, no user text): the
#: app's name and purpose, and where an account comes from.
AUTH_MESSAGE = (
    "<p><strong>CalibPrompt</strong> — can I trust this medical VLM's confidence?</p>"
    "<p>For research and review only, not for diagnosis.</p>"
    "<p>Sign in with the account your team lead gave you.</p>"
    "<p>After 5 wrong passwords sign-in pauses for a few minutes (the button does nothing meanwhile).</p>"
)


def login_kwargs(auth: list[tuple[str, str]] | None) -> dict:
    """``launch()`` arguments of the login: ``auth`` and, with a login, the page's :data:`AUTH_MESSAGE`."""
    return {"auth": auth, "auth_message": AUTH_MESSAGE if auth else None}


def parse_auth(values: list[str] | None) -> list[tuple[str, str]] | None:
    """``USER:PASSWORD`` strings as Gradio's ``auth`` list (None without any). A malformed value stops
    with a message that does not repeat it (it may hold a password)."""
    if not values:
        return None
    pairs = []
    for number, value in enumerate(values, 1):
        user, sep, password = value.partition(":")
        if not sep or not user.strip() or not password:
            problem = "has no ':'" if not sep else "has an empty user name" if not user.strip() else "has an empty password"
            raise SystemExit(f"--auth expects USER:PASSWORD; --auth value {number} {problem}.")
        pairs.append((user.strip(), password))
    return pairs


def preload_when_serving(demo, core, *, poll: float = 0.02, timeout: float = 600.0) -> threading.Thread:
    """Start loading ``core``'s default model (:meth:`~calibprompt.service.core.Core.preload`) as soon as
    ``demo``'s server listens, so the model's imports do not compete with Gradio's for the interpreter
    while the page is being set up; once the model is ready (or failed, or after ``timeout`` seconds),
    freeze what start-up loaded and turn the garbage collector (back) on. Returns the watching thread
    (a daemon)."""

    def watch() -> None:
        try:
            while not getattr(demo, "is_running", False):
                time.sleep(poll)
            core.preload().exception(timeout)  # an error is logged where it happens
        except concurrent.futures.TimeoutError:  # TimeoutError itself from Python 3.11 on
            logger.warning("The app's model is not ready after %.0f s; it goes on loading.", timeout)
        finally:
            gc.freeze()
            gc.enable()

    thread = threading.Thread(target=watch, name="calibprompt-preload-watch", daemon=True)
    thread.start()
    return thread


def main(argv=None) -> None:
    """Start the app (see the module's docstring). A fault the person starting it can fix (a read-only or full
    data directory, a locked run database) stops it with one plain line on stderr and exit status 1, never a
    traceback."""
    import sqlite3

    try:
        _serve(argv)
    except (OSError, sqlite3.Error) as exc:
        from calibprompt.errors import user_message

        message = user_message(exc)
        if message is None:
            raise
        logger.debug("Start-up failed", exc_info=True)
        raise SystemExit(f"calibprompt: the app cannot start: {message}") from None


def _serve(argv=None) -> None:
    """Parse the command line, set up the data directory, the model and the interface, and serve."""
    parser = argparse.ArgumentParser(description="CalibPrompt web app")
    parser.add_argument("--model", default="auto", help="auto (BiomedCLIP if available, else the demo model) or a backbone")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--data-dir", default=os.environ.get("CALIBPROMPT_HOME"),
                        help="where runs, caches and datasets live (default $CALIBPROMPT_HOME or ~/.calibprompt)")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help="require a login (repeat for each user); the user is the reader of verdicts and the owner of jobs")
    parser.add_argument("--auth-file", metavar="PATH",
                        help="accounts, one user:password a line (blank lines and # comments ignored); "
                             "$CALIBPROMPT_AUTH may hold more, comma- or newline-separated")
    args = parser.parse_args(argv)
    from calibprompt.app.login import collect_credentials

    auth = collect_credentials(parse_auth(args.auth), args.auth_file, os.environ)
    args.auth = None
    os.environ.pop("CALIBPROMPT_AUTH", None)  # read once; child processes need not inherit the passwords
    gc.disable()  # until the model is ready: see the module's docstring and preload_when_serving
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.data_dir:
        os.environ["CALIBPROMPT_HOME"] = str(Path(args.data_dir).expanduser().resolve())
    from calibprompt.service.startup import check_data_dir

    check_data_dir()  # a read-only or full data directory stops here, in plain words

    import calibprompt.demo
    from calibprompt.service.core import Core
    from calibprompt.service.startup import choose_model

    calibprompt.demo.register()  # the demo's datasets and prompts, before the interface lists them
    choice = choose_model(args.model)

    from calibprompt.app import build_demo, upload_dir
    from calibprompt.app.theme import launch_kwargs
    from calibprompt.data.uploads import start_cleaner
    from calibprompt.paths import SAMPLE_IMAGES_DIR

    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir())  # uploads live in the data directory, not in /tmp
    start_cleaner()  # uploads older than $CALIBPROMPT_UPLOAD_DAYS (30) days: now, then hourly
    core = Core(choice.backbone if choice.backbone is not None else choice.name, choice.banner)
    demo = build_demo(core)
    if auth is None and args.host not in ("127.0.0.1", "localhost") or args.share and auth is None:
        logger.warning("Serving beyond this machine without --auth: anyone who can reach it can use it.")
    login = login_kwargs(auth)
    if auth:
        from calibprompt.app.login import guarded_launch_kwargs

        login.update(guarded_launch_kwargs(auth))  # hashed passwords, and the lockout before /login
        logger.info("Sign-in required: %d account(s); 5 failed sign-ins lock a user name or address.", len(auth))
    del auth  # the plain passwords: only their hashes stay
    from calibprompt.app.guards import with_guards

    login["app_kwargs"] = with_guards(login.get("app_kwargs"))  # a full queue and a full disk in plain words
    preload_when_serving(demo, core)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=QUEUE_SIZE).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD, **login,
        allowed_paths=[str(SAMPLE_IMAGES_DIR)], blocked_paths=private_paths(), **launch_kwargs(),
        run_history=False)  # Gradio's run history would keep every call (patient images) in the browser
