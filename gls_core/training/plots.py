"""Training curves as PNG: loss, accuracies and sigma, read back from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_FILE = "curves.png"


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Three panels: train loss per step, natural/adversarial/certified accuracy per epoch, sigma per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row for row in rows if row.get("kind") == "step"]
    epochs = [row for row in rows if row.get("kind") == "epoch"]
    figure, (loss_ax, acc_ax, sigma_ax) = plt.subplots(1, 3, figsize=(15, 4))
    loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    for key, label in (("natural_acc", "natural"), ("adversarial_acc", "adversarial"), ("certified_acc", "certified")):
        acc_ax.plot([r["step"] for r in epochs], [100 * r[key] for r in epochs], marker="o", label=label)
    acc_ax.set(title="test accuracy", xlabel="step", ylabel="%")
    acc_ax.legend()
    sigma_steps = [r for r in steps if "sigma" in r]
    if sigma_steps:
        sigma_ax.plot([r["step"] for r in sigma_steps], [r["sigma"] for r in sigma_steps])
    sigma_ax.set(title="sigma (mean)", xlabel="step", ylabel="sigma")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
