"""The Review tab: the cases a model got confidently wrong, and each reader's verdict on them."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from calibprompt.app.common import handler, percent, session_for, username
from calibprompt.defaults import DEFAULT_HEADS

VERDICTS = ["agree", "disagree", "unsure"]
THUMBNAIL = 256


def thumbnail(path: str):
    """A small RGB picture of a case (DICOM and 16-bit images windowed as the model saw them), served
    as a fresh file in this user's reply rather than from the dataset folder."""
    from calibprompt.data import load_image

    image = load_image(path)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def build(core, shared, export_dir: Path):
    datasets = core.dataset_choices()
    with gr.Tab("Review"):
        with gr.Row():
            reader = gr.Textbox(label="Reader (your name, recorded with each verdict)", elem_id="reader",
                                placeholder="e.g. Dr. A. Jones", scale=2)
            dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Test set")
            true_class = gr.Dropdown([""], value="", label="True class", allow_custom_value=True)
            wrong_method = gr.Dropdown([""] + list(DEFAULT_HEADS), value="", label="Wrong method",
                                       allow_custom_value=True)
            min_conf = gr.Slider(0, 1, value=0.5, step=0.05, label="Minimum confidence")
            referred = gr.Checkbox(False, label="Only cases the advice would refer", elem_id="review-referred")
            find = gr.Button("Find confidently wrong cases", variant="primary", elem_id="review-find")
        summary = gr.Markdown(elem_id="review-summary")
        cases = gr.State([])
        gallery = gr.Gallery(label="Cases", columns=6, height=420, allow_preview=True, elem_id="review-gallery")
        selected = gr.State(None)
        with gr.Row():
            info = gr.Markdown(elem_id="review-case")
            with gr.Column():
                method = gr.Dropdown([], label="Verdict on the answer of", elem_id="review-method")
                verdict = gr.Radio(VERDICTS, label="Your verdict on the model's answer", elem_id="review-verdict")
                note = gr.Textbox(label="Note", elem_id="review-note")
        with gr.Row():
            save = gr.Button("Save verdict", elem_id="review-save")
            export = gr.Button("Export reviews (CSV)", elem_id="review-export")
        saved = gr.Markdown(elem_id="review-saved")
        export_file = gr.File(label="Reviews CSV", elem_id="review-file")

    def set_reader(state, name, request: gr.Request):
        state = session_for(core, state, request)
        if username(request):  # with login, the reader is the logged-in user
            return state, gr.update(value=state.reader, interactive=False)
        return state.with_(reader=(name or "").strip()[:80]), gr.update()

    @handler
    def find_cases(state, name, dataset_choice, heads, cls, wrong, minimum, only_referred, request: gr.Request):
        state, _ = set_reader(state, name, request)
        found, ev = core.review_cases(state, dataset_choice, heads or state.prompts, true_class=cls or None,
                                      method=wrong or None, min_confidence=float(minimum),
                                      referred_only=bool(only_referred))
        items = [(thumbnail(c["path"]), f"true {c['true']} · " + " · ".join(
            f"{h}: {p} {percent(q)}" for h, (p, q) in c["predictions"].items())) for c in found]
        text = (f"{len(found)} confidently wrong case(s) among {ev.describe()} Most confident first. "
                if found else f"No case matches among {ev.describe()} ")
        text += core.review_summary(state, dataset_choice, found)
        classes = [""] + list(ev.task.class_ids)
        return (state, items, found, text, gr.update(choices=classes, value=cls if cls in classes else ""),
                gr.update(choices=[""] + list(ev.probs), value=wrong if wrong in ev.probs else ""), None)

    def select_case(state, found, evt: gr.SelectData):
        case = found[evt.index]
        lines = [f"**{case['image']}** — true class: **{case['true']}** — "
                 + ("the advice would **refer** this case" if case["referred"] else "the advice would answer")] + [
            f"- {h}: {p} ({percent(q)})" + (f"; 90 % set: {', '.join(case['sets'][h]) or 'empty'}" if h in case["sets"] else "")
            for h, (p, q) in case["predictions"].items()]
        mine = case["verdicts"].get(case["method"], {})
        return (case, "\n".join(lines), gr.update(choices=list(case["predictions"]), value=case["method"]),
                gr.update(value=mine.get("verdict") or None), mine.get("note", ""))

    def select_method(case, chosen):
        mine = (case or {}).get("verdicts", {}).get(chosen, {})
        return gr.update(value=mine.get("verdict") or None), mine.get("note", "")

    @handler
    def save_verdict(state, name, dataset_choice, case, chosen, value, text, found, request: gr.Request):
        state, _ = set_reader(state, name, request)
        if not value:
            raise gr.Error("Choose agree, disagree or unsure.")
        core.save_review(state, dataset_choice, case, chosen, value, text)
        case["verdicts"][chosen] = {"verdict": value, "note": text or ""}
        for item in found:
            if item["image"] == case["image"]:
                item["verdicts"] = case["verdicts"]
        return (state, f"Saved: {value} on {chosen}'s answer for {case['image']}, by {state.reader}. "
                + core.review_summary(state, dataset_choice, found), found)

    @handler
    def export_csv(dataset_choice):
        return str(core.export_reviews(export_dir, dataset=dataset_choice or None))

    reader.change(set_reader, [shared.state, reader], [shared.state, reader], api_visibility="private")
    find.click(find_cases, [shared.state, reader, dataset, shared.prompts, true_class, wrong_method, min_conf, referred],
               [shared.state, gallery, cases, summary, true_class, wrong_method, selected], api_visibility="private")
    gallery.select(select_case, [shared.state, cases], [selected, info, method, verdict, note], api_visibility="private")
    method.input(select_method, [selected, method], [verdict, note], api_visibility="private")
    save.click(save_verdict, [shared.state, reader, dataset, selected, method, verdict, note, cases],
               [shared.state, saved, cases], api_visibility="private")
    export.click(export_csv, [dataset], [export_file], api_visibility="private")
    return {"datasets": [dataset], "reader": reader}

