"""The Compare tab: upload images or pick a sample, and see each method's answer side by side."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from calibprompt.app.common import file_paths, handler, percent, session_for
from calibprompt.defaults import DEFAULT_HEADS


def build(core, shared) -> None:
    samples = core.sample_images()
    with gr.Tab("Compare"):
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images (PNG, JPEG, TIFF, DICOM)", file_count="multiple",
                                file_types=["image", ".dcm", ".dicom", ".tif", ".tiff"], elem_id="compare-files")
                sample = gr.Dropdown([(f"{Path(p).name} ({c})", p) for p, c in samples], label="…or a sample image",
                                     value=None, elem_id="sample-picker")
                gr.Gallery([(p, c) for p, c in samples], label="Sample images", columns=6, height=180,
                           allow_preview=False)
                button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            with gr.Column(scale=2):
                flags = gr.Markdown(elem_id="compare-flags")
                with gr.Row():
                    labels = [gr.Label(num_top_classes=3, label=h, elem_id=f"label-{h}") for h in DEFAULT_HEADS]
                table = gr.Dataframe(label="Probabilities per image and method", elem_id="compare-table")
        # the stateless public API: one image (and optionally a task name) in, {method: {class: p}} out
        api_image = gr.File(visible=False)
        api_task = gr.Textbox(visible=False)
        api_out = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)

    @handler
    def run_compare(state, files, sample, heads, request: gr.Request):
        state = session_for(core, state, request)
        images = file_paths(files) + ([sample] if sample else [])
        results = core.compare(state, images, heads or state.prompts)
        rows, notes = [], []
        for path, result in zip(images, results):
            name = Path(path).name
            for head, probs in result.probs.items():
                top, p = result.top[head]
                rows.append({"image": name, "method": head, "prediction": top, "confidence": percent(p),
                             **{c: round(v, 4) for c, v in probs.items()}})
            if result.flag:
                notes.append(f"⚠️ **{name}**: {result.flag}")
        first = results[0].probs
        outs = [gr.update(value=first.get(h), label=h if h in first else f"{h} (not chosen, or no prompt for this task)")
                for h in DEFAULT_HEADS]
        summary = "\n\n".join(notes) or "No method is highly confident while the methods disagree."
        if len(images) > 1:
            summary += f"\n\nThe cards show the first image ({Path(images[0]).name}); the table lists all {len(images)}."
        return (state, *outs, pd.DataFrame(rows), summary)

    def api_compare(image, task=None):
        """One image in; ``{method: {class: probability}}`` out for the zero-shot, CoOp and CalibPrompt
        heads on the app's default model and ``task`` (default: the app's default task)."""
        return handler(core.compare_api)(file_paths(image)[0] if image else None, (task or "").strip() or None)

    button.click(run_compare, [shared.state, files, sample, shared.prompts],
                 [shared.state, *labels, table, flags], api_visibility="private")
    api_button.click(api_compare, [api_image, api_task], [api_out], api_name="compare")
