// Small DOM helpers. Text always goes in through textContent, never innerHTML: job names, errors
// and ids come from users and must not become markup.

export const $ = (id) => document.getElementById(id);

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function badge(status) {
  return el("span", { class: `badge ${status}`, dataset: { status } }, status);
}

export function percent(value) {
  return typeof value === "number" ? `${(100 * value).toFixed(1)}%` : "–";
}

export function number(value, digits = 4) {
  if (typeof value !== "number") return "–";
  return Math.abs(value) >= 1000 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(2)
    : value.toFixed(digits);
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

let messageTimer = null;

/** A banner for errors (and notices): stays until replaced, notices fade after a few seconds. */
export function showMessage(text, kind = "error") {
  const box = $("message");
  clearTimeout(messageTimer);
  box.textContent = text;
  box.className = `message message-${kind}`;
  box.hidden = !text;
  if (text && kind !== "error") messageTimer = setTimeout(() => { box.hidden = true; }, 4000);
}
