"""Matplotlib helpers shared by training, evaluation and the demo (headless, atomic PNG writes)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autodeco.io import atomic_replace


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure: Any, path: Path) -> None:
    """Write a figure as PNG atomically and free it."""
    atomic_replace(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    pyplot().close(figure)


def png_bytes(figure: Any) -> bytes:
    """A figure as PNG bytes (for embedding in HTML), and free it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def token_trace_figure(pieces: Sequence[str], temperatures: Sequence[float], top_ps: Sequence[float], title: str, max_tokens: int = 60) -> Any:
    """T and P of each token of one answer, drawn over its tokens (the first ``max_tokens``)."""
    pieces = list(pieces)[:max_tokens]
    figure, axis = pyplot().subplots(figsize=(max(6.0, 0.28 * len(pieces)), 3.6))
    steps = list(range(len(pieces)))
    axis.plot(steps, list(temperatures)[: len(pieces)], marker="o", label="temperature")
    axis.plot(steps, list(top_ps)[: len(pieces)], marker="s", label="top-p")
    axis.set_xticks(steps, [repr(p)[1:-1] for p in pieces], rotation=70, fontsize=7)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure
