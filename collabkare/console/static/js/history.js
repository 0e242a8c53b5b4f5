// Patient access history: every invite for one email with its status and who did what; revoke, resend, and
// Enable Patient Access (an individual invite with SSN, or date of birth and phone).

import { api } from "./api.js";
import { $, actionButton, announce, busy, clearError, el, formatDate, OUTCOME_LABELS, plural, showError, STATUS_LABELS } from "./ui.js";

const REFRESH_MS = 2000;
const REFRESHES = 30;
let currentEmail = null;
// While an invite's delivery is still queued, the history is read again so that its outcome fills in.
let refresh = { timer: null, left: 0 };
let rendered = null;

export function initHistory() {
  $("history-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const email = $("history-email").value.trim();
    if (!email) {
      showError($("history-error"), "Enter the patient's email to look up.");
      $("history-email").focus();
      return;
    }
    busy(event.submitter || $("history-form").querySelector("button"), () => lookUp(email, true));
  });
  $("invite-one-form").addEventListener("submit", inviteOne);
}

export function clearHistory() {
  clearTimeout(refresh.timer);
  currentEmail = null;
  rendered = null;
  $("history-result").hidden = true;
  clearError($("history-error"));
  clearError($("invite-one-error"));
}

async function lookUp(email, announceIt, refreshing = false) {
  clearTimeout(refresh.timer);
  if (!refreshing) {
    refresh.left = REFRESHES;
    // Another patient's refusal (Enable Patient Access) must not stand beside this one's history.
    if (email !== currentEmail) clearError($("invite-one-error"));
  }
  clearError($("history-error"));
  try {
    const view = await api("invitations", "GET", "/invites", { query: { email } });
    if (refreshing && view.email !== currentEmail) return;
    currentEmail = view.email;
    $("history-heading").textContent = `Access history for ${view.email}`;
    render(view.items);
    $("history").hidden = view.items.length === 0;
    $("history-empty").hidden = view.items.length !== 0;
    $("history-result").hidden = false;
    if (announceIt) announce(`${plural(view.items.length, "invite", "invites")} for ${view.email}.`);
    if (view.items.some((invite) => invite.delivery === "queued") && refresh.left-- > 0) {
      refresh.timer = setTimeout(() => lookUp(view.email, false, true), REFRESH_MS);
    }
  } catch (error) {
    // A failed lookup leaves no earlier patient on screen: Enable Patient Access would have invited them.
    if (!refreshing) clearHistory();
    showError($("history-error"), error);
  }
}

// Re-rendered only when something changed, and a focused button keeps its focus (keyboard users).
function render(items) {
  const body = $("history").tBodies[0];
  const next = JSON.stringify(items);
  if (next === rendered) return;
  rendered = next;
  const focused = body.contains(document.activeElement) ? document.activeElement : null;
  const place = focused && [focused.closest("tr").dataset.inviteId, focused.firstChild.textContent];
  body.replaceChildren(...items.map((invite) => inviteRow(invite, items)));
  if (place) {
    const row = body.querySelector(`tr[data-invite-id="${place[0]}"]`);
    const again = row && [...row.querySelectorAll("button")].find((b) => b.firstChild.textContent === place[1]);
    if (again) again.focus();
  }
}

function inviteRow(invite, items) {
  const sent = formatDate(invite.sent_at);
  // An invite revoked before its email went out was not sent; that is no failure to report as "Error".
  const unsent = invite.status === "revoked" && invite.delivery === "error";
  const delivery = unsent ? "Not sent" : OUTCOME_LABELS[invite.delivery] || invite.delivery;
  const actions = el("td", { className: "actions" });
  if (invite.status === "pending") {
    const revoke = actionButton("Revoke", `invite sent ${sent}`, () => act(invite, "revoke", revoke), "danger");
    actions.append(revoke);
  }
  // Resend is refused while another invite is pending or once one was accepted: no button that can only fail.
  const settled = items.some((other) => other !== invite && ["pending", "accepted"].includes(other.status));
  if (invite.status !== "accepted" && !invite.replaced_by && !settled) {
    const resend = actionButton("Resend", `invite sent ${sent}`, () => act(invite, "resend", resend));
    actions.append(resend);
  }
  return el(
    "tr",
    { dataset: { inviteId: invite.id, status: invite.status } },
    el("td", {}, sent),
    el("td", {}, el("span", { className: `badge ${invite.status}` }, STATUS_LABELS[invite.status] || invite.status)),
    el("td", {}, delivery, invite.delivery_reason ? ` (${invite.delivery_reason})` : ""),
    el("td", {}, el("ul", { className: "trail" }, ...trail(invite).map((line) => el("li", {}, line)))),
    // Only a pending invite will still expire; the others say in their trail what ended them.
    el("td", {}, invite.status === "pending" ? formatDate(invite.expires_at) : "—"),
    actions,
  );
}

function trail(invite) {
  // What happened to it, oldest first (an invite that expired and was resent later reads in that order).
  const events = [];
  if (invite.revoked_by) events.push([invite.revoked_at, `Revoked by ${invite.revoked_by} on ${formatDate(invite.revoked_at)}`]);
  if (invite.resent_by) events.push([invite.resent_at, `Resent by ${invite.resent_by} on ${formatDate(invite.resent_at)}`]);
  // accepted_by is the patient's account id; an invite can only be accepted from the address it was sent to.
  if (invite.accepted_by) events.push([invite.accepted_at, `Accepted by the patient on ${formatDate(invite.accepted_at)}`]);
  if (invite.expired_at) events.push([invite.expired_at, `Expired on ${formatDate(invite.expired_at)}`]);
  events.sort((a, b) => Date.parse(a[0]) - Date.parse(b[0]));
  const lines = [`Sent by ${invite.sent_by} on ${formatDate(invite.sent_at)}${invite.resends ? " (a resend)" : ""}`];
  if (invite.identity_factors.length) lines.push(`Checks at acceptance: ${invite.identity_factors.join(", ").replaceAll("_", " ")}`);
  lines.push(...events.map(([, line]) => line));
  if (invite.locked) lines.push("Locked after too many wrong identity answers");
  return lines;
}

async function act(invite, action, button) {
  // Either box may still show an earlier refusal (Enable Patient Access below): this action's answer replaces it.
  clearError($("history-error"));
  clearError($("invite-one-error"));
  try {
    await busy(button, () => api("invitations", "POST", `/invites/${invite.id}/${action}`));
    announce(action === "revoke" ? `Revoked the invite sent ${formatDate(invite.sent_at)}.` : "Sent a new invite; the previous one no longer works.");
    await lookUp(currentEmail, false);
    $("history-title").focus();
  } catch (error) {
    showError($("history-error"), error);
  }
}

async function inviteOne(event) {
  event.preventDefault();
  clearError($("history-error"));
  clearError($("invite-one-error"));
  const body = { email: currentEmail };
  for (const [field, id] of [["ssn", "invite-ssn"], ["date_of_birth", "invite-dob"], ["phone", "invite-phone"], ["note", "invite-note"]]) {
    const value = $(id).value.trim();
    if (value) body[field] = value;
  }
  try {
    const invite = await busy(event.submitter, () => api("invitations", "POST", "/invites", { body }));
    $("invite-one-form").reset();
    announce(`Invite sent to ${currentEmail}; it is valid until ${formatDate(invite.expires_at)}.`);
    await lookUp(currentEmail, false);
  } catch (error) {
    showError($("invite-one-error"), error);
  }
}
