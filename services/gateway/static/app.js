// The dashboard's shell: sign-in with a token, hash routes (#/jobs, #/jobs/<id>, #/certify) and one
// AbortController per shown view, so leaving a view stops its polling and its event stream.

import { apiJson, getToken, setToken } from "./api.js";
import { showCertify } from "./certify.js";
import { $, showMessage } from "./dom.js";
import { showJob } from "./jobpage.js";
import { showJobs } from "./joblist.js";

let current = null;

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts, params: new URLSearchParams(query || "") };
}

function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", name.startsWith(link.dataset.nav));
  }
}

/** Forget everything shown for the previous token: another tenant must not see it. */
function clearViews() {
  for (const id of ["jobs-body", "metrics-body", "verdicts-body", "certify-model", "job-facts", "job-id"]) $(id).replaceChildren();
  $("certify-inputs").value = "";
  $("certify-file").value = "";
  $("certify-shape").textContent = "";
  $("certify-results").hidden = true;
}

function render() {
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  const signedIn = Boolean(getToken());
  $("login").hidden = signedIn;
  $("session").hidden = !signedIn;
  document.body.dataset.signedIn = String(signedIn);
  if (!signedIn) {
    showView("signin");
    return;
  }
  const { parts, params } = route();
  const fail = (error) => { if (!signal.aborted) showMessage(error.message); };
  if (parts[0] === "jobs" && parts[1]) {
    showView("job");
    showJob(decodeURIComponent(parts[1]), signal).catch(fail);
  } else if (parts[0] === "certify") {
    showView("certify");
    showCertify(params, signal).catch(fail);
  } else {
    showView("jobs");
    showJobs(signal).catch(fail);
  }
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) return;
  clearViews();
  setToken(token);
  try {
    await apiJson("jobs");
    showMessage("");
  } catch (error) {
    showMessage(error.status === 401 ? "That token was rejected by the gateway." : error.message);
  }
}

function signOut() {
  setToken(null);
  clearViews();
  showMessage("");
}

$("login").addEventListener("submit", signIn);
$("logout").addEventListener("click", signOut);
window.addEventListener("hashchange", render);
window.addEventListener("gls-token", () => { if (!getToken()) clearViews(); render(); });
render();
