"""Frozen-base features: the hidden states the heads read, for every completion position.

The base never changes during head training, so its final hidden states are the same every
epoch. :func:`completion_hidden_states` runs the base on a batch; :class:`FeatureCache` keeps the
rows (in memory, or in a memory-mapped file that survives restarts) so later epochs skip the base
and pay only for the LM head and the losses. Rows are stored in the base's dtype, so training from
the cache gives exactly what training from the base gives.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from autodeco.io import atomic_replace, atomic_write_text
from autodeco.modeling import final_hidden_states
from autodeco.training.data import Example, collate


def completion_hidden_states(llm: PreTrainedModel, examples: list[Example], pad_token_id: int) -> list[torch.Tensor]:
    """Per example, ``[completion_length, H]``: the hidden states at the positions that predict
    its completion tokens (positions ``prompt_length - 1 ... len - 2``)."""
    ids, mask = collate(examples, pad_token_id)
    device = llm.get_output_embeddings().weight.device
    with torch.no_grad():
        hidden = final_hidden_states(llm, ids.to(device), mask.to(device))
    return [hidden[row, e.prompt_length - 1 : len(e.input_ids) - 1] for row, e in enumerate(examples)]


def data_fingerprint(examples: list[Example]) -> str:
    """A short hash of the tokenised data set: a cache or checkpoint made from other data is refused."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt_length, example.input_ids]).encode())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Completion-position hidden states of every example, filled on first use.

    ``directory=None`` keeps them in RAM; otherwise ``features.bin`` (a memory-mapped tensor),
    ``filled.bin`` (which examples are done) and ``meta.json`` (what base and data they belong to)
    live there, so an interrupted run keeps what it computed. ``identity`` names the base and the
    data (see :func:`data_fingerprint`); a cache made for another one, or another dtype, is
    discarded and rebuilt.
    """

    def __init__(self, examples: list[Example], hidden_size: int, dtype: torch.dtype, identity: dict, directory: Path | None = None) -> None:
        lengths = torch.tensor([e.completion_length for e in examples])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        total_rows = int(self.offsets[-1])
        self.directory = directory
        if directory is None:
            self.rows = torch.empty(total_rows, hidden_size, dtype=dtype)
            self.filled = torch.zeros(len(examples), dtype=torch.bool)
            return
        directory.mkdir(parents=True, exist_ok=True)
        meta = {**identity, "rows": total_rows, "hidden_size": hidden_size, "dtype": str(dtype)}
        meta_path = directory / "meta.json"
        fresh = not meta_path.is_file() or json.loads(meta_path.read_text()) != meta
        if fresh:
            for name in ("features.bin", "filled.bin"):
                (directory / name).unlink(missing_ok=True)
            atomic_write_text(json.dumps(meta, indent=2) + "\n", meta_path)
        self.rows = _mapped(directory / "features.bin", (total_rows, hidden_size), dtype)
        filled_path = directory / "filled.bin"
        self.filled = torch.zeros(len(examples), dtype=torch.bool)
        if filled_path.is_file() and filled_path.stat().st_size == len(examples):
            self.filled = torch.frombuffer(bytearray(filled_path.read_bytes()), dtype=torch.bool).clone()

    def missing(self) -> list[int]:
        """Indices of the examples not cached yet."""
        return (~self.filled).nonzero().squeeze(-1).tolist()

    def put(self, indices: list[int], hidden: list[torch.Tensor]) -> None:
        """Store the completion hidden states of these examples (in RAM or the shared mapping)."""
        for index, rows in zip(indices, hidden):
            self.rows[self.offsets[index] : self.offsets[index + 1]] = rows.to("cpu", self.rows.dtype)
        self.filled[indices] = True

    def save_flags(self) -> None:
        """Record which examples are done. Call after :meth:`put`: the rows are in the shared
        mapping by then, so a crash afterwards loses nothing the flags vouch for."""
        if self.directory is not None:
            atomic_replace(self.directory / "filled.bin", lambda tmp: tmp.write_bytes(self.filled.numpy().tobytes()))

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        """The stored rows of these examples (all must be filled)."""
        return [self.rows[self.offsets[i] : self.offsets[i + 1]] for i in indices]


def _mapped(path: Path, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor whose storage is the file at ``path`` (created at the right size if new)."""
    count = shape[0] * shape[1]
    size = count * torch.empty((), dtype=dtype).element_size()
    if not path.is_file() or path.stat().st_size != size:
        with path.open("wb") as handle:
            handle.truncate(size)
    return torch.from_file(str(path), shared=True, size=count, dtype=dtype).view(shape)
