// The live training curve: loss per step (left axis), one line per stage (a PGD warm-up's adversarial
// loss is not the main stage's robust loss), the stage changes marked by a labelled vertical line, and
// the evaluations' accuracies in % (right axis), one marker per evaluation and straight lines between
// them (no smoothing through a few points). Drawn with the vendored Chart.js; points are added as events
// arrive and drawn once per frame; the canvas's data-points attribute counts the loss points (what the
// page has received).

const COLORS = { natural: "#9ca3af", certified: "#16a34a", adversarial: "#f59e0b" };
const STAGE_COLORS = { warmup: "#7c3aed", main: "#2563eb" };
const STAGE_NAMES = { warmup: "warm-up", main: "main" };
const ACCURACIES = 3; // the accuracy datasets come first, the loss datasets (one per stage) after them

function series(label, color, axis, extra = {}) {
  return { label, data: [], borderColor: color, backgroundColor: color, yAxisID: axis, borderWidth: 2,
    pointRadius: 0, tension: 0, ...extra };
}

export function stageName(stage) {
  return STAGE_NAMES[stage] ?? stage;
}

/** Draws a dashed vertical line, labelled ``warm-up → main``, at each stage change. */
const stageLines = {
  id: "stageLines",
  afterDatasetsDraw(chart) {
    const boundaries = chart.$stageBoundaries ?? []; // a plain array (options are proxied by Chart.js)
    const { ctx, chartArea, scales } = chart;
    ctx.save();
    ctx.strokeStyle = "#6b7280";
    ctx.fillStyle = "#374151";
    ctx.setLineDash([5, 4]);
    ctx.font = "11px sans-serif";
    for (const { at, label } of boundaries) {
      const x = scales.x.getPixelForValue(at);
      if (x < chartArea.left || x > chartArea.right) continue;
      ctx.beginPath();
      ctx.moveTo(x, chartArea.top);
      ctx.lineTo(x, chartArea.bottom);
      ctx.stroke();
      ctx.fillText(label, x + 4, chartArea.top + 12);
    }
    ctx.restore();
  },
};

export class Curve {
  constructor(canvas) {
    this.canvas = canvas;
    this.canvas.dataset.points = "0";
    this.canvas.dataset.stages = "";
    this.pending = false;
    this.stage = null;
    this.losses = new Map(); // stage -> its dataset
    this.boundaries = [];
    this.chart = new window.Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          series("natural acc (%)", COLORS.natural, "acc", { pointRadius: 3, borderDash: [4, 3] }),
          series("adversarial acc (%)", COLORS.adversarial, "acc", { pointRadius: 3, pointStyle: "rect",
            borderDash: [4, 3] }),
          series("certified acc (%)", COLORS.certified, "acc", { pointRadius: 3, pointStyle: "triangle" }),
        ],
      },
      plugins: [stageLines],
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        normalized: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "step" }, ticks: { precision: 0 } },
          loss: { position: "left", title: { display: true, text: "loss" } },
          acc: { position: "right", min: 0, max: 100, title: { display: true, text: "test accuracy (%)" },
            ticks: { callback: (value) => `${value}%` }, grid: { drawOnChartArea: false } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 18, boxHeight: 3 } },
        },
      },
    });
    this.chart.$stageBoundaries = this.boundaries;
  }

  /** The loss dataset of ``stage``, made (and a stage change marked) when its first step arrives. */
  lossSet(stage, step) {
    let set = this.losses.get(stage);
    if (!set) {
      set = series(`loss (${stageName(stage)})`, STAGE_COLORS[stage] ?? "#0891b2", "loss");
      this.losses.set(stage, set);
      this.chart.data.datasets.push(set);
      this.canvas.dataset.stages = [...this.losses.keys()].join(",");
    }
    if (this.stage !== null && this.stage !== stage) {
      this.boundaries.push({ at: step - 0.5, label: `${stageName(this.stage)} → ${stageName(stage)}` });
    }
    this.stage = stage;
    return set;
  }

  /** How many loss points the chart holds (all stages). */
  lossPoints() {
    return this.chart.data.datasets.slice(ACCURACIES).reduce((total, set) => total + set.data.length, 0);
  }

  /** One metrics row of the job: a step adds a loss point, an evaluation adds accuracy points. */
  add(row) {
    const [natural, adversarial, certified] = this.chart.data.datasets;
    if (row.kind === "step" && typeof row.loss === "number") {
      this.lossSet(row.stage ?? "main", row.step).data.push({ x: row.step, y: row.loss });
      this.canvas.dataset.points = String(this.lossPoints());
    } else if (row.kind === "epoch") {
      const at = row.step;
      if (typeof row.natural_acc === "number") natural.data.push({ x: at, y: 100 * row.natural_acc });
      if (typeof row.adversarial_acc === "number") adversarial.data.push({ x: at, y: 100 * row.adversarial_acc });
      if (typeof row.certified_acc === "number") certified.data.push({ x: at, y: 100 * row.certified_acc });
    } else {
      return;
    }
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.chart.update("none");
      });
    }
  }

  /** Fix the step axis to the job's length once the coordinator has planned it. */
  setTotal(total) {
    if (total > 0 && this.chart.options.scales.x.max !== total) {
      this.chart.options.scales.x.max = total;
      this.chart.update("none");
    }
  }

  destroy() {
    this.chart.destroy();
    this.canvas.dataset.points = "0";
    this.canvas.dataset.stages = "";
  }
}
