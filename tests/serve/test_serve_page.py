"""The web chat page in headless Chromium (Debian's /usr/bin/chromium driven by playwright).

Two kinds of answers reach the page: real ones, streamed by a live server over a tiny random model
(the reply the page keeps must equal the SDK's greedy reply; Stop must cancel the request on the
server), and scripted ones, for which the page's ``fetch`` of ``/v1/chat/completions`` is answered by
a stream written here (FAKE_FETCH): chunks in OpenAI's shape, sent one by one, optionally paused at
a chosen chunk so the test can look at the page mid-stream. The scripted answers carry the markdown,
the hostile markup and the tool calls whose rendering the tests check; the request bodies the page
sends are recorded either way. The helpers are in page_helpers.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from page_helpers import (FAKE_FETCH, STORE_KEY, chunks, current_chat, png_data_url, ready, script, send,
                          wait_answers)
from serve_helpers import API_KEY, MODEL_NAME

CHROMIUM = os.environ.get("OPENQWEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        # a persistent context is how playwright takes a fresh --user-data-dir of our choosing
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1100, "height": 760}, accept_downloads=True)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        context.add_init_script(FAKE_FETCH)
        page = context.new_page()
        page.goto(server.url + "/")
        page.fill("#api_key", API_KEY)
        page.dispatch_event("#api_key", "change")  # stores the key and reloads the model list with it
        ready(page)
        yield page
        context.close()


@pytest.fixture
def page(browser):
    """The page with no conversations kept (the API key stays)."""
    browser.set_viewport_size({"width": 1100, "height": 760})
    browser.evaluate(f"localStorage.removeItem('{STORE_KEY}')")
    browser.reload()
    ready(browser)
    errors: list[str] = []

    def on_console(msg) -> None:  # script errors and CSP violations (HTTP errors are some tests' point)
        if msg.type == "error" and not msg.text.startswith("Failed to load resource: the server responded"):
            errors.append(msg.text)

    def on_error(exc) -> None:
        errors.append(str(exc))

    browser.on("console", on_console)
    browser.on("pageerror", on_error)
    yield browser
    browser.remove_listener("console", on_console)
    browser.remove_listener("pageerror", on_error)
    assert not errors, errors


def test_page_sends_message_and_shows_reply(page, client, tmp_path):
    page.fill("#temperature", "0")
    page.fill("#repetition_penalty", "1")
    page.fill("#max_tokens", "12")
    page.fill("#system", "You are a terse assistant.")
    send(page, "Hello from the browser")
    wait_answers(page, 1)
    # the same conversation through the SDK gives the same greedy reply
    ref = client.chat.completions.create(
        model=MODEL_NAME, temperature=0, max_tokens=12, extra_body={"repetition_penalty": 1.0},
        messages=[{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "Hello from the browser"}]).choices[0].message.content
    chat = current_chat(page)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert chat["messages"][1]["content"] == ref and ref.strip()
    assert chat["title"] == "Hello from the browser"
    sent = page.evaluate("window.__requests[0]")
    assert sent["messages"] == [{"role": "system", "content": "You are a terse assistant."},
                                {"role": "user", "content": "Hello from the browser"}]
    assert (sent["temperature"], sent["repetition_penalty"], sent["max_tokens"], sent["top_p"]) == (0, 1, 12, 0.8)
    assert page.inner_text(".msg.user .content") == "Hello from the browser"
    assert page.inner_text("#status").startswith("done (length)")
    # 12 tokens from the usage chunk, the decode rate and the time to the first token, then the reason
    assert re.fullmatch(r"12 tokens · [\d.]+ tok/s · first token [\d.]+ s · length", page.inner_text(".msg.assistant .stats"))

    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1100, 760)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, bubbles, sidebar: far from a blank page
    box = page.locator(".msg.assistant").bounding_box()
    crop = img.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
    assert len(crop.getcolors(maxcolors=1 << 20)) > 10  # the bubble holds rendered text
    out = os.environ.get("OPENQWEN_SCREENSHOT_DIR")
    if out:  # keep a copy to look at
        shutil.copy(shot, Path(out) / "serve_chat_page.png")


def test_page_stop_button_cancels(page, server):
    before = httpx.get(server.url + "/health").json()["finished"].get("cancelled", 0)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "300")
    send(page, "Tell me a very long story")
    page.wait_for_function("() => document.querySelector('.msg.assistant .content')?.textContent.length > 5", timeout=60_000)
    page.click("#stop")
    wait_answers(page, 1)
    assert page.inner_text("#status") == "stopped"
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["finished"].get("cancelled", 0) == before:
        assert time.monotonic() < deadline, "stopping in the page did not cancel the request"
        time.sleep(0.05)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    # the reply is kept as far as it got, marked stopped, its length counted from the chunks
    kept = current_chat(page)["messages"][-1]
    assert kept["role"] == "assistant" and kept["content"] and kept["stats"]["finish"] == "stopped"
    assert page.inner_text(".msg.assistant .stats").startswith("≈")

    # a request the server refuses: its message, no answer stored, and Retry once the setting is fixed
    page.fill("#temperature", "5")
    send(page, "again")
    page.wait_for_selector(".msg.assistant.error")
    assert "temperature" in page.inner_text("#status.error") and "temperature" in page.inner_text(".msg.assistant.error")
    assert [m["role"] for m in current_chat(page)["messages"]] == ["user", "assistant", "user"]
    page.reload()  # the unanswered message keeps its Retry after a reload too
    ready(page)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "3")
    page.click(".msg.user .actions .retry")
    wait_answers(page, 2)
    assert page.locator(".msg.assistant.error").count() == 0
    assert current_chat(page)["messages"][-1]["stats"]["tokens"] == 3


MARKDOWN = ("## Plan\n\n- first *item*\n- second with `inline()`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
            "```python\ndef add(a, b):\n    return a + b\n```\nDone.")


def test_markdown_renders_while_streaming(page):
    events = chunks(MARKDOWN, piece=5, completion_tokens=30)
    # pause once the stream is inside the code fence: "def add(a, b):" has arrived, its end has not
    upto = MARKDOWN.index("def add(a, b):") + len("def add(a, b):")
    script(page, events, pause_at=1 + -(-upto // 5))
    send(page, "Show me markdown")
    page.wait_for_function("() => window.__paused")
    page.wait_for_function("() => document.querySelector('.msg.assistant pre code')?.textContent.startsWith('def add(a, b):')")
    bubble = page.locator(".msg.assistant")
    assert "streaming" in bubble.get_attribute("class")
    assert bubble.locator("h2").inner_text() == "Plan"
    assert bubble.locator("li").all_inner_texts() == ["first item", "second with inline()"]
    assert bubble.locator("li em").inner_text() == "item" and bubble.locator("li code").inner_text() == "inline()"
    assert bubble.locator("td").all_inner_texts() == ["1", "2"]
    page.evaluate("window.__resume()")
    wait_answers(page, 1)
    code = bubble.locator(".code-block pre code")
    assert code.text_content() == "def add(a, b):\n    return a + b"
    assert "language-python" in code.get_attribute("class")
    assert code.locator("span.hljs-keyword").all_inner_texts() == ["def", "return"]  # highlighted
    assert bubble.locator(".code-bar span").inner_text() == "python"
    assert bubble.locator(".content > p").last.inner_text() == "Done."
    assert re.fullmatch(r"30 tokens · [\d.]+ tok/s · first token [\d.]+ s · stop", bubble.locator(".stats").inner_text())
    bubble.locator(".code-bar button").click()
    page.wait_for_function("() => document.querySelector('.code-bar button').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b"
    assert current_chat(page)["messages"][-1]["content"] == MARKDOWN  # kept as markdown source


HOSTILE = ("<script>window.__xss = 'script'</script>\n\n"
           "Inline <img src=x onerror=\"window.__xss='img'\"> and <b onmouseover=\"window.__xss='b'\">bold</b>.\n\n"
           "[click me](javascript:window.__xss='link') and <a href=\"javascript:window.__xss='a'\">raw link</a> "
           "and ![remote](https://example.invalid/track.png) and [data](data:text/html;base64,PHNjcmlwdD4=) "
           "and [fine](https://example.invalid/page)\n\n"
           "```html\n<script>window.__xss='fence'</script>\n<img src=x onerror=\"window.__xss='fence-img'\">\n```\n\n"
           "<svg onload=\"window.__xss='svg'\"></svg><iframe src=\"javascript:window.__xss='iframe'\"></iframe>")

DANGER_CHECK = """() => {
  const all = [...document.querySelectorAll('*')];
  return {
    xss: window.__xss ?? null,
    handlers: all.filter((el) => [...el.attributes].some((a) => a.name.startsWith('on'))).map((el) => el.outerHTML),
    tags: [...document.querySelectorAll('#messages script, #messages iframe, #messages svg, #messages object')].length,
    jsLinks: all.filter((el) => /^\\s*javascript:/i.test(el.getAttribute('href') || el.getAttribute('src') || '')).length,
    remote: [...document.querySelectorAll('#messages img')].filter((i) => !i.src.startsWith('data:')).length,
    links: [...document.querySelectorAll('#messages a[href]')].map((a) => [a.getAttribute('href'), a.rel, a.target]),
  };
}"""


def test_untrusted_markup_never_runs_and_shows_as_text(page, tmp_path):
    script(page, chunks(HOSTILE, piece=7))
    send(page, "<img src=x onerror=\"window.__xss='user'\"> hi")
    wait_answers(page, 1)
    answer = page.locator(".msg.assistant .content")
    text = answer.inner_text()
    assert "<script>window.__xss = 'script'</script>" in text  # raw HTML shows as the characters typed
    assert "<img src=x onerror=\"window.__xss='img'\">" in text and "bold" in text
    assert "<svg onload=" in text and "<iframe src=" in text
    assert answer.locator("pre code").text_content() == (
        "<script>window.__xss='fence'</script>\n<img src=x onerror=\"window.__xss='fence-img'\">")
    assert page.inner_text(".msg.user .content") == "<img src=x onerror=\"window.__xss='user'\"> hi"
    link = answer.locator("a", has_text="click me")
    assert link.get_attribute("href") is None  # the sanitiser dropped the javascript: URL
    link.click()
    assert answer.locator(".blocked-image").inner_text() == "[image: remote]"  # a remote image is a link, not a load

    # tool calls and results, and titles, from an imported file are untrusted too
    evil = {"title": "<img src=x onerror=\"window.__xss='title'\">", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "<b onclick=\"window.__xss='name'\">f</b>", "arguments": "{\"html\": \"<script>window.__xss='args'</script>\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [
            {"type": "text", "text": "<img src=x onerror=\"window.__xss='result'\">"},
            {"type": "image_url", "image_url": {"url": "javascript:window.__xss='image'"}}]}]}
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(evil))
    page.set_input_files("#import_file", str(path))
    page.wait_for_selector(".msg.tool")
    assert page.locator("#chats li.current .chat-title").inner_text() == evil["title"]
    assert "<script>window.__xss='args'</script>" in page.locator("details.tool-call pre").inner_text()
    assert "<img src=x onerror=" in page.locator("details.tool-result pre").inner_text()
    page.locator("#chats .chat-title", has_text="hi").click()  # back to the hostile answer
    page.wait_for_timeout(300)  # time for any load/error handler to fire
    found = page.evaluate(DANGER_CHECK)
    # the only link left is the https one (the remote image became one too), opened apart from the page
    new_tab = ["noopener noreferrer nofollow", "_blank"]
    assert found == {"xss": None, "handlers": [], "tags": 0, "jsLinks": 0, "remote": 0, "links": [
        ["https://example.invalid/track.png", *new_tab], ["https://example.invalid/page", *new_tab]]}
    assert answer.locator("a", has_text="data").get_attribute("href") is None


def test_conversations_persist_across_reload_with_their_settings(page, tmp_path):
    page.fill("#system", "You are A.")
    page.fill("#temperature", "0.3")
    script(page, chunks("answer **one**"))
    send(page, "first question")
    wait_answers(page, 1)
    page.click("#new_chat")  # starts from A's settings; B changes some
    page.fill("#system", "You are B.")
    page.fill("#temperature", "1.2")
    page.fill("#seed", "7")
    script(page, chunks("answer two"))
    send(page, "second question")
    wait_answers(page, 1)
    a, b = page.evaluate("window.__requests")
    assert a["messages"] == [{"role": "system", "content": "You are A."}, {"role": "user", "content": "first question"}]
    assert (a["temperature"], "seed" in a) == (0.3, False)
    assert b["messages"] == [{"role": "system", "content": "You are B."}, {"role": "user", "content": "second question"}]
    assert (b["temperature"], b["seed"], b["top_p"]) == (1.2, 7, 0.8)

    page.reload()
    ready(page)
    assert page.locator("#chats .chat-title").all_inner_texts() == ["second question", "first question"]
    assert page.inner_text(".msg.assistant .content") == "answer two"
    assert (page.input_value("#system"), page.input_value("#temperature"), page.input_value("#seed")) == ("You are B.", "1.2", "7")
    page.locator("#chats .chat-title", has_text="first question").click()
    assert (page.input_value("#system"), page.input_value("#temperature"), page.input_value("#seed")) == ("You are A.", "0.3", "")
    assert page.inner_text(".msg.assistant .content strong") == "one"
    assert re.match(r"\d+ tokens · ", page.inner_text(".msg.assistant .stats"))  # kept with the answer

    page.click("#chats li.current .rename")
    page.fill(".rename-input", "Renamed A")
    page.press(".rename-input", "Enter")
    page.reload()
    ready(page)
    assert page.locator("#chats .chat-title").all_inner_texts() == ["second question", "Renamed A"]
    page.locator("#chats .chat-title", has_text="Renamed A").click()
    with page.expect_download() as dl:
        page.click("#export")
    exported = json.loads(Path(dl.value.path()).read_text())
    assert exported["messages"] == [{"role": "system", "content": "You are A."},
                                    {"role": "user", "content": "first question"},
                                    {"role": "assistant", "content": "answer **one**"}]
    assert (exported["title"], exported["model"], exported["temperature"], exported["top_p"]) == ("Renamed A", MODEL_NAME, 0.3, 0.8)

    page.once("dialog", lambda d: d.accept())
    page.click("#chats li.current .delete")
    page.reload()
    ready(page)
    assert page.locator("#chats .chat-title").all_inner_texts() == ["second question"]
    saved = tmp_path / "a.json"
    saved.write_text(json.dumps(exported))
    page.set_input_files("#import_file", str(saved))
    page.wait_for_function("() => document.querySelectorAll('#chats li').length === 2")
    assert page.inner_text("#chats li.current .chat-title") == "Renamed A"
    assert [m["content"] for m in current_chat(page)["messages"]] == ["first question", "answer **one**"]
    assert (page.input_value("#system"), page.input_value("#temperature")) == ("You are A.", "0.3")
    with page.expect_download() as dl:
        page.click("#export_all")
    assert [c["title"] for c in json.loads(Path(dl.value.path()).read_text())] == ["Renamed A", "second question"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "bot", "content": "x"}]))
    page.set_input_files("#import_file", str(bad))
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status") == ("could not import bad.json: message 1 has role 'bot'; "
                                          "expected one of system, user, assistant, tool")
    assert page.locator("#chats li").count() == 2

    other = page.context.new_page()  # a second tab sees what the first one keeps
    other.goto(page.url)
    ready(other)
    script(page, chunks("three"))
    page.click("#new_chat")
    send(page, "third question")
    wait_answers(page, 1)
    other.wait_for_function("() => document.querySelectorAll('#chats li').length === 3")
    assert other.locator("#chats .chat-title").all_inner_texts() == ["third question", "Renamed A", "second question"]
    other.close()


def test_regenerate_edit_and_stop_from_the_keyboard(page):
    script(page, chunks("r1"))
    send(page, "q1")
    wait_answers(page, 1)
    script(page, chunks("r2"))
    page.click(".msg.assistant .actions .regenerate")
    page.wait_for_function("() => window.__requests.length === 2 && document.querySelector('.msg.assistant[data-done=\"1\"]')")
    wait_answers(page, 1)
    system = {"role": "system", "content": "You are a helpful assistant."}
    assert page.evaluate("window.__requests[1].messages") == [system, {"role": "user", "content": "q1"}]
    assert page.locator(".msg.assistant .content").all_inner_texts() == ["r2"]

    script(page, chunks("r3"))
    page.click(".msg.user .actions .edit")
    page.fill(".edit-input", "q1 edited")
    page.press(".edit-input", "Enter")
    page.wait_for_function("() => window.__requests.length === 3")
    wait_answers(page, 1)
    assert page.evaluate("window.__requests[2].messages") == [system, {"role": "user", "content": "q1 edited"}]
    assert page.locator(".msg .content").all_inner_texts() == ["q1 edited", "r3"]

    script(page, chunks("r4"))
    page.focus("#input")
    page.keyboard.press("Alt+r")  # regenerate
    page.wait_for_function("() => window.__requests.length === 4")
    wait_answers(page, 1)
    assert page.locator(".msg.assistant .content").all_inner_texts() == ["r4"]
    page.focus("#input")
    page.keyboard.press("ArrowUp")  # edit the last message; Escape leaves it as it was
    assert page.input_value(".edit-input") == "q1 edited"
    page.keyboard.press("Escape")
    assert page.locator(".edit-input").count() == 0

    script(page, chunks("a long answer that is cut short", piece=3), pause_at=4)
    send(page, "q2")
    page.wait_for_function("() => window.__paused")
    page.keyboard.press("Escape")  # stop
    wait_answers(page, 2)
    assert page.inner_text("#status") == "stopped"
    kept = current_chat(page)["messages"][-1]
    assert (kept["content"], kept["stats"]["finish"], kept["stats"]["tokens"]) == ("a long an", "stopped", 3)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")

    page.fill("#tools", "[oops")  # a setting that is not valid: says so, keeps the message unsent
    send(page, "q3")
    assert page.inner_text("#status").startswith("tools must be a JSON list of OpenAI tool definitions")
    assert page.input_value("#input") == "q3" and len(current_chat(page)["messages"]) == 4


def test_tool_call_from_the_server_and_its_result(page, client):
    """The server's own tool-call stream (tool_choice required: the call is forced by the schema, so
    even the random model makes one), shown in the page, equal to the SDK's unstreamed call; the
    result typed into the page goes back to the server, whose answer equals the SDK's."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"]}}}]
    page.fill("#tools", json.dumps(tools))
    page.select_option("#tool_choice", "required")
    page.fill("#temperature", "0")
    page.fill("#repetition_penalty", "1")
    page.fill("#max_tokens", "64")
    send(page, "weather?")
    wait_answers(page, 1)
    kept = current_chat(page)["messages"][-1]
    system = {"role": "system", "content": "You are a helpful assistant."}
    asked = [system, {"role": "user", "content": "weather?"}]
    ref = client.chat.completions.create(model=MODEL_NAME, messages=asked, tools=tools, tool_choice="required",
                                         temperature=0, max_tokens=64, extra_body={"repetition_penalty": 1.0})
    (call,) = ref.choices[0].message.tool_calls
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in kept["tool_calls"]] == [
        (call.function.name, call.function.arguments)]
    assert kept["stats"]["finish"] == "tool_calls" and kept["tool_calls"][0]["id"].startswith("call_")
    assert page.locator("details.tool-call summary").inner_text().startswith("tool call: get_weather (call_")
    assert page.locator("details.tool-call pre code").text_content() == json.dumps(json.loads(call.function.arguments), indent=2)

    page.select_option("#tool_choice", "")  # the model decides how to go on
    page.fill("#max_tokens", "8")
    page.fill(".tool-form textarea", "18 C")
    page.click(".tool-form button")
    wait_answers(page, 2)
    messages = current_chat(page)["messages"]
    followed = asked + [{"role": "assistant", "content": None, "tool_calls": kept["tool_calls"]},
                        {"role": "tool", "tool_call_id": kept["tool_calls"][0]["id"], "content": "18 C"}]
    assert page.evaluate("window.__requests[1].messages") == followed
    ref2 = client.chat.completions.create(model=MODEL_NAME, messages=followed, tools=tools, temperature=0,
                                          max_tokens=8, extra_body={"repetition_penalty": 1.0}).choices[0].message
    assert (messages[-1]["content"], messages[-1].get("tool_calls")) == (
        ref2.content, [c.model_dump() for c in ref2.tool_calls] if ref2.tool_calls else None)


def test_tool_calls_stream_inline_and_results_continue_the_chat(page, tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    page.fill("#tools", json.dumps(tools))
    deltas = [  # two calls streamed interleaved, joined by index as OpenAI streams them
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "python", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{\"city\": "}},
        {"index": 1, "function": {"arguments": "{\"code\": \"print("}},
        {"index": 0, "function": {"arguments": "\"Paris\"}"}},
        {"index": 1, "function": {"arguments": "1+1)\"}"}},
    ]
    script(page, chunks(tool_calls=deltas, finish="tool_calls"))
    send(page, "Weather in Paris, and 1+1?")
    wait_answers(page, 1)
    assert page.evaluate("window.__requests[0].tools") == tools
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
             {"id": "call_2", "type": "function", "function": {"name": "python", "arguments": "{\"code\": \"print(1+1)\"}"}}]
    kept = current_chat(page)["messages"][-1]
    assert (kept["content"], kept["tool_calls"]) == (None, calls)
    views = page.locator("details.tool-call")
    assert views.locator("summary").all_inner_texts() == ["tool call: get_weather (call_1)", "tool call: python (call_2)"]
    assert views.nth(0).locator("pre code").text_content() == "{\n  \"city\": \"Paris\"\n}"  # arguments as JSON
    views.nth(0).locator("summary").click()  # collapsible
    assert views.nth(0).get_attribute("open") is None

    forms = page.locator(".tool-form")
    assert forms.count() == 2
    forms.nth(0).locator("textarea").fill("18 C")
    forms.nth(0).locator("button").click()
    assert page.locator(".tool-form").count() == 1 and page.evaluate("window.__requests.length") == 1
    script(page, chunks("It is 18 C, and 1+1 is 2."))
    page.locator(".tool-form textarea").fill("2")
    page.locator(".tool-form button").click()  # the last result sends the conversation on
    wait_answers(page, 2)
    sent = page.evaluate("window.__requests[1].messages")
    assert sent[2:] == [{"role": "assistant", "content": None, "tool_calls": calls},
                        {"role": "tool", "content": "18 C", "tool_call_id": "call_1"},
                        {"role": "tool", "content": "2", "tool_call_id": "call_2"}]
    assert page.locator("details.tool-result summary").all_inner_texts() == [
        "tool result: get_weather (call_1)", "tool result: python (call_2)"]
    assert page.locator(".msg.assistant .content").last.inner_text() == "It is 18 C, and 1+1 is 2."

    # a plot from the code interpreter: a PNG in the tool message, shown inline
    plot = {"messages": [{"role": "user", "content": "plot it"},
                         {"role": "assistant", "content": None, "tool_calls": [{"id": "p1", "type": "function", "function": {
                             "name": "code_interpreter", "arguments": "{\"code\": \"plt.plot([1, 2])\"}"}}]},
                         {"role": "tool", "tool_call_id": "p1", "content": [
                             {"type": "text", "text": "Figure saved"}, {"type": "image_url", "image_url": {"url": png_data_url(40, 20)}}]},
                         {"role": "assistant", "content": "Here is the plot."}]}
    path = tmp_path / "plot.json"
    path.write_text(json.dumps(plot))
    page.set_input_files("#import_file", str(path))
    page.wait_for_function("() => document.querySelector('details.tool-result img.tool-image')?.naturalWidth === 40")
    assert page.locator("details.tool-result pre").inner_text() == "Figure saved"
    script(page, chunks("You are welcome."))
    send(page, "thanks")  # the served models read text: the image goes as "[image]", the page keeps the PNG
    wait_answers(page, 3)
    assert page.evaluate("window.__requests[2].messages[2].content") == [
        {"type": "text", "text": "Figure saved"}, {"type": "text", "text": "[image]"}]
    assert current_chat(page)["messages"][2]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_narrow_layout_drawer_and_api_key(page, server):
    page.set_viewport_size({"width": 390, "height": 800})
    assert not page.is_visible("#sidebar") and page.is_visible("#menu")
    assert page.locator("#messages").bounding_box()["width"] >= 380  # the conversation takes the width
    assert page.locator("#stop").bounding_box()["x"] + page.locator("#stop").bounding_box()["width"] <= 390
    page.click("#menu")
    assert page.is_visible("#sidebar") and page.evaluate("document.activeElement.id") == "new_chat"
    page.keyboard.press("Escape")
    assert not page.is_visible("#sidebar")
    script(page, chunks("narrow answer"))
    send(page, "hi")
    wait_answers(page, 1)
    assert page.inner_text(".msg.assistant .content") == "narrow answer"
    assert page.locator(".msg.assistant").bounding_box()["width"] <= 390
    # a wrong key: the model list says what to fix
    page.click("#menu")
    page.fill("#api_key", "sk-wrong")
    page.dispatch_event("#api_key", "change")
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").startswith("could not list models: Incorrect API key provided")
    page.fill("#api_key", API_KEY)
    page.dispatch_event("#api_key", "change")
    ready(page)
