// The certify form: POST /v1/certify with one of this tenant's models and inputs given as JSON;
// one row per input with its verdict (and the input drawn, to see what was certified).

import { apiJson } from "./api.js";
import { $, el, number, showMessage } from "./dom.js";

function modelOption(model, selected) {
  const source = model.source && !model.source.includes(model.id) ? ` · ${model.source}` : "";
  return el("option", { value: model.id, selected: model.id === selected },
    `${model.id} — ${model.arch} on ${model.dataset}${source}`);
}

/** The methods the gateway takes, as its OpenAPI schema lists them (the relaxations' records, then complete). */
async function loadMethods(signal) {
  const select = $("certify-method");
  const response = await fetch("/openapi.json", { signal });
  if (!response.ok) return;
  const schema = await response.json();
  const methods = schema.components?.schemas?.RelaxationIn?.properties?.method?.enum ?? [];
  const current = select.value;
  if (methods.length) select.replaceChildren(...methods.map((name) => el("option", { value: name, selected: name === current }, name)));
}

async function loadModels(selected, signal) {
  const select = $("certify-model");
  const models = await apiJson("models", { signal });
  models.reverse(); // newest first
  select.replaceChildren(...models.map((model) => modelOption(model, selected)));
  if (!models.length) select.append(el("option", { value: "", disabled: true, selected: true }, "no models yet: train or upload one"));
}

/** Draw a [C][H][W] input (pixels in [0, 1]; C = 1 grey or 3 RGB) onto a small canvas. */
function thumbnail(input) {
  const channels = input.length;
  const height = input[0]?.length ?? 0;
  const width = input[0]?.[0]?.length ?? 0;
  const canvas = el("canvas", { class: "thumb", width, height });
  if (!width || !height) return canvas;
  const image = new ImageData(width, height);
  for (let row = 0; row < height; row += 1) {
    for (let col = 0; col < width; col += 1) {
      const at = 4 * (row * width + col);
      for (let c = 0; c < 3; c += 1) {
        const value = input[channels === 3 ? c : 0][row][col];
        image.data[at + c] = Math.round(255 * Math.min(1, Math.max(0, value)));
      }
      image.data[at + 3] = 255;
    }
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

function verdictBadge(verdict) {
  const kind = verdict.certified ? "certified" : verdict.correct ? "uncertified" : "misclassified";
  const text = verdict.status || (kind === "uncertified" ? "not certified" : kind); // complete: verified, ...
  return el("span", { class: `badge ${kind}` }, text);
}

function showVerdicts(result, inputs, labels) {
  $("certify-results").hidden = false;
  $("certify-summary").textContent =
    `${result.certified} of ${result.total} certified · ${result.method} · eps ${result.eps}`;
  $("verdicts-body").replaceChildren(...result.verdicts.map((verdict) => el("tr",
    { dataset: { index: verdict.index, certified: verdict.certified, correct: verdict.correct } },
    el("td", {}, verdict.index),
    el("td", {}, thumbnail(inputs[verdict.index])),
    el("td", {}, labels[verdict.index]),
    el("td", {}, verdict.predicted),
    el("td", { class: verdict.correct ? "yes" : "no" }, verdict.correct ? "✓" : "✗"),
    el("td", {}, verdictBadge(verdict)),
    el("td", {}, number(verdict.worst_margin)))));
}

function readBody() {
  let parsed;
  try {
    parsed = JSON.parse($("certify-inputs").value);
  } catch (error) {
    throw new Error(`inputs: not JSON (${error.message})`);
  }
  if (!parsed || !Array.isArray(parsed.inputs) || !Array.isArray(parsed.labels)) {
    throw new Error('inputs: expected {"inputs": [B][C][H][W], "labels": [B]}');
  }
  return parsed;
}

/** "14 inputs of 1×8×8" under the text, so a wrong file shows before it is sent. */
function summarize() {
  let text = "";
  try {
    const { inputs } = readBody();
    const shape = [inputs[0]?.length, inputs[0]?.[0]?.length, inputs[0]?.[0]?.[0]?.length];
    text = `${inputs.length} input${inputs.length === 1 ? "" : "s"} of ${shape.map((n) => n ?? "?").join("×")}`;
  } catch (error) {
    text = $("certify-inputs").value.trim() ? error.message : "";
  }
  $("certify-shape").textContent = text;
}

async function submit(event) {
  event.preventDefault();
  const button = $("certify-submit");
  let body;
  try {
    body = readBody();
  } catch (error) {
    showMessage(error.message);
    return;
  }
  button.disabled = true;
  $("certify-state").textContent = `certifying ${body.inputs.length} input${body.inputs.length === 1 ? "" : "s"}…`;
  try {
    const result = await apiJson("certify", {
      method: "POST",
      body: { model_id: $("certify-model").value, inputs: body.inputs, labels: body.labels,
        eps: Number($("certify-eps").value), relaxation: $("certify-method").value },
    });
    showVerdicts(result, body.inputs, body.labels);
    showMessage("");
  } catch (error) {
    showMessage(`Could not certify: ${error.message}`);
  } finally {
    button.disabled = false;
    $("certify-state").textContent = "";
  }
}

let wired = false;

/** Show the form (model preselected from ?model=) until another view replaces it. */
export async function showCertify(params, signal) {
  if (!wired) {
    wired = true;
    $("certify-form").addEventListener("submit", submit);
    $("certify-file").addEventListener("change", async () => {
      const file = $("certify-file").files[0];
      if (file) $("certify-inputs").value = await file.text();
      summarize();
    });
    let timer = null;
    $("certify-inputs").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(summarize, 300); });
  }
  try {
    await Promise.all([loadModels(params.get("model"), signal), loadMethods(signal)]);
  } catch (error) {
    if (!signal.aborted) showMessage(`Could not list models: ${error.message}`);
  }
}
