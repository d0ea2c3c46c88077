"""Case reviews: readers' verdicts on model predictions, their CSV export and inter-reader agreement.

A *verdict* is one reader's judgement (``agree`` | ``disagree`` | ``unsure``, see :data:`VERDICTS`)
of one method's prediction on one image of one dataset. It belongs to the key
``(owner, reader, dataset, image, method)``: the same reader of the same owner saving again for the same
key updates the verdict; another reader, owner or method adds a row, so several readers' verdicts on one
case are all kept and can be compared (:meth:`Reviews.agreement`).

Table ``reviews`` (run-store schema version 3; created by :data:`MIGRATION_V2`, owner added by
:data:`MIGRATION_V3`):

``id``           INTEGER, internal row id
``owner``        who owns the verdict: the page's identity (``user:<name>``, ``browser:<hash>``) or
                 ``''`` for the operator at the command line and for verdicts kept from version 2
                 (see :mod:`calibprompt.service.access`: ``''`` counts as ``local``)
``reader``       who gave the verdict (non-empty; the name typed, or the logged-in user)
``dataset``      the dataset's key (:func:`calibprompt.data.resolve.dataset_key`: a shared dataset's name, an
                 upload's folder ``uploads/<owner key>/<name>``); ``''`` for verdicts migrated from version 1
``image``        the image's path inside the dataset: relative, posix (``tumour/0012.png``)
``method``       the prompt / head whose prediction was judged (non-empty)
``verdict``      one of :data:`VERDICTS`
``note``         free text
``true_class``, ``prediction``   class names as shown to the reader (may be ``''``)
``confidence``   the shown prediction's probability in ``[0, 1]``, or NULL
``model``, ``task``              backbone and task names (may be ``''``)
``run_id``       the run the prediction came from, or NULL; set to NULL when that run is deleted
                 (a reader's verdict outlives the run that produced the prediction)
``reviewed_at``  ISO-8601 UTC time of the latest save

``UNIQUE (owner, reader, dataset, image, method)``.

The CSV export (:meth:`Reviews.export_csv`) has the columns :data:`REVIEW_CSV_COLUMNS` and is safe
to open in a spreadsheet: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return is prefixed with ``'`` so it is shown as text, not run as a formula (OWASP "CSV injection").

This module holds no connection of its own: :class:`Reviews` runs its SQL through the run store's
transaction helper, and :class:`calibprompt.runs.store.RunStore` exposes it as ``set_review``,
``reviews``, ``export_reviews_csv`` and ``reader_agreement``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from calibprompt.evaluation.agreement import pair_agreement
from calibprompt.fileio import atomic_write_text

__all__ = ["VERDICTS", "REVIEW_FIELDS", "REVIEW_CSV_COLUMNS", "LEGACY_READER", "LEGACY_METHOD", "MIGRATION_V2",
           "MIGRATION_V3", "Reviews", "csv_cell", "write_reviews_csv", "reader_agreement"]

VERDICTS = ("agree", "disagree", "unsure")
# The fields of one verdict, as returned by Reviews.save / Reviews.find.
REVIEW_FIELDS = ("owner", "reader", "dataset", "image", "method", "verdict", "note", "true_class", "prediction",
                 "confidence", "model", "task", "run_id", "reviewed_at")
# The columns that name one verdict (saving again for the same values updates it).
_KEY = ("owner", "reader", "dataset", "image", "method")
REVIEW_CSV_COLUMNS = ("image", "true_class", "method", "prediction", "confidence", "verdict", "note", "reader", "model",
                      "task", "dataset", "run_id", "reviewed_at")
# What a verdict saved by schema version 1 (no reader required, no method) gets when migrated.
LEGACY_READER = "unknown"
LEGACY_METHOD = "unknown"
# Leading characters that make a spreadsheet treat a cell as a formula (OWASP CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_VERDICT_SQL = ", ".join(repr(v) for v in VERDICTS)
_LEGACY_READER_SQL = f"COALESCE(NULLIF(TRIM(reviewer), ''), '{LEGACY_READER}')"

# Schema version 1 -> 2: one verdict per (reader, dataset, image, method) instead of per (run, image).
# Old rows are kept: reader = the old reviewer (or 'unknown'), dataset = '', image as stored,
# method = 'unknown'. Version 1 allowed one reviewer several verdicts on an image, one per run; the
# newest keeps method 'unknown', older ones become 'unknown (run <id>)' so that none is lost.
# (Statements are split on ';' by the store: no semicolons inside them.)
MIGRATION_V2 = f"""
CREATE TABLE reviews_v2 (
    id          INTEGER PRIMARY KEY,
    reader      TEXT NOT NULL CHECK (reader <> ''),
    dataset     TEXT NOT NULL DEFAULT '',
    image       TEXT NOT NULL CHECK (image <> ''),
    method      TEXT NOT NULL CHECK (method <> ''),
    verdict     TEXT NOT NULL CHECK (verdict IN ({_VERDICT_SQL})),
    note        TEXT NOT NULL DEFAULT '',
    true_class  TEXT NOT NULL DEFAULT '',
    prediction  TEXT NOT NULL DEFAULT '',
    confidence  REAL CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
    model       TEXT NOT NULL DEFAULT '',
    task        TEXT NOT NULL DEFAULT '',
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    reviewed_at TEXT NOT NULL,
    UNIQUE (reader, dataset, image, method)
);
INSERT INTO reviews_v2 (id, reader, dataset, image, method, verdict, note, run_id, reviewed_at)
SELECT id, legacy_reader, '', image,
       CASE WHEN newest = 1 THEN '{LEGACY_METHOD}'
            WHEN run_id IS NULL THEN '{LEGACY_METHOD} (no run)'
            ELSE '{LEGACY_METHOD} (run ' || run_id || ')' END,
       verdict, note, run_id, updated_at
FROM (SELECT *, {_LEGACY_READER_SQL} AS legacy_reader,
             ROW_NUMBER() OVER (PARTITION BY {_LEGACY_READER_SQL}, image ORDER BY updated_at DESC, id DESC) AS newest
      FROM reviews);
DROP TABLE reviews;
ALTER TABLE reviews_v2 RENAME TO reviews;
CREATE INDEX reviews_by_case ON reviews (dataset, image, method);
"""

# Schema version 2 -> 3: every verdict has an owner, part of its key, so that two owners' readers of the same
# name never overwrite (or see) each other's verdicts. Old rows are kept with owner '' (the operator's).
MIGRATION_V3 = f"""
CREATE TABLE reviews_v3 (
    id          INTEGER PRIMARY KEY,
    owner       TEXT NOT NULL DEFAULT '',
    reader      TEXT NOT NULL CHECK (reader <> ''),
    dataset     TEXT NOT NULL DEFAULT '',
    image       TEXT NOT NULL CHECK (image <> ''),
    method      TEXT NOT NULL CHECK (method <> ''),
    verdict     TEXT NOT NULL CHECK (verdict IN ({_VERDICT_SQL})),
    note        TEXT NOT NULL DEFAULT '',
    true_class  TEXT NOT NULL DEFAULT '',
    prediction  TEXT NOT NULL DEFAULT '',
    confidence  REAL CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
    model       TEXT NOT NULL DEFAULT '',
    task        TEXT NOT NULL DEFAULT '',
    run_id      TEXT REFERENCES runs (id) ON DELETE SET NULL,
    reviewed_at TEXT NOT NULL,
    UNIQUE (owner, reader, dataset, image, method)
);
INSERT INTO reviews_v3 (id, owner, reader, dataset, image, method, verdict, note, true_class, prediction, confidence,
                        model, task, run_id, reviewed_at)
SELECT id, '', reader, dataset, image, method, verdict, note, true_class, prediction, confidence, model, task, run_id,
       reviewed_at
FROM reviews;
DROP TABLE reviews;
ALTER TABLE reviews_v3 RENAME TO reviews;
CREATE INDEX reviews_by_case ON reviews (dataset, image, method)
"""

Transaction = Callable[..., contextlib.AbstractContextManager[sqlite3.Connection]]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _text(value: Any, name: str, *, required: str | None = None) -> str:
    """``value`` as a stripped string; ``required`` is the hint given when it must not be empty."""
    if value is None and required is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got a {type(value).__name__}.")
    value = value.strip()
    if required is not None and not value:
        raise ValueError(f"{name} must not be empty: give {required}.")
    return value


def _note(value: Any) -> str:
    """A note is kept as typed (not stripped)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"note must be a string, got a {type(value).__name__}.")
    return value


def _image_key(image: Any) -> str:
    """The image's path inside its dataset, normalised (``./a//b.png`` -> ``a/b.png``); ``ValueError`` if unsafe."""
    image = _text(image, "image", required="the image's path inside the dataset, e.g. 'tumour/0012.png'")
    if "\\" in image:
        raise ValueError(f"image {image!r} contains a backslash; give the path inside the dataset with forward "
                         "slashes, e.g. 'tumour/0012.png'.")
    if _is_absolute(image):
        raise ValueError(f"image {image!r} is an absolute path; give the path inside the dataset, "
                         "e.g. 'tumour/0012.png', not where it lies on the server.")
    parts = PurePosixPath(image).parts
    if ".." in parts:
        raise ValueError(f"image {image!r} contains '..'; give the path inside the dataset, e.g. 'tumour/0012.png'.")
    if not parts:
        raise ValueError(f"image {image!r} names no file; give the path inside the dataset, e.g. 'tumour/0012.png'.")
    return PurePosixPath(*parts).as_posix()


def _image_filter(image: Any) -> str:
    """An image filter, normalised like a stored key when it is one (legacy rows may hold other paths)."""
    try:
        return _image_key(image)
    except ValueError:
        return _text(image, "image")


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or bool(PureWindowsPath(path).drive)


def _confidence(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"confidence must be a number in [0, 1] or None, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"confidence must be a number in [0, 1] or None, got {value!r}.") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"confidence must be a probability in [0, 1] (the shown prediction's), got {number}.")
    return number


def _verdict(value: Any) -> str:
    verdict = value.strip().lower() if isinstance(value, str) else None
    if verdict not in VERDICTS:
        raise ValueError(f"Unknown verdict {value!r}; expected one of: {', '.join(VERDICTS)}.")
    return verdict


def csv_cell(value: Any) -> str | float:
    """One CSV cell, safe for spreadsheets.

    None -> ``''``; a float (the confidence) -> its text with 4 decimals (``0.9700``), kept numeric;
    any other value -> its text, prefixed with ``'`` when it starts with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return, so a spreadsheet shows it instead of evaluating it. Line breaks
    (``\r\n``, ``\r``) then become ``\n``: the csv module does not quote a bare ``\r`` when rows end
    in ``\n``, and a reader would split the row there.
    """
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    text = str(value)
    if text.startswith(_FORMULA_STARTS):
        text = "'" + text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _export_image(image: str) -> str:
    """A verdict's image as exported: only the file name of a legacy absolute (server) path."""
    if _is_absolute(image) or ".." in PurePosixPath(image.replace("\\", "/")).parts:
        return PurePosixPath(image.replace("\\", "/")).name or image
    return image


class Reviews:
    """The review side of a run store.

    ``transaction(write=True)`` must be a context manager yielding one ``sqlite3.Connection`` inside
    one transaction (:meth:`RunStore._transaction`); ``check_run(conn, run_id)`` raises ``ValueError``
    when the run does not exist.
    """

    def __init__(self, transaction: Transaction, check_run: Callable[[sqlite3.Connection, str], Any]) -> None:
        self._transaction = transaction
        self._check_run = check_run

    def save(self, *, reader: str, dataset: str, image: str, method: str, verdict: str, note: str = "",
             true_class: str = "", prediction: str = "", confidence: float | None = None, model: str = "",
             task: str = "", run_id: str | None = None, owner: str | None = "") -> dict[str, Any]:
        """Record ``reader``'s verdict (owned by ``owner``) on ``method``'s prediction for ``image`` of ``dataset``.

        Saving again for the same ``(owner, reader, dataset, image, method)`` replaces that verdict and its
        other fields; returns the stored verdict (the :data:`REVIEW_FIELDS`). Text fields but ``note`` are stripped;
        ``image`` is normalised (``./a//b.png`` -> ``a/b.png``) and must be relative without ``..``; ``owner``
        ``''``, None or ``'local'`` is the operator's (stored as ``''``).
        """
        values = {
            "owner": _owner(owner),
            "reader": _text(reader, "reader", required="the reader's name"),
            "dataset": _text(dataset, "dataset"),
            "image": _image_key(image),
            "method": _text(method, "method", required="the method whose prediction was judged, e.g. 'coop'"),
            "verdict": _verdict(verdict),
            "note": _note(note),
            "true_class": _text(true_class, "true_class"),
            "prediction": _text(prediction, "prediction"),
            "confidence": _confidence(confidence),
            "model": _text(model, "model"),
            "task": _text(task, "task"),
            "run_id": None,
            "reviewed_at": _now_iso(),
        }
        if run_id is not None:
            if not isinstance(run_id, str) or not run_id:
                raise ValueError(f"A run id must be a non-empty string, got {run_id!r}.")
            values["run_id"] = run_id
        columns = ", ".join(REVIEW_FIELDS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in REVIEW_FIELDS if c not in _KEY)
        with self._transaction() as conn:
            if values["run_id"] is not None:
                self._check_run(conn, values["run_id"])
            conn.execute(
                f"INSERT INTO reviews ({columns}) VALUES ({', '.join('?' * len(REVIEW_FIELDS))}) "
                f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updates}",
                [values[c] for c in REVIEW_FIELDS],
            )
            row = conn.execute(
                f"SELECT {columns} FROM reviews WHERE {' AND '.join(f'{c} = ?' for c in _KEY)}",
                [values[c] for c in _KEY],
            ).fetchone()
        return dict(row)

    def find(self, *, reader: str | None = None, dataset: str | None = None, image: str | None = None,
             method: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Verdicts (dicts of :data:`REVIEW_FIELDS`), newest first; each given filter must match exactly
        (``owner`` ``''`` or ``'local'``: the operator's and version-2 verdicts)."""
        return list(self._select(reader=reader, dataset=dataset, image=image, method=method, owner=owner,
                                 order="reviewed_at DESC, id DESC"))

    def export_csv(self, path: str | os.PathLike, *, reader: str | None = None,
                   dataset: str | None = None) -> Path:
        """Write the verdicts of every owner (all, or one reader's / one dataset's) as CSV, atomically; returns
        ``path``. See :func:`write_reviews_csv`."""
        return write_reviews_csv(path, self._select(reader=reader, dataset=dataset, order="id"))

    def agreement(self, *, dataset: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Agreement for every pair of readers (of every owner) with a case in common; see
        :func:`reader_agreement`."""
        return reader_agreement(self._select(dataset=dataset, method=method, order="reader, id"))

    def _select(self, *, order: str, reader: str | None = None, dataset: str | None = None,
                image: str | None = None, method: str | None = None,
                owner: str | None = None) -> Iterator[dict[str, Any]]:
        filters = {"reader": _text(reader, "reader") if reader is not None else None,
                   "dataset": _text(dataset, "dataset") if dataset is not None else None,
                   "image": _image_filter(image) if image is not None else None,
                   "method": _text(method, "method") if method is not None else None,
                   "owner": _owner(owner) if owner is not None else None}
        wanted = {c: v for c, v in filters.items() if v is not None}
        sql = f"SELECT {', '.join(REVIEW_FIELDS)} FROM reviews"
        if wanted:
            sql += " WHERE " + " AND ".join(f"{c} = ?" for c in wanted)
        with self._transaction(write=False) as conn:
            rows = conn.execute(f"{sql} ORDER BY {order}", list(wanted.values())).fetchall()
        return (dict(row) for row in rows)


def _owner(value: Any) -> str:
    """A verdict's owner as stored: ``''`` for the operator (``None``, ``''`` or ``'local'``), else the owner."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"owner must be a string, got a {type(value).__name__}.")
    value = value.strip()
    return "" if value == "local" else value


def write_reviews_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write verdict rows (dicts with the :data:`REVIEW_CSV_COLUMNS`) as CSV, atomically; returns ``path``.

    One row per verdict, columns :data:`REVIEW_CSV_COLUMNS`, sorted by dataset, image, method and
    reader (so the readers of one case are adjacent). Every cell goes through :func:`csv_cell`;
    a legacy verdict whose image is an absolute server path shows only the file name.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REVIEW_CSV_COLUMNS)
    for review in sorted(rows, key=lambda r: (r["dataset"], r["image"], r["method"], r["reader"])):
        review = dict(review, image=_export_image(review["image"]))
        writer.writerow([csv_cell(review[c]) for c in REVIEW_CSV_COLUMNS])
    return atomic_write_text(path, buffer.getvalue())


def reader_agreement(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Agreement for every pair of readers with at least one case (dataset, image, method) in common among
    verdict ``rows``.

    A reader is a reader name of one owner; when two owners' readers have the same name, each is labelled
    with its owner too (``dr a (user:alice)``). Returns ``[{"reader_a", "reader_b", "cases", "agreed",
    "percent", "kappa", "few"}]`` sorted by reader names (``reader_a < reader_b``): ``cases`` is the number of
    common cases, ``agreed`` how many of them got the same verdict, ``percent`` that fraction (0 to 1), ``few``
    whether there are fewer than :data:`calibprompt.evaluation.agreement.FEW_CASES` common cases (kappa is then
    unstable), and ``kappa`` Cohen's kappa over :data:`VERDICTS`
    (:func:`calibprompt.evaluation.agreement.pair_agreement`), None when it says nothing: fewer
    than 2 common cases, or both readers gave every common case one and the same verdict (chance
    agreement ``p_e = 1``, kappa undefined).
    """
    by_reader: dict[tuple[str, str], dict[tuple[str, str, str], str]] = {}
    for review in rows:
        key = (review["dataset"], review["image"], review["method"])
        by_reader.setdefault((_owner(review.get("owner")), review["reader"]), {})[key] = review["verdict"]
    owners_of: dict[str, set[str]] = {}
    for owner, reader in by_reader:
        owners_of.setdefault(reader, set()).add(owner)
    label = {(o, r): r if len(owners_of[r]) == 1 else f"{r} ({o or 'local'})" for o, r in by_reader}
    pairs = []
    for a, b in itertools.combinations(sorted(by_reader, key=label.get), 2):
        common = sorted(by_reader[a].keys() & by_reader[b].keys())
        if not common:
            continue
        stats = pair_agreement([by_reader[a][k] for k in common], [by_reader[b][k] for k in common], labels=VERDICTS)
        pairs.append({"reader_a": label[a], "reader_b": label[b], **stats})
    return pairs
