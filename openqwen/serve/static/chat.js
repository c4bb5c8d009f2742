// openqwen web chat: plain JS, no build step. Talks to this server's OpenAI-compatible API
// (POST /v1/chat/completions with stream: true) and parses the server-sent events by hand, so that
// the stop button can abort the fetch (the server then frees the model's slot at once).
"use strict";

const $ = (id) => document.getElementById(id);
const history = []; // [{role, content}] of the conversation so far (the system prompt is added per request)
let controller = null; // AbortController of the running request

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text; // textContent, never innerHTML: model output is untrusted
  div.append(label, content);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return resp.status + " " + resp.statusText;
}

async function loadModels() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) throw new Error(await errorText(resp));
    const body = await resp.json();
    const select = $("model");
    select.replaceChildren();
    for (const m of body.data) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = m.id;
      select.append(opt);
    }
    setStatus("ready");
  } catch (e) {
    setStatus("could not list models: " + e.message, true);
  }
}

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = { model: $("model").value, messages, stream: true, stream_options: { include_usage: true } };
  for (const k of ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens", "seed"]) {
    const v = numberField(k);
    if (v !== undefined && !Number.isNaN(v)) body[k] = v;
  }
  return body;
}

// Yields the JSON payload of each `data:` event of a server-sent-event stream.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder(); // stream mode keeps multi-byte characters split across reads whole
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const content = bubble.querySelector(".content");
  let reply = "";
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("generating...");
  const started = performance.now();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    let usage = null, finish = null;
    for await (const chunk of sseEvents(resp)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          content.textContent = reply;
          bubble.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const secs = (performance.now() - started) / 1000;
    const rate = usage ? ` · ${usage.completion_tokens} tokens, ${(usage.completion_tokens / secs).toFixed(1)} tok/s` : "";
    setStatus(`done (${finish || "stop"})${rate}`);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped");
    } else {
      setStatus(e.message, true);
      bubble.classList.add("error");
      if (!reply) content.textContent = "error: " + e.message;
    }
  } finally {
    bubble.classList.remove("streaming");
    bubble.dataset.done = "1";
    // a stopped reply stays in the history as far as it got, like any chat UI
    if (reply) history.push({ role: "assistant", content: reply });
    else if (history.length && history[history.length - 1].role === "user") history.pop();
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    $("input").focus();
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value;
  if (!text.trim() || controller) return;
  $("input").value = "";
  send(text);
});

$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => { if (controller) controller.abort(); });

$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
  setStatus("new chat");
});

$("api_key").addEventListener("change", () => {
  localStorage.setItem("openqwen_api_key", $("api_key").value);
  loadModels();
});

$("api_key").value = localStorage.getItem("openqwen_api_key") || "";
loadModels();
