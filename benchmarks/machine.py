"""What every benchmark records about the machine it ran on, as data and as a line of markdown."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import transformers

# glibc settings that decide whether vocabulary-sized buffers are reused or re-mapped every step
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def machine_info() -> dict[str, Any]:
    """Platform, CPUs, torch threads, versions and allocator settings."""
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "allocator_env": {k: os.environ.get(k) for k in MALLOC_ENV},
    }


def machine_line(machine: dict[str, Any]) -> str:
    """``machine_info()`` as one sentence for a results table."""
    allocator = ", ".join(f"{k}={v}" for k, v in machine["allocator_env"].items() if v) or "glibc defaults"
    return (
        f"Machine: {machine['platform']}, {machine['processor']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads; "
        f"torch {machine['torch']}, transformers {machine['transformers']}; allocator settings: {allocator}."
    )
