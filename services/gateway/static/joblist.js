// The job list: GET /v1/jobs (this token's tenant only), newest first, refreshed every few seconds.

import { apiJson } from "./api.js";
import { $, badge, el, showMessage, when } from "./dom.js";

const REFRESH_MS = 2000;

function progress(job) {
  const total = job.total_steps || 0;
  const bar = el("div", { class: "bar" });
  bar.style.width = `${100 * (total ? Math.min(1, job.step / total) : 0)}%`; // CSSOM: the CSP allows no style attributes
  return el("div", { class: "cell-progress" },
    el("div", { class: "progress small" }, bar),
    el("span", { class: "muted" }, total ? `${job.step} / ${total}` : `${job.step}`));
}

function row(job) {
  const config = job.config || {};
  const model = `${config.model?.arch ?? "?"} on ${config.data?.dataset ?? "?"}`;
  const training = [config.estimator, config.relaxation, config.eps === undefined ? null : `eps ${config.eps}`]
    .filter((part) => part !== null && part !== undefined).join(" · ");
  return el("tr", { dataset: { job: job.id } },
    el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, job.id)),
    el("td", {}, job.name || ""),
    el("td", {}, badge(job.status)),
    el("td", {}, progress(job)),
    el("td", {}, model),
    el("td", {}, training),
    el("td", { class: "muted" }, when(job.created)));
}

async function refresh(signal) {
  const jobs = await apiJson("jobs", { signal });
  if (signal.aborted) return;
  jobs.reverse();
  $("jobs-body").replaceChildren(...jobs.map(row));
  $("jobs-empty").hidden = jobs.length > 0;
  $("jobs-table").hidden = jobs.length === 0;
  $("jobs-updated").textContent = `${jobs.length} job${jobs.length === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
}

/** Show the list until signal aborts (another view, or sign-out). */
export async function showJobs(signal) {
  $("jobs-body").replaceChildren();
  $("jobs-updated").textContent = "loading…";
  while (!signal.aborted) {
    try {
      await refresh(signal);
    } catch (error) {
      if (signal.aborted) return;
      showMessage(`Could not list jobs: ${error.message}`);
      if (error.status === 401) return;
    }
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, REFRESH_MS);
      signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }
}
