"""What the Compare tab shows, as HTML built from the advice (no Gradio here): the verdict badge, the
checks behind it, each method's card and the file's DICOM tags. Every text that came from a user or a
file (file names, typed class names, run names, DICOM tags) is escaped: shown as text, never as HTML."""
from __future__ import annotations

import html
from typing import Any, Mapping

from calibprompt.service.advice import ANSWER, CHECKS, FAILED, NOT_CHECKED, NOT_RUN, PASSED, REFER

__all__ = ["badge", "advice_html", "card_html", "errors_html", "metadata_text", "placeholder_html", "slug",
           "VERDICT_TEXT", "CHECK_NAMES"]

#: badge text and colours (white on each passes WCAG AA; the theme's CSS draws the badges with them)
VERDICT_TEXT = {
    ANSWER: ("Answer", "#166534"),
    REFER: ("Refer", "#991b1b"),
    NOT_CHECKED: ("Not checked: refer", "#4b5563"),
}
#: what each check is called on the page
CHECK_NAMES = {
    "labelled_images": "Labelled images", "likeness": "Looks like the labelled images", "modality": "Modality",
    "set_size": "Prediction set", "overconfidence": "Confidence matches past accuracy",
    "vocabulary": "Typed class words known", "disagreement": "No credible disagreement",
}
_STATE_MARK = {PASSED: ("✓", "passed"), FAILED: ("✗", "failed"), NOT_RUN: ("–", "not run")}
_VERDICT_SUMMARY = {
    ANSWER: "Every check ran and passed. It is still not a diagnosis.",
    REFER: "A check failed: a human should look before this answer is used.",
    NOT_CHECKED: "Not every check could run, so nothing vouches for this answer: refer, or add labelled images "
                 "for this task.",
}
_E = html.escape
#: the checks that concern one method (the others are the image's, shown once in the advice)
METHOD_CHECKS = ("set_size", "overconfidence", "disagreement")


def slug(name: str) -> str:
    """An element-id-safe form of a prompt name (``run:ab12`` -> ``run-ab12``)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def badge(verdict: str) -> str:
    """The verdict's badge; its colours are the theme's (``.cp-badge[data-verdict=...]`` in
    :data:`calibprompt.app.theme.CSS`, made from :data:`VERDICT_TEXT`)."""
    text, _ = VERDICT_TEXT[verdict]
    return f"<span class='cp-badge' data-verdict='{_E(verdict)}'>{_E(text)}</span>"


def placeholder_html() -> str:
    """The advice panel before any comparison: the same height the advice takes, so nothing jumps."""
    return ("<div class='cp-advice'><p>Upload images or pick a sample, then press "
            "<strong>Compare</strong>: the advice for each image appears here, with the checks behind it.</p></div>")


def _checks_list(checks: Mapping[str, Mapping[str, str]]) -> str:
    rows = []
    for name in CHECKS:
        check = checks[name]
        mark, word = _STATE_MARK[check["state"]]
        rows.append(f"<li data-check='{name}' data-state='{_E(check['state'])}'><span aria-hidden='true'>{mark}</span> "
                    f"<strong>{_E(CHECK_NAMES[name])}</strong> ({word}): {_E(check['detail'])}</li>")
    return "<ul class='cp-checks'>" + "".join(rows) + "</ul>"


def metadata_text(meta: Mapping[str, Any] | None, frame: int | None = None) -> str:
    """The file facts the model does not see: format, modality, body part, window, frames."""
    meta = meta or {}
    parts = [str(meta.get("format") or "image")]
    for key, label in (("modality", "modality"), ("body_part", "body part")):
        if meta.get(key):
            parts.append(f"{label} {meta[key]}")
    window = meta.get("window")
    if window and all(v is not None for v in window):
        parts.append(f"window centre {float(window[0]):g} / width {float(window[1]):g}")
    frames = int(meta.get("frames") or 1)
    if frames > 1:
        parts.append(f"frame {(frame or 0) + 1} of {frames}")
    return ", ".join(parts)


def advice_html(image: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """One image's verdict for its answering method, the reasons, the checks and the notes."""
    labels = labels or {}
    method = image["answering_method"]
    entry = image["methods"][method]
    reasons = "".join(f"<li>{_E(r)}</li>" for r in image["reasons"])
    notes = "".join(f"<li>{_E(n)}</li>" for n in image["notes"])
    return (
        f"<div class='cp-advice' role='status'>"
        f"<p><strong>{_E(image['name'])}</strong> ({_E(metadata_text(image.get('metadata'), image.get('frame')))}): "
        f"{badge(image['verdict'])}</p>"
        f"<p>Advice for <strong>{_E(labels.get(method, method))}</strong>'s answer: {_E(entry['prediction'])} "
        f"({100 * entry['confidence']:.1f} %). {_E(_VERDICT_SUMMARY[image['verdict']])}</p>"
        + (f"<p>{'Why' if image['verdict'] == REFER else 'What did not run'}:</p><ul>{reasons}</ul>" if reasons else "")
        + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "")
        + f"<details><summary>Every check</summary>{_checks_list(image['checks'])}</details></div>")


def card_html(name: str, entry: Mapping[str, Any] | None, coverage: float, label: str | None = None) -> str:
    """One method's card: its answer, its set and past accuracy where they hold, and its own verdict."""
    title = _E(label or name)
    if entry is None:
        return f"<div class='cp-card'><p><strong>{title}</strong>: not chosen, or no prompt for this task.</p></div>"
    text, _ = VERDICT_TEXT[entry["verdict"]]
    lines = [f"<p><strong>{title}</strong>: {_E(entry['prediction'])} ({100 * entry['confidence']:.1f} %) "
             f"— {_E(text)}</p><ul>"]
    if entry["set"] is not None:
        lines.append(f"<li>{coverage:.0f} % prediction set: {_E(', '.join(entry['set']) or 'empty')}</li>")
    acc = entry.get("accuracy")
    if acc and acc.get("n"):
        lines.append(f"<li>On the labelled test images, answers at this confidence were right "
                     f"{100 * acc['accuracy']:.0f} % of the time [{100 * acc['low']:.0f}–{100 * acc['high']:.0f} %], "
                     f"{acc['n']} answers</li>")
    if entry["set"] is None:
        lines.append(f"<li>No prediction set and no past accuracy: {_E(entry['checks']['set_size']['detail'])}</li>")
    # the image's own checks are in the advice above; a card lists what concerns this method
    shown = FAILED if entry["verdict"] == REFER else NOT_RUN
    lines += [f"<li>{_E(entry['checks'][c]['detail'])}</li>" for c in METHOD_CHECKS
              if entry["checks"][c]["state"] == shown and not (c == "set_size" and entry["set"] is None)]
    lines += [f"<li>Note: {_E(n)}</li>" for n in entry["notes"]]
    return "<div class='cp-card'>" + "".join(lines) + "</ul></div>"


def errors_html(errors: list[Mapping[str, str]]) -> str:
    """The files that could not be read, each with its own message (the others are answered)."""
    if not errors:
        return ""
    items = "".join(f"<li><strong>{_E(e['name'])}</strong>: {_E(e['error'])}</li>" for e in errors)
    return (f"<div class='cp-errors' role='alert'><p>{len(errors)} file(s) could not be read; the others are "
            f"answered:</p><ul>{items}</ul></div>")
