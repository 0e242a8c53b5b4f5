// The staff token: which one the console uses (the local stack's development token, or a pasted one).

import { devTokenAvailable, session, useDevToken, usePastedToken } from "./api.js";
import { $, announce, clearError, el, showError } from "./ui.js";

export function initToken(onChange) {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      usePastedToken($("token-input").value);
    } catch (error) {
      showError($("token-error"), error);
      $("token-input").focus();
      return;
    }
    $("token-input").value = "";
    changed(onChange, "Using the pasted token");
  });
  $("token-dev").addEventListener("click", () => {
    useDevToken();
    changed(onChange, "Using the development token");
  });
}

function changed(onChange, what) {
  clearError($("token-error"));
  renderToken();
  const claims = session().claims;
  announce(`${what}: ${claims.sub}, practice ${claims.practice_id}.`);
  onChange();
}

export function renderToken() {
  const current = session();
  $("token-dev").hidden = !devTokenAvailable();
  if (!current) {
    $("who").textContent = "No staff token yet";
    $("token-details").replaceChildren(el("dt", {}, "Token"), el("dd", {}, "none: paste one below"));
    return;
  }
  const { claims, source } = current;
  const roles = (claims.roles || []).join(", ");
  $("who").textContent = `${claims.sub} · ${roles} · practice ${claims.practice_id}`;
  const expires = claims.exp ? new Date(claims.exp * 1000).toLocaleString() : "never";
  const rows = [
    ["Signed in as", claims.sub],
    ["Roles", roles],
    ["Practice", claims.practice_id],
    ["Expires", expires],
    ["Token", source === "development" ? "development token from the local stack" : "pasted in this tab"],
  ];
  $("token-details").replaceChildren(...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}
