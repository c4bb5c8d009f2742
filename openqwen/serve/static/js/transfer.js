// Conversations in and out of the browser as files (the JSON shapes are store.js's).
import { parseImport } from "./store.js";

/** Saves `value` as a pretty-printed JSON download called `name`. */
export function download(name, value) {
  const blob = new Blob([JSON.stringify(value, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

export function fileName(title) {
  const slug = title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
  return "openqwen-" + (slug || "chat") + ".json";
}

/** The conversations of an imported file; throws an Error saying what is wrong with it. */
export async function readImport(file) {
  let value;
  try {
    value = JSON.parse(await file.text());
  } catch (e) {
    throw new Error("not JSON: " + e.message);
  }
  return parseImport(value);
}
