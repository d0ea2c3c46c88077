"""Small screens, dark mode and the login, in a real browser (Playwright driving Debian's Chromium).

At a phone's 390 px every tab is on the tab bar (none hidden in Gradio's "..." menu) and the reliability
diagrams are stacked at the plot's width; in dark mode the figures are not white panels and their text is
light; with a login, the login page names the app and its purpose, the header says who is signed in,
and signing out works.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_browser = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (.ci/run installs it; CI never skips this test)",
)
TABS = ("Compare", "Train", "Calibration", "Review")
PHONE = {"width": 390, "height": 844}



def _open(browser, url, viewport, scheme="light"):
    page = browser.new_context(viewport=viewport, color_scheme=scheme).new_page()
    page.goto(url)
    page.wait_for_selector("text=can I trust this confidence", timeout=60_000)
    return page


def _show_calibration(page):
    page.get_by_role("tab", name="Calibration").click()
    page.click("#calibration-button")
    page.wait_for_selector("#reliability-plot .js-plotly-plot .xtick", timeout=240_000)
    page.wait_for_timeout(1500)  # the page script's narrow layout and the resize after it


def _plot_state(page, selector):
    return page.evaluate("""(selector) => {
        const gd = document.querySelector(selector + ' .js-plotly-plot');
        const full = gd._fullLayout;
        const domains = Object.keys(full).filter(k => /^xaxis\\d*$/.test(k)).map(k => full[k].domain);
        return {container: gd.clientWidth, width: full.width, height: full.height, domains};
    }""", selector)


def test_the_header_escapes_the_user_name_and_offers_a_sign_out():
    from calibprompt.app.interface import SIGN_OUT_URL, signed_in_html

    shown = signed_in_html(SimpleNamespace(username="<img src=x onerror=alert(1)>"))
    assert "Signed in as" in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown and "<img" not in shown
    assert f'href="{SIGN_OUT_URL}"' in shown and SIGN_OUT_URL.startswith("logout")
    assert "Not signed in" in signed_in_html(SimpleNamespace(username=None))


def test_the_login_page_says_what_the_app_is():
    from calibprompt.app.launch import AUTH_MESSAGE, login_kwargs

    assert login_kwargs(None) == {"auth": None, "auth_message": None}
    kwargs = login_kwargs([("alice", "pw")])
    assert kwargs["auth"] == [("alice", "pw")] and kwargs["auth_message"] == AUTH_MESSAGE
    for words in ("CalibPrompt", "confidence", "not for diagnosis", "team lead"):
        assert words in AUTH_MESSAGE


@pytest.mark.slow
@needs_browser
def test_at_390_px_all_four_tabs_are_on_the_tab_bar(app_url, browser):
    page = _open(browser, app_url, PHONE)
    assert page.locator('button[aria-label="More tabs"]:visible').count() == 0  # no "..." overflow menu
    for name in TABS:
        tab = page.get_by_role("tab", name=name, exact=True)
        assert tab.is_visible(), name
        box = tab.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (name, box)
        assert box["height"] >= 24  # a touch target
    page.get_by_role("tab", name="Review", exact=True).click()
    assert page.get_by_role("tab", name="Review", exact=True).get_attribute("aria-selected") == "true"
    assert page.locator("#review-find").is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways"
    page.context.close()


def _mean_colour(page, selector):
    from io import BytesIO

    from PIL import Image

    shot = page.locator(selector).screenshot()
    return np.asarray(Image.open(BytesIO(shot)).convert("RGB"), dtype=float)


@pytest.mark.slow
@needs_browser
def test_dark_mode_on_a_phone_the_diagrams_are_dark_legible_and_stacked(app_url, browser):
    page = _open(browser, app_url, PHONE, scheme="dark")
    assert page.evaluate("document.body.classList.contains('dark')")
    _show_calibration(page)
    pixels = _mean_colour(page, "#reliability-plot .js-plotly-plot")
    brightness = pixels.mean(axis=-1)
    assert brightness.mean() < 100, f"the reliability plot is a light panel (mean brightness {brightness.mean():.0f})"
    assert (brightness > 240).mean() < 0.05, "more than 5 % of the plot is white"
    fill = page.evaluate("""() => getComputedStyle(document.querySelector(
        '#reliability-plot .xtick text')).fill""")
    rgb = [int(v) for v in fill[fill.index("(") + 1:fill.index(")")].split(",")[:3]]
    assert min(rgb) >= 180, f"tick labels are not light in dark mode: {fill}"
    state = _plot_state(page, "#reliability-plot")
    assert abs(state["width"] - state["container"]) <= 1, state  # the figure fits the phone's column
    assert all(d == [0, 1] for d in state["domains"]), state  # the panels are stacked, full width
    assert state["height"] >= 300 * len(state["domains"])  # each panel is about as tall as it is wide
    page.context.close()


@pytest.mark.slow
@needs_browser
def test_light_mode_on_a_wide_screen_the_diagrams_stay_side_by_side(app_url, browser):
    page = _open(browser, app_url, {"width": 1440, "height": 1000})
    _show_calibration(page)
    state = _plot_state(page, "#reliability-plot")
    assert len({tuple(d) for d in state["domains"]}) > 1, state  # columns, not a stack
    brightness = _mean_colour(page, "#reliability-plot .js-plotly-plot").mean(axis=-1)
    assert brightness.mean() > 180  # on the light page's white
    page.set_viewport_size(PHONE)  # a window made narrow afterwards: the figure follows
    page.wait_for_timeout(2000)
    state = _plot_state(page, "#reliability-plot")
    assert abs(state["width"] - state["container"]) <= 1 and all(d == [0, 1] for d in state["domains"]), state
    page.context.close()


@pytest.fixture()
def login_url(calibprompt_home):
    """A second small app with a login (alice / pw), launched as ``python app.py --auth`` does."""
    from calibprompt.app import build_demo
    from calibprompt.app.launch import login_kwargs
    from calibprompt.app.theme import launch_kwargs
    from calibprompt.backbones import load_backbone
    from calibprompt.service.core import Core

    demo = build_demo(Core(load_backbone("demo"), "Model: the bundled demo model (login test).")).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **login_kwargs([("alice", "pw")]),
                            **launch_kwargs())
    yield url
    demo.close()


@pytest.mark.slow
@needs_browser
def test_login_names_the_app_then_signed_in_as_alice_and_sign_out(login_url, browser):
    page = browser.new_context(viewport=PHONE).new_page()
    page.goto(login_url)
    page.wait_for_selector("text=not for diagnosis", timeout=60_000)
    login = page.inner_text("body")
    assert "CalibPrompt" in login and "can I trust this medical VLM's confidence?" in login
    assert "Sign in with the account your team lead gave you." in login
    page.get_by_label("username").fill("alice")
    page.get_by_label("password").fill("pw")
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("text=can I trust this confidence", timeout=60_000)
    page.wait_for_selector("#identity >> text=Signed in as alice", timeout=30_000)
    assert page.locator("#identity strong").inner_text() == "alice"
    page.get_by_role("link", name="Sign out").click()
    page.wait_for_selector("text=Sign in with the account your team lead gave you.", timeout=60_000)
    page.goto(login_url)  # the session is gone: the app is behind the login again
    page.wait_for_selector("text=Sign in with the account your team lead gave you.", timeout=60_000)
    assert page.locator("#identity").count() == 0
    page.context.close()
