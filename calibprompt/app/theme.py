"""The page's look: a theme whose colours pass WCAG AA contrast, CSS that keeps the page from moving
while it loads, and a few lines for the document head.

In Gradio 6 the theme, the CSS and the head are arguments of ``launch()``::

    demo.launch(**launch_kwargs(), server_name=..., ...)

What each part fixes (Lighthouse, ``benchmarks/page_audit.sh``):

- ``THEME`` (``color-contrast``): Gradio's default orange primary button (white on #f97316, 2.8:1), its
  red stop button (white on #ef4444, 3.8:1) and its "subdued" grey (#bbbbc2 on white, 1.9:1: the
  footer, the upload box's "- or -", info texts) fail AA. Here the primary colour is blue, buttons use
  the 700 shades (white on #1d4ed8 is 6.7:1, on #b91c1c 6.5:1), and secondary text, placeholders and
  block labels use zinc 500-600 (4.8:1 to 7.7:1 on white). System fonts instead of the two bundled
  web fonts: no font swap moves the text once they arrive (``layout-shifts``), about 140 KiB less
  to load.
- ``CSS`` (``cumulative-layout-shift``, ``target-size``): Gradio draws each component once its code
  has arrived, behind a translucent "Loading..." overlay, so the partly drawn page visibly grows and
  moves (the header rows arrive after the tabs, the model menu slides left when the button beside it
  arrives); the page is kept invisible while that overlay is up (the price: the page appears whole, a
  little later than its first parts used to, so the largest contentful paint comes later; drop that
  rule to trade the shifts back for it). The vertical scrollbar's space is
  reserved, so the centred page doesn't jump sideways when the page grows taller than the window.
  Icon buttons (the gallery's "Download All", the table's copy and full-screen buttons) get at least
  24 x 24 px.
- Phones and dark mode (``CSS``, ``PLOT_SCRIPT``): at 390 px all four tabs stay on the tab bar (the
  interface's ``gr.Tabs(overflow_behavior="wrap")``, compact buttons), the title is smaller; figures
  (``calibprompt.evaluation.plots``) are transparent with near-black text, and in dark mode (Gradio puts
  ``dark`` on ``<body>``) their text is drawn light; a figure narrower than its ``meta.responsive.below``
  takes its narrow layout (a grid's panels stacked, long titles on two lines, room for the legend).
  The header's "Signed in as" line (``#identity``) has its height reserved.
- The tabs' own HTML (``CSS``): the tabs write classes, never inline styles, and their look is here: the
  Compare tab's advice panel, checks and verdict badges (colours from ``compare_view.VERDICT_TEXT``), the
  Train tab's progress bar (only its width, the progress, is set where it is drawn), the Review tab's case
  viewer, scrolling tables and phone gallery.
- ``HEAD`` (``aria-prohibited-attr``, ``image-redundant-alt``): Gradio's "empty" placeholder (an empty
  Label, Plot or Gallery) is a ``<div aria-label="Empty value">`` without a role, which ARIA forbids,
  and a gallery thumbnail's ``alt`` repeats the caption shown in the same button (so does the footer's
  settings icon). A small script gives those placeholders ``role="img"`` and empties the repeated
  ``alt`` texts as Gradio adds them. Gradio's page already has ``<html lang="en">``; the head adds
  a description and a theme colour.
"""
from __future__ import annotations

import gradio as gr
from gradio.themes.utils import colors

from calibprompt.app.compare_view import VERDICT_TEXT

__all__ = ["THEME", "CSS", "HEAD", "launch_kwargs"]

SANS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial",
        "sans-serif")
MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace")

THEME = gr.themes.Default(
    primary_hue=colors.blue, secondary_hue=colors.blue, neutral_hue=colors.zinc, font=SANS, font_mono=MONO,
).set(
    # white text on the buttons: blue 700 (6.7:1), its hover blue 800 (8.7:1); dark mode blue 600 (5.2:1)
    button_primary_background_fill="*primary_700",
    button_primary_background_fill_hover="*primary_800",
    button_primary_border_color="*primary_700",
    button_primary_border_color_hover="*primary_800",
    button_primary_background_fill_dark="*primary_600",
    button_primary_background_fill_hover_dark="*primary_700",
    button_primary_border_color_dark="*primary_600",
    button_primary_border_color_hover_dark="*primary_700",
    # the stop button (Cancel): red 700 (6.5:1), its hover red 800 (8.3:1)
    button_cancel_background_fill="#b91c1c",
    button_cancel_background_fill_hover="#991b1b",
    button_cancel_background_fill_dark="#b91c1c",
    button_cancel_background_fill_hover_dark="#991b1b",
    # accents (checked boxes, sliders, the selected tab): blue 600, 5.2:1 on white
    color_accent="*primary_600",
    # secondary text on white (and on the light grey of blocks and odd table rows): zinc 600 is 7.7:1,
    # zinc 500 4.8:1; on the dark background zinc 400 is 9:1
    body_text_color_subdued="*neutral_600",
    body_text_color_subdued_dark="*neutral_400",
    block_label_text_color="*neutral_600",
    block_title_text_color="*neutral_600",
    input_placeholder_color="*neutral_500",
    input_placeholder_color_dark="*neutral_400",
    link_text_color="*secondary_700",
    link_text_color_hover="*secondary_800",
    link_text_color_visited="*secondary_800",
    link_text_color_active="*secondary_700",
    link_text_color_dark="*secondary_400",
    link_text_color_hover_dark="*secondary_300",
    link_text_color_visited_dark="*secondary_300",
    link_text_color_active_dark="*secondary_400",
)

CSS = """
/* The vertical scrollbar takes its space from the start: when the page grows taller than the window,
   the centred page doesn't jump sideways (a shift of the whole page). */
html { scrollbar-gutter: stable; }

/* While Gradio's full-page "Loading..." overlay is up, components appear one after another under it
   and push each other around; keep that partly drawn page invisible (invisible boxes don't count as
   layout shifts) and show it whole once the overlay goes. */
.gradio-container > .main:has(> .wrap > p.loading) > .wrap:has(> main.contain) { visibility: hidden; }

/* The footer's icons get their height before they load (the API icon has only a width). */
footer .show-api img { height: var(--size-3); }
footer .built-with img, footer .settings img, footer .record img, footer .run-history img {
    height: var(--size-4);
}

/* Touch targets of at least 24 x 24 px (WCAG 2.2, 2.5.8): Gradio's icon buttons are 18 px. */
button.icon-button { min-width: 24px; min-height: 24px; justify-content: center; }

/* Who is signed in, and the way out (interface.py fills it when the page loads; its line is reserved
   so that nothing moves then). */
#identity { min-height: 24px; text-align: right; }
#identity .cp-identity { display: inline-flex; flex-wrap: wrap; gap: 0 var(--size-3); justify-content: flex-end;
                         align-items: center; line-height: 24px; font-size: var(--text-sm);
                         color: var(--body-text-color-subdued); }
#identity a { color: var(--link-text-color); text-decoration: underline; display: inline-block; min-height: 24px; }

/* Plotly figures (calibprompt.evaluation.plots) have transparent backgrounds, translucent grey grids and
   near-black text: right on white, and on white is how they are exported. In dark mode their text is
   drawn in the page's light text colour; hover labels keep their own white box and dark text. */
.dark .js-plotly-plot svg.main-svg > g:not(.hoverlayer) text { fill: var(--body-text-color) !important; }

/* The Compare tab's advice (compare_view.py): the panel keeps the height it takes once filled, so nothing
   jumps when the first result arrives; the checks are a list without bullets; the verdict badge is white
   on its verdict's colour (VERDICT_CSS below). */
.cp-advice { min-height: 9em; }
ul.cp-checks { list-style: none; padding-left: 0; }
.cp-badge { color: #ffffff; padding: 2px 10px; border-radius: 4px; font-weight: 700; }

/* The Train tab's progress bar (train_tab.progress_html; the fill's width is the job's progress). */
.cp-progress-track { background: #e5e7eb; border-radius: 6px; height: 14px; }
.cp-progress-fill { background: #2563eb; height: 14px; border-radius: 6px; }

/* The Review tab (review_tab.py): the selected case fills its viewer (a 64 px patch is drawn large, its
   pixels kept sharp), and a case's tables scroll sideways on a phone instead of being cut off. */
#review-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.cp-scroll { overflow-x: auto; max-width: 100%; }
.cp-scroll table { width: 100%; }
@media (max-width: 768px) {  /* a phone: as many thumbnail columns as fit, not 8 columns cut off at the edge */
    #review-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important; }
}

/* Phones: all four tabs on the bar (the Tabs wrap rather than hide tabs in a "..." menu; compact
   buttons keep them on one row at 390 px), and a header that takes less of the first screen. */
@media (max-width: 640px) {
    #main-tabs [role="tablist"] { flex-wrap: wrap; row-gap: var(--size-1); }
    #main-tabs [role="tablist"] > button { padding-left: var(--size-2); padding-right: var(--size-2); }
    #app-title h1 { font-size: 1.5rem; line-height: 1.25; margin-bottom: 0; }
    #task-info p { font-size: var(--text-sm); }
    #identity .cp-identity { font-size: var(--text-xs); }  /* "Not signed in: ..." on one line */
}
"""


def _verdict_css() -> str:
    """Each verdict badge's background, from :data:`calibprompt.app.compare_view.VERDICT_TEXT` (the one place
    for the verdicts' words and colours), e.g. ``.cp-badge[data-verdict="refer"] { background: #991b1b; }``."""
    return "".join(f'.cp-badge[data-verdict="{verdict}"] {{ background: {colour}; }}\n'
                   for verdict, (_, colour) in VERDICT_TEXT.items())


CSS += _verdict_css()

# Gives Gradio's empty placeholders (div.empty, aria-label="Empty value" but no role) role="img", and
# empties an <img>'s alt when the button or link around it already shows the same text (gallery
# captions, the footer's "Settings"). Runs on what Gradio adds later, too; never touches anything else.
A11Y_SCRIPT = """<script>
(() => {
  const fix = (root) => {
    if (!root.querySelectorAll) return;
    for (const el of root.querySelectorAll("div.empty[aria-label]:not([role])")) el.setAttribute("role", "img");
    for (const img of root.querySelectorAll("button img[alt], a img[alt]")) {
      const around = img.closest("button, a");
      const alt = img.getAttribute("alt").trim();
      if (alt && around && around.textContent.includes(alt)) img.setAttribute("alt", "");
    }
  };
  const start = () => {
    fix(document);
    new MutationObserver((changes) => {
      for (const {target} of changes) {
        const el = target.nodeType === 1 ? target : target.parentElement;
        if (el) fix(el.closest("button, a") || el.parentElement || el);
      }
    }).observe(document.body, {subtree: true, childList: true, characterData: true,
                               attributes: true, attributeFilter: ["alt", "aria-label"]});
  };
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
</script>"""

# Figures are narrow on a phone: a figure whose layout carries ``meta.responsive`` (every figure of
# calibprompt.evaluation.plots: {"below": px, "narrow": {...}, "wide": {...}}, Plotly.relayout updates)
# gets its "narrow" layout while its plot is narrower than "below" px (a grid's panels stacked, room for
# the legend's rows), and its "wide" one back when it grows again. Gradio draws a new value with
# Plotly.react (a new layout object: the figure's own, wide), so each draw and each resize is checked.
PLOT_SCRIPT = """<script>
(() => {
  const apply = (gd) => {
    const r = gd.layout && gd.layout.meta && gd.layout.meta.responsive;
    if (!window.Plotly || !r || !gd.clientWidth) return;
    const want = gd.clientWidth < r.below ? "narrow" : "wide";
    const drawn = gd._cpLayout === gd.layout ? gd._cpMode : "wide";
    gd._cpLayout = gd.layout;
    gd._cpMode = want;
    // the width goes along: plotly fixes a figure's width once its height is set, and a window made
    // narrower (a phone turned upright) would leave the figure at its old width
    const width = gd.clientWidth;
    if (want !== drawn) window.Plotly.relayout(gd, Object.assign({}, r[want], {width}));
    else if (gd._fullLayout && Math.abs(gd._fullLayout.width - width) > 1) window.Plotly.relayout(gd, {width});
  };
  const later = (gd) => requestAnimationFrame(() => apply(gd));
  const watch = () => {
    for (const gd of document.querySelectorAll(".js-plotly-plot")) {
      if (gd._cpWatched || !gd.on) continue;
      gd._cpWatched = true;
      gd.on("plotly_afterplot", () => later(gd));
      new ResizeObserver(() => later(gd)).observe(gd);
      later(gd);
    }
  };
  let queued = false;
  const start = () => new MutationObserver(() => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; watch(); });
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ["class"]});
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
</script>"""

HEAD = """<meta name="description" content="CalibPrompt: can I trust this medical vision-language model's confidence? \
Compare zero-shot, CoOp and CalibPrompt prompts, tune them on a few images and inspect their calibration.">
<meta name="theme-color" content="#1d4ed8">
""" + A11Y_SCRIPT + PLOT_SCRIPT


def launch_kwargs() -> dict:
    """The look as ``launch()`` arguments: ``demo.launch(**launch_kwargs(), ...)``."""
    from calibprompt.app.review_tab import KEYS_SCRIPT  # the Review tab's keyboard verdicts
    return {"theme": THEME, "css": CSS, "head": HEAD + KEYS_SCRIPT}
