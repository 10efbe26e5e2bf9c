// The live training curve: loss per step (left axis) and the evaluations' accuracies (right axis),
// drawn with the vendored Chart.js. Points are added as events arrive and drawn once per frame;
// the canvas's data-points attribute counts the loss points (what the page has received).

const COLORS = { loss: "#2563eb", natural: "#9ca3af", certified: "#16a34a", adversarial: "#f59e0b" };

function series(label, color, axis, extra = {}) {
  return { label, data: [], borderColor: color, backgroundColor: color, yAxisID: axis, borderWidth: 2,
    pointRadius: 0, tension: 0.2, ...extra };
}

export class Curve {
  constructor(canvas) {
    this.canvas = canvas;
    this.canvas.dataset.points = "0";
    this.pending = false;
    this.chart = new window.Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          series("loss", COLORS.loss, "loss"),
          series("natural acc", COLORS.natural, "acc", { pointRadius: 3, borderDash: [4, 3] }),
          series("adversarial acc", COLORS.adversarial, "acc", { pointRadius: 3, borderDash: [4, 3] }),
          series("certified acc", COLORS.certified, "acc", { pointRadius: 3 }),
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        normalized: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "step" }, ticks: { precision: 0 } },
          loss: { position: "left", title: { display: true, text: "loss" } },
          acc: { position: "right", min: 0, max: 1, title: { display: true, text: "accuracy" },
            grid: { drawOnChartArea: false } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 18, boxHeight: 3 } } },
      },
    });
  }

  /** One metrics row of the job: a step adds a loss point, an evaluation adds accuracy points. */
  add(row) {
    const [loss, natural, adversarial, certified] = this.chart.data.datasets;
    if (row.kind === "step" && typeof row.loss === "number") {
      loss.data.push({ x: row.step, y: row.loss });
      this.canvas.dataset.points = String(loss.data.length);
    } else if (row.kind === "epoch") {
      const at = row.step;
      if (typeof row.natural_acc === "number") natural.data.push({ x: at, y: row.natural_acc });
      if (typeof row.adversarial_acc === "number") adversarial.data.push({ x: at, y: row.adversarial_acc });
      if (typeof row.certified_acc === "number") certified.data.push({ x: at, y: row.certified_acc });
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
  }
}
