// The Results panel: polls the batch until no row is queued; counts per outcome, per-row outcomes, the
// not-on-CollabKare list (clipboard) and re-sending to those patients.

import { api } from "./api.js";
import { $, announce, busy, clearError, el, OUTCOME_LABELS, plural, showError, STATUS_LABELS } from "./ui.js";

const ORDER = ["sent", "not_on_platform", "already_connected", "already_invited", "duplicate", "invalid", "error", "queued"];
const ROWS_PAGE = 100;
const POLL_MS = 1000;
const SLOW_POLL_MS = 5000;
let current = null;

export function initResults() {
  $("copy-not-on-platform").addEventListener("click", copyNotOnPlatform);
  $("resend-not-on-platform").addEventListener("click", resendNotOnPlatform);
  $("results-filter").addEventListener("change", () => current && loadRows(current));
  $("results-more").addEventListener("click", () => {
    if (!current) return;
    current.rowsWanted += ROWS_PAGE;
    busy($("results-more"), () => loadRows(current));
  });
}

// `announced`: the caller has said what the panel shows (a batch sent again), so its end is not announced.
export function showResults(batch, announced = false) {
  stopPolling();
  current = { id: batch.batch_id, rowsWanted: ROWS_PAGE, timer: null, polls: 0, announced, batch };
  $("results").hidden = false;
  $("copy-fallback").hidden = true;
  $("results-filter").value = "";
  clearError($("results-error"));
  render(batch);
  $("results-title").focus();
  poll(current);
}

export function clearResults() {
  stopPolling();
  current = null;
  $("results").hidden = true;
}

function stopPolling() {
  if (current) clearTimeout(current.timer);
}

async function poll(state) {
  try {
    const batch = await api("invitations", "GET", `/invite-batches/${state.id}`);
    if (state !== current) return;
    state.batch = batch;
    state.polls += 1;
    render(batch);
    await loadRows(state);
    clearError($("results-error"));
    if (batch.done) {
      if (!state.announced) announce(`All rows have an outcome: ${summary(batch.counts)}.`);
      state.announced = true;
      return;
    }
  } catch (error) {
    if (state !== current) return;
    showError($("results-error"), error);
  }
  // A large roster takes minutes: after a minute, ask less often.
  state.timer = setTimeout(() => poll(state), state.polls > 60 ? SLOW_POLL_MS : POLL_MS);
}

function summary(counts) {
  return ORDER.filter((outcome) => counts[outcome]).map((outcome) => `${counts[outcome]} ${lowerFirst(OUTCOME_LABELS[outcome])}`).join(", ");
}

function render(batch) {
  const counts = batch.counts || {};
  const total = ORDER.reduce((sum, outcome) => sum + (counts[outcome] || 0), 0);
  $("results-progress").textContent = batch.done
    ? `Done: all ${plural(total, "row has", "rows have")} an outcome.`
    : `Sending… ${total - batch.queued} of ${total} rows have an outcome; ${batch.queued} still queued.`;
  $("results-counts").replaceChildren(
    ...ORDER.filter((outcome) => counts[outcome]).map((outcome) =>
      el("div", { dataset: { outcome } }, el("dt", {}, OUTCOME_LABELS[outcome]), el("dd", {}, String(counts[outcome]))),
    ),
  );
  const missing = counts.not_on_platform || 0;
  $("copy-not-on-platform").disabled = missing === 0;
  $("resend-not-on-platform").disabled = missing === 0 || !batch.done;
}

async function loadRows(state) {
  const rows = [];
  let cursor = null;
  do {
    const page = await api("invitations", "GET", `/invite-batches/${state.id}/rows`, {
      query: { outcome: $("results-filter").value, limit: Math.min(200, state.rowsWanted - rows.length), cursor },
    });
    rows.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && rows.length < state.rowsWanted);
  if (state !== current) return;
  $("result-rows").tBodies[0].replaceChildren(...rows.map(resultRow));
  $("results-more").hidden = !cursor;
}

function resultRow(row) {
  return el(
    "tr",
    { dataset: { line: row.line_number, outcome: row.outcome } },
    el("td", {}, String(row.line_number)),
    el("td", {}, row.email),
    el("td", {}, row.note || ""),
    el("td", {}, el("span", { className: `badge ${row.outcome}` }, OUTCOME_LABELS[row.outcome] || row.outcome)),
    // What became of the invite since (revoked, accepted, expired): the outcome tells only of its email.
    el("td", { dataset: { inviteStatus: row.invite_status || "" } }, STATUS_LABELS[row.invite_status] || ""),
    el("td", {}, row.reason || ""),
  );
}

async function copyNotOnPlatform() {
  if (!current) return;
  clearError($("results-error"));
  let text;
  try {
    text = await busy($("copy-not-on-platform"), () =>
      api("invitations", "GET", `/invite-batches/${current.id}/not-on-platform`, { as: "text" }),
    );
  } catch (error) {
    showError($("results-error"), error);
    return;
  }
  const count = text.split("\n").filter(Boolean).length;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-fallback").hidden = true;
    announce(`Copied ${plural(count, "email", "emails")} to the clipboard. Ask these patients to register on CollabKare, then re-send.`);
  } catch {
    // No clipboard permission (or an insecure page): hand the list over for Ctrl+C instead.
    $("copy-fallback").hidden = false;
    $("copy-fallback-text").value = text;
    $("copy-fallback-text").focus();
    $("copy-fallback-text").select();
    announce(`The browser did not allow copying; the ${plural(count, "email is", "emails are")} selected below: press Ctrl+C.`);
  }
}

async function resendNotOnPlatform() {
  if (!current) return;
  clearError($("results-error"));
  try {
    const resent = await busy($("resend-not-on-platform"), () =>
      api("invitations", "POST", `/invite-batches/${current.id}/resend-not-on-platform`),
    );
    announce(`Re-sent ${plural(resent.resent, "invite", "invites")} to patients who were not on CollabKare.`);
    current.announced = false;
    clearTimeout(current.timer);
    poll(current);
  } catch (error) {
    showError($("results-error"), error);
  }
}

// "Not on CollabKare yet" -> "not on CollabKare yet": the product's name keeps its capitals.
function lowerFirst(label) {
  return label.charAt(0).toLowerCase() + label.slice(1);
}
