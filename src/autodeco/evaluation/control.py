"""Does a decoding command move T and P? The paper's Table 4, on held-out prompts.

For each prompt the heads first answer it plainly (learned decoding, seeded). Then that same
answer is read back (teacher forcing) after the plain prompt and after the prompt with a command of
each condition, once with a trained phrasing and once with a held-out one (phrasings rotate over
the prompts). The answer's tokens are the same in every reading, so the mean T and P over them
differ only by the command: a paired measurement. Reported per condition and phrasing set: mean T
and P, their mean shift from the plain reading, and the share of prompts moved the commanded way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autodeco.kv_cache import left_pad, positions_from_mask
from autodeco.engine import Prompt, encode_prompts, generate
from autodeco.io import atomic_write_text
from autodeco.plots import pyplot, save_png
from autodeco.sampling import SamplingParams
from autodeco.training.nl_control import CONDITIONS, HELD_OUT_PHRASINGS, PHRASINGS, command_prompt

PHRASING_SETS = {"trained": PHRASINGS, "held_out": HELD_OUT_PHRASINGS}
DIRECTION = {"high": 1.0, "low": -1.0, "deterministic": -1.0}


@dataclass(frozen=True)
class Reading:
    """Mean T and P over one answer's tokens after one prompt variant."""

    prompt_index: int
    phrasing_set: str  # "plain", "trained" or "held_out"
    condition: str  # "plain" or one of CONDITIONS
    phrasing: str
    temperature: float
    top_p: float


@torch.no_grad()
def mean_t_and_p(model: Any, prompts: list[list[int]], answer: list[int]) -> list[tuple[float, float]]:
    """(mean T, mean P) over the positions that predict ``answer`` after each prompt: one
    left-padded batch, and the LM head and the heads run on those positions only (a reading of a
    262k-vocabulary model at every prompt position would cost 100x more)."""
    ids, mask = left_pad([prompt + answer for prompt in prompts], 0, model.device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=len(answer) + 1)
    temperature, top_p = out.temperature[:, :-1].float().mean(dim=-1), out.top_p[:, :-1].float().mean(dim=-1)
    return list(zip(temperature.tolist(), top_p.tolist()))


def measure(
    model: Any, tokenizer: Any, prompts: list[Prompt], *, chat: bool, max_new_tokens: int = 48, seed: int = 0,
    stop: tuple[str, ...] = (), batch_size: int = 8,
) -> list[Reading]:
    """Every reading of every prompt (see the module docstring)."""
    answers: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        params = [SamplingParams(max_new_tokens=max_new_tokens, stop=stop, seed=seed + start + i) for i in range(len(batch))]
        answers += [completion.token_ids or [tokenizer.eos_token_id] for completion in generate(model, tokenizer, batch, params, chat=chat)]
    variants: list[tuple[int, str, str, str, Prompt]] = []
    for index, prompt in enumerate(prompts):
        variants.append((index, "plain", "plain", "", prompt))
        for set_name, phrasings in PHRASING_SETS.items():
            for condition in CONDITIONS:
                phrasing = phrasings[condition][index % len(phrasings[condition])]
                variants.append((index, set_name, condition, phrasing, command_prompt(prompt, phrasing)))
    encoded = encode_prompts(tokenizer, [v[4] for v in variants], chat)
    values: list[tuple[float, float]] = []
    per_prompt = 1 + len(PHRASING_SETS) * len(CONDITIONS)  # the variants of one prompt share its answer: one batch
    for start in range(0, len(variants), per_prompt):
        values += mean_t_and_p(model, encoded[start : start + per_prompt], answers[variants[start][0]])
    return [Reading(v[0], v[1], v[2], v[3], t, p) for v, (t, p) in zip(variants, values)]


def summarise(readings: list[Reading]) -> dict[str, Any]:
    """Per phrasing set and condition: mean T and P, mean shifts from the plain reading of the same
    prompt, and the share of prompts whose T (and P) moved the commanded way."""
    plain = {r.prompt_index: r for r in readings if r.condition == "plain"}
    summary: dict[str, Any] = {
        "prompts": len(plain),
        "plain": {"mean_temperature": _mean([r.temperature for r in plain.values()]), "mean_top_p": _mean([r.top_p for r in plain.values()])},
    }
    for set_name in PHRASING_SETS:
        summary[set_name] = {}
        for condition in CONDITIONS:
            rows = [r for r in readings if r.phrasing_set == set_name and r.condition == condition]
            t_shift = [r.temperature - plain[r.prompt_index].temperature for r in rows]
            p_shift = [r.top_p - plain[r.prompt_index].top_p for r in rows]
            sign = DIRECTION[condition]
            summary[set_name][condition] = {
                "mean_temperature": _mean([r.temperature for r in rows]), "mean_top_p": _mean([r.top_p for r in rows]),
                "temperature_shift": _mean(t_shift), "top_p_shift": _mean(p_shift),
                "temperature_right_direction": _mean([float(sign * d > 0) for d in t_shift]), "top_p_right_direction": _mean([float(sign * d > 0) for d in p_shift]),
            }
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def write_report(summary: dict[str, Any], readings: list[Reading], out: Path, title: str) -> list[Path]:
    """results.json, readings.jsonl, report.md and control.png in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "readings.jsonl", out / "report.md", out / "control.png"]
    atomic_write_text(json.dumps(summary, indent=2) + "\n", paths[0])
    atomic_write_text("".join(json.dumps(r.__dict__) + "\n" for r in readings), paths[1])
    plain = summary["plain"]
    lines = [
        f"# Decoding commands: {title}", "",
        f"{summary['prompts']} held-out prompts; each plain answer read back after the plain prompt and after each command "
        "(mean T and P over the answer's tokens; right direction: the share of prompts moved the commanded way).", "",
        "| phrasings | condition | mean T | T shift | T right direction | mean P | P shift | P right direction |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| - | plain | {plain['mean_temperature']:.3f} | | | {plain['mean_top_p']:.5f} | | |",
    ]
    for set_name in PHRASING_SETS:
        for condition in CONDITIONS:
            row = summary[set_name][condition]
            lines.append(
                f"| {set_name.replace('_', '-')} | {condition} | {row['mean_temperature']:.3f} | {row['temperature_shift']:+.3f} | "
                f"{row['temperature_right_direction']:.0%} | {row['mean_top_p']:.5f} | {row['top_p_shift']:+.2g} | {row['top_p_right_direction']:.0%} |"
            )
    atomic_write_text("\n".join(lines) + "\n", paths[2])
    _plot(summary, paths[3])
    return paths


def _plot(summary: dict[str, Any], path: Path) -> None:
    """Mean T and P per condition and phrasing set, beside the plain reading."""
    figure, axes = pyplot().subplots(1, 2, figsize=(9, 3.5))
    labels = ["plain"] + [f"{c}\n{s.replace('_', '-')}" for s in PHRASING_SETS for c in CONDITIONS]
    for axis, key, name in ((axes[0], "mean_temperature", "mean T"), (axes[1], "mean_top_p", "mean P")):
        values = [summary["plain"][key]] + [summary[s][c][key] for s in PHRASING_SETS for c in CONDITIONS]
        axis.bar(range(len(values)), values, color=["grey"] + ["tab:red", "tab:blue", "black"] * len(PHRASING_SETS))
        axis.set_xticks(range(len(values)), labels, fontsize=7)
        axis.set_title(name)
    save_png(figure, path)
