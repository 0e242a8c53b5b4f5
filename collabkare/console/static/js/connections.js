// Patient Connections: pending requests with Refresh; Approve; Reject with an optional reason and Confirm Reject.

import { api } from "./api.js";
import { $, actionButton, announce, busy, clearError, el, formatDate, plural, showError } from "./ui.js";

const PAGE_SIZE = 50;
let nextCursor = null;

export function initConnections() {
  $("requests-refresh").addEventListener("click", () => refreshRequests(true));
  $("requests-more").addEventListener("click", () => busy($("requests-more"), () => load(nextCursor, false)));
}

export async function refreshRequests(announceCount) {
  await busy($("requests-refresh"), async () => {
    $("requests").tBodies[0].replaceChildren();
    nextCursor = null;
    await load(null, announceCount);
  });
}

async function load(cursor, announceCount) {
  clearError($("requests-error"));
  try {
    const page = await api("connections", "GET", "/connection-requests", {
      query: { status: "pending", limit: PAGE_SIZE, cursor },
    });
    $("requests").tBodies[0].append(...page.items.map(requestRow));
    nextCursor = page.next_cursor;
    $("requests-more").hidden = !nextCursor;
    const shown = updateEmpty();
    if (announceCount) announce(`${plural(shown, "pending request", "pending requests")}${nextCursor ? " shown, more to load" : ""}.`);
  } catch (error) {
    showError($("requests-error"), error);
    $("requests-empty").hidden = true; // not known to be empty: the list could not be read
  }
}

function updateEmpty() {
  const count = $("requests").tBodies[0].rows.length;
  $("requests").hidden = count === 0;
  $("requests-empty").hidden = count !== 0;
  return count;
}

function requestRow(request) {
  const who = request.display_name || request.patient_email;
  const row = el(
    "tr",
    { dataset: { requestId: request.id } },
    el("th", { scope: "row" }, el("span", { className: "name" }, who), request.display_name ? el("span", { className: "email" }, request.patient_email) : null),
    el("td", {}, request.message || ""),
    el("td", {}, formatDate(request.created_at)),
    el("td", { className: "actions" }),
  );
  showDecisionButtons(request, row);
  return row;
}

function showDecisionButtons(request, row) {
  const cell = row.cells[3];
  cell.replaceChildren(
    actionButton("Approve", request.patient_email, () => approve(request, row), "primary"),
    actionButton("Reject", request.patient_email, () => startReject(request, row), "danger"),
  );
}

async function approve(request, row) {
  clearError($("requests-error"));
  try {
    await busy(row.querySelector("button"), () =>
      api("connections", "POST", `/connection-requests/${request.id}/approve`),
    );
    removeRow(row);
    announce(`Approved ${request.patient_email}: the patient is now connected to your practice and gets a confirmation email.`);
  } catch (error) {
    decidedElsewhere(error, row);
    showError($("requests-error"), error);
  }
}

// A 409: another staff member decided the request meanwhile; it is no longer pending, so it leaves the list.
function decidedElsewhere(error, row) {
  if (error.status === 409) removeRow(row);
}

function startReject(request, row) {
  const id = `reject-reason-${request.id}`;
  const reason = el("input", { id, type: "text", maxLength: 500, autocomplete: "off" });
  const cancel = () => {
    showDecisionButtons(request, row);
    row.querySelector("button").focus();
  };
  const form = el(
    "form",
    { className: "reject-form", onsubmit: (event) => confirmReject(event, request, row, reason) },
    el("label", { htmlFor: id }, "Reason (optional)"),
    reason,
    el("button", { type: "submit", className: "danger" }, "Confirm Reject"),
    el("button", { type: "button", onclick: cancel }, "Cancel"),
  );
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") cancel();
  });
  row.cells[3].replaceChildren(form);
  reason.focus();
}

async function confirmReject(event, request, row, reasonInput) {
  event.preventDefault();
  clearError($("requests-error"));
  const reason = reasonInput.value.trim();
  try {
    await busy(event.submitter || row.querySelector("button[type=submit]"), () =>
      api("connections", "POST", `/connection-requests/${request.id}/reject`, { body: reason ? { reason } : {} }),
    );
    removeRow(row);
    announce(`Rejected ${request.patient_email}'s request${reason ? " with your reason" : ""}. The patient is notified.`);
  } catch (error) {
    decidedElsewhere(error, row);
    showError($("requests-error"), error);
  }
}

// Keyboard users keep their place: focus moves to the next request's first button, or to Refresh.
function removeRow(row) {
  const next = row.nextElementSibling || row.previousElementSibling;
  row.remove();
  updateEmpty();
  (next ? next.querySelector("button") : $("requests-refresh")).focus();
}
