// The REST API with the user's bearer token: kept in sessionStorage (this tab only, gone when it
// closes), sent as a header on every call and never put into a URL.

const TOKEN_KEY = "gls.token";
const API = new URL("../v1/", document.baseURI); // the gateway's /v1, also behind a path prefix

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new Event("gls-token"));
}

export function apiUrl(path, params) {
  const url = new URL(path.replace(/^\//, ""), API);
  for (const [key, value] of Object.entries(params || {})) url.searchParams.set(key, value);
  return url;
}

/** A 4xx/5xx body's detail as one line: "field: reason; ..." for 422, the message otherwise. */
function describe(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => (item.field ? `${item.field}: ${item.msg}` : item.msg)).join("; ");
  }
  return typeof detail === "string" ? detail : `HTTP ${status}`;
}

/** fetch() with the token; a non-2xx answer throws ApiError (401 also signs out: the token is bad). */
export async function apiFetch(path, { method = "GET", params, body, headers = {}, signal } = {}) {
  const token = getToken();
  if (!token) throw new ApiError(401, "sign in with a token first");
  const init = { method, signal, cache: "no-store", headers: { ...headers, Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(apiUrl(path, params), init);
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      // not JSON (a proxy's page): the status says enough
    }
    if (response.status === 401) setToken(null);
    throw new ApiError(response.status, describe(response.status, parsed));
  }
  return response;
}

export async function apiJson(path, options) {
  return (await apiFetch(path, options)).json();
}

/** Save an API download as a file: fetched with the token, handed to the browser as a blob URL. */
export async function download(path, params, fallbackName) {
  const response = await apiFetch(path, { params });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = match ? match[1] : fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has started long before
  return link.download;
}
