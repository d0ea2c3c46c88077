"""The Review tab: the cases a model got confidently wrong, each reader's verdict on them, and how far
readers agree.

Every confidently wrong case is listed (most confident first), 24 to a page. Readers give verdicts
with the buttons or the keyboard (``1`` agree, ``2`` disagree, ``3`` unsure, ``N`` next case, ``P``
previous case: :data:`KEYS_SCRIPT`, which :func:`calibprompt.app.theme.launch_kwargs` puts in the page's
head). Blinded mode hides the true class, the confidences and the other methods' answers of a case
until this reader has given a verdict on it. User text (reader names, notes, file names) is shown
escaped, never as HTML or Markdown.

Element ids: ``reader``, ``review-find``, ``review-referred``, ``review-filter``, ``review-blinded``,
``review-summary``, ``review-prev-page``, ``review-page``, ``review-next-page``, ``review-gallery``,
``review-keys``, ``review-image``, ``review-case``, ``review-method``, ``review-verdict``,
``review-note``, ``review-agree``, ``review-disagree``, ``review-unsure``, ``review-prev``,
``review-next``, ``review-save``, ``review-saved``, ``review-progress``, ``review-agreement``,
``review-export``, ``review-file``, ``review-adjudicate``, ``review-adjudication``,
``review-adjudication-gallery``; with a login, ``dataset-share`` and ``dataset-unshare`` (share the chosen
test set, an upload of this user's, with the team, or stop) and ``dataset-share-result``.

Verdicts shown (cases, agreement, disagreements, export) are those this page may see: its owner's own and,
logged in, the team's on data the team can open (:func:`calibprompt.service.reviews.visible_reviews`).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from calibprompt.app.common import handler, percent, session_for, username
from calibprompt.data.resolve import resolve_choice
from calibprompt import defaults
from calibprompt.defaults import DEFAULT_HEADS
from calibprompt.service import reviews as service

VERDICTS = list(service.VERDICTS)
THUMBNAIL = 256
FILTERS = [("All cases", "all"), ("Reviewed by me", "mine"), ("Not yet reviewed by me", "todo"),
           ("Readers' verdicts differ", "disagreements")]
KEY_HINT = ("**Keys** (not while typing in a text field): **1** agree · **2** disagree · **3** unsure · "
            "**N** next case · **P** previous case")

# A page-level key listener for the Review tab: 1/2/3 give a verdict, N/P move to the next/previous case,
# by clicking the tab's buttons. Keys typed in a text field, with Ctrl/Alt/Meta, or while another tab is
# shown are left alone. After a click it waits until the case panel (#review-case, whose data-seq changes
# with every answer) is redrawn before the next key, so a fast reader never gives a verdict on a case
# that is still loading. The gallery's thumbnails are taken out of the Tab order (the keys replace them).
# The tab's look (the case viewer, its scrolling tables, the gallery on a phone) is in the theme's CSS
# (calibprompt.app.theme.CSS).
KEYS_SCRIPT = """<script>
(() => {
  const KEYS = {"1": "review-agree", "2": "review-disagree", "3": "review-unsure", "n": "review-next",
                "p": "review-prev"};
  const TEXT = new Set(["text", "search", "email", "password", "url", "tel", "number", "date", "time"]);
  const typing = (el) => !!el && (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT" ||
      (el.tagName === "INPUT" && TEXT.has((el.type || "text").toLowerCase())));
  const queue = [];
  let busy = false;
  const seq = () => { const c = document.querySelector("#review-case [data-seq]"); return c ? c.dataset.seq : ""; };
  const next = () => {
    if (busy || !queue.length) return;
    const button = document.getElementById(queue.shift());
    if (!button || button.disabled) { next(); return; }
    busy = true;
    const before = seq(), started = Date.now();
    button.click();
    const wait = setInterval(() => {
      if (seq() !== before || Date.now() - started > 8000) { clearInterval(wait); busy = false; next(); }
    }, 40);
  };
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const id = KEYS[(event.key || "").toLowerCase()];
    if (!id || typing(event.target)) return;
    const panel = document.getElementById("review-keys");
    if (!panel || !panel.getClientRects().length) return;  // the Review tab is not shown
    event.preventDefault();
    queue.push(id);
    next();
  });
  const untab = () => {
    for (const b of document.querySelectorAll("#review-gallery button:not([tabindex='-1'])")) {
      if (b.querySelector("img")) b.setAttribute("tabindex", "-1");
    }
  };
  const start = () => { untab(); new MutationObserver(untab).observe(document.body, {subtree: true, childList: true}); };
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
</script>"""


def thumbnail(path: str, size: int = THUMBNAIL):
    """A small RGB picture of a case (DICOM and 16-bit images windowed as the model saw them), served
    as a fresh file in this user's reply rather than from the dataset folder."""
    from calibprompt.data import load_image

    image = load_image(path)
    image.thumbnail((size, size))
    return image


def full_image(path: str):
    """The case's image at full resolution (windowed like :func:`thumbnail`), or None if unreadable."""
    from calibprompt.data import load_image

    try:
        return load_image(path)
    except (OSError, ValueError):
        return None


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def caption(case: dict, blinded: bool) -> str:
    mine = case["verdicts"]
    done = " · ✓ " + ", ".join(sorted({v["verdict"] for v in mine.values()})) if mine else ""
    if blinded and not mine:
        return f"#{case['rank']}"
    m = case["method"]  # what matters first: the confidence and the wrong answer (captions are cut short)
    return (f"#{case['rank']} · {percent(case['predictions'][m][1])} {case['prediction_names'][m]} · "
            f"true: {case['true_name']}{done}")


def case_html(listing: dict, blinded: bool) -> str:
    """The selected case: its place in the list, true class and every method's answer (hidden in
    blinded mode until this reader's verdict), and this reader's verdict."""
    seq = f"<div class='cp-review-case' data-seq='{listing.get('seq', 0)}'>"
    index = listing.get("selected")
    if index is None:
        return seq + "<p>No case selected: click a thumbnail, or press <kbd>N</kbd> for the next case.</p></div>"
    case = listing["shown"][index]
    head = (f"<p><strong>Case #{case['rank']}</strong> ({index + 1} of {len(listing['shown'])} listed) — "
            f"{esc(case['image'])}</p>")
    mine = case["verdicts"]
    if blinded and not mine:
        claim = case["prediction_names"][case["method"]]
        return (seq + head + f"<p>Answer to judge: <strong>{esc(claim)}</strong></p><p><em>Blinded: the true class, "
                "the confidences and the other methods' answers appear once you give your verdict.</em></p></div>")
    advice = "the advice would <strong>refer</strong> this case" if case["referred"] else "the advice would answer"
    rows = "".join(
        f"<tr><td>{esc(h)}{' (judged)' if h == case['method'] else ''}</td><td>{esc(case['prediction_names'][h])}</td>"
        f"<td>{percent(q)}</td><td>{esc(', '.join(case['sets'][h]) or 'empty') if h in case['sets'] else '—'}</td></tr>"
        for h, (_, q) in case["predictions"].items())
    table = ("<div class='cp-scroll'><table><thead><tr><th scope='col'>Method</th><th scope='col'>Answer</th><th scope='col'>Confidence</th>"
             f"<th scope='col'>{100 * defaults.COVERAGE:.0f} % set</th></tr></thead><tbody>{rows}</tbody></table></div>")
    yours = "".join(f"<li>{esc(m)}: {esc(v['verdict'])}" + (f" — {esc(v['note'])}" if v["note"] else "") + "</li>"
                    for m, v in mine.items())
    yours = f"<p>Your verdicts:</p><ul>{yours}</ul>" if yours else "<p>No verdict from you yet.</p>"
    return (seq + head + f"<p>True class: <strong>{esc(case['true_name'])}</strong> — {advice}</p>" + table
            + yours + "</div>")


def summary_html(listing: dict | None) -> str:
    if not listing:
        return ""
    wrong, shown = len(listing["wrong"]), len(listing["shown"])
    if not wrong:
        return f"<p>No confidently wrong case matches among {esc(listing['description'])}</p>"
    text = (f"<p><strong>{wrong}</strong> confidently wrong case{'s' if wrong != 1 else ''} among "
            f"{esc(listing['description'])} Most confident first.")
    label = dict((v, k) for k, v in FILTERS)[listing["filter"]]
    if listing["filter"] != "all":
        text += f" Showing {shown} ({label.lower()})."
    return text + "</p>"


def page_html(listing: dict | None) -> str:
    if not listing or not listing["shown"]:
        return "<p>No cases to show.</p>" if listing else ""
    p = service.page_of(len(listing["shown"]), listing["page"])
    return (f"<p>Cases {p['start'] + 1}–{p['stop']} of {len(listing['shown'])} · page {p['page'] + 1} of "
            f"{p['pages']}</p>")


def progress_html(listing: dict | None, reader: str) -> str:
    if not listing:
        return ""
    who = esc(reader) if reader else "no reader name yet"
    done = service.progress(listing["shown"])
    text = f"You ({who}) have reviewed {done['reviewed']} of the {done['listed']} listed cases"
    if listing["filter"] != "all":
        total = service.progress(listing["wrong"])
        text += f" ({total['reviewed']} of all {total['listed']} confidently wrong cases)"
    return f"<p>{text}.</p>"


def agreement_html(pairs: list[dict]) -> str:
    """Each pair of readers: shared cases, percentage agreement, Cohen's kappa, and a caution on few cases."""
    if not pairs:
        return "<p>Agreement between readers: no two readers have judged a common case of this test set yet.</p>"
    items = []
    for p in pairs:
        kappa = ("kappa undefined (fewer than 2 shared cases, or one verdict for everything)" if p["kappa"] is None
                 else f"Cohen's kappa {p['kappa']:.2f}")
        text = (f"{esc(p['reader_a'])} and {esc(p['reader_b'])}: agreed on {p['agreed']} of {p['cases']} shared "
                f"case{'s' if p['cases'] != 1 else ''} ({100 * p['percent']:.0f} %); {kappa}")
        if p["few"]:
            text += (" — <strong>caution</strong>: fewer than 20 shared cases, so kappa is unstable; read the "
                     "percentage too")
        items.append(f"<li>{text}.</li>")
    return ("<p>Agreement between readers (kappa: agreement beyond chance, 1 = perfect, 0 = chance level):</p>"
            f"<ul>{''.join(items)}</ul>")


def adjudication_html(items: list[dict]) -> str:
    if not items:
        return "<p>No disagreements: no two readers gave different verdicts on the same answer.</p>"
    rows = "".join(
        f"<tr><td>{esc(d['image'])}</td><td>{esc(d['true_class'])}</td><td>{esc(d['method'])}: "
        f"{esc(d['prediction'])}</td><td><ul>"
        + "".join(f"<li>{esc(r['reader'])}: <strong>{esc(r['verdict'])}</strong>"
                  + (f" — {esc(r['note'])}" if r["note"] else "") + "</li>" for r in d["readers"])
        + "</ul></td></tr>" for d in items)
    return (f"<p>{len(items)} answer{'s' if len(items) != 1 else ''} with different verdicts:</p>"
            "<div class='cp-scroll'><table><thead><tr>"
            "<th scope='col'>Image</th><th scope='col'>True class</th><th scope='col'>Answer judged</th>"
            f"<th scope='col'>Readers and verdicts</th></tr></thead><tbody>{rows}</tbody></table></div>")


def gallery_items(listing: dict, blinded: bool) -> list:
    p = service.page_of(len(listing["shown"]), listing["page"])
    return [(thumbnail(c["path"]), caption(c, blinded)) for c in listing["shown"][p["start"]:p["stop"]]]


def build(core, shared, export_dir: Path):
    """The Review tab: its layout (:func:`_layout`), then its events (:meth:`ReviewTab.wire`); exports go to
    fresh folders under ``export_dir``. Returns its dataset menu and reader field, which the page load fills."""
    tab = ReviewTab(core, shared, export_dir, _layout(core))
    tab.wire()
    return {"datasets": [tab.ui["dataset"]], "reader": tab.ui["reader"]}


def _layout(core) -> dict[str, Any]:
    """The tab's components by name (element ids in the module's docstring), top to bottom: the search, the
    list and its pages, the selected case and the verdict form, progress and agreement, export and sharing,
    adjudication; and the listing's state."""
    datasets = core.dataset_choices(None)  # shared datasets only; the page load adds the owner's uploads
    ui: dict[str, Any] = {}
    with gr.Tab("Review"):
        with gr.Row():
            ui["reader"] = gr.Textbox(label="Reader (your name, recorded with each verdict)", elem_id="reader",
                                      placeholder="e.g. Dr. A. Jones", scale=2)
            ui["dataset"] = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Test set",
                                        elem_id="review-dataset")
            ui["true_class"] = gr.Dropdown([("any", "")], value="", label="True class", elem_id="review-true-class")
            ui["wrong_method"] = gr.Dropdown([("any", "")] + [(h, h) for h in DEFAULT_HEADS], value="",
                                             label="Wrong method", elem_id="review-wrong-method")
            ui["min_conf"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Minimum confidence",
                                       elem_id="review-min-confidence")
        with gr.Row():
            ui["which"] = gr.Radio(FILTERS, value="all", label="Show", elem_id="review-filter", scale=3)
            with gr.Column(scale=2):
                ui["referred"] = gr.Checkbox(False, label="Only cases the advice would refer", elem_id="review-referred")
                ui["blinded"] = gr.Checkbox(False, elem_id="review-blinded",
                                            label="Blinded: hide the true class and the answers' confidence until I "
                                                  "give my verdict")
            ui["find"] = gr.Button("Find confidently wrong cases", variant="primary", elem_id="review-find", scale=1)
        ui["summary"] = gr.HTML(elem_id="review-summary")
        ui["page"] = gr.HTML(elem_id="review-page")
        with gr.Row():
            ui["prev_page"] = gr.Button("◀ Previous page", elem_id="review-prev-page", size="sm", scale=0, min_width=140)
            ui["next_page"] = gr.Button("Next page ▶", elem_id="review-next-page", size="sm", scale=0, min_width=140)
        ui["gallery"] = gr.Gallery(label="Cases (click one, or press N)", columns=8, height=480, allow_preview=False,
                                   object_fit="contain", elem_id="review-gallery")
        ui["keys"] = gr.Markdown(KEY_HINT, elem_id="review-keys")
        with gr.Row():
            with gr.Column(scale=3):
                ui["image"] = gr.Image(label="Selected case (full resolution)", type="pil", interactive=False,
                                       buttons=["download", "fullscreen"], elem_id="review-image", height=420,
                                       alt_text="The selected case's image")
            with gr.Column(scale=2):
                ui["info"] = gr.HTML(elem_id="review-case")
                ui["method"] = gr.Dropdown([], label="Verdict on the answer of", elem_id="review-method")
                ui["verdict"] = gr.Radio(VERDICTS, label="Your verdict on the model's answer", elem_id="review-verdict")
                ui["note"] = gr.Textbox(label="Note (optional; type it before the verdict key)", elem_id="review-note")
                with gr.Row():
                    for v, key in zip(VERDICTS, "123"):
                        ui[v] = gr.Button(f"{v.capitalize()} ({key})", elem_id=f"review-{v}", min_width=100)
                with gr.Row():
                    ui["prev"] = gr.Button("◀ Previous case (P)", elem_id="review-prev", min_width=140)
                    ui["next"] = gr.Button("Next case (N) ▶", elem_id="review-next", min_width=140)
                ui["save"] = gr.Button("Save verdict and note", variant="primary", elem_id="review-save")
        ui["saved"] = gr.HTML(elem_id="review-saved")
        ui["progress"] = gr.HTML(elem_id="review-progress")
        ui["agreement"] = gr.HTML(elem_id="review-agreement")
        with gr.Row():
            ui["export"] = gr.Button("Export reviews (CSV)", elem_id="review-export")
            ui["share"] = gr.Button("Share this test set with the team", elem_id="dataset-share", visible=False)
            ui["unshare"] = gr.Button("Stop sharing it", elem_id="dataset-unshare", visible=False)
        ui["share_result"] = gr.HTML(elem_id="dataset-share-result")
        ui["export_file"] = gr.File(label="Reviews CSV", elem_id="review-file", visible=False)
        with gr.Accordion("Adjudication: answers on which readers' verdicts differ", open=False):
            ui["adjudicate"] = gr.Button("List disagreements", elem_id="review-adjudicate")
            ui["adjudication"] = gr.HTML(elem_id="review-adjudication")
            ui["adjudication_gallery"] = gr.Gallery(label="Their images", columns=6, height=260, allow_preview=True,
                                                    object_fit="contain", elem_id="review-adjudication-gallery")
        ui["listing"] = gr.State(None)
    return ui


class ReviewTab:
    """The tab's handlers over its widgets (``ui``, from :func:`_layout`). The listing (a ``gr.State``)
    is ``{"dataset", "root", "description", "wrong": every confidently wrong case, "shown": those that
    pass the reader filter, "filter", "page", "selected": index into shown or None, "seq"}``."""

    def __init__(self, core, shared, export_dir: Path, ui: dict[str, Any]):
        self.core, self.shared, self.export_dir, self.ui = core, shared, export_dir, ui
        self.state, self.listing = shared.state, ui["listing"]
        self.view_out = [self.state, self.listing] + [ui[k] for k in (
            "summary", "page", "gallery", "image", "info", "method", "verdict", "note", "saved", "progress",
            "agreement")]

    def set_reader(self, st, name, request: gr.Request):
        st = session_for(self.core, st, request)
        if username(request):  # with login, the reader is the logged-in user
            return st, gr.update(value=st.reader, interactive=False)
        return st.with_(reader=(name or "").strip()[:80]), gr.update()

    def view(self, st, data: dict, blinded: bool, *, page: bool = False, case: bool = True, saved: str = "") -> dict:
        """Outputs for ``data``: the gallery only when ``page``, the case form (image, method, verdict,
        note) when ``case``; the case panel, counts and agreement always."""
        ui = self.ui
        data["seq"] = data.get("seq", 0) + 1
        out = {self.state: st, self.listing: data, ui["summary"]: summary_html(data), ui["page"]: page_html(data),
               ui["info"]: case_html(data, blinded), ui["saved"]: saved,
               ui["progress"]: progress_html(data, st.reader),
               ui["agreement"]: agreement_html(service.agreement(self.core, st, data["dataset"]))}
        if page:
            out[ui["gallery"]] = gallery_items(data, blinded)
        if case:
            out.update(_case_form(ui, data))
        return out

    @handler
    def find_cases(self, st, name, dataset, heads, cls, wrong, minimum, only_referred, which, blinded,
                   request: gr.Request):
        st, _ = self.set_reader(st, name, request)
        found = service.find_cases(self.core, st, dataset, heads or st.prompts, true_class=cls or None,
                                   method=wrong or None, min_confidence=float(minimum),
                                   referred_only=bool(only_referred), reader_filter=which or "all")
        data = {"dataset": dataset, "root": found.root, "description": found.description, "wrong": found.wrong,
                "shown": found.cases, "filter": which or "all", "page": 0, "selected": None}
        out = self.view(st, data, blinded, page=True)
        out[self.ui["true_class"]] = gr.update(choices=[("any", "")] + found.classes,
                                               value=cls if cls in dict(found.classes).values() else "")
        out[self.ui["wrong_method"]] = gr.update(choices=[("any", "")] + [(m, m) for m in found.methods],
                                                 value=wrong if wrong in found.methods else "")
        return out

    @handler
    def refilter(self, st, name, data, which, blinded, request: gr.Request):
        st, _ = self.set_reader(st, name, request)
        if not data:
            return {self.ui["summary"]: "<p>Choose a test set and press <strong>Find confidently wrong cases"
                                        "</strong>.</p>"}
        data.update(shown=service.refresh_cases(self.core, st, data["dataset"], data["wrong"], which),
                    filter=which, page=0, selected=None)
        return self.view(st, data, blinded, page=True)

    def _turn(self, st, name, data, blinded, request, delta: int) -> dict:
        st, _ = self.set_reader(st, name, request)
        if not data:
            raise gr.Error("Find cases first: press 'Find confidently wrong cases'.")
        pages = service.page_of(len(data["shown"]), 0)["pages"]
        data.update(page=min(max(data["page"] + delta, 0), pages - 1), selected=None)
        return self.view(st, data, blinded, page=True)

    @handler
    def previous_page(self, st, name, data, blinded, request: gr.Request):
        return self._turn(st, name, data, blinded, request, -1)

    @handler
    def next_page(self, st, name, data, blinded, request: gr.Request):
        return self._turn(st, name, data, blinded, request, 1)

    def select_case(self, st, data, blinded, evt: gr.SelectData):
        if not data or not data["shown"]:
            return {}
        start = service.page_of(len(data["shown"]), data["page"])["start"]
        data["selected"] = min(start + evt.index, len(data["shown"]) - 1)
        return self.view(session_for(self.core, st), data, blinded)

    def _step(self, st, name, data, blinded, request, delta: int) -> dict:
        st, _ = self.set_reader(st, name, request)
        if not data or not data["shown"]:
            raise gr.Error("No cases listed: press 'Find confidently wrong cases' (or show 'All cases').")
        return _move(self.view, st, data, blinded, delta)

    @handler
    def previous_case(self, st, name, data, blinded, request: gr.Request):
        return self._step(st, name, data, blinded, request, -1)

    @handler
    def next_case(self, st, name, data, blinded, request: gr.Request):
        return self._step(st, name, data, blinded, request, 1)

    def _give(self, st, name, data, chosen, value, text, blinded, request) -> dict:
        st, _ = self.set_reader(st, name, request)
        if not value:
            raise gr.Error("Choose agree, disagree or unsure (or press 1, 2 or 3).")
        case = _selected(data)
        if case is None:
            raise gr.Error("Select a case first: click a thumbnail, or press N for the next case.")
        method = chosen if chosen in case["predictions"] else case["method"]
        resolve_choice(data["dataset"], st.owner)  # a verdict only on a dataset this page's owner may open
        service.save_review(self.core, st, data["dataset"], case, method, value, text)
        saved = (f"<p role='status'>Saved: {esc(value)} on {esc(method)}'s answer for case #{case['rank']} "
                 f"({esc(case['image'])}), by {esc(st.reader)}.</p>")
        out = self.view(st, data, blinded, case=False, saved=saved)
        out[self.ui["verdict"]] = gr.update(value=value)
        return out

    @handler
    def agree(self, st, name, data, chosen, radio, text, blinded, request: gr.Request):
        return self._give(st, name, data, chosen, "agree", text, blinded, request)

    @handler
    def disagree(self, st, name, data, chosen, radio, text, blinded, request: gr.Request):
        return self._give(st, name, data, chosen, "disagree", text, blinded, request)

    @handler
    def unsure(self, st, name, data, chosen, radio, text, blinded, request: gr.Request):
        return self._give(st, name, data, chosen, "unsure", text, blinded, request)

    @handler
    def save(self, st, name, data, chosen, radio, text, blinded, request: gr.Request):
        return self._give(st, name, data, chosen, radio, text, blinded, request)

    @staticmethod
    def choose_method(data, chosen):
        mine = (_selected(data) or {}).get("verdicts", {}).get(chosen, {})
        return gr.update(value=mine.get("verdict") or None), mine.get("note", "")

    @handler
    def blind(self, st, data, blinded):
        if not data:
            return {}
        return self.view(session_for(self.core, st), data, blinded, page=True, case=False)

    @handler
    def adjudicate(self, st, data, dataset, request: gr.Request):
        if not dataset:
            raise gr.Error("Choose a test set first.")
        st = session_for(self.core, st, request)
        resolve_choice(dataset, st.owner)  # only a dataset this owner may open
        known = data["wrong"] if data and data["dataset"] == dataset else []
        items = service.disagreements(self.core, st, dataset, data["root"] if known else None, known)
        pictures = [(thumbnail(d["path"]), f"{d['image']} — " + ", ".join(
            f"{r['reader']}: {r['verdict']}" for r in d["readers"])) for d in items if d["path"]]
        return adjudication_html(items), pictures

    @handler
    def export_csv(self, st, dataset_choice, request: gr.Request):
        """The verdicts this page may see on the chosen test set as CSV; only a test set this page's owner may
        open."""
        st = session_for(self.core, st, request)
        if dataset_choice:
            resolve_choice(dataset_choice, st.owner)
        return gr.update(value=str(self.core.export_reviews(st, self.export_dir, dataset=dataset_choice or None)),
                         visible=True)

    def _share(self, st, dataset_choice, request, shared: bool):
        """Share the chosen test set (this user's upload) with the team, or stop; the result in words, escaped."""
        st = session_for(self.core, st, request)
        if not dataset_choice:
            raise gr.Error("Choose a test set first: one of your uploads (uploads/<name>).")
        message = self.core.share_dataset(st, dataset_choice, shared)
        return f"<p role='status'>{esc(message)}</p>"

    @handler
    def share(self, st, dataset_choice, request: gr.Request):
        return self._share(st, dataset_choice, request, True)

    @handler
    def unshare(self, st, dataset_choice, request: gr.Request):
        return self._share(st, dataset_choice, request, False)

    @staticmethod
    def sharing_shown(request: gr.Request):
        """The share buttons: shown to a logged-in user only (without a login there is no team)."""
        shown = bool(username(request))
        return gr.update(visible=shown), gr.update(visible=shown)

    def wire(self) -> None:
        ui, st, data, out = self.ui, self.state, self.listing, self.view_out
        private = {"api_visibility": "private"}
        ui["reader"].change(self.set_reader, [st, ui["reader"]], [st, ui["reader"]], **private)
        ui["find"].click(self.find_cases, [st, ui["reader"], ui["dataset"], self.shared.prompts, ui["true_class"],
                                           ui["wrong_method"], ui["min_conf"], ui["referred"], ui["which"],
                                           ui["blinded"]], out + [ui["true_class"], ui["wrong_method"]], **private)
        ui["which"].input(self.refilter, [st, ui["reader"], data, ui["which"], ui["blinded"]], out, **private)
        paged = [st, ui["reader"], data, ui["blinded"]]
        ui["prev_page"].click(self.previous_page, paged, out, **private)
        ui["next_page"].click(self.next_page, paged, out, **private)
        ui["gallery"].select(self.select_case, [st, data, ui["blinded"]], out, **private)
        ui["prev"].click(self.previous_case, paged, out, **private)
        ui["next"].click(self.next_case, paged, out, **private)
        given = [st, ui["reader"], data, ui["method"], ui["verdict"], ui["note"], ui["blinded"]]
        for name in (*VERDICTS, "save"):
            ui[name].click(getattr(self, name), given, out, **private)
        ui["method"].input(self.choose_method, [data, ui["method"]], [ui["verdict"], ui["note"]], **private)
        ui["blinded"].input(self.blind, [st, data, ui["blinded"]], out, **private)
        ui["adjudicate"].click(self.adjudicate, [st, data, ui["dataset"]],
                               [ui["adjudication"], ui["adjudication_gallery"]], **private)
        ui["export"].click(self.export_csv, [st, ui["dataset"]], [ui["export_file"]], **private)
        ui["share"].click(self.share, [st, ui["dataset"]], [ui["share_result"]], **private)
        ui["unshare"].click(self.unshare, [st, ui["dataset"]], [ui["share_result"]], **private)
        if gr.context.Context.root_block is not None:  # built inside the app's Blocks: show them on a login
            gr.context.Context.root_block.load(self.sharing_shown, None, [ui["share"], ui["unshare"]], **private)


def _selected(data: dict | None) -> dict | None:
    if not data or data.get("selected") is None or data["selected"] >= len(data["shown"]):
        return None
    return data["shown"][data["selected"]]


def _case_form(ui: dict[str, Any], data: dict) -> dict:
    """The selected case's image, method menu, verdict and note; all cleared when none is selected."""
    case = _selected(data)
    if case is None:
        return {ui["image"]: gr.update(value=None, label="Selected case (full resolution)"), ui["method"]: gr.update(choices=[], value=None), ui["verdict"]: None,
                ui["note"]: ""}
    mine = case["verdicts"].get(case["method"], {})
    image = full_image(case["path"])
    size = f"{image.width} × {image.height} px; drawn to fit" if image is not None else "the file cannot be read"
    return {ui["image"]: gr.update(value=image, label=f"Selected case, full resolution ({size})"),
            ui["method"]: gr.update(choices=list(case["predictions"]), value=case["method"]),
            ui["verdict"]: mine.get("verdict") or None, ui["note"]: mine.get("note", "")}


def _move(view, st, data: dict, blinded: bool, delta: int) -> dict:
    """Select the next (``delta`` 1) or previous (-1) listed case, turning the page when it lies on another."""
    current = data.get("selected")
    if current is None:  # nothing selected yet: start on this page
        p = service.page_of(len(data["shown"]), data["page"])
        target = p["start"] if delta > 0 else p["stop"] - 1
    else:
        target = current + delta
    if not 0 <= target < len(data["shown"]):
        edge = "last" if delta > 0 else "first"
        return view(st, data, blinded, case=False, saved=f"<p role='status'>This is the {edge} listed case.</p>")
    page = target // service.PER_PAGE
    turned = page != data["page"]
    data.update(selected=target, page=page)
    return view(st, data, blinded, page=turned)
