"""Helpers of the chat-page tests: a scripted stand-in for the page's fetch of the chat API, OpenAI
stream chunks to feed it, and short ways to drive and read the page."""

from __future__ import annotations

import base64
import io

from serve_helpers import MODEL_NAME

STORE_KEY = "openqwen.chats.v1"

# Replaces window.fetch before the page's scripts run. A POST to /v1/chat/completions takes the next
# scripted reply from window.__fake when there is one (else it goes to the server); every request body
# is kept in window.__requests. A scripted stream honours the abort signal as a real fetch does.
FAKE_FETCH = r"""
(() => {
  window.__requests = [];
  window.__fake = [];
  window.__paused = false;
  const realFetch = window.fetch.bind(window);
  window.fetch = (url, opts = {}) => {
    if (!String(url).endsWith("/v1/chat/completions")) return realFetch(url, opts);
    window.__requests.push(JSON.parse(opts.body));
    const script = window.__fake.shift();
    if (!script) return realFetch(url, opts);
    const enc = new TextEncoder();
    const stream = new ReadableStream({
      async start(ctrl) {
        let aborted = false, resume = null;
        opts.signal?.addEventListener("abort", () => {
          aborted = true;
          ctrl.error(new DOMException("The user aborted a request.", "AbortError"));
          if (resume) resume();
        });
        for (const [i, ev] of script.events.entries()) {
          if (script.pauseAt === i) {
            window.__paused = true;
            await new Promise((r) => { resume = r; window.__resume = r; });
            window.__paused = false;
          }
          if (aborted) return;
          ctrl.enqueue(enc.encode("data: " + JSON.stringify(ev) + "\n\n"));
          await new Promise((r) => setTimeout(r, 2));
        }
        if (aborted) return;
        ctrl.enqueue(enc.encode("data: [DONE]\n\n"));
        ctrl.close();
      },
    });
    return Promise.resolve(new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } }));
  };
})();
"""


def chunks(content: str = "", piece: int = 6, tool_calls: list[dict] | None = None, finish: str = "stop",
           completion_tokens: int | None = None) -> list[dict]:
    """An OpenAI chat stream: the role delta, ``content`` in pieces of ``piece`` characters, the
    ``tool_calls`` deltas as given, the finish delta and a usage chunk."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": MODEL_NAME}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for i in range(0, len(content), piece):
        out.append({**base, "choices": [{"index": 0, "delta": {"content": content[i:i + piece]}, "finish_reason": None}]})
    for delta in tool_calls or []:
        out.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}]})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    n = completion_tokens if completion_tokens is not None else max(1, len(out) - 2)
    out.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}})
    return out


def script(page, events: list[dict], pause_at: int | None = None) -> None:
    page.evaluate("([events, pauseAt]) => window.__fake.push({events, pauseAt})", [events, pause_at])


def stored(page) -> dict:
    return page.evaluate(f"JSON.parse(localStorage.getItem('{STORE_KEY}'))")


def current_chat(page) -> dict:
    s = stored(page)
    return next(c for c in s["chats"] if c["id"] == s["current"])


def ready(page) -> None:
    page.wait_for_function("() => document.querySelector('#model').value === %r" % MODEL_NAME)


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_answers(page, n: int) -> None:
    """Until the page shows ``n`` finished assistant answers."""
    page.wait_for_function(f"() => document.querySelectorAll('.msg.assistant[data-done=\"1\"]').length === {n}", timeout=60_000)


def png_data_url(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
