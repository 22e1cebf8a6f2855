"""A self-contained HTML page of answers, every token coloured by its temperature, with its T and
P on hover, and a plot of T and P along each answer (embedded PNG)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autodeco.engine import Completion
from autodeco.io import atomic_write_text
from autodeco.plots import png_bytes, token_trace_figure


def temperature_color(temperature: float) -> str:
    """``rgb(...)`` for a token sampled at this temperature: blue (0, near greedy) to red (2);
    "default" for a non-finite value. Rich styles and CSS both read it."""
    if not math.isfinite(temperature):
        return "default"
    x = min(max(temperature / 2.0, 0.0), 1.0)
    return f"rgb({int(60 + 195 * x)},{int(110 + 60 * (1 - abs(2 * x - 1)))},{int(255 - 195 * x)})"


@dataclass
class ShownAnswer:
    """One prompt and its answer, as the page shows it."""

    title: str
    prompt: str
    completion: Completion


def _token_spans(completion: Completion) -> str:
    spans = []
    for token in completion.tokens:
        tip = f"T={token.temperature:.3f}  P={token.top_p:.3f}  id={token.token_id}"
        text = html.escape(token.text).replace("\n", "↵<br>")
        spans.append(f'<span class="tok" style="background:{temperature_color(token.temperature)}" title="{tip}">{text}</span>')
    return "".join(spans)


def answers_html(answers: Sequence[ShownAnswer], heading: str) -> str:
    """The page as a string."""
    sections = []
    for answer in answers:
        c = answer.completion
        plot = ""
        if len(c.tokens) >= 2:
            figure = token_trace_figure([t.text for t in c.tokens], c.temperatures, c.top_ps, answer.title)
            plot = f'<img alt="T and P along the answer" src="data:image/png;base64,{base64.b64encode(png_bytes(figure)).decode()}">'
        sections.append(
            f"<section><h2>{html.escape(answer.title)}</h2><pre class='prompt'>{html.escape(answer.prompt)}</pre>"
            f"<p class='answer'>{_token_spans(c)}</p>"
            f"<p class='stats'>{len(c.tokens)} tokens · mean T {c.mean_temperature:.3f} · mean P {c.mean_top_p:.3f} · finish: {c.finish_reason}</p>{plot}</section>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        ".prompt{color:#666;white-space:pre-wrap}.answer{font-family:monospace;font-size:1.05rem;line-height:1.9}"
        ".tok{color:#fff;border-radius:3px;padding:1px 0;cursor:help}.stats{color:#444}img{max-width:100%}"
    )
    legend = "Each token is coloured by the temperature it was sampled at (blue = low, red = high); hover for its T and P."
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(heading)}</title><style>{style}</style></head>"
        f"<body><h1>{html.escape(heading)}</h1><p>{legend}</p>{''.join(sections)}</body></html>\n"
    )


def write_answers_html(answers: Sequence[ShownAnswer], heading: str, path: Path) -> None:
    """Write the page atomically."""
    atomic_write_text(answers_html(answers, heading), path)
