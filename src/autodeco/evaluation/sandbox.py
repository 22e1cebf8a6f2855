"""Run untrusted Python (model-written code) in a separate, limited process.

Never in the evaluator's process: a fresh interpreter (``-I -S``: no user site, no environment
variables, no current folder on the path) in an empty temporary folder, with limits on CPU time,
address space, file size and wall time; on timeout its whole process group is killed.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExecutionResult:
    """``passed`` when the program exited with status 0; ``reason`` says why not."""

    passed: bool
    reason: str  # "passed", "failed", "timeout" or "memory"


def run_python(source: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run ``source`` as a script in a sandboxed subprocess and report how it ended."""
    memory = memory_mb * 1024 * 1024

    def limit() -> None:  # runs in the child between fork and exec
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))

    with tempfile.TemporaryDirectory(prefix="autodeco-exec-") as folder:
        script = Path(folder) / "program.py"
        script.write_text(source, encoding="utf-8")
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(script)], cwd=folder, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={"PATH": os.defpath}, preexec_fn=limit,
        )
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return ExecutionResult(False, "timeout")
    if process.returncode == 0:
        return ExecutionResult(True, "passed")
    if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return ExecutionResult(False, "timeout")
    return ExecutionResult(False, "memory" if b"MemoryError" in stderr[-2000:] else "failed")
