"""The web chat page in headless Chromium (Debian's /usr/bin/chromium driven by playwright): it sends a
message, streams the reply from the API, shows it, and a screenshot of it is not blank."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import API_KEY, MODEL_NAME

CHROMIUM = os.environ.get("OPENQWEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_page(server, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        # a persistent context is how playwright takes a fresh --user-data-dir of our choosing
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1100, "height": 700})
        page = context.new_page()
        page.goto(server.url + "/")
        page.fill("#api_key", API_KEY)
        page.dispatch_event("#api_key", "change")  # reloads the model list with the key
        page.wait_for_function("document.querySelector('#model').value === %r" % MODEL_NAME)
        yield page
        context.close()


def test_page_sends_message_and_shows_reply(browser_page, client, tmp_path):
    page = browser_page
    page.fill("#temperature", "0")
    page.fill("#repetition_penalty", "1")
    page.fill("#max_tokens", "12")
    page.fill("#system", "You are a terse assistant.")
    page.fill("#input", "Hello from the browser")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    shown = page.inner_text(".msg.assistant .content")
    # the same conversation through the SDK gives the same greedy reply
    ref = client.chat.completions.create(
        model=MODEL_NAME, temperature=0, max_tokens=12, extra_body={"repetition_penalty": 1.0},
        messages=[{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "Hello from the browser"}]).choices[0].message.content
    assert shown.strip() == ref.strip() and shown.strip()
    assert page.inner_text(".msg.user .content") == "Hello from the browser"
    assert page.inner_text("#status").startswith("done (length)")

    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1100, 700)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, bubbles, sidebar: far from a blank page
    # the assistant bubble region holds rendered text: it is not one flat colour
    box = page.locator(".msg.assistant").bounding_box()
    crop = img.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
    assert len(crop.getcolors(maxcolors=1 << 20)) > 10
    out = os.environ.get("OPENQWEN_SCREENSHOT_DIR")
    if out:  # keep a copy to look at
        shutil.copy(shot, Path(out) / "serve_chat_page.png")


def test_page_stop_button_cancels(browser_page, server):
    page = browser_page
    before = httpx.get(server.url + "/health").json()["finished"].get("cancelled", 0)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "300")
    page.fill("#input", "Tell me a very long story")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .content')[1]?.textContent.length > 5",
                           timeout=60_000)
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-done='1'] >> nth=1", timeout=30_000)
    assert page.inner_text("#status") == "stopped"
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["finished"].get("cancelled", 0) == before:
        assert time.monotonic() < deadline, "stopping in the page did not cancel the request"
        time.sleep(0.05)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
