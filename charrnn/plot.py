"""The loss curve of a run, drawn from its metrics (needs matplotlib: the `plot` extra)."""
from __future__ import annotations

import sys
from pathlib import Path


def plot_metrics(metrics: list[dict], path: Path) -> None:
    """Draw training and validation loss against step; say how to get the plot without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"pip install matplotlib to draw {path.name} from metrics.jsonl", file=sys.stderr)
        return
    train = [m for m in metrics if "train_loss" in m]
    val = [m for m in metrics if "val_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([m["step"] for m in train], [m["train_loss"] for m in train], label="train (smoothed)", alpha=0.8)
    ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
