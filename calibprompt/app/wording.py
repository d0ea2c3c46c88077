"""The app's sentences for what the services return as data (no Gradio here: plain functions, tested
directly). The services return fractions and counts; the page and the public ``/assess`` endpoint show
these words."""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["calibration_note", "review_summary", "with_calibration_note"]


def calibration_note(summary: Mapping[str, Any]) -> str:
    """Where the advice comes from, in one paragraph, from
    :func:`calibprompt.service.compare.calibration_summary`: each method's held-out coverage and mean set
    size at the chosen coverage, and its ECE; or why there is no calibration."""
    if summary.get("dataset") is None:
        return summary["no_data"]
    sets = ", ".join(f"{n} covered {100 * m['coverage']:.0f} % of held-out cases with {m['mean_set_size']:.1f} "
                     f"classes on average (ECE {100 * m['ece']:.1f} %)" for n, m in summary["methods"].items())
    note = summary.get("note") or ""
    return (f"Calibrated on {summary['dataset'].rstrip('.')}. {100 * summary['coverage']:.0f} % prediction sets: "
            + (sets or "none") + (f". {note}" if note else "."))


def with_calibration_note(result: Mapping[str, Any]) -> dict[str, Any]:
    """An ``/assess`` result (:func:`calibprompt.service.compare.assess_api`) with its ``calibration`` worded."""
    return {**result, "calibration": calibration_note(result["calibration"])}


def review_summary(progress: Mapping[str, Any]) -> str:
    """One line from :func:`calibprompt.service.reviews.review_progress`: how many of the listed cases this
    reader has reviewed (the Review tab words it more fully)."""
    reader = progress.get("reader") or "no reader name yet"
    return f"You ({reader}) have reviewed {progress['reviewed']} of the {progress['listed']} listed cases."
