// openqwen web chat: plain JS modules, no build step (the three libraries it uses are vendored under
// static/vendor/). This file wires the page: the conversation list, the per-conversation settings,
// sending and streaming, stop, regenerate, editing the last user turn, tool results typed by the user,
// export/import, and the keyboard. js/store.js keeps the conversations, js/api.js talks to the server,
// js/render.js turns untrusted text into sanitised DOM.
import { headers, errorText, sseEvents, Reply } from "./js/api.js";
import { Store, STORE_KEY, SAMPLING, requestMessage, requestFields, exportChat, textOf } from "./js/store.js";
import { download, fileName, readImport } from "./js/transfer.js";
import { renderMarkdown, toolCallsView, toolResultView, statsText, copyButton } from "./js/render.js";

const $ = (id) => document.getElementById(id);
const SETTING_FIELDS = ["system", ...SAMPLING, "tools", "tool_choice"];
const store = new Store();
let controller = null; // AbortController of the running request
let editing = false; // the last user turn is open for editing

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function save() {
  try {
    store.save();
  } catch (e) {
    setStatus(e.message, true);
  }
}

function apiKey() {
  return $("api_key").value.trim();
}

// ------------------------------------------------------------------------------ conversation list
function drawChats() {
  const list = $("chats");
  list.replaceChildren();
  for (const chat of store.sorted()) {
    const li = document.createElement("li");
    li.dataset.id = chat.id;
    if (chat.id === store.currentId) li.className = "current";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "chat-title";
    open.textContent = chat.title; // titles come from user text and imported files: never markup
    open.title = chat.title;
    if (chat.id === store.currentId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => switchTo(chat.id));
    const rename = iconButton("✎", "Rename " + chat.title, "rename", () => startRename(li, chat));
    const del = iconButton("×", "Delete " + chat.title, "delete", () => deleteChat(chat));
    li.append(open, rename, del);
    list.append(li);
  }
  $("chat_title").textContent = store.current ? store.current.title : "";
}

function iconButton(text, label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "icon " + cls;
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.title = label;
  b.addEventListener("click", onClick);
  return b;
}

function startRename(li, chat) {
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = chat.title;
  input.setAttribute("aria-label", "New title");
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    if (keep) {
      store.rename(chat.id, input.value);
      save();
    }
    drawChats();
  };
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") finish(true);
    if (ev.key === "Escape") { ev.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

function deleteChat(chat) {
  if (!window.confirm(`Delete the conversation "${chat.title}"?`)) return;
  if (controller && chat.id === store.currentId) controller.abort();
  store.remove(chat.id);
  if (!store.current) store.create(chat.settings);
  save();
  showCurrent();
}

function newChat() {
  if (controller) controller.abort();
  if (store.current && !store.current.messages.length) { // already in an empty one: no second "New chat"
    $("input").focus();
    return;
  }
  const settings = store.current ? store.current.settings : undefined;
  store.create(settings); // a new chat starts from the settings of the one the user was in
  save();
  showCurrent();
  $("input").focus();
}

function switchTo(id) {
  if (controller) controller.abort();
  store.select(id);
  save();
  showCurrent();
  closeDrawer();
}

// -------------------------------------------------------------------------------------- settings
function fillSettings() {
  const s = store.current.settings;
  for (const k of SETTING_FIELDS) $(k).value = s[k] ?? "";
}

for (const k of SETTING_FIELDS) {
  $(k).addEventListener(k === "tool_choice" ? "change" : "input", () => {
    store.current.settings[k] = $(k).value;
    save();
  });
}

// -------------------------------------------------------------------------------------- messages
function bubble(role) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  div.append(label, content);
  return div;
}

/** The bubble of one stored message (index i of the current chat). */
function messageView(msg, i, messages) {
  const div = bubble(msg.role);
  div.dataset.index = i;
  const content = div.querySelector(".content");
  if (msg.role === "user" || msg.role === "system") {
    content.textContent = textOf(msg.content); // what the user typed is shown as typed
  } else if (msg.role === "assistant") {
    if (textOf(msg.content)) renderMarkdown(content, textOf(msg.content));
    if (msg.tool_calls) div.append(toolCallsView(msg.tool_calls));
    const stats = document.createElement("div");
    stats.className = "stats";
    stats.textContent = statsText(msg.stats);
    div.append(stats);
    div.dataset.done = "1";
  } else if (msg.role === "tool") {
    const call = messages.flatMap((m) => m.tool_calls || []).find((c) => c.id === msg.tool_call_id);
    content.append(toolResultView(msg, call && call.function.name));
  }
  return div;
}

function lastIndex(messages, role) {
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i].role === role) return i;
  return -1;
}

/** Tool calls of the last assistant message that have no result yet. */
function pendingCalls(messages) {
  const a = lastIndex(messages, "assistant");
  const after = messages.slice(a + 1);
  if (a < 0 || !messages[a].tool_calls || after.some((m) => m.role !== "tool")) return [];
  const answered = new Set(after.map((m) => m.tool_call_id));
  return messages[a].tool_calls.filter((c) => !answered.has(c.id));
}

function drawMessages() {
  const chat = store.current;
  const box = $("messages");
  box.replaceChildren();
  chat.messages.forEach((m, i) => box.append(messageView(m, i, chat.messages)));
  const views = box.querySelectorAll(".msg");
  const lastUser = lastIndex(chat.messages, "user");
  const last = chat.messages.length - 1;
  if (lastUser >= 0) {
    const items = [["Edit", "edit", () => startEdit(lastUser)]];
    // unanswered (the request failed, or the page was closed mid-answer): a way to ask again
    if (lastUser === last) items.push(["Retry", "retry", regenerate]);
    views[lastUser].append(actions(items));
  }
  for (const [i, m] of chat.messages.entries()) {
    if (m.role !== "assistant") continue;
    const items = [];
    if (textOf(m.content)) items.push(["copy", textOf(m.content)]);
    if (i === last && i > 0) items.push(["Regenerate", "regenerate", regenerate]);
    views[i].append(actions(items));
  }
  for (const call of pendingCalls(chat.messages)) box.append(toolResultForm(call));
  box.scrollTop = box.scrollHeight;
}

function actions(items) {
  const bar = document.createElement("div");
  bar.className = "actions";
  for (const [label, cls, onClick] of items) {
    if (label === "copy") {
      bar.append(copyButton(() => cls, "Copy"));
      continue;
    }
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = label;
    b.addEventListener("click", onClick);
    bar.append(b);
  }
  return bar;
}

/** A box where the user answers a tool call; once every call of the turn has a result, the
 * conversation continues with them. */
function toolResultForm(call) {
  const form = document.createElement("form");
  form.className = "tool-form";
  const label = document.createElement("label");
  label.textContent = `Result of ${call.function.name} (${call.id})`;
  const area = document.createElement("textarea");
  area.rows = 2;
  area.className = "tool-answer";
  const send = document.createElement("button");
  send.type = "submit";
  send.textContent = "Add result";
  label.append(area);
  form.append(label, send);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const chat = store.current;
    chat.messages.push({ role: "tool", tool_call_id: call.id, content: area.value });
    store.touch(chat);
    save();
    if (!pendingCalls(chat.messages).length) generate();
    else drawMessages();
  });
  return form;
}

function showCurrent() {
  editing = false;
  fillSettings();
  drawChats();
  drawMessages();
}

// --------------------------------------------------------------------------------- generating
function requestBody(chat) {
  const body = { model: $("model").value, stream: true, stream_options: { include_usage: true }, ...requestFields(chat.settings) };
  body.messages = [];
  if (chat.settings.system.trim()) body.messages.push({ role: "system", content: chat.settings.system });
  body.messages.push(...chat.messages.map(requestMessage));
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.body.classList.toggle("busy", busy);
}

/** Streams the model's next assistant turn for the current chat and stores it. */
async function generate() {
  const chat = store.current;
  let body;
  try {
    body = requestBody(chat);
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  drawMessages();
  for (const el of $("messages").querySelectorAll(".actions, .tool-form")) el.remove();
  const view = bubble("assistant");
  view.classList.add("streaming");
  $("messages").append(view);
  const content = view.querySelector(".content");
  const calls = document.createElement("div");
  view.append(calls);
  const reply = new Reply();
  controller = new AbortController();
  setBusy(true);
  setStatus("generating...");
  let frame = 0, cut = null;
  const paint = () => { // at most once per animation frame: markdown is re-rendered whole each time
    frame = 0;
    const box = $("messages");
    const following = box.scrollHeight - box.scrollTop - box.clientHeight < 60; // not if the reader scrolled up
    if (reply.content) renderMarkdown(content, reply.content);
    if (reply.toolCalls.length) calls.replaceChildren(toolCallsView(reply.toolCalls.filter(Boolean)));
    if (following) box.scrollTop = box.scrollHeight;
  };
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(apiKey()), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const chunk of sseEvents(resp)) {
      if (reply.add(chunk) && !frame) frame = requestAnimationFrame(paint);
    }
    const msg = reply.message();
    setStatus(`done (${msg.stats.finish}) · ${statsText(msg.stats)}`);
  } catch (e) {
    if (e.name === "AbortError") {
      cut = "stopped";
      setStatus("stopped");
    } else {
      cut = "error";
      setStatus(e.message, true);
      view.classList.add("error");
      if (!reply.content && !reply.toolCalls.length) content.textContent = "error: " + e.message;
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    controller = null;
    setBusy(false);
    // a stopped reply stays in the conversation as far as it got, like any chat UI
    const got = reply.content || reply.toolCalls.length;
    if (got && store.chats.includes(chat)) {
      chat.messages.push(reply.message(cut)); // a cut answer is kept as far as it got, and says so
      store.touch(chat);
      save();
    }
    view.classList.remove("streaming");
    view.dataset.done = "1";
    if (chat === store.current) {
      drawChats();
      drawMessages();
      if (!got && view.classList.contains("error")) $("messages").append(view); // nothing kept: say why
    }
    $("input").focus();
  }
}

function send(text) {
  const chat = store.current;
  chat.messages.push({ role: "user", content: text });
  store.touch(chat);
  save();
  drawChats();
  generate();
}

function regenerate() {
  const chat = store.current;
  if (controller || !chat.messages.length) return;
  if (chat.messages[chat.messages.length - 1].role === "assistant") chat.messages.pop();
  if (!chat.messages.length) return;
  save();
  generate();
}

function startEdit(index) {
  if (controller || editing || index < 0) return;
  const chat = store.current;
  const view = $("messages").querySelector(`.msg[data-index="${index}"]`);
  editing = true;
  const area = document.createElement("textarea");
  area.className = "edit-input";
  area.value = textOf(chat.messages[index].content);
  area.setAttribute("aria-label", "Edit your message");
  const ok = document.createElement("button");
  ok.type = "button";
  ok.textContent = "Send";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "secondary";
  cancel.textContent = "Cancel";
  const commit = () => {
    if (!area.value.trim()) return;
    editing = false;
    chat.messages.splice(index); // the edited turn and everything after it are replaced
    send(area.value);
  };
  ok.addEventListener("click", commit);
  cancel.addEventListener("click", () => { editing = false; drawMessages(); });
  area.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); commit(); }
    if (ev.key === "Escape") { ev.stopPropagation(); editing = false; drawMessages(); $("input").focus(); }
  });
  view.querySelector(".content").replaceChildren(area);
  view.querySelector(".actions").replaceChildren(ok, cancel);
  area.focus();
}

// ------------------------------------------------------------------------------ export / import
$("export").addEventListener("click", () => download(fileName(store.current.title), exportChat(store.current, $("model").value)));
$("export_all").addEventListener("click", () => download("openqwen-chats.json", store.sorted().map((c) => exportChat(c, $("model").value))));
$("import").addEventListener("click", () => $("import_file").click());
$("import_file").addEventListener("change", async () => {
  const file = $("import_file").files[0];
  $("import_file").value = "";
  if (!file) return;
  try {
    const chats = await readImport(file);
    for (const c of chats) store.create(c.settings, c.title, c.messages);
    save();
    showCurrent();
    setStatus(`imported ${chats.length} conversation${chats.length === 1 ? "" : "s"} from ${file.name}`);
  } catch (e) {
    setStatus(`could not import ${file.name}: ${e.message}`, true);
  }
});

// ------------------------------------------------------------------------------------- models
async function loadModels() {
  try {
    const resp = await fetch("/v1/models", { headers: headers(apiKey()) });
    if (!resp.ok) throw new Error(await errorText(resp));
    const body = await resp.json();
    const select = $("model");
    select.replaceChildren();
    for (const m of body.data) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = m.id;
      select.append(opt);
    }
    setStatus(store.loadError || "ready", Boolean(store.loadError));
  } catch (e) {
    setStatus("could not list models: " + e.message, true);
  }
}

// ----------------------------------------------------------------------------- drawer, keyboard
function closeDrawer() {
  document.body.classList.remove("drawer-open");
  $("menu").setAttribute("aria-expanded", "false");
}

$("menu").addEventListener("click", () => {
  const open = document.body.classList.toggle("drawer-open");
  $("menu").setAttribute("aria-expanded", String(open));
  if (open) $("new_chat").focus();
});
$("close_menu").addEventListener("click", () => { closeDrawer(); $("input").focus(); });

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value;
  if (!text.trim() || controller) return;
  try {
    requestFields(store.current.settings);
  } catch (e) { // say what to fix, keep what was typed
    setStatus(e.message, true);
    return;
  }
  $("input").value = "";
  send(text);
});

$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("composer").requestSubmit();
  } else if (ev.key === "ArrowUp" && !$("input").value) { // like most chat apps: edit what you last sent
    const i = lastIndex(store.current.messages, "user");
    if (i >= 0) { ev.preventDefault(); startEdit(i); }
  }
});

document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") {
    if (controller) controller.abort();
    else if (document.body.classList.contains("drawer-open")) { closeDrawer(); $("input").focus(); }
  } else if (ev.altKey && !ev.ctrlKey && !ev.metaKey) { // by physical key: Option+N on a Mac types "˜"
    const act = { KeyN: newChat, KeyR: regenerate, KeyE: () => startEdit(lastIndex(store.current.messages, "user")) }[ev.code];
    if (act) { ev.preventDefault(); act(); }
  }
});

$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new_chat").addEventListener("click", newChat);

$("api_key").addEventListener("change", () => {
  localStorage.setItem("openqwen_api_key", $("api_key").value);
  loadModels();
});

// another tab of this page changed the conversations: take its version unless an answer is streaming here
window.addEventListener("storage", (ev) => {
  if (ev.key !== STORE_KEY || controller || editing) return;
  store.reload();
  showCurrent();
});

$("api_key").value = localStorage.getItem("openqwen_api_key") || "";
showCurrent();
loadModels();
