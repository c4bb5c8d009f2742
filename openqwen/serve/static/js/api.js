// Talking to this server's OpenAI-compatible API: the key header, error text, the server-sent-event
// stream of POST /v1/chat/completions (parsed by hand so that Stop can abort the fetch and the server
// frees the model's slot at once), and the reply assembled from the streamed deltas.

export function headers(apiKey) {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h["Authorization"] = "Bearer " + apiKey;
  return h;
}

export async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  if (resp.status === 401) return "401: the server needs an API key (set it under API key)";
  return resp.status + " " + resp.statusText;
}

/** Yields the JSON payload of each `data:` event of a server-sent-event stream. */
export async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder(); // stream mode keeps multi-byte characters split across reads whole
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
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

/** The assistant message being streamed: content and tool calls merged from the deltas of choice 0
 * (tool-call fragments are joined by their `index`, as OpenAI streams them), the finish reason, the
 * usage, and the times the rates under the answer are computed from. */
export class Reply {
  constructor() {
    this.content = "";
    this.toolCalls = []; // [{id, type, function: {name, arguments}}] by index
    this.finish = null;
    this.usage = null;
    this.started = performance.now();
    this.firstAt = null; // time of the first content or tool-call delta
    this.lastAt = null;
    this.chunks = 0; // deltas that added something (the token count when the stream is cut before usage)
  }

  /** Merges one streamed chunk; returns whether anything visible changed. Throws on an in-band error. */
  add(chunk) {
    if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
    if (chunk.usage) this.usage = chunk.usage;
    let changed = false;
    for (const choice of chunk.choices || []) {
      if (choice.index) continue; // the page asks for one choice
      const delta = choice.delta || {};
      if (delta.content) {
        this.content += delta.content;
        changed = true;
      }
      for (const part of delta.tool_calls || []) {
        const i = part.index ?? this.toolCalls.length;
        const call = this.toolCalls[i] ||= { id: "", type: "function", function: { name: "", arguments: "" } };
        if (part.id) call.id = part.id;
        if (part.type) call.type = part.type;
        if (part.function && part.function.name) call.function.name += part.function.name;
        if (part.function && part.function.arguments) call.function.arguments += part.function.arguments;
        changed = true;
      }
      if (choice.finish_reason) this.finish = choice.finish_reason;
    }
    if (changed) {
      const now = performance.now();
      if (this.firstAt === null) this.firstAt = now;
      this.lastAt = now;
      this.chunks += 1;
    }
    return changed;
  }

  /** The OpenAI assistant message, with `stats` for the line under it; `cut` names why the stream
   * ended early ("stopped", "error"), if it did. */
  message(cut = null) {
    const msg = { role: "assistant", content: this.content || (this.toolCalls.length ? null : "") };
    const calls = this.toolCalls.filter(Boolean);
    if (calls.length) msg.tool_calls = calls;
    const tokens = this.usage ? this.usage.completion_tokens : this.chunks;
    const stats = { tokens, estimated: !this.usage, finish: cut || this.finish || "stop" };
    if (this.firstAt !== null) {
      stats.ttft_s = (this.firstAt - this.started) / 1000;
      const span = (this.lastAt - this.firstAt) / 1000;
      // the tokens after the first one arrive over [first, last]: the decode rate
      if (tokens > 1 && span > 0) stats.tok_s = (tokens - 1) / span;
    }
    msg.stats = stats;
    return msg;
  }
}
