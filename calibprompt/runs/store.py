"""The run store: training jobs and evaluations in one SQLite database (``<data dir>/runs.db``).

Schema (version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version`` so later versions can migrate):

``runs``
    ``id`` (``20261129-161530-coop-s1-3fa2``: UTC creation time, a short slug, 4 random hex digits),
    ``kind`` (``train`` | ``evaluate``), ``status`` (see :data:`STATUSES`), ``created_at``,
    ``started_at``, ``finished_at`` (ISO-8601 UTC), ``params`` (JSON object; its ``owner`` and ``shared``
    say who may see the run, see :mod:`calibprompt.service.access`), ``metrics`` (JSON, NULL
    until done), ``progress`` (JSON, the latest snapshot), ``checkpoint`` (absolute path of the
    checkpoint's JSON file, NULL unless done), ``error``, ``device``, and the owning process:
    ``pid``, ``host`` and ``pid_start`` (an internal marker of when that process started, used to
    tell a live owner from a later process that happens to reuse its pid). A queued run is owned by
    the process that created it; :meth:`RunStore.start_run` hands it to the process that runs it.
``predictions``
    one row per evaluated image of a finished run: ``run_id``, ``idx``, ``path``, ``label``,
    ``predicted``, ``confidence``, ``probs`` (JSON list); deleted with their run.
``reviews``
    a reader's verdict (``agree`` | ``disagree`` | ``unsure``) on one method's prediction for one image
    of a dataset; one verdict per (owner, reader, dataset, image, method), so several readers, owners and
    methods per case are kept. A verdict outlives its run (``run_id`` becomes NULL). The table, its CSV export and
    reader agreement live in :mod:`calibprompt.runs.reviews`; the store exposes them as
    :meth:`RunStore.set_review`, :meth:`RunStore.reviews`, :meth:`RunStore.export_reviews_csv` and
    :meth:`RunStore.reader_agreement`.

Versions: 1 = runs, predictions and one review per (run, image); 2 = one review per (reader, dataset, image,
method) (a version-1 database is upgraded when opened, its reviews kept: see
:data:`calibprompt.runs.reviews.MIGRATION_V2`); 3 = the reviews above, with an owner (version-2 reviews are kept
as the operator's: :data:`calibprompt.runs.reviews.MIGRATION_V3`).

Guarantees:

* Status changes follow :data:`TRANSITIONS`; anything else raises ``ValueError``. Every check and
  write happens in one ``BEGIN IMMEDIATE`` transaction, so two threads or processes cannot both
  move the same run.
* :meth:`RunStore.finish_run` stores the predictions, metrics, checkpoint and the ``done`` status
  in one transaction: a run is either done with all its predictions, or unchanged. A training run
  is only marked done when its checkpoint files exist.
* Finished runs are durable (``synchronous=FULL``) and survive a restart of the app.
* Runs left ``queued``/``running`` by a process that has died are marked ``interrupted`` when a
  store is opened (:meth:`RunStore.recover_interrupted`); runs of live processes and of other hosts
  are left alone.
* Each operation uses its own short-lived connection (WAL mode, 30 s busy timeout), so one
  :class:`RunStore` may be shared by threads, and several processes may open the same file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import operator
import os
import re
import secrets
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from calibprompt.errors import damaged_store_notice
from calibprompt.paths import data_dir, shown
from calibprompt.runs.reviews import MIGRATION_V2, MIGRATION_V3, REVIEW_CSV_COLUMNS, VERDICTS, Reviews

__all__ = [
    "SCHEMA_VERSION", "STATUSES", "ACTIVE_STATUSES", "FINAL_STATUSES", "TRANSITIONS", "KINDS", "VERDICTS",
    "INTERRUPTED_ERROR", "REVIEW_CSV_COLUMNS", "RunRecord", "RunStore", "store_damage", "set_aside",
    "check_store", "recover_store", "Recovery",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("done", "failed", "cancelled", "interrupted")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "cancelled", "failed", "interrupted"),
    "running": ("done", "failed", "cancelled", "interrupted"),
    "done": (),
    "failed": (),
    "cancelled": (),
    "interrupted": (),
}
KINDS = ("train", "evaluate")
INTERRUPTED_ERROR = "The process running this job stopped (restart or crash) before it finished."
PREDICTION_KEYS = ("path", "label", "predicted", "confidence", "probs")

_SLUG_MAX = 40
_ID_ATTEMPTS = 20

_SCHEMA_V1 = f"""
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in KINDS)})),
    status      TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    params      TEXT NOT NULL DEFAULT '{{}}',
    metrics     TEXT,
    progress    TEXT,
    checkpoint  TEXT,
    error       TEXT,
    device      TEXT,
    pid         INTEGER,
    host        TEXT,
    pid_start   TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS predictions (
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    path        TEXT,
    label       INTEGER,
    predicted   INTEGER NOT NULL,
    confidence  REAL NOT NULL,
    probs       TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT REFERENCES runs (id) ON DELETE CASCADE,
    image       TEXT NOT NULL,
    verdict     TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in VERDICTS)})),
    note        TEXT NOT NULL DEFAULT '',
    reviewer    TEXT NOT NULL DEFAULT '',
    updated_at  TEXT NOT NULL,
    UNIQUE (run_id, image)
);
-- UNIQUE (run_id, image) treats NULL run ids as distinct; this index also makes run-less reviews unique.
CREATE UNIQUE INDEX IF NOT EXISTS reviews_one_per_image ON reviews (IFNULL(run_id, ''), image);
"""

# version -> script that upgrades a database at version - 1 to it (all run in the one opening transaction).
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: MIGRATION_V2, 3: MIGRATION_V3}

_RUN_COLUMNS = ("id", "kind", "status", "created_at", "started_at", "finished_at", "params", "metrics",
                "progress", "checkpoint", "error", "device", "pid", "host")


# ----------------------------------------------------------------------------------------------- helpers

def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON types; non-finite floats become None; ``ValueError`` naming ``where``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise ValueError(f"{where} has the key {key!r} ({type(key).__name__}); JSON keys must be strings.")
            out[str(key)] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        try:
            converted = tolist()
        except Exception:  # noqa: BLE001 - any failure means "not serialisable"
            converted = value
        if converted is not value:
            return _plain(converted, where)
    raise ValueError(f"{where} is not JSON-serialisable (got a {type(value).__name__}: {value!r:.80}).")


def _dump(value: Any, where: str) -> str:
    return json.dumps(_plain(value, where), allow_nan=False, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _require_mapping(value: Any, name: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict, got a {type(value).__name__}.")
    return value


def _require_str(value: Any, name: str, *, empty: bool = True) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got a {type(value).__name__}.")
    if not empty and not value.strip():
        raise ValueError(f"{name} must not be empty.")
    return value


def _slugify(slug: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")
    return slug[:_SLUG_MAX].rstrip("-")


#: How far two readings of one process's start time may differ (seconds): psutil derives it from the wall
#: clock, which NTP may step. A later process that reuses the pid started far later than this.
_START_TOLERANCE_S = 1.0


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started: psutil's creation time in seconds since the epoch, written
    ``"%.2f"`` (e.g. ``"1796486101.64"``); None when unknown (no such process, or access denied)."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.Error, OSError, ValueError):
        return None


def _start_seconds(marker: str) -> float | None:
    """A recorded start marker as seconds since the epoch, or None when it cannot be read.

    Markers are psutil creation times (``"1796486101.64"``); stores written before psutil hold a bare
    integer instead, the ``starttime`` of ``/proc/<pid>/stat`` (clock ticks since boot), which is
    ``boot_time + ticks / SC_CLK_TCK`` seconds since the epoch (how psutil itself computes it on Linux).
    """
    try:
        if marker.isdigit():
            return psutil.boot_time() + int(marker) / os.sysconf("SC_CLK_TCK")
        return float(marker)
    except (psutil.Error, OSError, ValueError, AttributeError):  # AttributeError: no os.sysconf (Windows)
        return None


def _pid_exists(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``psutil.pid_exists``: safe on Windows too)."""
    if pid <= 0:
        return True  # not a real owner pid; never signal a process group, assume alive
    try:
        return psutil.pid_exists(pid)
    except (psutil.Error, OSError):  # when unsure, never interrupt a run
        return True


def _owner_alive(pid: int, started: str | None) -> bool:
    """Whether the process that owns a run (on this host) is still running.

    Dead when no process ``pid`` exists, or when the process now holding ``pid`` started more than
    :data:`_START_TOLERANCE_S` away from the recorded ``started`` marker (the pid was reused by a later
    process, e.g. the same container restarted). Alive whenever either start time is unknown.
    """
    if not _pid_exists(pid):
        return False
    if started is None or pid <= 0:
        return True
    recorded, current = _start_seconds(started), _process_start(pid)
    if recorded is None or current is None:
        return True
    return abs(float(current) - recorded) <= _START_TOLERANCE_S


def _checkpoint_files(checkpoint: str | os.PathLike) -> tuple[Path, Path]:
    from calibprompt.prompting.checkpoint import checkpoint_paths  # lazy: keeps the store free of torch at import time

    return checkpoint_paths(checkpoint)


# ------------------------------------------------------------------------------------------------ record

@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``, with ``params``, ``metrics`` and ``progress`` decoded from JSON."""

    id: str
    kind: str
    status: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    progress: dict[str, Any] | None
    checkpoint: str | None
    error: str | None
    device: str | None
    pid: int | None
    host: str | None

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> "RunRecord":
        values = {name: row[name] for name in _RUN_COLUMNS}
        for name in ("params", "metrics", "progress"):
            values[name] = _load(values[name])
        if values["params"] is None:
            values["params"] = {}
        return cls(**values)

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from start to finish; None unless the run both started and finished."""
        if not self.started_at or not self.finished_at:
            return None
        delta = datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)
        return delta.total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """All fields (deep-copied) plus ``duration_seconds``: plain JSON types only."""
        data = dataclasses.asdict(self)
        data["duration_seconds"] = self.duration_seconds
        return data


# ------------------------------------------------------------------------------------------------- store

class RunStore:
    """Runs, their predictions and reviews in ``path`` (default ``<data dir>/runs.db``).

    Opening a store creates or upgrades the schema and, unless ``recover=False``, marks runs left
    behind by dead processes as interrupted (:meth:`recover_interrupted`). A store object holds no
    open connection and may be shared by threads.

    A damaged database file (not a database, malformed, or failing ``PRAGMA quick_check``) is refused
    with a ``ValueError`` that says what to do, and left untouched. With ``set_aside_damaged=True`` (the
    app's store, see :class:`calibprompt.service.core.Core`) it does not stop the opening: it is renamed,
    never deleted, to ``<name>.damaged-<UTC time>`` with its ``-wal``, ``-shm`` and ``-journal`` files
    (:func:`set_aside`), and a new, empty store is created in its place only then; ``damaged_copy``
    names the kept file and ``notice`` says so in plain words (also logged as one WARNING line). A
    missing or empty (0-byte) file is simply created; both attributes are None then.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, recover: bool = True,
                 set_aside_damaged: bool = False) -> None:
        if path is None:
            path = data_dir() / "runs.db"
        if isinstance(path, str) and path.strip() in ("", ":memory:"):
            raise ValueError("The run store needs a database file path (an in-memory database would not persist).")
        self.path = Path(path).expanduser().absolute()
        if self.path.is_dir():
            raise ValueError(f"The run store path {self.path} is a folder; give a file such as {self.path / 'runs.db'}.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._reviews = Reviews(self._transaction, self._row)
        #: where a damaged database found at opening was kept, and the plain-words notice about it
        self.damaged_copy: Path | None = None
        self.notice: str | None = None
        self._handle_damage(set_aside_damaged)
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"Cannot open the run store {self.path}: {exc}. Check it with "
                             "'calibprompt store check'.") from exc
        if recover:
            self.recover_interrupted()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    def _handle_damage(self, set_aside_damaged: bool) -> None:
        """Check the file before anything writes to it; a damaged one is set aside or refused (ValueError)."""
        reason = store_damage(self.path)
        if reason is None:
            return
        if not set_aside_damaged:
            raise ValueError(
                f"Cannot open the run store {self.path}: it is damaged ({reason}). Nothing was changed. Run "
                "'calibprompt store check' to see the damage; starting the app keeps the damaged file as "
                f"{self.path.name}.damaged-<time> and starts a new, empty store, and 'calibprompt store recover "
                "FILE' then copies what can still be read from it.")
        try:
            self.damaged_copy = set_aside(self.path)  # only once it is out of the way is a new one created
        except FileNotFoundError:
            if self.path.exists():
                raise
            return  # another process set it aside a moment ago; its notice says where
        self.notice = damaged_store_notice(self.path, self.damaged_copy, reason)
        logger.warning("%s", self.notice)

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("The run store %s could not use WAL mode (got %s); concurrent use may block.",
                               self.path, mode)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One connection and one transaction; ``write`` takes the write lock up front (no upgrade races)."""
        conn = self._connect()
        try:
            with conn:  # commit on success, roll back on any exception
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
        finally:
            conn.close()

    def _init_schema(self) -> None:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION`: every migration in one transaction."""
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ValueError(
                    f"The run store {self.path} has schema version {version}, newer than this CalibPrompt "
                    f"understands ({SCHEMA_VERSION}); upgrade CalibPrompt or use another data directory."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _split_sql(_MIGRATIONS[target]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(target)}")
                logger.debug("Run store %s: schema now at version %d", self.path, target)

    # -- lookups ----------------------------------------------------------------------------------

    def _check_id(self, run_id: Any) -> str:
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"A run id must be a non-empty string, got {run_id!r}.")
        return run_id

    def _row(self, conn: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"No run {run_id!r} in the store {shown(self.path)}")
        return row

    @staticmethod
    def _check_transition(run_id: str, current: str, target: str) -> None:
        allowed = TRANSITIONS.get(current, ())
        if target in allowed:
            return
        if not allowed:
            raise ValueError(f"Run {run_id!r} is already {current}; a {current} run cannot become {target}.")
        raise ValueError(
            f"Run {run_id!r} is {current} and cannot become {target} "
            f"(a {current} run can become: {', '.join(allowed)})."
        )

    def _transition(self, run_id: str, target: str, **values: Any) -> None:
        run_id = self._check_id(run_id)
        with self._transaction() as conn:
            current = self._row(conn, run_id)["status"]
            self._check_transition(run_id, current, target)
            self._update(conn, run_id, status=target, **values)
        logger.info("Run %s: %s -> %s", run_id, current, target)

    @staticmethod
    def _update(conn: sqlite3.Connection, run_id: str, **values: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in values)
        conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*values.values(), run_id))

    # -- life cycle -------------------------------------------------------------------------------

    def create_run(self, kind: str, params: dict, slug: str = "") -> str:
        """Add a queued run owned by this process; returns its id (``YYYYMMDD-HHMMSS-<slug>-<hex4>``).

        ``slug`` is lower-cased and reduced to ``a-z0-9-`` (at most 40 characters); empty means ``kind``.
        """
        if kind not in KINDS:
            raise ValueError(f"Unknown run kind {kind!r}; expected one of: {', '.join(KINDS)}.")
        params_json = _dump(_require_mapping(params, "params"), "params")
        slug = _slugify(_require_str(slug, "slug")) or kind
        now = _now()
        for _ in range(_ID_ATTEMPTS):
            run_id = f"{now:%Y%m%d-%H%M%S}-{slug}-{secrets.token_hex(2)}"
            try:
                with self._transaction() as conn:
                    conn.execute(
                        "INSERT INTO runs (id, kind, status, created_at, params, pid, host, pid_start) "
                        "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                        (run_id, kind, _iso(now), params_json, os.getpid(), socket.gethostname(),
                         _process_start(os.getpid())),
                    )
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc).upper():
                    continue  # the same id in the same second: draw other hex digits
                raise
            logger.info("Run %s created (%s)", run_id, kind)
            return run_id
        raise RuntimeError(f"Could not find a free run id for slug {slug!r} after {_ID_ATTEMPTS} attempts.")

    def start_run(self, run_id: str, device: str) -> None:
        """queued -> running on ``device``; records started_at and this process (pid, host)."""
        device = _require_str(device, "device", empty=False)
        self._transition(run_id, "running", started_at=_iso(_now()), device=device, pid=os.getpid(),
                         host=socket.gethostname(), pid_start=_process_start(os.getpid()))

    def update_progress(self, run_id: str, progress: dict) -> None:
        """Replace the progress snapshot of a running run (one short write)."""
        run_id = self._check_id(run_id)
        text = _dump(_require_mapping(progress, "progress"), "progress")
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE runs SET progress = ? WHERE id = ? AND status = 'running'", (text, run_id))
            if cursor.rowcount == 0:
                status = self._row(conn, run_id)["status"]
                raise ValueError(f"Run {run_id!r} is {status}; progress can only be reported while it is running.")

    def finish_run(self, run_id: str, metrics: dict, checkpoint: str | os.PathLike | None,
                   predictions: Iterable[Mapping[str, Any]] | None = None) -> None:
        """running -> done, with ``metrics``, ``checkpoint`` and ``predictions``, all in one transaction.

        ``checkpoint`` (a stem, ``.json`` or ``.safetensors`` path) is required for training runs and
        must exist (both files); it is stored as the absolute path of the JSON file. Each prediction is
        a dict with ``path``, ``label`` (int or None), ``predicted``, ``confidence`` and ``probs``;
        they are numbered in the given order. On any error nothing is stored and the run is unchanged.
        """
        run_id = self._check_id(run_id)
        metrics_json = _dump(_require_mapping(metrics, "metrics"), "metrics")
        with self._transaction(write=False) as conn:
            row = self._row(conn, run_id)
        self._check_transition(run_id, row["status"], "done")
        checkpoint_text = None
        if checkpoint is None:
            if row["kind"] == "train":
                raise ValueError(f"Training run {run_id!r} cannot be done without a checkpoint.")
        else:
            weights, meta = _checkpoint_files(_require_str(checkpoint, "checkpoint", empty=False))
            missing = [str(p) for p in (weights, meta) if not p.is_file()]
            if missing:
                raise ValueError(
                    f"Run {run_id!r} cannot be done: its checkpoint is incomplete ({', '.join(missing)} missing)."
                )
            checkpoint_text = os.path.abspath(meta)
        if predictions is not None and (isinstance(predictions, (str, bytes, Mapping))
                                        or not isinstance(predictions, Iterable)):
            raise ValueError(f"predictions must be a list of dicts, got a {type(predictions).__name__}.")

        with self._transaction() as conn:
            current = self._row(conn, run_id)["status"]
            self._check_transition(run_id, current, "done")  # it may have changed meanwhile
            count = 0
            if predictions is not None:
                before = conn.total_changes
                conn.executemany(
                    "INSERT INTO predictions (run_id, idx, path, label, predicted, confidence, probs) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    _prediction_rows(run_id, predictions),
                )
                count = conn.total_changes - before
            self._update(conn, run_id, status="done", metrics=metrics_json, checkpoint=checkpoint_text,
                         finished_at=_iso(_now()))
        logger.info("Run %s done (%d predictions)", run_id, count)

    def fail_run(self, run_id: str, error: str) -> None:
        """queued/running -> failed, with the error message."""
        error = _require_str(error, "error").strip() or "Unknown error."
        self._transition(run_id, "failed", error=error, finished_at=_iso(_now()))

    def cancel_run(self, run_id: str) -> None:
        """queued/running -> cancelled."""
        self._transition(run_id, "cancelled", finished_at=_iso(_now()))

    def mark_interrupted(self, run_id: str, error: str = INTERRUPTED_ERROR) -> None:
        """queued/running -> interrupted (its process stopped before the run finished)."""
        error = _require_str(error, "error").strip() or INTERRUPTED_ERROR
        self._transition(run_id, "interrupted", error=error, finished_at=_iso(_now()))

    def recover_interrupted(self) -> list[str]:
        """Mark queued/running runs whose owning process on this host has died as interrupted.

        Runs of live processes, of other hosts (their pids mean nothing here) and without a recorded
        pid are left alone. Returns the ids that were marked. Called when a store is opened.
        """
        host = socket.gethostname()
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT id, pid, pid_start FROM runs WHERE status IN ('queued', 'running') AND host = ? "
                "AND pid IS NOT NULL", (host,),
            ).fetchall()
        dead = [(row["id"], row["pid"], row["pid_start"]) for row in rows
                if not _owner_alive(int(row["pid"]), row["pid_start"])]
        if not dead:
            return []
        marked = []
        with self._transaction() as conn:
            finished_at = _iso(_now())
            for run_id, pid, started in dead:
                cursor = conn.execute(
                    "UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? WHERE id = ? "
                    "AND status IN ('queued', 'running') AND host = ? AND pid = ? AND pid_start IS ?",
                    (INTERRUPTED_ERROR, finished_at, run_id, host, pid, started),
                )
                if cursor.rowcount:
                    marked.append(run_id)
        for run_id in marked:
            logger.warning("Run %s was left unfinished by a stopped process; marked interrupted.", run_id)
        return marked

    def set_shared(self, run_id: str, shared: bool) -> RunRecord:
        """Record whether a run's owner shares it (``params["shared"]``, True or False), read and written in one
        transaction; returns the updated run. Only a finished (``done``) run can be shared; any run can stop
        being shared. Who may share what is the caller's rule (:mod:`calibprompt.service.access`)."""
        run_id = self._check_id(run_id)
        if not isinstance(shared, bool):
            raise ValueError(f"shared must be True or False, got {shared!r}.")
        with self._transaction() as conn:
            row = self._row(conn, run_id)
            if shared and row["status"] != "done":
                raise ValueError(f"Run {run_id} is {row['status']}; only a finished run can be shared. Share it "
                                 "once it is done.")
            params = _load(row["params"])
            params = dict(params) if isinstance(params, Mapping) else {}
            params["shared"] = shared
            self._update(conn, run_id, params=_dump(params, "params"))
            record = RunRecord._from_row(self._row(conn, run_id))
        logger.info("Run %s %s", run_id, "shared" if shared else "no longer shared")
        return record

    # -- queries ----------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        run_id = self._check_id(run_id)
        with self._transaction(write=False) as conn:
            return RunRecord._from_row(self._row(conn, run_id))

    def list_runs(self, status: str | Iterable[str] | None = None, kind: str | None = None,
                  limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally only some statuses, one kind, and at most ``limit``."""
        clauses, args = [], []
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            unknown = [s for s in wanted if s not in STATUSES]
            if unknown or not wanted:
                raise ValueError(f"Unknown run status {unknown or wanted!r}; expected some of: {', '.join(STATUSES)}.")
            clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
            args.extend(wanted)
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"Unknown run kind {kind!r}; expected one of: {', '.join(KINDS)}.")
            clauses.append("kind = ?")
            args.append(kind)
        sql = "SELECT * FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
            sql += " LIMIT ?"
            args.append(limit)
        with self._transaction(write=False) as conn:
            return [RunRecord._from_row(row) for row in conn.execute(sql, args)]

    def delete_run(self, run_id: str, *, force: bool = False) -> None:
        """Delete a run with its predictions; reviews of it are kept, no longer linked to a run.

        Checkpoint files are NOT deleted (another run or the user may still use them). A queued or
        running run is refused unless ``force``: cancel it first.
        """
        run_id = self._check_id(run_id)
        with self._transaction() as conn:
            status = self._row(conn, run_id)["status"]
            if status in ACTIVE_STATUSES and not force:
                raise ValueError(f"Run {run_id!r} is {status}; cancel it before deleting it.")
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        logger.info("Run %s deleted", run_id)

    def predictions(self, run_id: str) -> list[dict[str, Any]]:
        """The run's predictions in order: dicts with idx, path, label, predicted, confidence, probs."""
        run_id = self._check_id(run_id)
        with self._transaction(write=False) as conn:
            self._row(conn, run_id)
            rows = conn.execute(
                "SELECT idx, path, label, predicted, confidence, probs FROM predictions WHERE run_id = ? "
                "ORDER BY idx", (run_id,),
            ).fetchall()
        return [{"idx": r["idx"], "path": r["path"], "label": r["label"], "predicted": r["predicted"],
                 "confidence": r["confidence"], "probs": json.loads(r["probs"])} for r in rows]

    # -- reviews (see calibprompt.runs.reviews) -------------------------------------------------

    def set_review(self, *, reader: str, dataset: str, image: str, method: str, verdict: str, note: str = "",
                   true_class: str = "", prediction: str = "", confidence: float | None = None, model: str = "",
                   task: str = "", run_id: str | None = None, owner: str | None = "") -> dict[str, Any]:
        """Record ``reader``'s verdict on ``method``'s prediction for ``image`` (its path inside ``dataset``, the
        dataset's key), owned by ``owner`` (``''``: the operator's).

        One verdict per (owner, reader, dataset, image, method): saving again updates it. Returns the stored
        verdict; see :meth:`calibprompt.runs.reviews.Reviews.save`.
        """
        return self._reviews.save(reader=reader, dataset=dataset, image=image, method=method, verdict=verdict,
                                  note=note, true_class=true_class, prediction=prediction, confidence=confidence,
                                  model=model, task=task, run_id=run_id, owner=owner)

    def reviews(self, *, reader: str | None = None, dataset: str | None = None, image: str | None = None,
                method: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Verdicts matching the given filters (of every owner unless ``owner`` is given), newest first (see
        :meth:`calibprompt.runs.reviews.Reviews.find`)."""
        return self._reviews.find(reader=reader, dataset=dataset, image=image, method=method, owner=owner)

    def export_reviews_csv(self, path: str | os.PathLike, *, reader: str | None = None,
                           dataset: str | None = None) -> Path:
        """Write the verdicts of every owner (the operator's export) as a spreadsheet-safe CSV
        (``REVIEW_CSV_COLUMNS``), atomically; returns the path."""
        return self._reviews.export_csv(path, reader=reader, dataset=dataset)

    def reader_agreement(self, *, dataset: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Per pair of readers over their common cases: the count, the percentage agreement and Cohen's kappa
        (see :meth:`Reviews.agreement`)."""
        return self._reviews.agreement(dataset=dataset, method=method)


def _prediction_rows(run_id: str, predictions: Iterable[Mapping[str, Any]]) -> Iterator[tuple]:
    """Validated rows for ``predictions``; raises ``ValueError`` (inside the transaction) on a bad one."""
    for i, item in enumerate(predictions):
        where = f"predictions[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a dict, got a {type(item).__name__}.")
        missing = [key for key in PREDICTION_KEYS if key not in item]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)} (needs {', '.join(PREDICTION_KEYS)}).")
        path = item["path"]
        if path is not None:
            path = _require_str(path, f"{where}['path']")
        label = None if item["label"] is None else _integer(item["label"], f"{where}['label']")
        predicted = _integer(item["predicted"], f"{where}['predicted']")
        confidence = _number(item["confidence"], f"{where}['confidence']")
        probs = _plain(item["probs"], f"{where}['probs']")
        if not isinstance(probs, list) or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                                  and p is not None for p in probs):
            raise ValueError(f"{where}['probs'] must be a list of finite numbers.")
        yield (run_id, i, path, label, predicted, confidence, json.dumps(probs, allow_nan=False))


def _integer(value: Any, where: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{where} must be an integer, got {value!r}.") from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{where} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {number}.")
    return number


def _split_sql(script: str) -> list[str]:
    """The statements of a schema script (no semicolons inside statements), comments dropped."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


# ------------------------------------------------------------------------------- damage and recovery

_SQLITE_HEADER = b"SQLite format 3\x00"
_SIBLINGS = ("-wal", "-shm", "-journal")
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the file itself is damaged (not locked, not a full disk, not a permission problem)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF in _DAMAGE_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the database file ``path`` (absolute); creates no file of its own."""
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)


def _checking_connection(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and leaves no files behind: read-only while a ``-wal`` file exists (a
    hot log is never checkpointed into the file being checked), else an ordinary one, whose close removes
    the ``-wal`` and ``-shm`` files a WAL database gets while open (a read-only one cannot)."""
    if Path(f"{path}-wal").exists():
        return _read_only(path)
    return sqlite3.connect(path, timeout=30, isolation_level=None)


def _pragma_check(path: Path, pragma: str, limit: int = 100) -> list[str]:
    """The problems ``PRAGMA <pragma>(limit)`` finds in ``path`` ([] when it says ok); an error that means
    damage is one problem, any other error propagates."""
    conn = _checking_connection(path)
    try:
        rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        return [str(exc)]
    finally:
        conn.close()
    return [] if rows == ["ok"] else rows


def store_damage(path: str | os.PathLike) -> str | None:
    """Why the database file ``path`` is damaged, in SQLite's words; None when it is sound, missing or empty.

    Cheap enough for every start-up: the file's 16-byte header, then ``PRAGMA quick_check`` (the
    structure of every page, without cross-checking index contents as ``integrity_check`` does).
    Errors that are not damage (a locked database, a permission problem) propagate.
    """
    path = Path(path).expanduser().absolute()
    try:
        if path.stat().st_size == 0:
            return None
    except FileNotFoundError:
        return None
    with open(path, "rb") as handle:
        if handle.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            return "file is not a database"
    problems = _pragma_check(path, "quick_check", limit=1)
    if not problems:
        return None
    return " ".join(problems[0].replace("*** in database main ***", "").split()) or "quick_check failed"


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_no_clobber(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, never replacing an existing ``dst`` (``FileExistsError`` instead)."""
    try:
        os.link(src, dst)  # fails if dst exists: no window in which another file could be replaced
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if dst.exists() or dst.is_symlink():
            raise FileExistsError(17, "File exists", str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def set_aside(path: str | os.PathLike) -> Path:
    """Rename the damaged database ``path`` and its ``-wal``, ``-shm`` and ``-journal`` files to
    ``<name>.damaged-<UTC time>`` (then ``-2``, ``-3``, ... if that is taken). Nothing is deleted or
    overwritten. The side files move first, so a new database at ``path`` can never pick up the old
    write-ahead log. Returns the kept main file's path."""
    path = Path(path).expanduser().absolute()
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        kept = path.with_name(f"{path.name}.damaged-{stamp}" + ("" if n == 1 else f"-{n}"))
        if not any(Path(f"{kept}{suffix}").exists() for suffix in ("", *_SIBLINGS)):
            break
    else:
        raise FileExistsError(17, "Too many damaged copies with the same time stamp", str(kept))
    for suffix in _SIBLINGS:
        side = Path(f"{path}{suffix}")
        if side.exists():
            _move_no_clobber(side, Path(f"{kept}{suffix}"))
    _move_no_clobber(path, kept)
    _fsync_dir(path.parent)
    return kept


def check_store(path: str | os.PathLike) -> list[str]:
    """SQLite's ``PRAGMA integrity_check`` of the database file ``path``, read-only: the problems it
    reports (at most 100), [] when it is ok. ``FileNotFoundError`` when there is no such file."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(2, "There is no run database here", str(path))
    return _pragma_check(path, "integrity_check")


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What :func:`recover_store` made: the new database ``path``, the ``runs`` it holds, the ``method``
    used (``sqlite3 .recover`` or ``python iterdump``) and ``notes`` for the user."""

    path: Path
    runs: int
    method: str
    notes: tuple[str, ...] = ()


def recover_store(damaged: str | os.PathLike, out: str | os.PathLike | None = None, *,
                  use_cli: bool = True) -> Recovery:
    """Copy what can be read from the damaged database ``damaged`` into the new file ``out`` (default
    ``<damaged>.recovered.db``), which must not exist: nothing is ever overwritten.

    Uses the ``sqlite3`` command line's ``.recover`` when it is installed (and ``use_cli``), which also
    finds rows past damaged pages; otherwise Python's :meth:`sqlite3.Connection.iterdump`, then, where
    that stops at damage, a table-by-table read that re-enters tables through their indexes. The result
    is written to a temporary file and only then given its name, so ``out`` is complete or absent.
    """
    damaged = Path(damaged).expanduser().absolute()
    if not damaged.is_file():
        raise FileNotFoundError(2, "No such database file to recover from", str(damaged))
    out = Path(out).expanduser().absolute() if out else damaged.with_name(f"{damaged.name}.recovered.db")
    if any(Path(f"{out}{suffix}").exists() for suffix in ("", *_SIBLINGS)):
        raise ValueError(f"{out} already exists; recovery never overwrites a file. Give another --out path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{secrets.token_hex(4)}")
    notes: list[str] = []
    try:
        method = _recover_into(damaged, tmp, notes, use_cli)
        _copy_user_version(damaged, tmp)
        runs = _count_rows(tmp, "runs")
        lost = _count_rows(tmp, "lost_and_found")
        if lost:
            notes.append(f"{lost} row(s) whose table could not be told apart are in its lost_and_found table.")
        try:
            _move_no_clobber(tmp, out)
        except FileExistsError:
            raise ValueError(f"{out} appeared while recovering; it was left alone. Give another --out path.") from None
        _fsync_dir(out.parent)
    finally:
        for suffix in ("", *_SIBLINGS):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    return Recovery(out, runs, method, tuple(notes))


def _recover_into(damaged: Path, tmp: Path, notes: list[str], use_cli: bool) -> str:
    """Fill the new database ``tmp`` from ``damaged``; returns the method used, appends notes for the user."""
    import shutil

    cli = shutil.which("sqlite3") if use_cli else None
    if cli:
        error = _recover_with_cli(cli, damaged, tmp)
        if error is None:
            return "sqlite3 .recover"
        notes.append(f"The sqlite3 command line's .recover did not work here ({error}; some builds lack the "
                     "sqlite_dbpage table it needs), so Python's fallback was used instead.")
        for suffix in ("", *_SIBLINGS):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    else:
        notes.append("The sqlite3 command line is not installed, so Python's less thorough fallback was used; "
                     "for a fuller recovery install it (apt-get install sqlite3) and run this again.")
    _recover_with_python(damaged, tmp, notes)
    return "python iterdump"


def _recover_with_cli(cli: str, damaged: Path, tmp: Path) -> str | None:
    """``sqlite3 damaged .recover | sqlite3 tmp``, run on a copy of ``damaged`` (and its ``-wal``), so the
    kept file and its folder stay exactly as they were; None on success, else what went wrong."""
    import shutil
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".recover-", dir=tmp.parent) as work:
        copy = Path(work) / "damaged.db"
        shutil.copyfile(damaged, copy)
        if Path(f"{damaged}-wal").is_file():
            shutil.copyfile(f"{damaged}-wal", f"{copy}-wal")
        dump = subprocess.run([cli, str(copy), ".recover"], capture_output=True, check=False)
    if dump.returncode != 0 or not dump.stdout.strip():
        return (dump.stderr.decode("utf-8", "replace").strip() or f"exit status {dump.returncode}")[:300]
    load = subprocess.run([cli, str(tmp)], input=dump.stdout, capture_output=True, check=False)
    if load.returncode != 0 or not tmp.is_file():
        return (load.stderr.decode("utf-8", "replace").strip() or f"exit status {load.returncode}")[:300]
    return None


def _recover_with_python(damaged: Path, tmp: Path, notes: list[str]) -> None:
    """Python's fallback: :meth:`~sqlite3.Connection.iterdump` statement by statement; where it stops at
    damage, :func:`_salvage_tables` reads on table by table."""
    src = _checking_connection(damaged)
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        dst.execute("BEGIN")
        done = 0
        try:
            for statement in src.iterdump():
                if statement in ("BEGIN TRANSACTION;", "COMMIT;"):
                    continue
                with contextlib.suppress(sqlite3.Error):
                    dst.execute(statement)
                    done += 1
        except sqlite3.DatabaseError as exc:
            notes.append(f"Python's iterdump stopped at damage ({exc}) after {done} statement(s); "
                         "the rest was read table by table, skipping unreadable pages.")
            _salvage_tables(src, dst)
        dst.execute("COMMIT")
    finally:
        src.close()
        dst.close()


def _salvage_tables(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """Create ``src``'s tables in ``dst`` where missing, copy every row that can be read, then the indexes."""
    try:
        schema = src.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                             "AND name NOT LIKE 'sqlite_%'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"The list of tables of the damaged file cannot be read ({exc}), so Python's fallback "
                         "finds nothing. Install the sqlite3 command line (apt-get install sqlite3) and run "
                         "this again: its .recover can find rows without it.") from exc
    for kind, name, sql in schema:
        if kind == "table":
            with contextlib.suppress(sqlite3.Error):  # already made by iterdump
                dst.execute(sql)
            _salvage_rows(src, dst, name)
    for kind, _name, sql in schema:
        if kind in ("index", "trigger", "view"):
            with contextlib.suppress(sqlite3.Error):
                dst.execute(sql)


def _salvage_rows(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> None:
    """Copy the readable rows of ``table``: a plain scan up to the first damaged page, then (for a rowid
    table) each row its indexes still point at, one by one. Duplicates are ignored through the keys."""
    quoted = '"' + table.replace('"', '""') + '"'

    def insert(row: tuple) -> None:
        with contextlib.suppress(sqlite3.Error):
            dst.execute(f"INSERT OR IGNORE INTO {quoted} VALUES ({', '.join('?' * len(row))})", tuple(row))

    with contextlib.suppress(sqlite3.DatabaseError):
        for row in src.execute(f"SELECT * FROM {quoted}"):
            insert(row)
    for rowid in _rowids_by_index(src, table):
        with contextlib.suppress(sqlite3.DatabaseError):
            row = src.execute(f"SELECT * FROM {quoted} WHERE rowid = ?", (rowid,)).fetchone()
            if row is not None:
                insert(row)


def _rowids_by_index(src: sqlite3.Connection, table: str) -> set[int]:
    """The rowids that ``table``'s readable indexes hold (none for a WITHOUT ROWID table)."""
    quoted = '"' + table.replace('"', '""') + '"'
    rowids: set[int] = set()
    try:
        indexes = [row[1] for row in src.execute(f"PRAGMA index_list({quoted})")]
    except sqlite3.Error:
        return rowids
    for index in indexes:
        index_q = '"' + str(index).replace('"', '""') + '"'
        with contextlib.suppress(sqlite3.Error):
            for (rowid,) in src.execute(f"SELECT rowid FROM {quoted} INDEXED BY {index_q}"):
                rowids.add(rowid)
    return rowids


def _copy_user_version(damaged: Path, tmp: Path) -> None:
    """Give ``tmp`` the schema version in ``damaged``'s header (bytes 60-63), which no dump carries, so
    the recovered file opens as a store without being migrated again."""
    with open(damaged, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
        return
    version = int.from_bytes(header[60:64], "big")
    if 0 < version <= SCHEMA_VERSION:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute(f"PRAGMA user_version = {version}")
            conn.commit()
        finally:
            conn.close()


def _count_rows(path: Path, table: str) -> int:
    """How many rows ``table`` of the database ``path`` holds (0 when it has no such table)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
