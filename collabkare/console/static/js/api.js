// The staff session (which token, which practice) and calls to the connections and invitations APIs.
// Every failed call becomes an ApiError whose message is the problem+json `detail`, with its `errors` list.

const PASTED_TOKEN_KEY = "collabkare.console.staffToken";
const state = { config: null, token: null, claims: null, source: null };

export class ApiError extends Error {
  constructor(message, errors = [], status = 0) {
    super(message);
    this.name = "ApiError";
    this.errors = errors;
    this.status = status;
  }
}

export async function loadConfig() {
  const response = await fetch("config.json", { cache: "no-store" });
  if (!response.ok) throw new ApiError(`The console's configuration could not be read (${response.status}).`);
  state.config = await response.json();
  const pasted = sessionStorage.getItem(PASTED_TOKEN_KEY);
  if (pasted) {
    try {
      useToken(pasted, "pasted");
      return;
    } catch {
      sessionStorage.removeItem(PASTED_TOKEN_KEY);
    }
  }
  if (state.config.staff_token) useToken(state.config.staff_token, "development");
}

export function session() {
  return state.token ? { claims: state.claims, source: state.source } : null;
}

export function devTokenAvailable() {
  return Boolean(state.config && state.config.staff_token);
}

export function useDevToken() {
  sessionStorage.removeItem(PASTED_TOKEN_KEY);
  useToken(state.config.staff_token, "development");
}

export function usePastedToken(token) {
  useToken(token.trim(), "pasted");
  sessionStorage.setItem(PASTED_TOKEN_KEY, state.token);
}

function useToken(token, source) {
  const claims = decodeClaims(token);
  Object.assign(state, { token, claims, source });
}

// Reads the claims only to know the practice and show who is signed in; the APIs verify the signature.
function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new ApiError("That is not a token: a JWT has three parts separated by dots.");
  let claims;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    claims = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new ApiError("That token's claims cannot be read: check that it was pasted whole.");
  }
  if (!claims || typeof claims.practice_id !== "string") {
    throw new ApiError("That token has no practice_id claim: it is not a staff token.");
  }
  return claims;
}

function baseUrl(service) {
  return service === "connections" ? state.config.connections_url : state.config.invitations_url;
}

// `path` is under /v1/practices/{the token's practice}; `as: "text"` for text/plain answers.
export async function api(service, method, path, { body, query = {}, headers = {}, signal, as = "json" } = {}) {
  if (!state.token) throw new ApiError("No staff token yet: paste one on the Staff token page.");
  const url = new URL(`${baseUrl(service)}/v1/practices/${encodeURIComponent(state.claims.practice_id)}${path}`);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const init = { method, signal, headers: { Authorization: `Bearer ${state.token}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(`The ${service} service at ${baseUrl(service)} cannot be reached. Is it running?`);
  }
  if (!response.ok) throw await problemFrom(response, service);
  return as === "text" ? response.text() : response.json();
}

// The API names fields as integrators send them; staff read the form's words instead.
const FIELD_WORDS = { ssn: "SSN", date_of_birth: "date of birth", default_note: "default note" };
const FIELD_NAMES = new RegExp(`\\b(${Object.keys(FIELD_WORDS).join("|")})\\b`, "g");

function inFormWords(text) {
  return String(text).replace(FIELD_NAMES, (name) => FIELD_WORDS[name]);
}

async function problemFrom(response, service) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not problem+json (a proxy's error page): the status line says enough
  }
  let detail = inFormWords(problem.detail || problem.title || `The ${service} service answered ${response.status}.`);
  if (response.status === 401) detail += " Paste a fresh staff token on the Staff token page.";
  const errors = Array.isArray(problem.errors)
    ? problem.errors.map((e) => inFormWords(e.field ? `${e.field}: ${e.message}` : e.message))
    : [];
  return new ApiError(detail, errors, response.status);
}
