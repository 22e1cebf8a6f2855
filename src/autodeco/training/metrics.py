"""The training log: one JSON line per optimizer step, and a plot of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autodeco.io import atomic_write_text
from autodeco.plots import pyplot, save_png


class MetricsLog:
    """``metrics.jsonl`` in the output dir; on resume, lines past the checkpoint are dropped so
    the log reads as one uninterrupted run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.records() if r["step"] <= step]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def plot_training(records: list[dict[str, Any]], path: Path) -> None:
    """A PNG with three panels over steps: the losses, the mean predicted T, the mean predicted P."""
    steps = [r["step"] for r in records]
    figure, axes = pyplot().subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("loss", "total"), ("temperature_loss", "temperature"), ("top_p_loss", "top-p")):
        values = [r.get(key) for r in records]
        if any(v is not None for v in values):
            axes[0].plot(steps, values, label=label)
    axes[0].set_title("loss")
    axes[0].legend()
    for axis, key, title in ((axes[1], "mean_temperature", "mean predicted T"), (axes[2], "mean_top_p", "mean predicted P")):
        axis.plot(steps, [r[key] for r in records])
        axis.set_title(title)
    for axis in axes:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    save_png(figure, path)
