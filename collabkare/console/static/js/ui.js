// Small DOM helpers shared by the pages: elements from data (never innerHTML), errors, announcements, words.

export const $ = (id) => document.getElementById(id);

export const OUTCOME_LABELS = {
  sent: "Sent",
  not_on_platform: "Not on CollabKare yet",
  already_connected: "Already connected",
  already_invited: "Already invited",
  duplicate: "Duplicate",
  invalid: "Invalid",
  error: "Error",
  queued: "Queued",
};

export const VERDICT_LABELS = {
  ready: "ready",
  invalid: "invalid",
  duplicate: "duplicate",
  already_connected: "already connected",
  already_invited: "already invited",
};

export const STATUS_LABELS = { pending: "Pending", accepted: "Accepted", expired: "Expired", revoked: "Revoked" };

// el("td", { className: "x", dataset: { id } }, "text", childNode, ...)
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

// A button whose visible text is short ("Approve") and whose accessible name says what it acts on.
export function actionButton(text, context, onclick, className = "") {
  return el("button", { type: "button", className, onclick }, text, el("span", { className: "visually-hidden" }, ` ${context}`));
}

let announceTimer = null;
export function announce(message) {
  const status = $("status");
  // Clear first so that the same message twice in a row is announced twice.
  status.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    status.textContent = message;
  }, 50);
}

export function showError(box, error) {
  const message = typeof error === "string" ? error : error.message;
  // The box (role=alert) says it; an earlier success left in the status line would contradict it.
  clearTimeout(announceTimer);
  $("status").textContent = "";
  // The detail often already says what a field error says: list only what it does not.
  const items = ((error && error.errors) || []).filter((item) => !message.includes(item));
  box.replaceChildren(el("p", {}, message));
  if (items.length) box.append(el("ul", {}, ...items.map((item) => el("li", {}, item))));
  box.hidden = false;
}

export function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

export async function busy(button, work) {
  const wasDisabled = button.disabled;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = wasDisabled;
    button.removeAttribute("aria-busy");
  }
}

export function formatDate(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "";
}

export function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
