"""A person's path through the app in a real browser: type a prompt, press Generate, see the image and
the signal figures. Drives Debian's Chromium through Playwright (skipped where Chromium is absent)."""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    import app
    from analysis.models import random_pipeline

    pipe = random_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield url
    demo.close()


def test_generate_in_browser(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            prompt = page.get_by_label("Prompt", exact=True)
            prompt.fill("a small blue square at the top")
            page.locator('input[aria-label="number input for Steps"]').fill("4")
            page.get_by_role("button", name="Generate", exact=True).click()
            # the generated image arrives as a file served by gradio, and the visible tab draws its plotly figure
            image = page.locator('img[src*="gradio_api/file="]').first
            expect(image).to_be_visible(timeout=120_000)
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1", timeout=120_000)
            expect(page.locator(".toast-body.error")).to_have_count(0)
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 10_000
        finally:
            browser.close()
