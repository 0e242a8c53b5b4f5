// The console's entry point: loads the configuration, wires the pages and shows one page per URL hash.

import { loadConfig, session } from "./api.js";
import { initConnections, refreshRequests } from "./connections.js";
import { clearHistory, initHistory } from "./history.js";
import { initInvite, sessionChangedInvite } from "./invite.js";
import { clearResults, initResults } from "./results.js";
import { initToken, renderToken } from "./token.js";
import { $, showError } from "./ui.js";

const PAGES = {
  connections: "Patient Connections",
  invite: "Invite Patients",
  history: "Patient access history",
  token: "Staff token",
};
let requestsLoaded = false;

function route() {
  const name = location.hash.slice(1);
  if (name in PAGES) return name;
  return session() ? "connections" : "token";
}

function show(name, moveFocus) {
  for (const page of Object.keys(PAGES)) $(`page-${page}`).hidden = page !== name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.hash === `#${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${PAGES[name]} · CollabKare staff console`;
  if (moveFocus) $(`${name}-title`).focus();
  if (name === "connections" && !requestsLoaded && session()) {
    requestsLoaded = true;
    refreshRequests(false);
  }
}

function sessionChanged() {
  requestsLoaded = false;
  clearResults();
  clearHistory();
  sessionChangedInvite();
  location.hash = "#connections";
  show("connections", true);
}

async function start() {
  initConnections();
  initInvite();
  initResults();
  initHistory();
  initToken(sessionChanged);
  try {
    await loadConfig();
  } catch (error) {
    showError($("token-error"), error);
  }
  renderToken();
  window.addEventListener("hashchange", () => show(route(), true));
  show(route(), false);
  document.body.dataset.ready = "true";
}

start();
