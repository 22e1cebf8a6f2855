"""Head training: the frozen base, the two heads, the AutoDeco losses, one process or many.

One optimizer step covers ``batch_size x grad_accum x processes`` examples. Each loss is a mean
over all its positions in that global batch (temperature: the completion positions kept by
easy-token masking; top-p: all of them, or the kept ones), so the result does not depend on how the
batch is split across processes or accumulation steps. (The released trainer averages per-device
means instead; the two agree when every device sees as many tokens.)

The vocabulary-sized work runs in chunks of ``chunk_size`` positions, each differentiated at once
and released, so memory stays flat at any sequence length. Two gradient buffers per head
parameter (one per loss) are summed over chunks, micro-batches and processes, then divided by the
loss's global position count.

With ``nl_control``, the data also hold commanded copies of the examples
(:mod:`autodeco.training.nl_control`): they take the usual losses, and a third one, the ranking
loss against their plain original's T and P on the completion positions both share.

Determinism: the data order of epoch e is a permutation seeded by (seed, e); the easy-token draw
of a position is a hash of (seed, epoch, example, position). So a run resumed from a checkpoint
makes the same steps as an uninterrupted one, and N processes make the steps of one.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import PartialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_scheduler

from autodeco.errors import AutoDecoError
from autodeco.heads import AutoDecoHeads
from autodeco.models import load_tokenizer
from autodeco.io import prepare_output_dir
from autodeco.modeling import CONFIG_NAME, WEIGHTS_NAME, AutoDecoModelForCausalLM, base_hidden_size, check_logits_from_hidden, load_base, load_heads, logits_from_hidden
from autodeco.sampling import counter_uniforms
from autodeco.training.checkpoints import CHECKPOINTS, latest_checkpoint, load_checkpoint, remove_checkpoints, save_checkpoint
from autodeco.training.data import Example, Overflow, collate, load_examples
from autodeco.training.features import FeatureCache, completion_hidden_states, data_fingerprint
from autodeco.training.losses import DEFAULT_ALPHA, DEFAULT_EASY_TOKEN_DROP, autodeco_losses, dft_weights, easy_token_keep
from autodeco.training.metrics import MetricsLog, plot_training
from autodeco.training.nl_control import DEFAULT_T_MARGIN, anchor_loss, load_control_examples, ranking_loss

LOSS_NAMES = ("temperature", "top_p")
NL_LOSS = "nl_control"  # the ranking loss of commanded examples, with --nl-control
METRICS_NAME, PLOT_NAME = "metrics.jsonl", "training.png"


class TrainingDiverged(AutoDecoError):
    """The loss or a gradient became NaN/inf; nothing was written for that step."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults suit a small base on a CPU; the paper's
    settings for large bases are lr 5e-6, a global batch of 32, max length 16384, 1 epoch, bf16."""

    base: str
    data: str
    out: str
    heads: str | None = None
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 5e-4
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = 0.05
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 1024
    overflow: Overflow = "truncate"
    losses: tuple[str, ...] = LOSS_NAMES
    dft: bool = True
    easy_token_drop: float = DEFAULT_EASY_TOKEN_DROP
    easy_token_scope: Literal["temperature", "both"] = "temperature"
    alpha: float = DEFAULT_ALPHA
    top_p_lr_scale: float = 1.0  # the top-p head's lr is lr * this: < 1 keeps its sigmoid out of float32 saturation (P == 1, no gradient)
    nl_control: bool = False
    nl_weight: float = 1.0
    nl_margin: float = DEFAULT_T_MARGIN
    nl_variants: int = 1
    cache_features: Literal["none", "memory", "disk"] = "none"
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_grad_norm: float | None = 1.0
    chunk_size: int = 256
    dtype: str | torch.dtype = "auto"
    trust_remote_code: bool = False
    progress: bool = True

    def check(self) -> None:
        """Raise a named error for any value out of range."""
        unknown = sorted(set(self.losses) - set(LOSS_NAMES))
        if unknown or not self.losses:
            raise AutoDecoError(f"--losses must name one or both of {','.join(LOSS_NAMES)}, got {','.join(self.losses) or 'nothing'}")
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size, "--grad-accum": self.grad_accum,
                    "--checkpoint-every": self.checkpoint_every, "--keep-checkpoints": self.keep_checkpoints, "chunk_size": self.chunk_size}
        for flag, value in positive.items():
            if value < 1:
                raise AutoDecoError(f"{flag} must be at least 1, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise AutoDecoError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise AutoDecoError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.easy_token_drop <= 1:
            raise AutoDecoError(f"--easy-token-drop is a probability in [0, 1], got {self.easy_token_drop}")
        if not 0 <= self.warmup_ratio < 1:
            raise AutoDecoError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.alpha <= 0:
            raise AutoDecoError(f"--alpha (soft top-p steepness) must be positive, got {self.alpha}")
        if not (self.top_p_lr_scale > 0 and math.isfinite(self.top_p_lr_scale)):
            raise AutoDecoError(f"--top-p-lr-scale must be a positive number, got {self.top_p_lr_scale}")
        if not (self.nl_weight >= 0 and math.isfinite(self.nl_weight)) or not (self.nl_margin > 0 and math.isfinite(self.nl_margin)) or self.nl_variants < 1:
            raise AutoDecoError(f"--nl-weight must be >= 0, --nl-margin > 0 and --nl-variants >= 1, got {self.nl_weight}, {self.nl_margin}, {self.nl_variants}")
        for name, value, allowed in (("--schedule", self.schedule, ("cosine", "constant")), ("--easy-token-scope", self.easy_token_scope, ("temperature", "both")),
                                     ("--cache-features", self.cache_features, ("none", "memory", "disk"))):
            if value not in allowed:
                raise AutoDecoError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.resume and self.overwrite:
            raise AutoDecoError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
        if self.heads and Path(self.heads).resolve() == Path(self.out).resolve():
            raise AutoDecoError(f"--heads and --out are the same folder {self.out}; write the trained heads to another --out")

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint (others, e.g. --max-steps, may change)."""
        keys = ("base", "losses", "dft", "easy_token_drop", "easy_token_scope", "alpha", "seed", "batch_size", "grad_accum", "max_length", "overflow", "lr", "schedule",
                "warmup_ratio", "weight_decay", "nl_control", "nl_weight", "nl_margin", "nl_variants")
        keys += ("top_p_lr_scale",) if self.top_p_lr_scale != 1.0 else ()  # absent at 1: checkpoints from before the option still resume
        values = asdict(self)
        return {k: list(values[k]) if isinstance(values[k], tuple) else values[k] for k in keys}


@dataclass
class TrainResult:
    """What a run wrote and did, and the trained model (heads on their frozen base)."""

    model: AutoDecoModelForCausalLM
    out: Path
    steps: int
    completion_tokens: int
    seconds: float
    final: dict[str, Any] = field(default_factory=dict)


class _StepTotals:
    """One optimizer step's sums over chunks, micro-batches and, after :meth:`all_reduce`,
    processes: per loss a gradient buffer (of the loss *sum*), the loss sum and its position
    count; and the sums of predicted T and P. All on the device: one host transfer per step."""

    def __init__(self, parameters: list[torch.Tensor], device: torch.device, losses: tuple[str, ...]) -> None:
        self.losses = losses
        self.grads = {name: [torch.zeros_like(p) for p in parameters] for name in losses}
        names = [f"{name}_{kind}" for name in losses for kind in ("loss", "positions")] + ["temperature", "top_p", "positions"]
        self.sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in names}

    def all_reduce(self) -> None:
        """Sum everything over the processes, in one collective."""
        buffers = [g for name in self.losses for g in self.grads[name]]
        packed = torch.cat([g.flatten().double() for g in buffers] + [v.reshape(1) for v in self.sums.values()])
        torch.distributed.all_reduce(packed)
        pieces = iter(packed.split([g.numel() for g in buffers] + [1] * len(self.sums)))
        for buffer in buffers:
            buffer.copy_(next(pieces).view_as(buffer))
        for name in self.sums:
            self.sums[name] = next(pieces).squeeze(0)


def _schedule_lengths(examples: int, config: TrainConfig, processes: int) -> tuple[int, int, int]:
    """(micro-batches per epoch, optimizer steps per epoch, total steps)."""
    micro_per_epoch = math.ceil(examples / (config.batch_size * processes))
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total = config.max_steps if config.max_steps is not None else steps_per_epoch * config.epochs
    return micro_per_epoch, steps_per_epoch, total


def _epoch_order(examples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(examples, generator=generator)


class Trainer:
    """Trains the heads of ``model`` (base frozen) on ``examples``; see the module docstring."""

    def __init__(
        self, config: TrainConfig, model: AutoDecoModelForCausalLM, examples: list[Example], pad_token_id: int, state: PartialState,
        control: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        self.config, self.model, self.examples, self.pad_token_id, self.state = config, model, examples, pad_token_id, state
        self.control = control or {}  # commanded example -> (plain example, condition index): the NL-control pairs
        # NL control from given heads: their plain values are the fixed reference, and an anchor keeps them
        self.reference_heads = copy.deepcopy(model.heads).requires_grad_(False) if self.control and config.heads else None
        self.losses = LOSS_NAMES + ((NL_LOSS,) if self.control else ())
        self.weights = {name: config.nl_weight if name == NL_LOSS else 1.0 for name in self.losses}
        self.out = Path(config.out)
        self.device = model.llm.get_output_embeddings().weight.device
        heads = model.heads
        temperature_parameters = list(heads.temp_head.parameters()) if heads.enable_temperature_head else []
        top_p_parameters = list(heads.top_p_head.parameters()) if heads.enable_top_p_head else []
        self.trainable = temperature_parameters + top_p_parameters
        for parameter in model.heads.parameters():
            parameter.requires_grad_(False)
        for parameter in self.trainable:
            parameter.requires_grad_(True)
        # --top-p-lr-scale: the top-p head in its own group (only then, so older checkpoints' optimizer state still loads)
        groups = ([{"params": temperature_parameters}] if temperature_parameters else []) + [{"params": top_p_parameters, "lr": config.lr * config.top_p_lr_scale}]
        scaled = config.top_p_lr_scale != 1.0 and top_p_parameters
        self.optimizer = torch.optim.AdamW(groups if scaled else self.trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.micro_per_epoch, self.steps_per_epoch, self.total_steps = _schedule_lengths(len(examples), config, state.num_processes)
        self.scheduler = get_scheduler(
            "cosine" if config.schedule == "cosine" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=round(config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.cache: FeatureCache | None = None
        self.metrics = MetricsLog(self.out / METRICS_NAME)
        self.fingerprint = data_fingerprint(examples)

    # ------------------------------------------------------------------ features
    def _base_identity(self) -> dict[str, Any]:
        return {"base": self.model.base_name_or_path, "base_model_type": self.model.llm.config.model_type, "hidden_size": self.model.heads.hidden_size}

    def build_cache(self, console: Console) -> None:
        """Run the base once over every example not cached yet. With several processes, a disk
        cache is filled in shards (one per process); a memory cache is filled by each process."""
        config, state = self.config, self.state
        directory = self.out / "feature-cache" if config.cache_features == "disk" else None
        dtype = self.model.llm.dtype
        with state.main_process_first():
            identity = {**self._base_identity(), "data": self.fingerprint}
            self.cache = FeatureCache(self.examples, self.model.heads.hidden_size, dtype, identity, directory)
        state.wait_for_everyone()  # all read the same flags before any shard is written, so the shards cover every example
        shared = directory is not None and state.num_processes > 1
        todo = self.cache.missing()
        mine = todo[state.process_index :: state.num_processes] if shared else todo
        with self._progress(console) as progress:
            task = progress.add_task("caching base features", total=len(mine), status="")
            for start in range(0, len(mine), config.batch_size):
                batch = mine[start : start + config.batch_size]
                self.cache.put(batch, completion_hidden_states(self.model.llm, [self.examples[i] for i in batch], self.pad_token_id))
                if state.is_main_process:
                    self.cache.save_flags()
                progress.advance(task, len(batch))
        if shared:
            state.wait_for_everyone()  # every shard is in the shared file now
            self.cache.filled[:] = True
            if state.is_main_process:
                self.cache.save_flags()

    def _hidden_rows(self, indices: list[int]) -> list[torch.Tensor]:
        if self.cache is not None:
            return self.cache.get(indices)
        return completion_hidden_states(self.model.llm, [self.examples[i] for i in indices], self.pad_token_id)

    # ------------------------------------------------------------------ one micro-batch
    def _accumulate(self, indices: list[int], epoch: int, totals: _StepTotals) -> None:
        """Add this micro-batch's loss sums and gradients (of the sums) to ``totals``."""
        config = self.config
        example_rows = self._hidden_rows(indices)
        hidden = torch.cat(example_rows).to(self.device)
        targets = torch.cat([self.examples[i].targets() for i in indices]).to(self.device)
        # a stateless draw per (seed, epoch, example, position): independent of batching
        example_keys = torch.cat([torch.full((self.examples[i].completion_length,), i, dtype=torch.long) for i in indices])
        positions = torch.cat([torch.arange(self.examples[i].completion_length) for i in indices])
        uniforms = counter_uniforms((config.seed * 1_000_003 + epoch) * 1_048_576 + example_keys, positions).to(self.device)
        use_temperature, use_top_p = "temperature" in config.losses, "top_p" in config.losses
        for start in range(0, hidden.shape[0], config.chunk_size):
            rows = slice(start, start + config.chunk_size)
            chunk_hidden, chunk_targets = hidden[rows], targets[rows]
            with torch.no_grad():
                logits = logits_from_hidden(self.model.llm, chunk_hidden).float()
            temperature, top_p = self.model.heads(chunk_hidden, logits)
            weights = dft_weights(logits, chunk_targets) if config.dft else torch.ones_like(temperature)
            keep = easy_token_keep(logits, chunk_targets, config.easy_token_drop, uniforms[rows])
            masks = {"temperature": keep, "top_p": keep if config.easy_token_scope == "both" else torch.ones_like(keep)}
            losses = autodeco_losses(logits, temperature, top_p, chunk_targets, alpha=config.alpha, with_temperature=use_temperature, with_top_p=use_top_p)
            sums = {name: (loss * weights * masks[name]).sum() for name, loss in zip(LOSS_NAMES, losses) if loss is not None}
            for number, (name, loss_sum) in enumerate(sums.items()):
                grads = torch.autograd.grad(loss_sum, self.trainable, retain_graph=number + 1 < len(sums), allow_unused=True, materialize_grads=True)
                torch._foreach_add_(totals.grads[name], grads)
                totals.sums[f"{name}_loss"] += loss_sum.detach()
                totals.sums[f"{name}_positions"] += masks[name].sum()
            totals.sums["temperature"] += temperature.detach().sum()
            totals.sums["top_p"] += top_p.detach().sum()
            totals.sums["positions"] += chunk_targets.numel()
        commanded = {i: r for i, r in zip(indices, example_rows) if i in self.control}
        if commanded:
            self._accumulate_control(commanded, totals)

    def _accumulate_control(self, commanded: dict[int, torch.Tensor], totals: _StepTotals) -> None:
        """The NL-control ranking loss of commanded examples (index -> the hidden rows the main
        losses used) against their plain originals, on the completion positions they share. The
        plain values are targets without gradient: those of the starting heads when training
        from ``--heads`` (plus an anchor that keeps the plain values there), else the current ones."""
        config = self.config
        plains = self._hidden_rows([self.control[index][0] for index in commanded])  # one base pass for all of them
        for (index, own_rows), plain_rows in zip(commanded.items(), plains):
            plain, condition = self.control[index]
            shared = min(self.examples[index].completion_length, self.examples[plain].completion_length)
            commanded_hidden, plain_hidden = own_rows[:shared].to(self.device), plain_rows[:shared].to(self.device)
            for start in range(0, shared, config.chunk_size):
                rows = slice(start, start + config.chunk_size)
                with torch.no_grad():
                    plain_logits = logits_from_hidden(self.model.llm, plain_hidden[rows]).float()
                    logits = logits_from_hidden(self.model.llm, commanded_hidden[rows]).float()
                    reference_t, reference_p = (self.reference_heads if self.reference_heads is not None else self.model.heads)(plain_hidden[rows], plain_logits)
                temperature, top_p = self.model.heads(commanded_hidden[rows], logits)
                conditions = torch.full_like(temperature, condition, dtype=torch.long)
                loss = ranking_loss(temperature, top_p, reference_t, reference_p, conditions, t_margin=config.nl_margin)
                if self.reference_heads is not None:
                    loss = loss + anchor_loss(*self.model.heads(plain_hidden[rows], plain_logits), reference_t, reference_p)
                loss_sum = loss.sum()
                grads = torch.autograd.grad(loss_sum, self.trainable, allow_unused=True, materialize_grads=True)
                torch._foreach_add_(totals.grads[NL_LOSS], grads)
                totals.sums[f"{NL_LOSS}_loss"] += loss_sum.detach()
                totals.sums[f"{NL_LOSS}_positions"] += temperature.numel()

    def _micro_batches(self, step: int) -> list[tuple[int, list[int]]]:
        """(epoch, this process's example indices) for each micro-batch of optimizer step ``step``."""
        config, state = self.config, self.state
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        order = _epoch_order(len(self.examples), config.seed, epoch)
        global_batch = config.batch_size * state.num_processes
        first = step_in_epoch * config.grad_accum
        batches = []
        for micro in range(first, min(first + config.grad_accum, self.micro_per_epoch)):
            chunk = order[micro * global_batch : (micro + 1) * global_batch].tolist()
            batches.append((epoch, chunk[state.process_index :: state.num_processes]))
        return batches

    # ------------------------------------------------------------------ one optimizer step
    def step(self, step: int) -> dict[str, Any]:
        """Run optimizer step ``step`` (0-based); returns its metrics."""
        totals = _StepTotals(self.trainable, self.device, self.losses)
        for epoch, indices in self._micro_batches(step):
            if indices:
                self._accumulate(indices, epoch, totals)
        if self.state.num_processes > 1:
            totals.all_reduce()
        sums = dict(zip(totals.sums, torch.stack(list(totals.sums.values())).tolist()))
        mean_loss = {name: sums[f"{name}_loss"] / sums[f"{name}_positions"] if sums[f"{name}_positions"] else None for name in self.losses}
        loss = sum(self.weights[name] * value for name, value in mean_loss.items() if value is not None)
        for index, parameter in enumerate(self.trainable):
            parameter.grad = sum(self.weights[name] * totals.grads[name][index] / max(sums[f"{name}_positions"], 1) for name in self.losses)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm or math.inf))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # a NaN anywhere in the gradients makes the norm NaN
            raise TrainingDiverged(f"the loss became {loss} at step {step + 1}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "step": step + 1,
            "epoch": step // self.steps_per_epoch,
            "loss": loss,
            "temperature_loss": mean_loss["temperature"],
            "top_p_loss": mean_loss["top_p"],
            **({"nl_control_loss": mean_loss[NL_LOSS]} if NL_LOSS in mean_loss else {}),
            "mean_temperature": sums["temperature"] / max(sums["positions"], 1),
            "mean_top_p": sums["top_p"] / max(sums["positions"], 1),
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": int(sums["positions"]),
        }

    # ------------------------------------------------------------------ the run
    def _progress(self, console: Console) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not (self.config.progress and self.state.is_main_process),
        )

    def _checkpoint_state(self, tokens: int, seconds: float) -> dict[str, Any]:
        return {"config": self.config.identity(), "identity": self._base_identity(), "data": self.fingerprint, "tokens": tokens, "seconds": seconds,
                "scheduler": self.scheduler.state_dict()}

    def resume(self) -> tuple[int, int, float]:
        """Load the latest checkpoint; returns (step, tokens, seconds) already done."""
        path = latest_checkpoint(self.out)
        if path is None:
            raise AutoDecoError(f"--resume: no checkpoint under {self.out / CHECKPOINTS}; run without --resume to start a new run")
        state = load_checkpoint(path, self.model, self.optimizer)
        expected = self._checkpoint_state(0, 0.0)
        for key, what in (("identity", "base model"), ("data", "training data"), ("config", "training settings")):
            if state.get(key) != expected[key]:
                differing = key if not isinstance(expected[key], dict) else ", ".join(
                    f"{k}: {state.get(key, {}).get(k)!r} -> {v!r}" for k, v in expected[key].items() if state.get(key, {}).get(k) != v)
                raise AutoDecoError(f"--resume: {path} was made with another {what} ({differing}); use the original settings or a new --out")
        self.scheduler.load_state_dict(state["scheduler"])
        return state["step"], state["tokens"], state["seconds"]

    def run(self, console: Console) -> TrainResult:
        """Train to ``total_steps``, checkpointing, logging and plotting on the way."""
        config, state = self.config, self.state
        start_step, tokens, seconds_before = self.resume() if config.resume else (0, 0, 0.0)
        if state.is_main_process:
            self.metrics.truncate_after(start_step)
        if config.cache_features != "none":
            self.build_cache(console)
        started = time.perf_counter()
        last_saved = start_step
        record: dict[str, Any] = {}
        with self._progress(console) as progress:
            task = progress.add_task("training heads", total=self.total_steps, completed=start_step, status="")
            for step in range(start_step, self.total_steps):
                try:
                    record = self.step(step)
                except TrainingDiverged as err:
                    good = latest_checkpoint(self.out)
                    where = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
                    raise TrainingDiverged(f"{err}; training stopped and nothing was saved for it; {where} (lower --lr, then --resume)") from None
                tokens += record["tokens"]
                elapsed = seconds_before + time.perf_counter() - started
                record.update(tokens_per_second=tokens / max(elapsed, 1e-9), elapsed_seconds=elapsed)
                if state.is_main_process:
                    self.metrics.append(record)
                    done = step + 1
                    if done % config.checkpoint_every == 0 and done < self.total_steps:
                        save_checkpoint(self.out, done, self.model, self.optimizer, self._checkpoint_state(tokens, elapsed), config.keep_checkpoints)
                        last_saved = done
                progress.update(task, advance=1, status=f"loss {record['loss']:.4f}  T {record['mean_temperature']:.3f}  P {record['mean_top_p']:.3f}  {record['tokens_per_second']:.0f} tok/s")
        elapsed = seconds_before + time.perf_counter() - started
        if state.is_main_process:
            if last_saved < self.total_steps:
                save_checkpoint(self.out, self.total_steps, self.model, self.optimizer, self._checkpoint_state(tokens, elapsed), config.keep_checkpoints)
            self.model.save_pretrained(self.out)
            records = self.metrics.records()
            if records:
                plot_training(records, self.out / PLOT_NAME)
        state.wait_for_everyone()
        return TrainResult(self.model, self.out, self.total_steps, tokens, elapsed, record)


def _earlier_run(out: Path) -> list[str]:
    """What an earlier run (or any model) left in ``out`` that a new run would overwrite or mix
    its checkpoints with. A log without checkpoints is not listed: rerunning makes it again."""
    names = [name for name in (WEIGHTS_NAME, CONFIG_NAME) if (out / name).exists()]
    return names + ([f"{CHECKPOINTS}/"] if latest_checkpoint(out) else [])


def prepare_run_dir(config: TrainConfig, state: PartialState) -> Path:
    """Check --out before the base is loaded, and make it. A new run refuses a folder holding an
    earlier run (it would overwrite its heads and mix checkpoints of two runs) unless
    ``overwrite``, which deletes that run's outputs first; ``resume`` continues it. Other files
    in the folder are left alone, the feature cache too (it is checked against base and data)."""
    out = Path(config.out)
    earlier = [] if config.resume else _earlier_run(out)
    if earlier and not config.overwrite:
        checkpoint = latest_checkpoint(out)
        to_continue = f"rerun with --resume to continue it from {checkpoint.name}, " if checkpoint else ""
        raise AutoDecoError(
            f"{out} already holds an earlier run's {', '.join(earlier)}; {to_continue}pass --overwrite to delete them and start over, or pick another --out"
        )
    prepare_output_dir(out, overwrite=True, what="training output")  # a file, under a file, read-only
    state.wait_for_everyone()  # every process has checked the folder before any of it is deleted
    if config.overwrite and state.is_main_process:
        remove_checkpoints(out)  # first: a run half deleted is never resumed
        for name in (METRICS_NAME, PLOT_NAME, WEIGHTS_NAME, CONFIG_NAME):
            (out / name).unlink(missing_ok=True)
    return out


def train(config: TrainConfig, console: Console | None = None) -> TrainResult:
    """Train AutoDeco heads as ``config`` says; works the same under ``accelerate launch``/``torchrun``."""
    config.check()
    console = console or Console(stderr=True)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # by accelerate launch or torchrun
    state = PartialState(cpu=launched and not torch.cuda.is_available())  # CPU processes talk over gloo
    tokenizer = load_tokenizer(config.base, config.trust_remote_code, flag="--base")
    control: dict[int, tuple[int, int]] = {}
    if config.nl_control:
        examples, control, stats = load_control_examples(
            config.data, tokenizer, config.max_length, config.overflow, variants=config.nl_variants, seed=config.seed
        )
    else:
        examples, stats = load_examples(config.data, tokenizer, config.max_length, config.overflow)
    if state.is_main_process:
        console.print(stats.summary() + (f"; {len(control)} of them commanded copies for NL control" if control else ""))
    prepare_run_dir(config, state)
    llm = load_base(config.base, dtype=config.dtype, device=state.device, trust_remote_code=config.trust_remote_code)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    check_logits_from_hidden(llm, *(t.to(state.device) for t in collate(examples[:2], pad)))
    torch.manual_seed(config.seed)  # the heads' initial weights
    if config.heads:
        heads = load_heads(config.heads)
        if heads.hidden_size != base_hidden_size(llm.config):
            raise AutoDecoError(f"--heads {config.heads} were made for hidden size {heads.hidden_size}, the base has {base_hidden_size(llm.config)}")
    else:
        heads = AutoDecoHeads(base_hidden_size(llm.config))
    heads.enable_temperature_head = "temperature" in config.losses
    heads.enable_top_p_head = "top_p" in config.losses
    model = AutoDecoModelForCausalLM(llm, heads, base_name_or_path=config.base)
    trainer = Trainer(config, model, examples, pad, state, control)
    result = trainer.run(console)
    if state.is_main_process:
        console.print(
            f"trained {result.steps} steps on {result.completion_tokens} completion tokens in {result.seconds:.1f} s; "
            f"heads: {result.out}/{WEIGHTS_NAME}, log: {result.out}/{METRICS_NAME}, plot: {result.out}/{PLOT_NAME}, "
            f"checkpoints: {result.out}/{CHECKPOINTS}"
        )
    return result
