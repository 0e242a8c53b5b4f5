// Invite Patients: the roster and default note, the debounced "patients ready" preview, and Send invites.

import { api } from "./api.js";
import { showResults } from "./results.js";
import { $, announce, busy, clearError, el, newKey, plural, showError, VERDICT_LABELS } from "./ui.js";

const DEBOUNCE_MS = 300;
const PROBLEMS_SHOWN = 200;
let timer = null;
let inFlight = null;
let sequence = 0;
// One Idempotency-Key per roster text and note: sending them again (a network failure, a second click) finds
// the batch already sent instead of making a second one in which every patient is "already invited".
let sendKey = null;
let sendKeyFor = null;
let sentBatch = null;

// Another staff token (another practice, perhaps): the preview was that practice's (its patients, their invites),
// so it goes at once, and is read again for this one.
export function sessionChangedInvite() {
  clearTimeout(timer);
  showProblems([]);
  clearError($("invite-error"));
  preview();
}

export function initInvite() {
  $("roster").addEventListener("input", schedulePreview);
  $("default-note").addEventListener("input", schedulePreview);
  $("roster-form").addEventListener("submit", send);
}

function body() {
  return { roster: $("roster").value, default_note: $("default-note").value.trim() || null };
}

function schedulePreview() {
  clearTimeout(timer);
  timer = setTimeout(preview, DEBOUNCE_MS);
}

async function preview() {
  if (inFlight) inFlight.abort();
  const mine = ++sequence;
  if (!$("roster").value.trim()) {
    showCounter(0);
    showProblems([]);
    return;
  }
  inFlight = new AbortController();
  $("ready-counter").setAttribute("aria-busy", "true");
  try {
    const view = await api("invitations", "POST", "/roster/preview", { body: body(), signal: inFlight.signal });
    if (mine !== sequence) return;
    clearError($("invite-error"));
    showCounter(view.patients_ready);
    showProblems(view.rows.filter((row) => row.verdict !== "ready"));
  } catch (error) {
    if (error.name !== "AbortError" && mine === sequence) showError($("invite-error"), error);
  } finally {
    if (mine === sequence) $("ready-counter").removeAttribute("aria-busy");
  }
}

function showCounter(ready) {
  $("ready-count").textContent = String(ready);
  $("ready-label").textContent = ready === 1 ? "patient ready" : "patients ready";
}

function showProblems(rows) {
  const box = $("preview-problems");
  const items = rows.slice(0, PROBLEMS_SHOWN).map((row) =>
    el(
      "li",
      { dataset: { line: row.line_number, verdict: row.verdict } },
      el("span", { className: "line" }, `Line ${row.line_number}`),
      ` ${row.email || "(no email)"}: `,
      el("strong", {}, VERDICT_LABELS[row.verdict] || row.verdict),
      row.reason ? ` (${row.reason})` : "",
    ),
  );
  if (rows.length > PROBLEMS_SHOWN) items.push(el("li", {}, `…and ${rows.length - PROBLEMS_SHOWN} more.`));
  box.querySelector("ul").replaceChildren(...items);
  box.hidden = rows.length === 0;
}

async function send(event) {
  event.preventDefault();
  clearError($("invite-error"));
  if (!$("roster").value.trim()) {
    showError($("invite-error"), "The roster is empty: paste at least one email, one per line.");
    $("roster").focus();
    return;
  }
  clearTimeout(timer);
  const request = body();
  const fingerprint = JSON.stringify(request);
  if (sendKeyFor !== fingerprint) {
    sendKey = newKey();
    sendKeyFor = fingerprint;
  }
  try {
    const batch = await busy($("send-invites"), () =>
      api("invitations", "POST", "/invite-batches", { body: request, headers: { "Idempotency-Key": sendKey } }),
    );
    const again = batch.batch_id === sentBatch;
    if (again) {
      announce("This roster and note were already sent: the results below are that batch's. Change the roster to send another.");
    } else {
      announce(`Sending invites: ${plural(batch.patients_ready, "patient", "patients")} to invite. Results follow below.`);
    }
    sentBatch = batch.batch_id;
    showResults(batch, again);
  } catch (error) {
    showError($("invite-error"), error);
  }
}
