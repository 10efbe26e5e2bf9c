// One job: its facts, the live curve and evaluation table (from the job's event stream), cancel and
// download. The stream replays the job's history first, so opening a finished job shows it whole.

import { apiJson, download } from "./api.js";
import { Curve, stageName } from "./curve.js";
import { $, badge, el, number, percent, showMessage, when } from "./dom.js";
import { followEvents } from "./sse.js";

const NUMERIC = new Set(["step", "total_steps", "members_done", "members", "created", "updated"]); // status events carry Redis strings
// Progress within a long step (the coordinator writes it once a step has run for a second).
const inStep = (job) => job.status === "running" && job.members
  ? ` (step ${job.step + 1}: ${job.members_done} / ${job.members} members)` : "";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const LIVE_TEXT = { live: "● live", reconnecting: "reconnecting…", ended: "finished" };

class JobPage {
  constructor(job) {
    this.job = job;
    this.curve = new Curve($("job-chart"));
    this.lastStep = null;
    this.evaluations = 0;
    $("metrics-body").replaceChildren();
    $("metrics-empty").hidden = false;
  }

  /** Take newer fields. Answers may arrive out of order (a DELETE's reply after the stream's final
   * status), so a finished status is never replaced by an unfinished one. */
  merge(fields) {
    const finished = FINISHED.has(this.job.status);
    for (const [key, value] of Object.entries(fields)) {
      if (key === "type" || key === "event_id") continue;
      if (key === "status" && finished && !FINISHED.has(value)) continue;
      this.job[key] = NUMERIC.has(key) ? Number(value) : value;
    }
    if (typeof this.job.cancel_requested === "string") this.job.cancel_requested = this.job.cancel_requested === "1";
    this.render();
  }

  metrics(row) {
    this.curve.add(row);
    if (row.kind === "step") {
      this.lastStep = row;
      if (typeof row.step === "number" && row.step > (this.job.step || 0)) this.job.step = row.step;
    } else if (row.kind === "epoch") {
      this.evaluation(row);
    }
    this.render();
  }

  evaluation(row) {
    this.evaluations += 1;
    $("metrics-empty").hidden = true;
    $("metrics-body").append(el("tr", { dataset: { step: row.step } },
      el("td", {}, row.stage ?? ""), el("td", {}, row.epoch ?? ""), el("td", {}, row.step ?? ""),
      el("td", {}, percent(row.natural_acc)), el("td", {}, percent(row.adversarial_acc)),
      el("td", { class: "strong" }, percent(row.certified_acc)), el("td", {}, number(row.train_loss)),
      el("td", {}, row.method ?? ""), el("td", {}, row.eps ?? ""),
      el("td", {}, typeof row.epoch_time_s === "number" ? `${row.epoch_time_s.toFixed(2)} s` : "–")));
  }

  render() {
    const job = this.job;
    const config = job.config || {};
    $("job-id").textContent = job.id;
    $("job-status").replaceWith(Object.assign(badge(job.status), { id: "job-status" }));
    const facts = [
      ["Name", job.name || "–"],
      ["Step", (job.total_steps ? `${job.step} / ${job.total_steps}` : String(job.step ?? 0)) + inStep(job)],
      ["Latest loss", this.lastStep ? number(this.lastStep.loss) : "–"],
      ["Stage now", this.lastStep ? stageName(this.lastStep.stage ?? "main") : "–"],
      ["lr / eps now", this.lastStep ? `${number(this.lastStep.lr)} / ${number(this.lastStep.eps)}` : "–"],
      ["sigma now", typeof this.lastStep?.sigma === "number" ? this.lastStep.sigma.toExponential(3) : "–"],
      ["Estimator", config.estimator ?? "–"],
      ["Relaxation", config.relaxation ?? "–"],
      ["Target eps", config.eps ?? "–"],
      ["Model", `${config.model?.arch ?? "?"} on ${config.data?.dataset ?? "?"}`],
      ["Created", when(job.created)],
      ["Updated", when(job.updated)],
      ["Trained model", job.model_id || "–"],
    ];
    $("job-facts").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
    const share = job.total_steps ? Math.min(1, job.step / job.total_steps) : 0;
    $("job-progress").style.width = `${100 * share}%`;
    this.curve.setTotal(job.total_steps);
    $("job-error").hidden = !job.error;
    $("job-error").textContent = job.error || "";
    const finished = FINISHED.has(job.status);
    $("job-cancel").disabled = finished || Boolean(job.cancel_requested);
    $("job-cancel").textContent = job.cancel_requested && !finished ? "Cancelling…" : "Cancel";
    $("job-download").disabled = !job.model_id && !(job.step > 0);
    $("job-download").textContent = job.model_id ? "Download model" : "Download latest checkpoint";
    $("job-certify").hidden = !job.model_id;
    if (job.model_id) $("job-certify").href = `#/certify?model=${encodeURIComponent(job.model_id)}`;
  }

  destroy() {
    this.curve.destroy();
  }
}

function live(state) {
  $("job-live").textContent = LIVE_TEXT[state] || "";
  $("job-live").dataset.state = state;
}

/** Nothing of the previously shown job (perhaps another tenant's) stays while this one loads. */
function reset() {
  for (const id of ["job-id", "job-facts", "metrics-body", "job-error"]) $(id).replaceChildren();
  $("job-status").replaceWith(Object.assign(badge(""), { id: "job-status" }));
  $("job-progress").style.width = "0";
  for (const id of ["job-cancel", "job-download"]) $(id).disabled = true;
  $("job-certify").hidden = true;
}

/** Show job ``jobId`` until signal aborts. */
export async function showJob(jobId, signal) {
  reset();
  live("connecting");
  const page = new JobPage(await apiJson(`jobs/${encodeURIComponent(jobId)}`, { signal }));
  page.render();
  signal.addEventListener("abort", () => page.destroy(), { once: true });

  $("job-cancel").onclick = async () => {
    if (!window.confirm(`Cancel job ${jobId}? A running job stops after its current step.`)) return;
    try {
      page.merge(await apiJson(`jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" }));
      showMessage("Cancel requested.", "notice");
    } catch (error) {
      showMessage(`Could not cancel: ${error.message}`);
    }
  };
  $("job-download").onclick = async () => {
    const params = page.job.model_id ? undefined : { latest: "true" };
    try {
      const name = await download(`jobs/${encodeURIComponent(jobId)}/model`, params, `${jobId}.safetensors`);
      showMessage(`Saved ${name}.`, "notice");
    } catch (error) {
      showMessage(`Could not download: ${error.message}`);
    }
  };

  await followEvents(`jobs/${encodeURIComponent(jobId)}/events`, {
    signal,
    onState: live,
    onEvent: (type, data) => {
      if (type === "metrics") page.metrics(data);
      else if (type === "status") page.merge(data);
      else if (type === "end" && data.job) page.merge(data.job);
    },
  });
}
