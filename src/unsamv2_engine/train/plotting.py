"""``loss.png`` of a fine-tuning run (matplotlib, imported when called)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_losses"]


def plot_losses(history: list[float], val: list[dict[str, Any]], path: Path) -> Path:
    """``loss.png``: the loss of every step (and a running mean), validation 1-click IoU on the right axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(1, len(history) + 1)
    ax.plot(steps, history, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    if len(history) >= 5:
        window = max(5, len(history) // 20)
        kernel = np.ones(window) / window
        smooth = np.convolve(np.asarray(history, float), kernel, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", linewidth=2, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (focal x20 + dice + IoU + objectness)")
    ax.grid(alpha=0.3)
    if val:
        ax2 = ax.twinx()
        ax2.plot([v["step"] for v in val], [v["iou_1click"] for v in val], "o-", color="tab:orange",
                 label="val 1-click IoU")
        ax2.set_ylabel("validation 1-click IoU")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
