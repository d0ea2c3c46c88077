"""The Compare tab: upload images or pick a sample, see each image as the model saw it, the advice for
one answering method (Answer, Refer or Not checked, with every check behind it) and a card for every
chosen prompt. The HTML comes from :mod:`calibprompt.app.compare_view`; this module lays out and wires."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from calibprompt import defaults
from calibprompt.app.common import alert_html, file_paths, handler, percent, prompt_label, session_for
from calibprompt.app.compare_view import (VERDICT_TEXT, advice_html, card_html, errors_html, placeholder_html,
                                          slug)
from calibprompt.app.wording import calibration_note, with_calibration_note
from calibprompt.service.advice import AUTO
from calibprompt.service.test_time import OFF, test_time_choices

TABLE_COLUMNS = ["image", "method", "prediction", "confidence", "set", "advice"]
AUTO_LABEL = "Auto: lowest ECE on the labelled images"
#: the test-time menu: off, then each label-free method by its title
TEST_TIME_CHOICES = test_time_choices()
PREVIEW_SIDE = defaults.PREVIEW_SIDE  #: the preview kept per image (the long side, in pixels; see Core.assess)


def _answer_choices(prompts, labels: dict | None = None) -> list[tuple[str, str]]:
    return [(AUTO_LABEL, AUTO)] + [((labels or {}).get(p, p), p) for p in (prompts or [])]


def _labels(core, state) -> dict[str, str]:
    """How each prompt is named on the page (a bundled prompt, the newest run, or a run by its name)."""
    return {o["value"]: prompt_label(o) for o in core.prompt_options(state)}


def _frame_update(image: dict):
    frames = int((image.get("metadata") or {}).get("frames") or 1)
    if frames <= 1:
        return gr.update(visible=False, value=1, maximum=2)
    return gr.update(visible=True, minimum=1, maximum=frames, value=(image.get("frame") or 0) + 1,
                     label=f"Frame of {image['name']} ({frames} frames)")


def _note(found: dict, index: int) -> str:
    text = calibration_note(found["calibration"])
    if found.get("test_time"):
        text += " " + found["test_time"]
    if len(found["images"]) > 1:
        text += f" Showing {found['images'][index]['name']}; click another image to see its results."
    return f"<p class='cp-note'>{html.escape(text)}</p>"


def _table(found: dict) -> pd.DataFrame:
    rows = []
    for image in found["images"]:
        for head, entry in image["methods"].items():
            rows.append({"image": image["name"], "method": head, "prediction": entry["prediction"],
                         "confidence": percent(entry["confidence"]),
                         "set": ", ".join(entry["set"]) if entry["set"] is not None else "—",
                         "advice": VERDICT_TEXT[entry["verdict"]][0],
                         **{c: round(v, 4) for c, v in entry["probs"].items()}})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS + [c for c in (rows[0] if rows else {}) if c not in TABLE_COLUMNS])


def _gallery(found: dict, cache_dir: str | None = None) -> list:
    """The previews with their verdicts. With ``cache_dir`` (Gradio's cache) each preview is written there
    first, inside the handler, so a full or read-only disk is said in plain words rather than failing later in
    Gradio's own post-processing with an empty error."""
    items = []
    for im in found["images"]:
        picture = im["preview"]
        if cache_dir is not None:
            picture = gr.processing_utils.save_pil_to_cache(picture, cache_dir, format="webp")
        items.append((picture, f"{im['name']} — {VERDICT_TEXT[im['verdict']][0]}"))
    return items


def _assess(core, state, images, heads, cov, answer_with, frames=None, test_time=None) -> dict:
    found = core.assess(state, images, heads or state.prompts, alpha=1 - float(cov) / 100,
                        answer_with=answer_with or AUTO, frames=frames, test_time=test_time)
    sources = [s for s, im in zip(images, found["images"]) if "error" not in im]
    errors = [im for im in found["images"] if "error" in im]
    good = [im for im in found["images"] if "error" not in im]  # previews: bounded copies (Core.assess)
    return {**found, "images": good, "errors": errors, "sources": sources, "coverage": float(cov),
            "labels": _labels(core, state),
            "heads": list(heads or state.prompts), "answer_with": answer_with or AUTO, "test_time_method": test_time}


def _shown(found: dict, index: int) -> tuple:
    image = found["images"][index]
    return advice_html(image, found["labels"]), _frame_update(image)


def build(core, shared) -> None:
    """The Compare tab: its layout (:func:`_layout`), then its events (:func:`_wire`)."""
    samples = core.sample_images()
    with gr.Tab("Compare"):
        ui = _layout(samples, shared.prompts.value)
    _wire(core, shared, samples, ui)


def _layout(samples: list[tuple[str, str]], prompts) -> dict:
    """The tab's components by name (no events but the results' own drawing, :func:`_results`): the images
    and settings on the left, the previews, advice and results on the right, and the hidden inputs and
    outputs of the public ``/compare`` and ``/assess`` endpoints. ``samples``: ``(path, caption)`` pairs;
    ``prompts``: the header's chosen prompts, for the "Answer with" menu."""
    ui = {}
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            ui["files"] = gr.File(label="Images (PNG, JPEG, TIFF, DICOM)", file_count="multiple",
                                  file_types=["image", ".dcm", ".dicom", ".tif", ".tiff"], elem_id="compare-files")
            ui["sample"] = gr.Dropdown([(f"{Path(p).name} ({c})", p) for p, c in samples],
                                       label="…or a sample image", value=None, elem_id="sample-picker")
            ui["thumbnails"] = gr.Gallery([(p, c) for p, c in samples], label="Sample images (click one to pick it)",
                                          columns=6, height=180, allow_preview=False, elem_id="sample-gallery")
            ui["coverage"] = gr.Slider(50, 99, value=100 * (1 - defaults.ALPHA), step=1, elem_id="compare-coverage",
                                       label="Prediction-set coverage (%)")
            ui["answer_with"] = gr.Dropdown(_answer_choices(prompts), value=AUTO, label="Answer with",
                                            info="The method the advice is for.", elem_id="answer-with")
            ui["test_time"] = gr.Dropdown(TEST_TIME_CHOICES, value=OFF, label="Test-time calibration (no labels)",
                                          info="Also tune each prompt on each image alone, without labels: "
                                               "about a second per image and prompt on a CPU.",
                                          elem_id="compare-test-time")
            ui["button"] = gr.Button("Compare", variant="primary", elem_id="compare-button")
        with gr.Column(scale=2):
            ui["preview"] = gr.Gallery(label="As the model saw it (click an image to see its results)", columns=6,
                                       height=150, allow_preview=False, object_fit="contain", fit_columns=False,
                                       elem_id="compare-preview")
            ui["frame"] = gr.Slider(1, 2, value=1, step=1, visible=False, label="Frame", elem_id="compare-frame")
            ui["advice"] = gr.HTML(placeholder_html(), elem_id="compare-advice")
            ui["errors"] = gr.HTML(elem_id="compare-errors")
            ui["result"] = gr.State(None)
            ui["shown"] = gr.State(0)
            _results(ui["result"], ui["shown"])
    # stateless public API: one image (and optionally a task name) in, JSON out
    ui["api_image"] = gr.File(visible=False)
    ui["api_task"] = gr.Textbox(visible=False)
    ui["api_out"] = gr.JSON(visible=False)
    ui["api_button"] = gr.Button(visible=False)
    ui["assess_button"] = gr.Button(visible=False)
    return ui


def _results(result, shown) -> None:
    """A card for every chosen prompt of the shown image (its top classes and what holds for it), where
    the advice comes from, and every probability: drawn together once there is a result, so nothing on the
    page moves twice and no empty table waits for it."""

    @gr.render(inputs=[result, shown], triggers=[result.change, shown.change])
    def results(found, index):
        if not found or not found["images"]:
            return
        index = min(int(index or 0), len(found["images"]) - 1)
        image = found["images"][index]
        with gr.Row(equal_height=False):
            for name, entry in image["methods"].items():
                label = found["labels"].get(name, name)
                with gr.Column(min_width=220):
                    gr.Label(entry["probs"], num_top_classes=3, label=f"{label} — {image['name']}",
                             show_heading=False, elem_id=f"label-{slug(name)}")
                    gr.HTML(card_html(name, entry, found["coverage"], label), elem_id=f"method-{slug(name)}")
        gr.HTML(_note(found, index), elem_id="compare-calibration")
        gr.Dataframe(_table(found), label="Probabilities per image and method", elem_id="compare-table")


def _wire(core, shared, samples, ui: dict) -> None:
    """The tab's events over its components (``ui``, from :func:`_layout`): every one private but the two
    public endpoints, ``/compare`` and ``/assess``."""
    outputs = [shared.state, ui["result"], ui["shown"], ui["preview"], ui["advice"], ui["frame"], ui["errors"]]

    def run_compare(state, files, sample, heads, cov, answer_with, test_time, request: gr.Request):
        try:
            state = session_for(core, state, request)
            images = file_paths(files) + ([sample] if sample else [])
            found = handler(_assess)(core, state, images, heads, cov, answer_with, test_time=test_time)
            gallery = handler(_gallery)(found, ui["preview"].GRADIO_CACHE)
        except gr.Error as exc:  # shown in the page, so no component is left in an error state
            return state, None, 0, [], alert_html(exc.message), gr.update(visible=False), ""
        return (state, found, 0, gallery, *_shown(found, 0), errors_html(found["errors"]))

    def rerun(found, state, files, sample, heads, cov, answer_with, test_time, request: gr.Request):
        """A changed answering method re-advises the images already compared (nothing to do before)."""
        if not found:
            return tuple(gr.update() for _ in outputs)
        return run_compare(state, files, sample, heads, cov, answer_with, test_time, request)

    def select_image(found, evt: gr.SelectData):
        if not found or not 0 <= evt.index < len(found["images"]):
            return gr.update(), gr.update(), gr.update()
        return (evt.index, *_shown(found, evt.index))

    @handler
    def change_frame(state, found, index, number, request: gr.Request):
        state = session_for(core, state, request)
        if not found:
            return gr.update(), gr.update(), gr.update()
        source = found["sources"][index]
        again = _assess(core, state, [source], found["heads"], found["coverage"], found["answer_with"],
                        frames={0: int(number) - 1}, test_time=found.get("test_time_method"))
        images = list(found["images"])
        images[index] = {**again["images"][0], "name": images[index]["name"]}
        found = {**found, "images": images}
        return found, _gallery(found, ui["preview"].GRADIO_CACHE), advice_html(images[index], found["labels"])

    def api_compare(image, task=None):
        """One image in; ``{method: {class: probability}}`` out for the zero-shot, CoOp and CalibPrompt
        heads on the app's default model and ``task`` (default: the app's default task)."""
        return handler(core.compare_api)(file_paths(image)[0] if image else None, (task or "").strip() or None)

    def api_assess(image, task=None):
        """One image in; the verdict (answer, refer or not checked) for the answering method with every
        check's state, and per method its probabilities, prediction, prediction set and past accuracy at
        this confidence (null where no guarantee holds)."""
        found = handler(core.assess_api)(file_paths(image)[0] if image else None, (task or "").strip() or None)
        return with_calibration_note(found)

    def pick_sample(event: gr.SelectData):
        return samples[event.index][0] if 0 <= event.index < len(samples) else None

    def answer_choices(state, prompts, current, request: gr.Request):
        labels = _labels(core, session_for(core, state, request))
        return gr.update(choices=_answer_choices(prompts, labels), value=current if current in (prompts or []) else AUTO)

    inputs = [shared.state, ui["files"], ui["sample"], shared.prompts, ui["coverage"], ui["answer_with"],
              ui["test_time"]]
    ui["thumbnails"].select(pick_sample, None, ui["sample"], api_visibility="private")
    ui["button"].click(run_compare, inputs, outputs, api_visibility="private")
    ui["answer_with"].input(rerun, [ui["result"], *inputs], outputs, api_visibility="private")
    ui["preview"].select(select_image, [ui["result"]], [ui["shown"], ui["advice"], ui["frame"]],
                         api_visibility="private")
    ui["frame"].input(change_frame, [shared.state, ui["result"], ui["shown"], ui["frame"]],
                        [ui["result"], ui["preview"], ui["advice"]], trigger_mode="always_last",
                      api_visibility="private")
    shared.prompts.change(handler(answer_choices), [shared.state, shared.prompts, ui["answer_with"]], [ui["answer_with"]],
                          api_visibility="private")
    ui["api_button"].click(api_compare, [ui["api_image"], ui["api_task"]], [ui["api_out"]], api_name="compare")
    ui["assess_button"].click(api_assess, [ui["api_image"], ui["api_task"]], [ui["api_out"]], api_name="assess")
