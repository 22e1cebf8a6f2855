"""Atomic file writes: a crash or a full disk never leaves half a file where a good one was."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


def atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX)."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # NamedTemporaryFile creates 0600
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def safetensors_files(directory: Path) -> list[Path]:
    """A checkpoint folder's safetensors files: the shards its ``model.safetensors.index.json``
    names, or else ``model.safetensors`` if it is there (else none)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return [directory / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors as safetensors, atomically."""
    atomic_replace(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    atomic_replace(path, lambda tmp: tmp.write_text(text))
