"""CalibPrompt web app: compare the predictions and confidence of a medical VLM's prompts.

    python app.py [--model auto|NAME] [--host 127.0.0.1] [--port 7860] [--share]

A thin layer over the ``calibprompt`` package: it builds the interface (:func:`build_demo`) and
launches it only when run as a script.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import gradio as gr

import calibprompt as cp
from calibprompt.models import BackboneUnavailableError

logger = logging.getLogger("calibprompt.app")

DISCLAIMER = ("**For research and review only - not for diagnosis.** Probabilities come from a vision-language "
              "model and can be confidently wrong.")
FALLBACK_BACKBONE = "tiny-random"


def choose_backbone(requested: str = "auto") -> tuple[cp.Backbone, str]:
    """Load the requested backbone; ``auto`` tries BiomedCLIP and falls back to an offline model.

    Returns the backbone and a sentence for the banner saying which model is active and why.
    """
    if requested != "auto":
        backbone = cp.load_backbone(requested)
        return backbone, f"Model: **{backbone.name}** ({backbone.description or 'as requested'})."
    try:
        backbone = cp.load_backbone("biomedclip")
        return backbone, "Model: **BiomedCLIP** (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)."
    except BackboneUnavailableError as exc:
        logger.warning("%s", exc)
        backbone = cp.load_backbone(FALLBACK_BACKBONE)
        return backbone, (
            f"Model: **{backbone.name}**, because BiomedCLIP could not be loaded here (no internet and not in the "
            "local Hugging Face cache). Its weights are random, so its predictions are meaningless. Connect to the "
            "internet, or start with `python app.py --model NAME` to choose another model."
        )


class CompareService:
    """What the Compare tab and the ``/compare`` endpoint do, independent of the widgets."""

    def __init__(self, backbone: cp.Backbone):
        self.engine = cp.Engine(backbone)
        self._task_name: str | None = None

    def set_task(self, task_name: str) -> cp.Task:
        task = cp.load_task(task_name)
        if task_name != self._task_name:
            self.engine.add_zero_shot("zero-shot", task)
            self._task_name = task_name
        return task

    def compare(self, image: Any, task_name: str) -> dict[str, dict[str, float]]:
        if image is None:
            raise ValueError("Upload an image first (PNG, JPEG, TIFF or DICOM).")
        path = image if isinstance(image, (str, os.PathLike)) else getattr(image, "name", image)
        self.set_task(task_name)
        picture = cp.load_image(path)
        predictions = self.engine.predict([picture])
        return {head: pred.as_dicts()[0] for head, pred in predictions.items()}


def build_demo(backbone: cp.Backbone | None = None, banner: str = "") -> gr.Blocks:
    """The Gradio interface over one backbone (loaded with :func:`choose_backbone` when not given)."""
    if backbone is None:
        backbone, banner = choose_backbone("auto")
    service = CompareService(backbone)
    tasks = cp.list_tasks()

    def run_compare(file, task_name):
        try:
            result = service.compare(file, task_name)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        return [result[head] for head in ("zero-shot",)]

    def api_compare(file, task_name="kather"):
        try:
            return service.compare(file, task_name)
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

    with gr.Blocks(title="CalibPrompt") as demo:
        gr.Markdown("# CalibPrompt: can I trust this confidence?")
        gr.Markdown(DISCLAIMER)
        gr.Markdown(banner)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image (PNG, JPEG, TIFF, DICOM)", file_types=list(cp.SUPPORTED_IMAGE_SUFFIXES))
                task = gr.Dropdown(tasks, value="kather" if "kather" in tasks else tasks[0], label="Task")
                button = gr.Button("Compare", variant="primary")
            with gr.Column():
                zero_shot = gr.Label(num_top_classes=5, label="Zero-shot")
        button.click(run_compare, [upload, task], [zero_shot], api_name="compare_ui")
        hidden_json = gr.JSON(visible=False)
        gr.Button(visible=False).click(api_compare, [upload, task], [hidden_json], api_name="compare")
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="CalibPrompt web app")
    parser.add_argument("--model", default="auto", help="auto, or a backbone name / hf-hub: id / model folder")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    backbone, banner = choose_backbone(args.model)
    demo = build_demo(backbone, banner)
    demo.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                   max_file_size="20mb")


if __name__ == "__main__":
    main()
