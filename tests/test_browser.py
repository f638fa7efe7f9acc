"""A person's path through the live app in a real browser: type a prompt, generate, switch T-GATE on, see both
images and the trade-off plot gain a point, see an incompatible technique marked unavailable. Drives Debian's
Chromium through Playwright (skipped where Chromium is absent)."""
from __future__ import annotations

import os
import shutil

import pytest

from benchmarks.app_browser import POINTS_OF

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    import app
    from analysis.models import random_pipeline, set_model_name

    pipe = random_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    set_model_name(pipe, "default")
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield url
    demo.close()


def test_generate_toggle_tgate_and_see_the_tradeoff_in_browser(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(app_url)
            page.get_by_label("Prompt", exact=True).fill("a small blue square at the top")
            page.locator('input[aria-label="number input for Steps"]').fill("4")
            page.get_by_role("button", name="Generate", exact=True).click()
            # the full-compute image arrives as a file served by gradio
            expect(page.locator('img[src*="gradio_api/file="]').first).to_be_visible(timeout=120_000)
            page.wait_for_function("() => document.querySelector('#diffscope-tradeoff .js-plotly-plot') !== null",
                                   timeout=120_000)
            # T-GATE on: the accelerated and difference images join, the plot gains a tgate point
            page.locator("#toggle-tgate input[type=checkbox]").check()
            page.wait_for_function(f"() => ({POINTS_OF})('tgate') >= 1", timeout=120_000)
            expect(page.locator('img[src*="gradio_api/file="]')).to_have_count(3, timeout=120_000)
            # Faster-Diffusion cannot join T-GATE: marked unavailable, with the engine's reason, before any click
            expect(page.locator("#note-fastdiff")).to_contain_text("unavailable", timeout=30_000)
            expect(page.locator("#toggle-fastdiff input[type=checkbox]")).to_be_disabled()
            # the CLIP-score axis (shapes-CLIP on the default model) redraws the plot, frontier included
            page.get_by_label("CLIP score (shapes-CLIP on the default model)").check()
            page.wait_for_function("() => document.querySelector('#diffscope-tradeoff .js-plotly-plot')"
                                   ".layout.yaxis.title.text === 'CLIP score'", timeout=60_000)
            page.wait_for_function(f"() => ({POINTS_OF})('full compute') >= 1", timeout=120_000)
            expect(page.locator(".toast-body.error")).to_have_count(0)
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 10_000
        finally:
            browser.close()
