"""The ``autodeco`` command: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from autodeco.demo import DEFAULT_HEADS, DEFAULT_MODEL, DEMO_PROMPTS
from autodeco.engine import Completion, StreamEvent, generate, stream
from autodeco.errors import AutoDecoError
from autodeco.io import prepare_output_dir, read_json_object
from autodeco.modeling import AutoDecoModelForCausalLM, read_autodeco_config
from autodeco.evaluation.strategies import DEFAULT_ORACLE_TEMPERATURES, DEFAULT_ORACLE_TOP_PS
from autodeco.models import load_tokenizer, resolve_heads
from autodeco.sampling import SamplingParams
from autodeco.speculative import DEFAULT_NUM_DRAFT_TOKENS, SPECULATIVE_HELP, make_speculation
from autodeco.token_view import temperature_color

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learned per-token temperature and top-p for any Hugging Face causal LM.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DTYPES = ("auto", "float32", "bfloat16", "float16")
# options that several commands share
DtypeOption = Annotated[str, typer.Option(help=f"Weights dtype: {', '.join(DTYPES)}.")]
DeviceOption = Annotated[Optional[str], typer.Option(help="Device, e.g. cpu or cuda.")]
TrustOption = Annotated[bool, typer.Option(help="Run code shipped with the model (off unless you trust it).")]
SpeculativeOption = Annotated[Optional[str], typer.Option(help=f"Exact speculative decoding: {SPECULATIVE_HELP}.")]
DraftTokensOption = Annotated[int, typer.Option(help="Most draft tokens verified per row and step, with --speculative.")]
PromptStyleOption = Annotated[str, typer.Option(help="auto (chat template if the tokenizer has one), few-shot, or chat.")]


def _fail(message: str) -> None:
    # escaped: rich would take "[t_min, t_max]" or "autodeco[serve]" in a message for markup and drop it
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code=2)


@contextmanager
def _interruptible(hint: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C ends the command with one line, ``interrupted; <hint>`` (how to continue: the work
    done so far is on disk), and exit code 130, without a traceback. A second Ctrl-C from then
    on exits at once."""
    try:
        yield
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        err.print(f"interrupted; {hint()}", markup=False)
        raise typer.Exit(code=130) from None


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise AutoDecoError(f"--dtype {name!r} is unknown; use one of {', '.join(DTYPES)}")
    return "auto" if name == "auto" else getattr(torch, name)


def load_model_and_tokenizer(model: Optional[str], heads: Optional[Path], dtype: str, device: Optional[str], trust_remote_code: bool):
    """Resolve --model/--heads into (AutoDeco model, tokenizer)."""
    if heads is not None:
        autodeco = AutoDecoModelForCausalLM.from_pretrained(heads, base=model, dtype=_dtype(dtype), device=device, trust_remote_code=trust_remote_code)
        tokenizer_source = model or read_autodeco_config(resolve_heads(heads)).get("base_model_name_or_path")
    elif model is not None and _is_autodeco_dir(Path(model)):
        autodeco = AutoDecoModelForCausalLM.from_pretrained(model, dtype=_dtype(dtype), device=device, trust_remote_code=trust_remote_code)
        tokenizer_source = model
    else:
        raise AutoDecoError(
            "--heads DIR is required unless --model is a merged AutoDeco checkpoint; make untrained heads with "
            "`autodeco init --base BASE --out DIR`"
        )
    return autodeco, load_tokenizer(tokenizer_source, trust_remote_code)


def _is_autodeco_dir(path: Path) -> bool:
    """Whether --model is a merged AutoDeco checkpoint; a broken config.json is named, not passed over."""
    config = path / "config.json"
    return config.is_file() and read_json_object(config, "fix it, or pass the model's own folder").get("model_type") == "autodeco"


@app.command()
def init(
    base: Annotated[str, typer.Option(help="Base model: a local folder or a Hugging Face hub id.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the heads to (released heads-only format).")],
    no_statistics: Annotated[bool, typer.Option("--no-statistics", help="Top-p head without the 4 probability statistics (input H+1).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the heads' random initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the files of a non-empty --out (e.g. trained heads).")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Run code shipped with the base model (off unless you trust it).")] = False,
) -> None:
    """Write new, untrained heads for BASE to --out."""
    import torch

    try:
        prepare_output_dir(out_dir, overwrite=overwrite, what="heads")  # before the slow base: trained heads are not overwritten by accident
        with err.status(f"Loading {base} ..."):
            torch.manual_seed(seed)
            model = AutoDecoModelForCausalLM.from_base(base, use_enhanced_features=not no_statistics, trust_remote_code=trust_remote_code)
            model.save_pretrained(out_dir)
    except AutoDecoError as error:
        _fail(str(error))
    size = sum(p.numel() for p in model.heads.parameters())
    err.print(f"Wrote untrained heads ({size:,} parameters, hidden size {model.heads.hidden_size}) for {base} to {out_dir}")


@app.command("generate")
def generate_command(
    prompt: Annotated[str, typer.Option(help="The prompt text.")],
    model: Annotated[Optional[str], typer.Option(help="Base model folder or hub id (or a merged AutoDeco checkpoint).")] = None,
    heads: Annotated[Optional[Path], typer.Option(help="Heads folder (released heads-only format) or shipped heads by name (gemma-3-270m).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most new tokens to generate.")] = 128,
    seed: Annotated[Optional[int], typer.Option(help="Seed: the same seed gives the same text.")] = None,
    decoding: Annotated[str, typer.Option(help="autodeco (learned T, P), static (--temperature, --top-p) or greedy.")] = "autodeco",
    temperature_scale: Annotated[float, typer.Option(help="Multiplier on the learned temperature (0 = greedy).")] = 1.0,
    top_p_scale: Annotated[float, typer.Option(help="Multiplier on the learned top-p (result clamped to [0, 1]).")] = 1.0,
    t_min: Annotated[float, typer.Option(help="Lower bound on the temperature used.")] = 0.0,
    t_max: Annotated[float, typer.Option(help="Upper bound on the temperature used.")] = math.inf,
    p_min: Annotated[float, typer.Option(help="Lower bound on the top-p used.")] = 0.0,
    p_max: Annotated[float, typer.Option(help="Upper bound on the top-p used.")] = 1.0,
    temperature: Annotated[float, typer.Option(help="Temperature for --decoding static.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Top-p for --decoding static.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (0 = off).")] = 0,
    min_p: Annotated[float, typer.Option(help="Keep tokens with p >= min_p * p_max (0 = off).")] = 0.0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the tokenizer's chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: text, finish_reason, tokens with T and P.")] = False,
    color: Annotated[bool, typer.Option(help="Colour each streamed token by its temperature (blue = low, red = high).")] = False,
    speculative: SpeculativeOption = None,
    num_draft_tokens: DraftTokensOption = DEFAULT_NUM_DRAFT_TOKENS,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Generate a completion, decoding with the learned per-token temperature and top-p."""
    try:
        params = SamplingParams(
            decoding=decoding, temperature_scale=temperature_scale, top_p_scale=top_p_scale,
            t_min=t_min, t_max=t_max, p_min=p_min, p_max=p_max, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, max_new_tokens=max_new_tokens, stop=tuple(stop or ()), seed=seed,
        )
        if not prompt.strip():
            raise AutoDecoError("the prompt is empty; pass some text with --prompt")
        with err.status("Loading model ..."):
            autodeco, tokenizer = load_model_and_tokenizer(model, heads, dtype, device, trust_remote_code)
            speculation = None if speculative is None else make_speculation(speculative, autodeco, num_draft_tokens, trust_remote_code=trust_remote_code)
        if as_json:
            completion = generate(autodeco, tokenizer, prompt, params, chat=chat, speculation=speculation)[0].to_dict()
            out.print_json(data=completion | ({"speculation": speculation.stats.to_dict()} if speculation else {}))
        else:
            print_stream(stream(autodeco, tokenizer, prompt, params, chat=chat, speculation=speculation), color=color)
            if speculation is not None:
                stats = speculation.stats
                err.print(f"speculative ({speculative}): {stats.accepted}/{stats.drafted} drafts accepted ({stats.acceptance_rate:.0%}), "
                          f"{stats.tokens_per_forward:.2f} tokens per target forward")
    except AutoDecoError as error:
        _fail(str(error))


@app.command()
def train(
    base: Annotated[str, typer.Option(help="Base model (frozen): a local folder or a hub id.")],
    data: Annotated[Path, typer.Option(help="JSONL: {prompt, completion} or {messages} records.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output: heads (released format), metrics.jsonl, training.png, checkpoints/.")],
    heads: Annotated[Optional[Path], typer.Option(help="Start from these heads instead of new ones.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps (overrides --epochs).")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the paper: 5e-6 on 7B+ bases).")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule after warmup: cosine or constant.")] = "cosine",
    warmup_ratio: Annotated[float, typer.Option(help="Share of the steps spent warming up.")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Examples per micro-batch per process.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    max_length: Annotated[int, typer.Option(help="Longest example in tokens (the paper: 16384).")] = 1024,
    drop_long: Annotated[bool, typer.Option("--drop-long", help="Drop over-long examples instead of truncating their completion.")] = False,
    losses: Annotated[str, typer.Option(help="Comma-separated: temperature, top_p, or both.")] = "temperature,top_p",
    dft: Annotated[bool, typer.Option("--dft/--no-dft", help="Weight each token's loss by the base's probability of it.")] = True,
    easy_token_drop: Annotated[float, typer.Option(help="Drop positions where the base's argmax is right with this probability.")] = 0.6,
    easy_token_scope: Annotated[str, typer.Option(help="Which losses easy-token masking applies to: temperature (released HF code) or both.")] = "temperature",
    alpha: Annotated[float, typer.Option(help="Steepness of the soft top-p mask.")] = 30.0,
    top_p_lr_scale: Annotated[float, typer.Option(help="Multiply --lr by this for the top-p head only (e.g. 0.1): keeps its sigmoid out of float32 saturation, where P == 1 and no gradient moves it again.")] = 1.0,
    nl_control: Annotated[bool, typer.Option("--nl-control", help="Also train the heads to follow decoding commands in prompts (ranking loss).")] = False,
    nl_weight: Annotated[float, typer.Option(help="Weight of the NL-control ranking loss.")] = 1.0,
    nl_margin: Annotated[float, typer.Option(help="How far a command must move T at each token (P: 0.5 on the logit scale).")] = 0.15,
    nl_variants: Annotated[int, typer.Option(help="Commanded copies of each example (conditions taken in turn).")] = 1,
    cache_features: Annotated[bool, typer.Option("--cache-features", help="Run the frozen base once; later epochs train from its cached hidden states.")] = False,
    cache_on_disk: Annotated[bool, typer.Option("--cache-on-disk", help="Keep the feature cache in OUT/feature-cache (memory-mapped, survives restarts).")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Write a checkpoint every N optimizer steps.")] = 100,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the heads, checkpoints and log of an earlier run in --out and start over.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the heads' initialisation, the data order and easy-token masking.")] = 0,
    dtype: Annotated[str, typer.Option(help=f"Base weights dtype: {', '.join(DTYPES)} (auto: as stored, e.g. bf16).")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option(help="Run code shipped with the base model (off unless you trust it).")] = False,
) -> None:
    """Train the AutoDeco heads of a frozen base on completions (runs under accelerate launch / torchrun too)."""
    from autodeco.training.trainer import TrainConfig, train as run_training

    try:
        config = TrainConfig(
            base=base, data=str(data), out=str(out_dir), heads=str(heads) if heads else None, max_steps=max_steps, epochs=epochs,
            lr=lr, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio, batch_size=batch_size,
            grad_accum=grad_accum, max_length=max_length, overflow="drop" if drop_long else "truncate",
            losses=tuple(name.strip() for name in losses.split(",") if name.strip()), dft=dft, easy_token_drop=easy_token_drop,
            easy_token_scope=easy_token_scope, alpha=alpha, top_p_lr_scale=top_p_lr_scale, nl_control=nl_control, nl_weight=nl_weight, nl_margin=nl_margin, nl_variants=nl_variants,
            cache_features=("disk" if cache_on_disk else "memory") if (cache_features or cache_on_disk) else "none",
            checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite, seed=seed, dtype=_dtype(dtype),
            trust_remote_code=trust_remote_code,
        )
        with _interruptible(lambda: _train_resume_hint(out_dir, resume, overwrite)):
            run_training(config, console=err)
    except AutoDecoError as error:
        _fail(str(error))


def _train_resume_hint(out_dir: Path, resume: bool, overwrite: bool) -> str:
    """How to go on after an interrupted ``train``: from its last checkpoint, if it wrote one."""
    from autodeco.training.checkpoints import latest_checkpoint

    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        return "no checkpoint was written yet; rerun the same command to start again"
    flag = "" if resume else " with --resume" + (" instead of --overwrite" if overwrite else "")
    return f"rerun the same command{flag} to continue from {checkpoint}"


def _check_counts(**counts: Optional[int]) -> None:
    """Counts given on the command line must be positive (None: not given)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise AutoDecoError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _load_for_sampling(model: str, heads: Optional[Path], prompt_style: str, max_new_tokens: int, seed: int, dtype: str,
                       device: Optional[str], trust_remote_code: bool):
    """(model, tokenizer, EvalSettings) for eval and sample-data; without --heads the heads never run."""
    from autodeco.evaluation.runner import EvalSettings, file_sha256
    from autodeco.models import resolve_model

    if prompt_style not in ("auto", "few-shot", "chat"):
        raise AutoDecoError(f"--prompt-style {prompt_style!r} is unknown; use auto, few-shot or chat")
    with err.status(f"Loading {model} ..."):
        resolve_model(model, err)
        if heads is not None:
            autodeco, tokenizer = load_model_and_tokenizer(model, heads, dtype, device, trust_remote_code)
        else:
            autodeco = AutoDecoModelForCausalLM.from_base(model, dtype=_dtype(dtype), device=device, trust_remote_code=trust_remote_code)
            tokenizer = load_tokenizer(model, trust_remote_code)
    chat = prompt_style == "chat" or (prompt_style == "auto" and bool(getattr(tokenizer, "chat_template", None)))
    weights = resolve_heads(heads) / "model.safetensors" if heads is not None else None
    settings = EvalSettings(
        model=model, heads=str(heads) if heads else None, heads_sha256=file_sha256(weights) if weights and weights.is_file() else None,
        chat=chat, max_new_tokens=max_new_tokens, seed=seed, dtype=str(autodeco.dtype),
    )
    return autodeco, tokenizer, settings


@app.command("sample-data")
def sample_data_command(
    model: Annotated[str, typer.Option(help="Base model: a folder, a hub id or an alias (gemma-3-270m).")],
    task: Annotated[list[str], typer.Option(help="Task with a training split, repeatable: reasoning_gym:NAME[,key=value].")],
    out_file: Annotated[Path, typer.Option("--out", help="Training JSONL to write (samples kept in OUT.samples/ for resuming).")],
    work: Annotated[Optional[Path], typer.Option(help="Folder of the samples (default: OUT.samples); runs may share one.")] = None,
    problems: Annotated[int, typer.Option(help="Training problems per task.")] = 1000,
    samples: Annotated[int, typer.Option(help="Sampled answers per problem.")] = 4,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (the base's default decoding: 1).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Sampling top-p.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Sequences decoded together (a problem's samples prefill its prompt once, and the few-shot block is shared: bigger batches cost decode steps, not prefill).")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
    prompt_style: PromptStyleOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed of every sample.")] = 0,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Sample the base model's own answers to training problems and keep the verified-correct ones (resumable)."""
    from autodeco.training.self_data import sample_training_data, samples_folder, training_task, yield_table

    try:
        _check_counts(problems=problems, samples=samples, batch_size=batch_size, max_new_tokens=max_new_tokens)
        for spec in task:
            training_task(spec)  # refuse tasks without a training split before loading the model
        folder = samples_folder(out_file, work)  # and outputs that cannot be written
        with _interruptible(lambda: f"the finished samples are kept in {folder}; rerun the same command to continue"):
            autodeco, tokenizer, settings = _load_for_sampling(model, None, prompt_style, max_new_tokens, seed, dtype, device, trust_remote_code)
            yields = sample_training_data(
                autodeco, tokenizer, settings, task, out_file, problems=problems, samples=samples, temperature=temperature,
                top_p=top_p, batch_size=batch_size, work=work, console=err,
            )
    except AutoDecoError as error:
        _fail(str(error))
    err.print(yield_table(yields))
    err.print(f"Wrote {sum(y.correct for y in yields)} examples to {out_file}")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="Base model: a folder, a hub id or an alias (gemma-3-270m).")],
    task: Annotated[list[str], typer.Option(help="Task, repeatable: reasoning_gym:NAME[,key=value], mmath[:subset], ifeval, humaneval, jsonl:FILE[,verifier=...].")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: samples.jsonl (resumable), results.json, report.md, plots.")],
    heads: Annotated[Optional[Path], typer.Option(help="Heads folder or shipped heads name; needed by the autodeco and mean strategies.")] = None,
    strategies: Annotated[str, typer.Option(help="Comma-separated: greedy, default, static:T,P, min_p:M[,T], dynatemp:LOW,HIGH[,EXP], oracle (tuned on the test set), oracle-dev (tuned on the task's dev split), mean, autodeco[:key=value].")] = "greedy,default,oracle,mean,autodeco",
    baseline: Annotated[Optional[str], typer.Option(help="The strategy the others are compared with, problem by problem (paired s.e. and bootstrap interval); default: autodeco if listed, else the first.")] = None,
    samples: Annotated[int, typer.Option(help="Samples per problem for sampled strategies (greedy takes 1).")] = 4,
    limit: Annotated[Optional[int], typer.Option(help="Use the first K problems of each task.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences decoded together (a problem's samples prefill its prompt once, and the few-shot block is shared: bigger batches cost decode steps, not prefill).")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 256,
    prompt_style: PromptStyleOption = "auto",
    oracle_temperatures: Annotated[str, typer.Option(help="The oracle's T grid (at P=1).")] = ",".join(map(str, DEFAULT_ORACLE_TEMPERATURES)),
    oracle_top_ps: Annotated[str, typer.Option(help="The oracle's P grid (at the best T).")] = ",".join(map(str, DEFAULT_ORACLE_TOP_PS)),
    oracle_dev_limit: Annotated[int, typer.Option(help="oracle-dev tunes on the first N problems of each task's dev split.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of every sample (the same for all strategies).")] = 0,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Evaluate decoding strategies on tasks, with standard errors; resumes an interrupted run."""
    import time

    from autodeco.evaluation.report import results_document, write_report
    from autodeco.evaluation.runner import SAMPLES_NAME, EvalPlan, Evaluator
    from autodeco.evaluation.strategies import parse_grid, parse_strategies
    from autodeco.evaluation.tasks import load_task

    try:
        started = time.perf_counter()
        _check_counts(samples=samples, batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit, oracle_dev_limit=oracle_dev_limit)
        plan = EvalPlan(  # refuses an unknown --baseline, and oracle-dev on a task without a dev split
            tasks=[load_task(spec) for spec in task], strategies=parse_strategies(strategies), samples=samples, limit=limit,
            batch_size=batch_size, oracle_temperatures=parse_grid(oracle_temperatures, "--oracle-temperatures"),
            oracle_top_ps=parse_grid(oracle_top_ps, "--oracle-top-ps"), baseline=baseline, oracle_dev_limit=oracle_dev_limit,
        )
        prepare_output_dir(out_dir, overwrite=True, what="evaluation output")  # an earlier run's samples are resumed
        with _interruptible(lambda: f"the finished samples are saved in {out_dir / SAMPLES_NAME}; rerun the same command to continue"):
            autodeco, tokenizer, settings = _load_for_sampling(model, heads, prompt_style, max_new_tokens, seed, dtype, device, trust_remote_code)
            chat = settings.chat
            evaluator = Evaluator(autodeco, tokenizer, settings, out_dir, err)
            results = evaluator.run(plan)
            document = results_document(model, settings.heads, results, prompt_style="chat" if chat else "few-shot", wall_seconds=round(time.perf_counter() - started, 1))
            written = write_report(out_dir, document, list(evaluator.used.values()))
    except AutoDecoError as error:
        _fail(str(error))
    out.print((out_dir / "report.md").read_text(), markup=False)
    err.print("Wrote " + ", ".join(str(p) for p in written))


def print_stream(events, color: bool) -> Completion:
    """Print streamed text (coloured per token if asked) and a one-line summary; returns the answer."""
    answer = Completion("", [], "", 0)
    for event in events:
        event: StreamEvent
        answer.add(event)
        if color:
            for token in event.tokens:
                out.print(Text(token.text, style=temperature_color(token.temperature)), end="")
        else:
            out.print(Text(event.text), end="")
    out.print()
    if answer.tokens:
        err.print(f"[dim]{len(answer.tokens)} tokens, finish: {answer.finish_reason}, mean T {answer.mean_temperature:.3f}, mean P {answer.mean_top_p:.3f}[/]")
    return answer


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Base model (default: Gemma-3-270M, converted on first use).")] = DEFAULT_MODEL,
    heads: Annotated[Path, typer.Option(help="Heads folder or shipped heads name.")] = Path(DEFAULT_HEADS),
    html: Annotated[Path, typer.Option(help="Where to write the HTML page (every token with its T and P on hover, and a plot).")] = Path("autodeco-demo.html"),
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    dtype: DtypeOption = "auto",
) -> None:
    """Answer a few prompts with the learned per-token T and P: coloured text, mean T and P, an HTML page."""
    from autodeco.models import resolve_model
    from autodeco.token_view import ShownAnswer, write_answers_html

    try:
        resolve_model(model, err)  # a first run converts Gemma, with progress
        with err.status(f"Loading {model} with heads {heads} ..."):
            autodeco, tokenizer = load_model_and_tokenizer(model, heads, dtype, None, False)
        err.print("Tokens are coloured by the temperature they were sampled at (blue = low, red = high).")
        shown = []
        for index, item in enumerate(DEMO_PROMPTS):
            out.print(f"\n[bold]{item.title}[/]\n[dim]{item.prompt}[/]", markup=True)
            params = SamplingParams(max_new_tokens=item.max_new_tokens, stop=item.stop, seed=seed + index)
            shown.append(ShownAnswer(item.title, item.prompt, print_stream(stream(autodeco, tokenizer, item.prompt, params), color=True)))
        write_answers_html(shown, f"AutoDeco on {model}", html)
    except AutoDecoError as error:
        _fail(str(error))
    err.print(f"\nWrote {html}: every token with its T and P on hover, and a plot of T and P along each answer.")


@app.command("eval-control")
def eval_control_command(
    model: Annotated[str, typer.Option(help="Base model: a folder, a hub id or an alias (gemma-3-270m).")],
    heads: Annotated[Path, typer.Option(help="Heads folder or shipped heads name.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: results.json, readings.jsonl, report.md, control.png.")],
    task: Annotated[str, typer.Option(help="Where the held-out prompts come from (its evaluation split).")] = "reasoning_gym:basic_arithmetic",
    prompts: Annotated[int, typer.Option(help="How many prompts.")] = 100,
    max_new_tokens: Annotated[int, typer.Option(help="Longest plain answer read back.")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the plain answers.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    prompt_style: PromptStyleOption = "auto",
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Measure how decoding commands ("be creative", "be exact", "no randomness") move the learned T and P."""
    from autodeco.evaluation import control
    from autodeco.evaluation.tasks import load_task

    try:
        _check_counts(prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        chosen = load_task(task)
        problems = chosen.problems()[:prompts]
        prepare_output_dir(out_dir, overwrite=True, what="report")  # a rerun writes its report anew
        with _interruptible(lambda: "the readings are not kept; rerun the same command"):
            autodeco, tokenizer, settings = _load_for_sampling(model, heads, prompt_style, max_new_tokens, seed, dtype, device, trust_remote_code)
            with err.status(f"Reading {len(problems)} answers back under {2 * len(control.CONDITIONS) + 1} prompt variants ..."):
                readings = control.measure(
                    autodeco, tokenizer, [chosen.prompt(p, settings.chat) for p in problems], chat=settings.chat,
                    max_new_tokens=max_new_tokens, seed=seed, stop=chosen.stop(settings.chat), batch_size=batch_size,
                )
            summary = control.summarise(readings)
            paths = control.write_report(summary, readings, out_dir, f"{model} with heads {heads} on {task}")
    except AutoDecoError as error:
        _fail(str(error))
    out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
    err.print(f"wrote {', '.join(str(p) for p in paths)}")


@app.command()
def serve(
    model: Annotated[Optional[str], typer.Option(help="Base model folder or hub id (or a merged AutoDeco checkpoint).")] = None,
    heads: Annotated[Optional[Path], typer.Option(help="Heads folder or shipped heads by name (gemma-3-270m).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback unless you expose it on purpose).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Bearer KEY' on every route but /health.", envvar="AUTODECO_API_KEY")] = None,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help="Serve /metrics without the API key (for a scraper that has none).")] = False,
    max_batch_size: Annotated[int, typer.Option(help="Most sequences decoding together.")] = 32,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting for room; more get 429.")] = 256,
    prefix_sharing: Annotated[bool, typer.Option(
        help="Prefill a prompt once for all the rows that join together with it (a request's n choices), and a prefix common "
             "to their prompts once. The tokens are the same either way; off, each row is prefilled on its own (for measuring and debugging).",
    )] = True,
    max_request_tokens: Annotated[int, typer.Option(help="Most tokens one request may ask for (n x max_tokens); more gets 400.")] = 65_536,
    max_connections: Annotated[int, typer.Option(help="Most open connections; a request past them gets 503.")] = 1024,
    header_timeout: Annotated[float, typer.Option(help="Seconds a request's headers may take to arrive; then the connection is closed.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a request's body may take to arrive after its headers; then 408.")] = 30.0,
    keep_alive_timeout: Annotated[float, typer.Option(help="Seconds an idle kept-alive connection stays open.")] = 5.0,
    forwarded_allow_ips: Annotated[Optional[str], typer.Option(help="Believe X-Forwarded-For from these proxy addresses (comma-separated); from none unless given.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name clients see (default: --model); --model and --heads, and their folder names, are accepted too.")] = None,
    speculative: SpeculativeOption = None,
    num_draft_tokens: DraftTokensOption = DEFAULT_NUM_DRAFT_TOKENS,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Serve the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) with learned decoding."""
    try:
        import uvicorn

        from autodeco.serving.app import create_app
        from autodeco.serving.server import Limits, listen_socket, resolve_address, server_config
    except ImportError as missing:
        _fail(f"autodeco serve needs the serve extra ({missing.name} is missing): pip install 'autodeco[serve]'")
    from autodeco.serving.scheduler import Scheduler

    try:
        _check_counts(max_batch_size=max_batch_size, max_queue=max_queue, max_request_tokens=max_request_tokens,
                      max_connections=max_connections, num_draft_tokens=num_draft_tokens)
        _check_seconds(header_timeout=header_timeout, body_timeout=body_timeout, keep_alive_timeout=keep_alive_timeout)
        family, address = resolve_address(host, port)  # before the slow model load: a bad host or port fails at once
        if api_key is None and not _is_loopback(address[0]):
            err.print(f"warning: serving on {host} without --api-key: anyone who can reach this port can use the model; "
                      "set --api-key (or AUTODECO_API_KEY)", markup=False)
        with err.status("Loading model ..."):
            autodeco, tokenizer = load_model_and_tokenizer(model, heads, dtype, device, trust_remote_code)
            speculation = None if speculative is None else make_speculation(speculative, autodeco, num_draft_tokens, trust_remote_code=trust_remote_code)
        listener = listen_socket(family, address)
    except AutoDecoError as error:
        _fail(str(error))
    limits = Limits(max_request_tokens=max_request_tokens, max_connections=max_connections, header_timeout_s=header_timeout,
                    body_timeout_s=body_timeout, keep_alive_s=keep_alive_timeout)
    served = name or model or "autodeco"
    given = [str(path) for path in (model, heads) if path is not None]
    scheduler = Scheduler(autodeco, tokenizer, max_batch_size=max_batch_size, max_queue=max_queue, speculation=speculation,
                          share_prefixes=prefix_sharing)
    scheduler.start()
    bound_host, bound_port = listener.getsockname()[:2]
    err.print(f"Serving {served} at http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/v1 (Ctrl+C stops)", markup=False)
    try:
        api = create_app(scheduler, served, aliases=[*given, *(Path(path).name for path in given)], api_key=api_key, limits=limits, public_metrics=public_metrics)
        uvicorn.Server(server_config(api, limits, forwarded_allow_ips=forwarded_allow_ips)).run(sockets=[listener])
    finally:
        scheduler.stop()


def _check_seconds(**seconds: float) -> None:
    """Timeouts given on the command line must be a positive, finite number of seconds."""
    for name, value in seconds.items():
        if not 0 < value < math.inf:
            raise AutoDecoError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")


def _is_loopback(address: str) -> bool:
    """Whether an IP address is a loopback one (only this machine reaches it)."""
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # an IPv6 address with a zone, e.g. fe80::1%eth0
        return False


if __name__ == "__main__":  # python -m autodeco.cli (e.g. under accelerate launch -m)
    app()
