// Turning untrusted text (model output, tool arguments and results, imported files) into DOM.
//
// Markdown goes through marked, code through highlight.js, and the resulting HTML through DOMPurify
// before it reaches the page. Raw HTML written by the model is not markup here: marked's html tokens
// are escaped, so `<script>` shows as the characters `<script>`. Images load only from data: URLs
// (plots a tool produced); a remote image becomes a link, so an answer cannot make the browser call
// out. The page's Content-Security-Policy (index.html) is a second wall behind all this.
/* global marked, DOMPurify, hljs */

const SAFE_IMAGE = /^data:image\/(png|jpeg|gif|webp);base64,[a-z0-9+/=\s]+$/i;

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function highlighted(code, lang) {
  const language = (lang || "").trim().split(/\s+/)[0].toLowerCase();
  if (language && hljs.getLanguage(language)) {
    return { html: hljs.highlight(code, { language, ignoreIllegals: true }).value, language };
  }
  return { html: escapeHtml(code), language };
}

marked.use({
  gfm: true,
  breaks: true, // a single newline is a line break, as people (and models) mean it in chat
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const { html, language } = highlighted(text, lang);
      const cls = language ? ` class="hljs language-${escapeHtml(language)}"` : ' class="hljs"';
      return `<pre><code${cls}>${html}</code></pre>\n`;
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
  if (node.tagName === "IMG") { // runs in DOMPurify's inert document: nothing has loaded yet
    const src = node.getAttribute("src") || "";
    if (!SAFE_IMAGE.test(src)) {
      node.removeAttribute("src");
      node.setAttribute("data-blocked-src", src);
    }
  }
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
  FORBID_ATTR: ["style"],
};

function sanitized(html) {
  const fragment = DOMPurify.sanitize(html, PURIFY);
  for (const img of fragment.querySelectorAll("img[data-blocked-src]")) {
    const src = img.getAttribute("data-blocked-src");
    const link = document.createElement(/^https?:\/\//i.test(src) ? "a" : "span");
    link.textContent = "[image: " + (img.getAttribute("alt") || src || "?") + "]";
    if (link.tagName === "A") Object.assign(link, { href: src, target: "_blank", rel: "noopener noreferrer nofollow" });
    link.className = "blocked-image";
    link.title = "remote images are not loaded: " + src;
    img.replaceWith(link);
  }
  return fragment;
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea"); // plain http on another host: no async clipboard
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

export function copyButton(getText, label = "Copy") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = label;
  button.addEventListener("click", async () => {
    try {
      await copyText(getText());
      button.textContent = "Copied";
    } catch (e) {
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

/** Gives each code block a bar with its language and a copy button. */
function decorateCode(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    if (!code || (pre.parentElement && pre.parentElement.classList.contains("code-block"))) continue;
    const block = document.createElement("div");
    block.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const lang = document.createElement("span");
    lang.textContent = ([...code.classList].find((c) => c.startsWith("language-")) || "").slice(9) || "text";
    bar.append(lang, copyButton(() => code.textContent, "Copy code"));
    pre.replaceWith(block);
    block.append(bar, pre);
  }
}

/** Renders markdown `text` into `el`, replacing what it held (called again as more text streams in). */
export function renderMarkdown(el, text) {
  const fragment = sanitized(marked.parse(text));
  decorateCode(fragment);
  el.replaceChildren(fragment);
}

/** A highlighted, sanitised <pre> of `text` (JSON is pretty-printed when it parses). */
export function codeView(text, lang) {
  let shown = text;
  if (lang === "json") {
    try {
      shown = JSON.stringify(JSON.parse(text), null, 2);
    } catch (e) { lang = ""; } // still streaming, or not JSON: show it as it is
  }
  const { html, language } = highlighted(shown, lang);
  const fragment = sanitized(`<pre><code class="hljs${language ? " language-" + escapeHtml(language) : ""}">${html}</code></pre>`);
  decorateCode(fragment);
  const box = document.createElement("div");
  box.append(fragment);
  return box;
}

function collapsible(kind, summaryText, body, open) {
  const details = document.createElement("details");
  details.className = kind;
  details.open = open;
  const summary = document.createElement("summary");
  summary.textContent = summaryText;
  details.append(summary, body);
  return details;
}

/** The tool calls of an assistant message, each collapsible, with its arguments as JSON. */
export function toolCallsView(calls) {
  const box = document.createElement("div");
  box.className = "tool-calls";
  for (const call of calls) {
    const f = call.function || {};
    const view = collapsible("tool-call", `tool call: ${f.name || "…"}` + (call.id ? ` (${call.id})` : ""),
      codeView(f.arguments || "", "json"), true);
    view.dataset.callId = call.id || "";
    box.append(view);
  }
  return box;
}

function imageView(url) {
  if (!SAFE_IMAGE.test(url)) {
    const span = document.createElement("span");
    span.className = "blocked-image";
    span.textContent = "[image not shown: only data:image URLs are displayed]";
    return span;
  }
  const img = document.createElement("img");
  img.className = "tool-image";
  img.alt = "image from the tool";
  img.src = url;
  return img;
}

/** A tool result (`role: tool`): text (JSON pretty-printed) and images (data:image URLs), collapsible. */
export function toolResultView(msg, name) {
  const body = document.createElement("div");
  body.className = "tool-output";
  const parts = typeof msg.content === "string" || msg.content == null
    ? [{ type: "text", text: msg.content || "" }] : msg.content;
  for (const part of parts) {
    if (part.type === "image_url") {
      body.append(imageView((part.image_url && part.image_url.url) || ""));
    } else {
      const text = String(part.text ?? "");
      const json = /^\s*[[{]/.test(text);
      body.append(codeView(text, json ? "json" : "plaintext"));
    }
  }
  return collapsible("tool-result", `tool result: ${name || "?"} (${msg.tool_call_id || "no id"})`, body, true);
}

export function statsText(stats) {
  if (!stats) return "";
  const parts = [`${stats.estimated ? "≈" : ""}${stats.tokens} token${stats.tokens === 1 ? "" : "s"}`];
  if (stats.tok_s) parts.push(`${stats.tok_s.toFixed(1)} tok/s`);
  if (stats.ttft_s !== undefined) parts.push(`first token ${stats.ttft_s.toFixed(2)} s`);
  parts.push(stats.finish);
  return parts.join(" · ");
}
