// Conversations kept in this browser (localStorage), and their export/import as JSON in the OpenAI
// messages format. Nothing here touches the page: chat.js draws what the store holds.
//
// A conversation: {id, title, created, updated, settings, messages}. `settings` holds the raw text of
// the per-conversation fields (system prompt, sampling, tools) as the user typed them; `messages` are
// OpenAI chat messages without the system prompt (it lives in settings.system and is prepended per
// request). An assistant message may carry `stats` (tokens, rates: shown under it, never sent nor
// exported).
"use strict";

export const STORE_KEY = "openqwen.chats.v1";
const KEY = STORE_KEY;
export const SAMPLING = ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens", "seed"];
export const DEFAULT_SETTINGS = Object.freeze({
  system: "You are a helpful assistant.", temperature: "0.7", top_p: "0.8", top_k: "0",
  repetition_penalty: "1.1", max_tokens: "512", seed: "", tools: "", tool_choice: "",
});
const ROLES = ["system", "user", "assistant", "tool"];
const NEW_TITLE = "New chat";

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

export function titleFrom(text) {
  const line = String(text).trim().split("\n")[0].trim();
  return line.length > 48 ? line.slice(0, 47) + "…" : line || NEW_TITLE;
}

export class Store {
  constructor(storage = window.localStorage) {
    this.storage = storage;
    this.reload();
  }

  /** (Re)reads the saved conversations; starts one empty chat when there are none. */
  reload() {
    const keep = this.currentId;
    this.chats = [];
    this.currentId = null;
    this.loadError = null;
    try {
      const saved = JSON.parse(this.storage.getItem(KEY) || "null");
      if (saved && Array.isArray(saved.chats)) {
        this.chats = saved.chats;
        this.currentId = saved.current;
      }
    } catch (e) { // a corrupt entry must not lock the user out of the page: keep it aside, start clean
      this.storage.setItem(KEY + ".corrupt", this.storage.getItem(KEY));
      this.loadError = "saved conversations could not be read (kept under " + KEY + ".corrupt)";
    }
    if (keep && this.chats.some((c) => c.id === keep)) this.currentId = keep; // each tab stays where it is
    if (!this.current) this.currentId = this.chats.length ? this.sorted()[0].id : this.create().id;
  }

  get current() {
    return this.chats.find((c) => c.id === this.currentId) || null;
  }

  sorted() {
    return [...this.chats].sort((a, b) => b.updated - a.updated);
  }

  /** Persists everything; throws an Error saying what to do when the browser's storage is full. */
  save() {
    try {
      this.storage.setItem(KEY, JSON.stringify({ version: 1, current: this.currentId, chats: this.chats }));
    } catch (e) {
      throw new Error("the browser's storage is full: export and delete old conversations");
    }
  }

  create(settings = DEFAULT_SETTINGS, title = NEW_TITLE, messages = []) {
    const now = Date.now();
    const chat = { id: newId(), title, created: now, updated: now, settings: { ...DEFAULT_SETTINGS, ...settings }, messages };
    this.chats.push(chat);
    this.currentId = chat.id;
    return chat;
  }

  select(id) {
    if (this.chats.some((c) => c.id === id)) this.currentId = id;
  }

  rename(id, title) {
    const chat = this.chats.find((c) => c.id === id);
    if (chat && title.trim()) chat.title = title.trim().slice(0, 200);
  }

  remove(id) {
    this.chats = this.chats.filter((c) => c.id !== id);
    if (this.currentId === id) this.currentId = this.chats.length ? this.sorted()[0].id : null;
  }

  touch(chat) {
    chat.updated = Date.now();
    if (chat.title === NEW_TITLE) {
      const first = chat.messages.find((m) => m.role === "user");
      if (first) chat.title = titleFrom(textOf(first.content));
    }
  }
}

/** The text of a message's content (a string, null, or a list of content parts). */
export function textOf(content) {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content.filter((p) => p && p.type === "text").map((p) => p.text).join("\n");
}

/** A message as the API and exported files see it: OpenAI's fields only. */
export function apiMessage(m) {
  const out = { role: m.role, content: m.content ?? null };
  if (m.tool_calls && m.tool_calls.length) out.tool_calls = m.tool_calls;
  if (m.role === "tool") out.tool_call_id = m.tool_call_id;
  if (m.name) out.name = m.name;
  return out;
}

/** A message as the model is sent it: the served models read text only, so an image part (a plot a
 * tool made, shown in the page) goes as the text "[image]"; export keeps the image. */
export function requestMessage(m) {
  const out = apiMessage(m);
  if (Array.isArray(out.content)) {
    out.content = out.content.map((p) => (p.type === "image_url" ? { type: "text", text: "[image]" } : p));
  }
  return out;
}

/** The per-conversation settings as request fields; throws naming the field that is not valid. */
export function requestFields(settings) {
  const body = {};
  for (const k of SAMPLING) {
    const raw = String(settings[k] ?? "").trim();
    if (raw === "") continue;
    const v = Number(raw);
    if (!Number.isFinite(v)) throw new Error(`${k} must be a number (got '${raw}')`);
    body[k] = v;
  }
  const tools = String(settings.tools || "").trim();
  if (tools) {
    let parsed;
    try {
      parsed = JSON.parse(tools);
    } catch (e) {
      throw new Error("tools must be a JSON list of OpenAI tool definitions: " + e.message);
    }
    if (!Array.isArray(parsed)) throw new Error("tools must be a JSON list of OpenAI tool definitions");
    if (parsed.length) body.tools = parsed;
    if (parsed.length && settings.tool_choice) body.tool_choice = settings.tool_choice; // "" = the server's auto
  }
  return body;
}

/** One conversation as a JSON object shaped like a chat-completions request (plus its title). */
export function exportChat(chat, model) {
  const messages = [];
  if (chat.settings.system.trim()) messages.push({ role: "system", content: chat.settings.system });
  messages.push(...chat.messages.map(apiMessage));
  let fields = {};
  try {
    fields = requestFields(chat.settings);
  } catch (e) { /* a half-typed setting is left out of the file */ }
  return { title: chat.title, model, messages, ...fields };
}

function checkMessage(m, where) {
  if (!m || typeof m !== "object") throw new Error(`${where} is not an object`);
  if (!ROLES.includes(m.role)) throw new Error(`${where} has role '${m.role}'; expected one of ${ROLES.join(", ")}`);
  const c = m.content;
  if (!(c == null || typeof c === "string" || Array.isArray(c))) throw new Error(`${where}: content must be a string, null or a list of parts`);
  if (Array.isArray(c)) {
    c.forEach((p, j) => {
      if (!p || !["text", "image_url"].includes(p.type)) throw new Error(`${where}, part ${j + 1}: type must be 'text' or 'image_url'`);
    });
  }
  if (m.tool_calls !== undefined) {
    if (m.role !== "assistant" || !Array.isArray(m.tool_calls)) throw new Error(`${where}: tool_calls must be a list on an assistant message`);
    m.tool_calls.forEach((t, j) => {
      if (!t || !t.function || typeof t.function.name !== "string") throw new Error(`${where}, tool call ${j + 1}: needs function.name`);
      if (typeof t.function.arguments !== "string") throw new Error(`${where}, tool call ${j + 1}: function.arguments must be a JSON string`);
    });
  }
  if (m.role === "tool" && typeof m.tool_call_id !== "string") throw new Error(`${where}: a tool message needs tool_call_id`);
  return apiMessage(m);
}

/** Conversations from an imported JSON value: a list of messages, one exported conversation
 * ({messages, title?, temperature?, ...}) or a list of them. Throws an Error naming what is wrong. */
export function parseImport(value) {
  const items = Array.isArray(value) && value.length && value.every((v) => v && Array.isArray(v.messages)) ? value
    : Array.isArray(value) ? [{ messages: value }] : [value];
  return items.map((item, i) => {
    const where = items.length > 1 ? `conversation ${i + 1}, ` : "";
    if (!item || !Array.isArray(item.messages)) throw new Error("expected a list of messages or an object with 'messages'");
    const messages = item.messages.map((m, j) => checkMessage(m, `${where}message ${j + 1}`));
    const settings = { ...DEFAULT_SETTINGS, system: "" };
    if (messages.length && messages[0].role === "system") settings.system = textOf(messages.shift().content);
    for (const k of SAMPLING) {
      if (item[k] === undefined || item[k] === null) continue;
      if (typeof item[k] !== "number") throw new Error(`${where}${k} must be a number`);
      settings[k] = String(item[k]);
    }
    if (item.tools !== undefined) settings.tools = JSON.stringify(item.tools, null, 1);
    if (["none", "auto", "required"].includes(item.tool_choice)) settings.tool_choice = item.tool_choice === "auto" ? "" : item.tool_choice;
    const first = messages.find((m) => m.role === "user");
    const title = typeof item.title === "string" && item.title.trim() ? item.title.trim().slice(0, 200)
      : first ? titleFrom(textOf(first.content)) : NEW_TITLE;
    return { title, settings, messages };
  });
}
