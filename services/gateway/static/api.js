// The API client: every call carries the token (kept in this tab's sessionStorage), errors come
// back as ApiError with the API's {"error": {"code", "message"}}, and a 401 anywhere sends the
// page back to the login form with the gateway's message.

const KEY = "scns.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

export function onUnauthorized(fn) { unauthorized = fn; }

export function token() {
  try { return sessionStorage.getItem(KEY); } catch { return null; }
}

export function setToken(value) { sessionStorage.setItem(KEY, value); }

export function clearToken() {
  try { sessionStorage.removeItem(KEY); } catch { /* storage disabled: nothing kept */ }
}

function url(path, query) {
  const u = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

export async function errorOf(resp) {
  let text = "";
  try { text = await resp.text(); } catch { /* the body is gone */ }
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) {
      return new ApiError(resp.status, body.error.code || `http_${resp.status}`, body.error.message);
    }
  } catch { /* not JSON: a proxy's page, say */ }
  return new ApiError(resp.status, `http_${resp.status}`,
    `${resp.status} ${resp.statusText || "error"}${text ? ": " + text.slice(0, 200) : ""}`);
}

/** fetch with the token; resolves to the Response when it is a 2xx, else throws ApiError. */
export async function request(method, path, {query, body, headers, signal, tok} = {}) {
  const h = {Accept: "application/json", ...(headers || {})};
  const bearer = tok ?? token();
  if (bearer) h.Authorization = `Bearer ${bearer}`;
  const init = {method, headers: h, signal, cache: "no-store", credentials: "omit"};
  if (body !== undefined) {
    h["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url(path, query), init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", `cannot reach the gateway (${e.message})`);
  }
  if (resp.ok) return resp;
  const err = await errorOf(resp);
  if (resp.status === 401 && tok === undefined) unauthorized(err);
  throw err;
}

export async function api(method, path, options = {}) {
  const resp = await request(method, path, options);
  if (resp.status === 204) return null;
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, query, signal) => api("GET", path, {query, signal});
