"""Training checkpoints: written whole or not at all, read back exactly.

``OUT/checkpoints/step-00000100/`` holds the heads in the released heads-only format (so any
checkpoint is usable as it is), ``optimizer.safetensors`` (AdamW moments; no pickle) and
``trainer_state.json`` (step, what the run was made from, optimizer hyper-parameters). A checkpoint
is assembled in a hidden temporary folder and renamed into place, so a full disk or a crash leaves
the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from autodeco.errors import AutoDecoError
from autodeco.io import atomic_save_tensors, atomic_write_text
from autodeco.modeling import AutoDecoModelForCausalLM, load_heads

CHECKPOINTS = "checkpoints"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step-{step:08d}"


def _complete_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints (those with a trainer state), oldest first."""
    return sorted(p for p in (out / CHECKPOINTS).glob("step-*") if (p / STATE_NAME).is_file())


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    done = _complete_checkpoints(out)
    return done[-1] if done else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu().contiguous()
        for index, entries in state["state"].items()
        for name, value in entries.items()
    }
    return tensors, state["param_groups"]


def save_checkpoint(out: Path, step: int, model: AutoDecoModelForCausalLM, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and keep the ``keep`` newest. Returns its folder."""
    final = checkpoint_dir(out, step)
    staging = final.with_name(f".{final.name}.partial")
    previous = latest_checkpoint(out)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.save_pretrained(staging)
        tensors, groups = _optimizer_tensors(optimizer)
        atomic_save_tensors(tensors, staging / OPTIMIZER_NAME)
        atomic_write_text(json.dumps({**state, "step": step, "param_groups": groups}, indent=2) + "\n", staging / STATE_NAME)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise AutoDecoError(
            f"could not write checkpoint {final} ({err.strerror or err}); {kept}; free space and rerun with --resume"
        ) from err
    done = _complete_checkpoints(out)
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_checkpoints(out: Path) -> None:
    """Delete every checkpoint under ``out``. The folder is renamed away first, so an
    interruption never leaves a half-deleted checkpoint that could be resumed from."""
    folder, trash = out / CHECKPOINTS, out / f".{CHECKPOINTS}.deleted"
    shutil.rmtree(trash, ignore_errors=True)
    if folder.exists():
        folder.rename(trash)
        shutil.rmtree(trash)


def load_checkpoint(path: Path, model: AutoDecoModelForCausalLM, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore heads and optimizer from ``path``; returns the trainer state (with ``step``)."""
    try:
        state = json.loads((path / STATE_NAME).read_text())
        heads = load_heads(path)
        tensors = load_file(str(path / OPTIMIZER_NAME))
    except (OSError, ValueError, SafetensorError) as err:  # ValueError: bad JSON, or an AutoDecoError about the heads
        raise AutoDecoError(f"checkpoint {path} is unreadable ({err}); delete it to resume from the one before") from err
    model.heads.load_state_dict(heads.state_dict())
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state.pop("param_groups")})
    return state
