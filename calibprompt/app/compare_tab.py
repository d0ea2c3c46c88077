"""The Compare tab: upload images or pick a sample, see each image as the model saw it and each
method's answer side by side, with its prediction set and a Refer / Answer recommendation."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from calibprompt import defaults
from calibprompt.app.common import file_paths, handler, percent, session_for
from calibprompt.defaults import DEFAULT_HEADS

REFER_STYLE = "background:#991b1b;color:#ffffff"
ANSWER_STYLE = "background:#166534;color:#ffffff"


def badge(refer: bool) -> str:
    style, text = (REFER_STYLE, "Refer") if refer else (ANSWER_STYLE, "Answer")
    return (f"<span class='cp-badge' style='{style};padding:2px 10px;border-radius:4px;font-weight:700'>"
            f"{text}</span>")


def advice_html(image: dict) -> str:
    """The case's recommendation and its reasons."""
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in image["reasons"])
    why = f"<ul>{reasons}</ul>" if reasons else "<p>Every method's set holds one class, the methods agree, and the image " \
                                                 "looks like the task's labelled images.</p>"
    return (f"<div class='cp-advice' role='status'><p><strong>{html.escape(image['name'])}</strong>: "
            f"{badge(image['refer'])}</p>{why}</div>")


def method_markdown(name: str, entry: dict | None, coverage: float) -> str:
    if entry is None:
        return f"**{name}**: not chosen, or no prompt for this task."
    lines = [f"**{name}** — {'Refer' if entry['refer'] else 'Answer'}: {entry['prediction']} ({percent(entry['confidence'])})"]
    if entry["set"] is not None:
        lines.append(f"- {coverage:.0f} % prediction set: {', '.join(entry['set']) or 'empty'}")
    acc = entry.get("accuracy")
    if acc and acc.get("n"):
        lines.append(f"- On the test images, answers at this confidence were right {100 * acc['accuracy']:.0f} % of the "
                     f"time [{100 * acc['low']:.0f}–{100 * acc['high']:.0f} %], {acc['n']} answers")
    elif entry["set"] is None:
        lines.append("- No labelled test images: no set or accuracy")
    if entry["reasons"]:
        lines.append("- Why refer: " + "; ".join(entry["reasons"]))
    return "\n".join(lines)


def build(core, shared) -> None:
    samples = core.sample_images()
    with gr.Tab("Compare"):
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images (PNG, JPEG, TIFF, DICOM)", file_count="multiple",
                                file_types=["image", ".dcm", ".dicom", ".tif", ".tiff"], elem_id="compare-files")
                sample = gr.Dropdown([(f"{Path(p).name} ({c})", p) for p, c in samples], label="…or a sample image",
                                     value=None, elem_id="sample-picker")
                thumbnails = gr.Gallery([(p, c) for p, c in samples], label="Sample images (click one to pick it)",
                                        columns=6, height=180, allow_preview=False, elem_id="sample-gallery")
                coverage = gr.Slider(50, 99, value=100 * (1 - defaults.ALPHA), step=1, elem_id="compare-coverage",
                                     label="Prediction-set coverage (%)")
                button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            with gr.Column(scale=2):
                advice = gr.HTML(elem_id="compare-advice")
                preview = gr.Gallery(label="As the model saw it (click an image to see its results)", columns=6,
                                     height=200, allow_preview=False, object_fit="contain", fit_columns=False,
                                     elem_id="compare-preview")
                labels, cards = [], []
                with gr.Row():
                    for h in DEFAULT_HEADS:
                        with gr.Column(min_width=200):
                            labels.append(gr.Label(num_top_classes=3, label=h, elem_id=f"label-{h}"))
                            cards.append(gr.Markdown(elem_id=f"method-{h}"))
                calibration = gr.Markdown(elem_id="compare-calibration")
                table = gr.Dataframe(label="Probabilities per image and method", elem_id="compare-table")
        result = gr.State(None)
        # stateless public API: one image (and optionally a task name) in, JSON out
        api_image = gr.File(visible=False)
        api_task = gr.Textbox(visible=False)
        api_out = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
        assess_button = gr.Button(visible=False)

    def show(found, index: int, cov: float):
        image = found["images"][index]
        return ([gr.update(value=(image["methods"][h]["probs"] if h in image["methods"] else None),
                           label=f"{h} — {image['name']}" if h in image["methods"] else f"{h} (not chosen)")
                 for h in DEFAULT_HEADS]
                + [method_markdown(h, image["methods"].get(h), cov) for h in DEFAULT_HEADS]
                + [advice_html(image)])

    @handler
    def run_compare(state, files, sample, heads, cov, request: gr.Request):
        state = session_for(core, state, request)
        images = file_paths(files) + ([sample] if sample else [])
        found = core.assess(state, images, heads or state.prompts, alpha=1 - float(cov) / 100)
        rows = []
        for image in found["images"]:
            for head, entry in image["methods"].items():
                rows.append({"image": image["name"], "method": head, "prediction": entry["prediction"],
                             "confidence": percent(entry["confidence"]),
                             "set": ", ".join(entry["set"]) if entry["set"] is not None else "—",
                             "advice": "Refer" if entry["refer"] else "Answer",
                             **{c: round(v, 4) for c, v in entry["probs"].items()}})
        gallery = [(im["preview"], f"{im['name']} — {'Refer' if im['refer'] else 'Answer'}") for im in found["images"]]
        note = found["calibration"]
        if len(found["images"]) > 1:
            note += f"\n\nShowing {found['images'][0]['name']}; click another image to see its results."
        return (state, found, gallery, *show(found, 0, float(cov)), note, pd.DataFrame(rows))

    def select_image(found, cov, evt: gr.SelectData):
        if not found:
            return [gr.update()] * (2 * len(DEFAULT_HEADS) + 1)
        return show(found, evt.index, float(cov))

    def api_compare(image, task=None):
        """One image in; ``{method: {class: probability}}`` out for the zero-shot, CoOp and CalibPrompt
        heads on the app's default model and ``task`` (default: the app's default task)."""
        return handler(core.compare_api)(file_paths(image)[0] if image else None, (task or "").strip() or None)

    def api_assess(image, task=None):
        """One image in; per method its probabilities, prediction, confidence, 90 % prediction set and
        refer flag, the out-of-distribution check, and the overall refer recommendation with reasons."""
        return handler(core.assess_api)(file_paths(image)[0] if image else None, (task or "").strip() or None)

    def pick_sample(event: gr.SelectData):
        return samples[event.index][0] if 0 <= event.index < len(samples) else None

    thumbnails.select(pick_sample, None, sample, api_visibility="private")
    button.click(run_compare, [shared.state, files, sample, shared.prompts, coverage],
                 [shared.state, result, preview, *labels, *cards, advice, calibration, table],
                 api_visibility="private")
    preview.select(select_image, [result, coverage], [*labels, *cards, advice], api_visibility="private")
    api_button.click(api_compare, [api_image, api_task], [api_out], api_name="compare")
    assess_button.click(api_assess, [api_image, api_task], [api_out], api_name="assess")
