"""Case review: the test cases a model got confidently wrong, readers' verdicts on them, and how far
readers agree. What the Review tab shows, as data: the tab formats it.

Functions here take the shared :class:`~calibprompt.service.core.Core` (for its run store and its
evaluation of the chosen prompts) or plain case lists, and return dicts and lists. A *case* is a dict::

    {"path": absolute server path, "image": path inside the dataset, "rank": 1-based place among all
     confidently wrong cases, "true": class id, "true_name": class name, "score": the ranking
     confidence, "predictions": {method: (class id, confidence)}, "prediction_names": {method: class
     name}, "method": the method the verdict defaults to (the most confidently wrong one), "run_ids",
     "sets": {method: [class names in its prediction set]}, "referred": bool,
     "verdicts": {method: {"verdict", "note"}} (this reader's), "readers": {reader: {method: verdict}}}

Class *names* are the task's prompt names (what Compare shows: "mucus", not the folder id "MUC").

Who sees which verdicts (:func:`visible_reviews`, see :mod:`calibprompt.service.access`): a page sees the
verdicts its owner gave; a logged-in user also sees the other logged-in users' verdicts on data the team can
open (shared datasets, uploads shared with the team): team review, with agreement between readers. A browser
without a login sees only its own. Verdicts are stored under the data's key
(:func:`calibprompt.data.resolve.dataset_key`), so two owners' uploads of one name never mix.
:class:`~calibprompt.service.core.Core` keeps thin methods (``review_cases``, ``save_review``,
``review_progress``, ``export_reviews``) that call these; the app words them.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from calibprompt import defaults
from calibprompt.data.resolve import dataset_choices, dataset_key, team_can_open
from calibprompt.runs.reviews import VERDICTS, reader_agreement, write_reviews_csv
from calibprompt.service.access import is_team_member, record_owner
from calibprompt.service.advice import lowest_ece_method, refers_on_sets

if TYPE_CHECKING:
    from calibprompt.service.core import Core
    from calibprompt.service.evaluation import EvaluationSet
    from calibprompt.service.session import SessionState

__all__ = ["READER_FILTERS", "PER_PAGE", "CaseList", "rank_cases", "attach_verdicts", "readers_disagree",
           "filter_cases", "page_of", "progress", "review_progress", "find_cases", "refresh_cases", "save_review",
           "agreement", "disagreements", "export_reviews", "visible_reviews", "VERDICTS"]

#: which listed cases to show, by this reader's and other readers' verdicts
READER_FILTERS = ("all", "mine", "todo", "disagreements")
#: cases on one page of the gallery
PER_PAGE = 24


@dataclass
class CaseList:
    """The result of :func:`find_cases`: ``wrong`` counts every confidently wrong case that matches the
    case filters, ``cases`` those that also pass the reader filter, in rank order."""

    dataset: str
    description: str  # which images were evaluated, e.g. "900 test images of demo."
    root: str  # the dataset folder (server side)
    wrong: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    classes: list[tuple[str, str]]  # (name, id) per class, for a menu
    methods: list[str]


def rank_cases(ev: EvaluationSet, sets: dict[str, np.ndarray] | None, *, true_class: str | None = None,
               method: str | None = None, min_confidence: float = 0.0,
               referred_only: bool = False) -> list[dict[str, Any]]:
    """Every case of ``ev`` that the chosen methods (or ``method`` alone) got wrong with at least
    ``min_confidence``, most confident first (ties by image), without verdicts; ``true_class`` is a
    class id or name. See the module docstring for a case's fields."""
    minimum = float(min_confidence)
    if math.isnan(minimum) or not 0.0 <= minimum <= 1.0:
        raise ValueError(f"The minimum confidence must be from 0 to 1, got {min_confidence}.")
    names = list(ev.probs)
    if method and method not in names:
        raise ValueError(f"Method {method!r} is not among the chosen prompts ({', '.join(names)}); "
                         "tick it under 'Prompts to compare' or clear the method filter.")
    ids, words = list(ev.task.class_ids), list(ev.task.classnames)
    wanted = ev.task.label_of(true_class) if true_class else None
    answering = lowest_ece_method(ev.probs, ev.labels)  # the advice's default answering method
    cases = []
    for i, path in enumerate(ev.paths):
        label = int(ev.labels[i])
        if wanted is not None and label != wanted:
            continue
        per = {h: (int(ev.probs[h][i].argmax()), float(ev.probs[h][i].max())) for h in names}
        wrong = {h: conf for h, (pred, conf) in per.items() if pred != label}
        considered = {method: wrong[method]} if method and method in wrong else ({} if method else wrong)
        if not considered or max(considered.values()) < minimum:
            continue
        case_sets = {h: [words[j] for j in np.flatnonzero(sets[h][i])] for h in names} if sets else {}
        referred = refers_on_sets(answering, {h: words[p] for h, (p, _) in per.items()}, case_sets or None)
        if referred_only and not referred:
            continue
        cases.append({
            "path": path, "image": ev.images[i], "true": ids[label], "true_name": words[label],
            "score": max(considered.values()), "predictions": {h: (ids[p], c) for h, (p, c) in per.items()},
            "prediction_names": {h: words[p] for h, (p, _) in per.items()},
            "method": max(considered, key=considered.get), "run_ids": dict(ev.run_ids), "sets": case_sets,
            "referred": referred, "verdicts": {}, "readers": {}})
    cases.sort(key=lambda c: (-c["score"], c["image"]))
    for rank, case in enumerate(cases, 1):
        case["rank"] = rank
    return cases


def attach_verdicts(cases: list[dict[str, Any]], rows: Sequence[dict[str, Any]], reader: str,
                    owner: str | None = None) -> list[dict[str, Any]]:
    """Set each case's ``verdicts`` (``reader``'s, of ``owner`` when given) and ``readers`` (every row's reader)
    from verdict rows of one dataset (:func:`visible_reviews`: only what the page may see); returns ``cases``."""
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    for case in cases:
        readers: dict[str, dict[str, str]] = {}
        mine: dict[str, dict[str, str]] = {}
        for row in by_image.get(case["image"], []):
            readers.setdefault(row["reader"], {})[row["method"]] = row["verdict"]
            if reader and row["reader"] == reader and (owner is None or _same_owner(row, owner)):
                mine[row["method"]] = {"verdict": row["verdict"], "note": row["note"]}
        case["readers"], case["verdicts"] = readers, mine
    return cases


def readers_disagree(case: dict[str, Any]) -> bool:
    """Whether two readers gave different verdicts on one method's answer for this case."""
    by_method: dict[str, set[str]] = {}
    for verdicts in case.get("readers", {}).values():
        for method, verdict in verdicts.items():
            by_method.setdefault(method, set()).add(verdict)
    return any(len(v) > 1 for v in by_method.values())


def filter_cases(cases: Sequence[dict[str, Any]], which: str = "all") -> list[dict[str, Any]]:
    """The cases to list: ``all``; ``mine`` (this reader gave a verdict); ``todo`` (this reader did not
    yet); ``disagreements`` (two readers' verdicts on one method differ). Rank order is kept."""
    if which not in READER_FILTERS:
        raise ValueError(f"Unknown reader filter {which!r}; choose one of {', '.join(READER_FILTERS)}.")
    keep = {"all": lambda c: True, "mine": lambda c: bool(c["verdicts"]), "todo": lambda c: not c["verdicts"],
            "disagreements": readers_disagree}[which]
    return [c for c in cases if keep(c)]


def page_of(total: int, page: int, per_page: int = PER_PAGE) -> dict[str, int]:
    """Page ``page`` (0-based, clamped to the pages there are) of ``total`` cases: ``{"page", "pages",
    "start", "stop"}`` with ``start:stop`` the slice of the case list (``start`` is 0-based)."""
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}.")
    pages = max(1, -(-int(total) // per_page))
    page = min(max(int(page), 0), pages - 1)
    return {"page": page, "pages": pages, "start": page * per_page, "stop": min(total, (page + 1) * per_page)}


def progress(cases: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many of ``cases`` this reader has given a verdict on (any method): ``{"reviewed", "listed"}``."""
    return {"reviewed": sum(1 for c in cases if c["verdicts"]), "listed": len(cases)}


def find_cases(core: Core, state: SessionState, dataset: str, heads: Sequence[str] = (), *,
               true_class: str | None = None, method: str | None = None, min_confidence: float = 0.0,
               referred_only: bool = False, reader_filter: str = "all", alpha: float = defaults.ALPHA) -> CaseList:
    """Every confidently wrong case of ``dataset`` for the chosen prompts (no cap), with the verdicts so
    far, and those that pass ``reader_filter`` (:func:`filter_cases`)."""
    if reader_filter not in READER_FILTERS:
        raise ValueError(f"Unknown reader filter {reader_filter!r}; choose one of {', '.join(READER_FILTERS)}.")
    if reader_filter in ("mine", "todo") and not state.reader:
        raise ValueError("Enter your name as the reader first: 'mine' and 'not yet reviewed by me' need to "
                         "know who you are.")
    ev = core.evaluate(state, dataset, heads)
    wrong = rank_cases(ev, core.cross_fitted_sets(ev, alpha), true_class=true_class, method=method,
                       min_confidence=min_confidence, referred_only=referred_only)
    attach_verdicts(wrong, visible_reviews(core, state, dataset), state.reader, state.owner)
    return CaseList(dataset=dataset, description=ev.describe(), root=str(ev.root), wrong=wrong,
                    cases=filter_cases(wrong, reader_filter), classes=list(zip(ev.task.classnames, ev.task.class_ids)),
                    methods=list(ev.probs))


def refresh_cases(core: Core, state: SessionState, dataset: str, wrong: list[dict[str, Any]],
                  reader_filter: str = "all") -> list[dict[str, Any]]:
    """Re-read the verdicts this page may see into ``wrong`` (from :func:`find_cases`) and return those that
    pass ``reader_filter`` now."""
    if reader_filter in ("mine", "todo") and not state.reader:
        raise ValueError("Enter your name as the reader first: 'mine' and 'not yet reviewed by me' need to "
                         "know who you are.")
    attach_verdicts(wrong, visible_reviews(core, state, dataset), state.reader, state.owner)
    return filter_cases(wrong, reader_filter)


def review_progress(core: Core, state: SessionState, dataset: str, cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many of the listed ``cases`` this session's reader has reviewed, with the verdicts re-read:
    ``{"reader": the reader's name ("" before one is entered), "reviewed", "listed"}``."""
    done = progress(refresh_cases(core, state, dataset, list(cases)))
    return {"reader": state.reader, **done}


def save_review(core: Core, state: SessionState, dataset: str, case: dict[str, Any] | None, method: str,
                verdict: str, note: str = "") -> dict[str, Any]:
    """Record this session's reader's verdict on ``method``'s answer for ``case``, owned by the session's owner
    and stored under the data's key (refused like a made-up name for data the owner may not open); the case's
    ``verdicts`` and ``readers`` are updated in place. Returns the stored verdict."""
    if not state.reader:
        raise ValueError("Enter your name as the reader first: every verdict records who gave it.")
    if not case:
        raise ValueError("Select a case first: click a thumbnail, or press N for the next case.")
    if method not in case["predictions"]:
        raise ValueError(f"Method {method!r} has no answer for this case; choose one of "
                         f"{', '.join(case['predictions'])}.")
    key = dataset_key(dataset, state.owner)
    _, confidence = case["predictions"][method]
    names = case.get("prediction_names", {})
    run_id = method[4:] if method.startswith("run:") else case.get("run_ids", {}).get(method)
    if run_id is not None and not _known_run(core, run_id):
        run_id = None  # a bundled prompt's training run lives in another store
    row = core.store.set_review(
        reader=state.reader, dataset=key, image=case["image"], method=method, verdict=verdict, note=note or "",
        true_class=case.get("true_name", case["true"]), prediction=names.get(method, case["predictions"][method][0]),
        confidence=float(confidence), model=state.model, task=state.task_label, run_id=run_id, owner=state.owner)
    case.setdefault("verdicts", {})[method] = {"verdict": row["verdict"], "note": row["note"]}
    case.setdefault("readers", {}).setdefault(state.reader, {})[method] = row["verdict"]
    return row


def _known_run(core: Core, run_id: str) -> bool:
    try:
        core.store.get_run(run_id)
    except ValueError:
        return False
    return True


def _same_owner(row: dict[str, Any], owner: str | None) -> bool:
    """Whether verdict ``row`` belongs to ``owner`` (a row without owner is the operator's)."""
    return record_owner(row.get("owner")) == record_owner(owner)


def visible_reviews(core: Core, state: SessionState, dataset: str | None = None) -> list[dict[str, Any]]:
    """The verdicts the session's owner may see, newest first: of ``dataset`` (a choice the owner may open;
    refused like a made-up name otherwise), or of every dataset. Its own, and for a logged-in owner the other
    logged-in users' verdicts on data the team can open (:func:`calibprompt.data.resolve.team_can_open`)."""
    requester = state.owner
    rows = core.store.reviews(dataset=dataset_key(dataset, requester) if dataset is not None else None)
    team = is_team_member(requester)
    opens: dict[str, bool] = {}

    def visible(row: dict[str, Any]) -> bool:
        if _same_owner(row, requester):
            return True
        if not (team and is_team_member(record_owner(row.get("owner")))):
            return False
        if row["dataset"] not in opens:
            opens[row["dataset"]] = team_can_open(row["dataset"])
        return opens[row["dataset"]]

    return [row for row in rows if visible(row)]


def agreement(core: Core, state: SessionState, dataset: str | None) -> list[dict[str, Any]]:
    """Per pair of readers on ``dataset`` (or every dataset), over the verdicts this page may see
    (:func:`visible_reviews`): shared cases, percentage agreement, Cohen's kappa and whether the shared cases
    are few (see :func:`calibprompt.runs.reviews.reader_agreement`)."""
    return reader_agreement(visible_reviews(core, state, dataset))


def disagreements(core: Core, state: SessionState, dataset: str, root: str | None = None,
                  known: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The cases of ``dataset`` where readers gave different verdicts on one method's answer, among the
    verdicts this page may see (:func:`visible_reviews`), for adjudication: ``[{"image", "path" (or None when
    the file is not under ``root``), "method", "true_class", "prediction", "readers": [{"reader", "verdict",
    "note"}]}]`` by image and method.
    Class names come from ``known`` cases (:func:`find_cases`) where the image is among them."""
    cases = {c["image"]: c for c in known}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in visible_reviews(core, state, dataset):
        groups.setdefault((row["image"], row["method"]), []).append(row)
    out = []
    for (image, method), rows in sorted(groups.items()):
        if len({r["verdict"] for r in rows}) < 2:
            continue
        case = cases.get(image)
        rows = sorted(rows, key=lambda r: r["reader"])
        out.append({"image": image, "path": case["path"] if case else _inside(root, image), "method": method,
                    "true_class": case["true_name"] if case else rows[0]["true_class"],
                    "prediction": case["prediction_names"].get(method, rows[0]["prediction"]) if case
                    else rows[0]["prediction"],
                    "readers": [{"reader": r["reader"], "verdict": r["verdict"], "note": r["note"]} for r in rows]})
    return out


def _inside(root: str | None, image: str) -> str | None:
    """``root / image`` when that is a file inside ``root``, else None (legacy rows hold other paths)."""
    if not root:
        return None
    base = Path(root).resolve()
    path = (base / image).resolve()
    return str(path) if path.is_file() and path.is_relative_to(base) else None


def export_reviews(core: Core, state: SessionState, folder: Path, dataset: str | None = None) -> Path:
    """Write the verdicts the session's owner may see (:func:`visible_reviews`; of ``dataset``, or of every
    dataset) as CSV into a new folder with an unguessable name under ``folder``; returns the file. The dataset
    column names each dataset as this owner's menus do (``uploads/<name>``, ``team/<user>/<name>``)."""
    rows = visible_reviews(core, state, dataset)
    names = _readable_names(state.owner)
    rows = [dict(row, dataset=names.get(row["dataset"], row["dataset"])) for row in rows]
    target = Path(folder) / secrets.token_urlsafe(16)
    target.mkdir(parents=True, exist_ok=False)
    return write_reviews_csv(target / "reviews.csv", rows)


def _readable_names(owner: str | None) -> dict[str, str]:
    """Dataset key -> the name ``owner``'s menus show for it, for every dataset ``owner`` may pick."""
    names = {}
    for choice in dataset_choices(owner):
        try:
            names.setdefault(dataset_key(choice, owner), choice)
        except ValueError:  # gone since it was listed
            continue
    return names
