"""Why the shipped Gemma-3-270M top-p head predicts P ~ 1, and what moves it (issue 20, part 4).

Three stages, each writing JSON under ``--out``:

1. ``gradient``: the soft top-p loss's derivative in P, analytically,
   dL/dP = alpha * (A - [c_y > P]) with A = sum_{i: c_i > P} p_i m_i / Z (see
   :func:`autodeco.training.losses.soft_top_p_gradient_in_p`), checked against autograd on random rows.
2. ``features``: the base's completion hidden states and logits for every sampled answer of
   ``--samples-dir`` (correct and wrong, rebuilt from the evaluator's sample records), cached in
   ``--work``; then ``landscape``: on those tokens, with the shipped heads' T, the per-token
   quantities behind the gradient (the target's cumulative mass c_y, argmax share, DFT weight), the
   mean loss of a constant P, and the best constant P per confidence bin.
3. ``train``: fresh heads trained on the cached features with the trainer's losses and settings
   (AdamW, cosine, clip 1, batch 16 examples), one variant at a time; the predicted P on the
   correct answers' tokens (mean, sd, share below 0.99) is what each variant reports.

Run (2 CPU cores: features some minutes, the landscape ~40 s, each variant 3-20 s):
    python benchmarks/evidence/top_p_saturation.py --samples-dir /tmp/tps/arith.jsonl.samples \
        --task "reasoning_gym:basic_arithmetic,min_terms=2,max_terms=2,min_digits=1,max_digits=1,size=2000" \
        --work /tmp/tps/work --out benchmarks/results/evidence-gemma-3-270m/top-p-saturation
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from autodeco.evaluation.runner import prompt_digest
from autodeco.engine import encode_prompts
from autodeco.heads import AutoDecoHeads, probability_statistics
from autodeco.modeling import final_hidden_states, load_base, load_heads, logits_from_hidden
from autodeco.models import load_tokenizer
from autodeco.training.data import Example, collate
from autodeco.training.losses import (
    _tail_integral,
    autodeco_losses,
    dft_weights,
    soft_top_p_gradient_in_p,
    soft_top_p_loss_reference,
    target_cumulative_mass,
)
from autodeco.training.self_data import completion_ids, training_task

ALPHA = 30.0


def _write(out: Path, name: str, payload: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(payload, indent=2) + "\n")


def _summary(values: torch.Tensor) -> dict[str, float]:
    """mean, sd, share below 0.99 and a few quantiles of predicted P (or T)."""
    values = values.double()
    quantiles = torch.quantile(values, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist() if values.numel() else [math.nan] * 3
    return {
        "n": values.numel(), "mean": values.mean().item(), "share_exactly_1": (values == 1.0).double().mean().item(), "sd": values.std().item() if values.numel() > 1 else 0.0,
        "share_below_0.99": (values < 0.99).double().mean().item(), "share_below_0.9": (values < 0.9).double().mean().item(),
        "q05": quantiles[0], "median": quantiles[1], "q95": quantiles[2],
    }


@torch.no_grad()
def hard_nucleus(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """What the inference-time cut does at (T, P): mean nucleus size, share of rows keeping more
    than one token, and the share of targets kept (mass strictly above y below P)."""
    sizes, kept = [], []
    for start in range(0, logits.shape[0], 64):
        rows = slice(start, start + 64)
        probs = torch.softmax(logits[rows].float() / temperature[rows].unsqueeze(-1), -1)
        sorted_probs, order = probs.sort(-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each token
        inside = before < top_p[rows].unsqueeze(-1)
        sizes.append(inside.sum(-1))
        rank = (order == targets[rows].unsqueeze(-1)).float().argmax(-1, keepdim=True)
        kept.append(inside.gather(-1, rank).squeeze(-1))
    size, kept = torch.cat(sizes).double(), torch.cat(kept).double()
    return {"median_size": size.median().item(), "share_more_than_one": (size > 1).double().mean().item(), "target_kept": kept.mean().item()}


def top_p_quantile_loss(top_p: torch.Tensor, target_mass: torch.Tensor, quantile: float) -> torch.Tensor:
    """``[N]``: the pinball loss q * relu(c_y - P) + (1 - q) * relu(P - c_y), c_y from
    :func:`~autodeco.training.losses.target_cumulative_mass` (no gradient). Not the paper's: its
    minimiser over the targets seen in a context is the q-quantile of c_y there (P becomes the
    smallest soft nucleus that keeps the data's token a share q of the time), and a P above c_y
    pays (1 - q) per unit however little the tail past P weighs."""
    gap = target_mass.detach().to(top_p.dtype) - top_p
    return quantile * torch.relu(gap) + (1.0 - quantile) * torch.relu(-gap)


# ---------------------------------------------------------------------------------------- stage 1
def gradient_check(seed: int = 0) -> dict[str, Any]:
    """Analytic dL/dP against autograd of the reference loss, on random rows and a grid of P."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 200, generator=generator, dtype=torch.float64) * 3
    temperature = torch.rand(64, generator=generator, dtype=torch.float64) + 0.3
    targets = torch.where(torch.arange(64) % 2 == 0, logits.argmax(-1), torch.randint(0, 200, (64,), generator=generator))
    worst, rows = 0.0, []
    for value in (0.5, 0.8, 0.9, 0.99, 0.999, 0.99999):
        top_p = torch.full((64,), value, dtype=torch.float64, requires_grad=True)
        loss = soft_top_p_loss_reference(logits, temperature, top_p, targets, alpha=ALPHA)
        autograd = torch.autograd.grad(loss.sum(), top_p)[0]
        analytic = soft_top_p_gradient_in_p(logits, temperature, top_p.detach(), targets, alpha=ALPHA)
        fine = loss.detach() < 15  # rows where p~_y is far above the 1e-9 guard (the guard flattens the loss)
        worst = max(worst, (autograd - analytic)[fine].abs().max().item())
        cut = target_cumulative_mass(logits, temperature, targets) > value
        rows.append({"P": value, "mean_dL_dP_target_inside": autograd[~cut].mean().item() if (~cut).any() else None,
                     "mean_dL_dP_target_cut": autograd[cut].mean().item() if cut.any() else None,
                     "share_cut": cut.double().mean().item()})
    return {"max_abs_error_analytic_vs_autograd": worst, "by_P": rows}


# ---------------------------------------------------------------------------------------- stage 2
def sampled_examples(samples_dir: Path, spec: str, tokenizer: Any) -> tuple[list[Example], list[bool]]:
    """Every sampled answer in ``samples_dir/samples.jsonl`` (correct or not) as a training example
    (prompt ids rebuilt from the task exactly as ``autodeco sample-data`` does, checked by digest)."""
    task = training_task(spec)
    problems = {p.id: p for p in task.problems()}
    records = [json.loads(line) for line in (samples_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    examples, correct, prompts = [], [], {}
    for record in records:
        if record["problem"] not in prompts:
            problem = problems[record["problem"]]
            chat = next((c for c in (False, True) if prompt_digest(task.prompt(problem, c)) == record["prompt_sha"]), None)
            if chat is None:
                raise SystemExit(f"no prompt of {record['problem']} matches its sample's digest")
            prompts[record["problem"]] = encode_prompts(tokenizer, [task.prompt(problem, chat)], chat=chat)[0]
        prompt_ids = prompts[record["problem"]]
        examples.append(Example(tuple(prompt_ids) + tuple(completion_ids(record)), len(prompt_ids)))
        correct.append(bool(record["correct"]))
    return examples, correct


def build_features(samples_dir: Path, spec: str, work: Path, base: str = "gemma-3-270m") -> dict[str, torch.Tensor]:
    """Hidden states, logits (bfloat16) and targets of every completion token, cached in ``work``."""
    path = work / "features.pt"
    if path.is_file():
        return torch.load(path)
    tokenizer = load_tokenizer(base)
    examples, correct = sampled_examples(samples_dir, spec, tokenizer)
    llm = load_base(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hidden, logits, targets, example_ids = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            batch = examples[start : start + 16]
            ids, mask = collate(batch, pad)
            states = final_hidden_states(llm, ids, mask)
            for row, example in enumerate(batch):
                rows = states[row, example.prompt_length - 1 : len(example.input_ids) - 1]
                hidden.append(rows.float())
                logits.append(logits_from_hidden(llm, rows).to(torch.bfloat16))
                targets.append(example.targets())
                example_ids.append(torch.full((example.completion_length,), start + row))
    features = {
        "hidden": torch.cat(hidden), "logits": torch.cat(logits), "targets": torch.cat(targets),
        "example": torch.cat(example_ids), "correct": torch.tensor(correct),
    }
    work.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    return features


@torch.no_grad()
def loss_by_constant_p(logits: torch.Tensor, temperature: torch.Tensor, targets: torch.Tensor, grid: list[float], head: int = 4096) -> torch.Tensor:
    """``[N, G]``: the soft top-p loss of each token at each constant P of ``grid`` (one softmax
    and top-k per row for the whole grid: the ``head`` most probable tokens exactly, the rest of
    the mass through the tail integral of :mod:`autodeco.training.losses`, off by at most the
    head's last probability)."""
    rows = []
    values = torch.tensor(grid, dtype=torch.float64)
    for start in range(0, logits.shape[0], 64):
        chunk = slice(start, start + 64)
        log_probs = torch.log_softmax(logits[chunk].double() / temperature[chunk].double().unsqueeze(-1), -1)
        head_probs = log_probs.topk(head, dim=-1).values.exp()  # [n, K] descending
        cumulative = head_probs.cumsum(-1)
        mass = cumulative[:, -1:].clamp_max(1.0)
        p_y = log_probs.gather(-1, targets[chunk].unsqueeze(-1)).exp()
        c_y = target_cumulative_mass(logits[chunk], temperature[chunk], targets[chunk]).double().unsqueeze(-1)
        top_p = values.view(1, 1, -1)
        decay = torch.exp(-ALPHA * torch.relu(cumulative.unsqueeze(-1) - top_p))  # [n, K, G]
        z = (head_probs.unsqueeze(-1) * decay).sum(1) + _tail_integral(mass, values.view(1, -1), ALPHA)
        m_y = torch.exp(-ALPHA * torch.relu(c_y - values.view(1, -1)))
        rows.append(-torch.log(p_y * m_y / (z + 1e-9) + 1e-9))
    return torch.cat(rows)


def _best(losses: torch.Tensor, weights: torch.Tensor, grid: list[float]) -> dict[str, Any]:
    mean = (losses * weights.double().unsqueeze(-1)).sum(0) / weights.double().sum()
    best = int(mean.argmin())
    return {"loss_by_P": {str(v): mean[i].item() for i, v in enumerate(grid)}, "best_P": grid[best],
            "loss_gain_best_vs_0.99999": (mean[-1] - mean[best]).item()}


def landscape(features: dict[str, torch.Tensor], heads: AutoDecoHeads) -> dict[str, Any]:
    """The shipped heads on every token, and the soft top-p loss's view of P there. The heads and
    the DFT weights see the whole vocabulary; the rest uses :func:`restrict_vocabulary`'s 16,384
    most probable tokens per row (at T <= 1 the mass past them is below 0.2%)."""
    logits = features["logits"].float()
    correct_token = features["correct"][features["example"]]
    with torch.no_grad():
        temperature, top_p = heads(features["hidden"], logits)
        dft = dft_weights(logits, features["targets"])
        pre_sigmoid = heads.top_p_head.mlp[:-1](torch.cat([features["hidden"], temperature.unsqueeze(-1), probability_statistics(logits, temperature)], -1)).squeeze(-1)
        restricted = restrict_vocabulary(features)
        del logits
        logits, targets = restricted["logits"].float(), restricted["targets"]
        mass = target_cumulative_mass(logits, temperature, targets)
        argmax = logits.argmax(-1) == targets
        gradient_grid = [0.9, 0.99, 0.999, 0.9999]
        max_prob, gradient = [], []
        for start in range(0, len(targets), 64):  # float64 sorts of [64, V] at a time
            rows = slice(start, start + 64)
            max_prob.append(torch.softmax(logits[rows] / temperature[rows].unsqueeze(-1), -1).amax(-1))
            gradient.append(torch.stack([
                soft_top_p_gradient_in_p(logits[rows], temperature[rows], torch.full_like(temperature[rows], value), targets[rows], alpha=ALPHA).float()
                for value in gradient_grid], -1))
        max_prob, gradient = torch.cat(max_prob), torch.cat(gradient)
    grid = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999]
    loss_shipped_t = loss_by_constant_p(logits, temperature, targets, grid)
    loss_t_1 = loss_by_constant_p(logits, torch.ones_like(temperature), targets, grid)
    result: dict[str, Any] = {}
    for name, rows in (("correct_answers", correct_token), ("all_answers", torch.ones_like(correct_token))):
        t, p, g, c, w = temperature[rows], top_p[rows], gradient[rows], mass[rows], dft[rows]
        by_p = []
        for column, value in enumerate(gradient_grid):
            cut, slope = c > value, value * (1 - value)
            push = g[:, column]
            by_p.append({
                "P": value, "share_targets_cut": cut.double().mean().item(), "dft_weighted_share_cut": (w * cut).sum().item() / w.sum().item(),
                "mean_dL_dP_target_inside": push[~cut].mean().item() if (~cut).any() else None,
                "mean_dL_dP_target_cut": push[cut].mean().item() if cut.any() else None,
                "dft_weighted_mean_dL_dP": ((push * w).sum() / w.sum()).item(),
                "dft_weighted_mean_dL_dlogit": ((push * w).sum() / w.sum()).item() * slope,
            })
        result[name] = {
            "tokens": int(rows.sum()),
            "shipped_T": _summary(t), "shipped_P": _summary(p),
            "shipped_P_is_1_in_float32": (p == 1.0).double().mean().item(),
            "shipped_P_pre_sigmoid_logit": _summary(pre_sigmoid[rows]),
            "share_target_is_argmax": argmax[rows].double().mean().item(),
            "target_cumulative_mass_c_y": _summary(c),
            "max_prob_at_T": _summary(max_prob[rows]),
            "shipped_hard_nucleus": hard_nucleus(logits[rows], t, p, targets[rows]),
            "dL_dP_at_shipped_T_by_constant_P": by_p,
        }
        joint = {}
        for value in (0.15, 0.2, 0.3, 0.5, 0.7, 1.0) if name == "correct_answers" else ():
            curve = _best(loss_by_constant_p(logits[rows], torch.full_like(t, value), targets[rows], grid), w, grid)
            joint[str(value)] = {"best_P": curve["best_P"], "loss_at_best_P": curve["loss_by_P"][str(curve["best_P"])], "loss_at_P_0.99999": curve["loss_by_P"]["0.99999"]}
        if joint:
            result[name]["constant_T_and_P_top_p_loss_dft"] = joint
        ones = torch.ones_like(w)
        at_shipped_t, at_t_1 = loss_shipped_t[rows], loss_t_1[rows]
        result[name]["constant_P_loss"] = {
            "shipped_T_dft": _best(at_shipped_t, w, grid), "shipped_T_no_dft": _best(at_shipped_t, ones, grid),
            "T_1_dft": _best(at_t_1, w, grid), "T_1_no_dft": _best(at_t_1, ones, grid),
        }
        bins = [0.0, 0.5, 0.8, 0.95, 0.99, 0.999, 1.01]
        per_bin = []
        for low, high in zip(bins, bins[1:]):
            inside = (max_prob[rows] >= low) & (max_prob[rows] < high)
            if inside.sum():
                per_bin.append({"max_prob_at_T": [low, min(high, 1.0)], "tokens": int(inside.sum()),
                                "share_target_is_argmax": argmax[rows][inside].double().mean().item(),
                                **_best(at_shipped_t[inside], w[inside], grid)})
        result[name]["best_constant_P_per_confidence_bin"] = per_bin
    return result


# ---------------------------------------------------------------------------------------- stage 3
def restrict_vocabulary(features: dict[str, torch.Tensor], keep: int = 16384) -> dict[str, torch.Tensor]:
    """The features with each token's logits cut to its ``keep`` largest (the target always among
    them; on these answers the target's rank is below 2,000 and the mass past 16,384 tokens is
    below 0.2% at T = 1), targets renumbered: training variants then cost 16x less. The heads'
    variance statistic divides by ``keep - 1`` instead of V - 1 (a fixed rescaling of one input)."""
    logits = features["logits"].float()
    values, ids = logits.topk(keep, dim=-1)
    hit = ids == features["targets"].unsqueeze(-1)
    if not bool(hit.any(-1).all()):
        raise SystemExit(f"a target lies past the {keep} most probable tokens; raise keep")
    return {**features, "logits": values.to(torch.bfloat16), "targets": hit.float().argmax(-1)}


def train_variant(features: dict[str, torch.Tensor], *, name: str, seed: int = 0, steps: int = 150, lr: float = 5e-4, batch_size: int = 16,
                  data: str = "correct", dft: bool = True, alpha: float = ALPHA, losses: tuple[str, ...] = ("temperature", "top_p"),
                  top_p_objective: str = "soft", top_p_quantile: float = 0.9, top_p_bias: float | None = None,
                  top_p_price: float = 0.0, top_p_lr_scale: float = 1.0) -> dict[str, Any]:
    """Fresh heads trained as :class:`autodeco.training.trainer.Trainer` would on these tokens
    (per step: the mean loss over the positions of ``batch_size`` examples; no easy-token
    masking, as in the shipped recipe); returns the predicted P and T on the correct answers."""
    torch.manual_seed(seed)
    heads = AutoDecoHeads(features["hidden"].shape[-1])
    if top_p_bias is not None:
        with torch.no_grad():
            heads.top_p_head.mlp[2].bias.fill_(top_p_bias)
    heads.enable_temperature_head = "temperature" in losses
    correct = features["correct"]
    if data == "correct":
        chosen = correct.nonzero().squeeze(-1)
    elif data == "all":
        chosen = torch.arange(len(correct))
    else:  # "nucleus-0.9": every answer (right or wrong) whose tokens all lie in the T = 1, top-p 0.9 nucleus
        with torch.no_grad():
            logits = features["logits"].float()
            above = target_cumulative_mass(logits, torch.ones(len(logits)), features["targets"]) - torch.softmax(logits, -1).gather(-1, features["targets"].unsqueeze(-1)).squeeze(-1)
            del logits
        outside = torch.zeros(len(correct), dtype=torch.bool).index_put_((features["example"],), above >= 0.9, accumulate=True)
        chosen = (~outside).nonzero().squeeze(-1)
    token_rows = [(features["example"] == e).nonzero().squeeze(-1) for e in range(len(correct))]
    temperature_parameters = list(heads.temp_head.parameters()) if "temperature" in losses else []
    trainable = list(heads.top_p_head.parameters()) + temperature_parameters
    groups = [{"params": list(heads.top_p_head.parameters()), "lr": lr * top_p_lr_scale}] + ([{"params": temperature_parameters}] if temperature_parameters else [])
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=round(0.05 * steps), num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    order, cursor, trace = torch.randperm(len(chosen), generator=generator), 0, []
    started = time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(chosen), generator=generator), 0
        rows = torch.cat([token_rows[int(chosen[i])] for i in order[cursor : cursor + batch_size]])
        cursor += batch_size
        logits, targets = features["logits"][rows].float(), features["targets"][rows]
        temperature, top_p = heads(features["hidden"][rows], logits)
        weights = dft_weights(logits, targets) if dft else torch.ones_like(temperature)
        loss_t, loss_p = autodeco_losses(logits, temperature, top_p, targets, alpha=alpha, with_temperature="temperature" in losses)
        if top_p_objective == "quantile":  # replaces the soft top-p loss (and trains the top-p head only)
            loss_p = top_p_quantile_loss(top_p, target_cumulative_mass(logits, temperature, targets), top_p_quantile)
        loss_p = loss_p + top_p_price * top_p  # an explicit price per unit of nucleus mass (0: the paper's loss)
        loss = (loss_p * weights).mean() + ((loss_t * weights).mean() if loss_t is not None else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 10 == 0 or step == steps - 1:
            trace.append({"step": step + 1, "mean_P": top_p.detach().mean().item(), "mean_T": temperature.detach().mean().item()})
    rows = torch.cat([token_rows[int(e)] for e in correct.nonzero().squeeze(-1)])
    with torch.no_grad():
        logits = features["logits"][rows].float()
        temperature, top_p = heads(features["hidden"][rows], logits)
        nucleus = hard_nucleus(logits, temperature, top_p, features["targets"][rows])
        del logits
    settings = {"data": data, "examples": len(chosen), "dft": dft, "alpha": alpha, "losses": list(losses), "top_p_objective": top_p_objective,
                "top_p_quantile": top_p_quantile if top_p_objective == "quantile" else None, "top_p_bias": top_p_bias, "top_p_price": top_p_price, "top_p_lr_scale": top_p_lr_scale, "steps": steps, "lr": lr, "seed": seed}
    return {"variant": name, "settings": settings, "P_on_correct_answers": _summary(top_p), "T_on_correct_answers": _summary(temperature),
            "hard_nucleus_on_correct_answers": nucleus, "trace": trace, "seconds": time.perf_counter() - started}


VARIANTS: dict[str, dict[str, Any]] = {
    "baseline (shipped recipe: correct only, DFT, alpha 30)": {},
    "untrained (seed-0 init, 0 steps)": {"steps": 0},
    "no DFT": {"dft": False},
    "alpha 10": {"alpha": 10.0},
    "alpha 100": {"alpha": 100.0},
    "all samples (correct and wrong)": {"data": "all"},
    "top-p head alone (T fixed at 1)": {"losses": ("top_p",)},
    "top-p head alone (T fixed at 1), lr 5e-5": {"losses": ("top_p",), "lr": 5e-5},
    "lr 5e-5": {"lr": 5e-5},
    "bias init -3": {"top_p_bias": -3.0},
    "paper lr 5e-6 (400 steps)": {"lr": 5e-6, "steps": 400},
    "soft + price 1.0 * P": {"top_p_price": 1.0},
    "soft + price 3.0 * P": {"top_p_price": 3.0},
    "quantile objective, q 0.9": {"top_p_objective": "quantile", "top_p_quantile": 0.9},
    "quantile objective, q 0.99": {"top_p_objective": "quantile", "top_p_quantile": 0.99},
    "lr 5e-5, 400 steps": {"lr": 5e-5, "steps": 400},
    "top-p lr x0.1 (5e-5; T head 5e-4)": {"top_p_lr_scale": 0.1},
    "top-p lr x0.1, all samples": {"top_p_lr_scale": 0.1, "data": "all"},
    "quantile q 0.9, top-p lr x0.1": {"top_p_objective": "quantile", "top_p_quantile": 0.9, "top_p_lr_scale": 0.1},
    "quantile q 0.7, top-p lr x0.1": {"top_p_objective": "quantile", "top_p_quantile": 0.7, "top_p_lr_scale": 0.1},
    "top-p lr x0.1, 600 steps": {"top_p_lr_scale": 0.1, "steps": 600},
    "data from the T=1 top-0.9 nucleus (right or wrong)": {"data": "nucleus-0.9"},
    "data from the T=1 top-0.9 nucleus, top-p lr x0.1": {"data": "nucleus-0.9", "top_p_lr_scale": 0.1},
    "data from the T=1 top-0.9 nucleus, top-p head alone (T = 1)": {"data": "nucleus-0.9", "losses": ("top_p",)},
    "quantile q 0.9, top-p lr x0.1, all samples": {"top_p_objective": "quantile", "top_p_quantile": 0.9, "top_p_lr_scale": 0.1, "data": "all"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-dir", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", default="gemma-3-270m")
    parser.add_argument("--stages", default="gradient,landscape,train")
    parser.add_argument("--variants", default="", help="comma-separated indices into VARIANTS (default: all)")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stages = set(args.stages.split(","))
    if "gradient" in stages:
        _write(args.out, "gradient.json", gradient_check())
    if stages & {"landscape", "train"}:
        features = build_features(args.samples_dir, args.task, args.work)
        counts = {"examples": len(features["correct"]), "correct_examples": int(features["correct"].sum()), "tokens": len(features["targets"])}
        print(counts)
    if "landscape" in stages:
        _write(args.out, "landscape.json", {"data": counts, **landscape(features, load_heads(args.heads))})
    if "train" in stages:
        features = restrict_vocabulary(features)
        names = list(VARIANTS)
        picked = [names[int(i)] for i in args.variants.split(",")] if args.variants else names
        path = args.out / "variants.json"
        done = json.loads(path.read_text()) if path.is_file() else {}
        for name in picked:
            options = {"steps": args.steps, **VARIANTS[name]}
            done[name] = train_variant(features, name=name, **options)
            print(name, {k: round(v, 4) for k, v in done[name]["P_on_correct_answers"].items()}, f"{done[name]['seconds']:.0f}s")
            _write(args.out, "variants.json", done)


if __name__ == "__main__":
    main()
