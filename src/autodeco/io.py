"""File input and output: atomic writes (a crash or a full disk never leaves half a file where a good
one was), output folders checked before any work, and JSON Lines read with errors naming file and line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from autodeco.configuration import json_kind
from autodeco.errors import AutoDecoError

INDEX_NAME = "model.safetensors.index.json"


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


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`AutoDecoError` ending in ``fix`` when the file cannot
    be read, is not JSON, or holds another kind of JSON value (an array, a string ...)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise AutoDecoError(f"cannot read {path} ({error}); {fix}") from error
    except json.JSONDecodeError as error:
        raise AutoDecoError(f"{path} is not valid JSON ({error}); {fix}") from error
    if not isinstance(value, dict):
        raise AutoDecoError(f"{path} holds {json_kind(value)}, not a JSON object; {fix}")
    return value


def safetensors_files(directory: Path) -> list[Path]:
    """A checkpoint folder's safetensors files: the shards its ``model.safetensors.index.json``
    names, or else ``model.safetensors`` if it is there (else none). An index that is not valid
    JSON, has no ``weight_map`` or names a shard that is not there raises :class:`AutoDecoError`."""
    index = directory / INDEX_NAME
    if index.is_file():
        fix = "write the checkpoint again (save_pretrained) or download it again"
        weight_map = read_json_object(index, fix).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
            raise AutoDecoError(f"{index} has no weight_map from tensor names to shard files; {fix}")
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise AutoDecoError(f"{index} names shards that are not in {directory}: {missing}; copy them there, or {fix}")
        return shards
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open(path)`` whose errors name the file: an empty, truncated or renamed file (a
    ``torch.save`` pickle called ``model.safetensors``) raises :class:`AutoDecoError`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except SafetensorError as error:
        raise AutoDecoError(
            f"{path} is not a readable safetensors file ({error}): it is empty, truncated, or not safetensors at all "
            "(e.g. a torch.save pickle renamed); write it again (save_pretrained) or download it again"
        ) from error


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors as safetensors, atomically."""
    atomic_replace(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    atomic_replace(path, lambda tmp: tmp.write_text(text))


def prepare_output_dir(path: Path, *, overwrite: bool = False, what: str = "output") -> Path:
    """Check that ``path`` can be an output folder, create it, and return it.

    Raises :class:`AutoDecoError` (naming ``what``, e.g. "heads", and the fix) when ``path`` is a
    file, sits under a file, cannot be created or written, or is a non-empty folder and
    ``overwrite`` is false. Checked before any slow work, so a bad ``--out`` fails at once; the
    files themselves are still written atomically (:func:`atomic_replace`).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AutoDecoError(f"the {what} folder {path} is an existing file; pass a folder path (--out) that is not a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AutoDecoError(f"cannot create the {what} folder {path}: {parent} is a file, not a folder; pick another --out")
            break
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise AutoDecoError(f"the {what} folder {path} already exists and is not empty; pass --overwrite to replace its files, or pick another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AutoDecoError(f"cannot create the {what} folder {path} ({error.strerror or error}); pick a writable --out") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise AutoDecoError(f"the {what} folder {path} is not writable; fix its permissions or pick another --out")
    return path


def read_jsonl(path: Path, what: str, fix: str) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON Lines file.

    Every problem is an :class:`AutoDecoError` naming the file, and the line where there is one: a
    missing or unreadable file or a folder (``what`` names the file, e.g. "training data", and
    ``fix`` says how to pass the right one), bytes that are not UTF-8, or a line that is not JSON.
    """
    path = Path(path)
    if path.is_dir():
        raise AutoDecoError(f"{what} {path} is a folder, not a file; {fix}")
    if not path.exists():
        raise AutoDecoError(f"{what} {path} does not exist; {fix}")
    try:
        raw_lines = path.read_bytes().split(b"\n")  # bytes, so a bad byte is reported with its line
    except OSError as error:
        raise AutoDecoError(f"{what} {path} cannot be read ({error.strerror or error}); {fix}") from error
    values = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise AutoDecoError(
                f"{path}:{number}: byte {error.start + 1} of the line (0x{raw[error.start]:02x}) is not UTF-8 text; save the file as UTF-8"
            ) from error
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise AutoDecoError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno}); each line must be one JSON object") from error
    return values


def read_jsonl_resuming(path: Path) -> list[dict[str, Any]]:
    """The records of an append-only JSONL file, for resuming: a last line cut short by a crash
    (no newline, or not JSON) and anything after it are dropped and cut from the file."""
    data = path.read_bytes() if path.is_file() else b""
    records, good_end = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end += len(line)
    if good_end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return records
