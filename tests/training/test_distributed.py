"""Two CPU processes (gloo, launched by torchrun): the ranks end with identical heads, equal to one
process training on the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from autodeco.training.trainer import TrainConfig, train

from .test_trainer import _sampled_data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_each_other_and_one_process(tmp_path, tokenizer):
    base, data = _sampled_data(tmp_path, tokenizer, 1.0, rows=40)
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(worker), str(base), str(data), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    single = train(TrainConfig(base=str(base), data=str(data), out=str(tmp_path / "one"), batch_size=8, max_steps=4, progress=False, lr=1e-3))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name  # the ranks agree bit for bit
        torch.testing.assert_close(tensor, single.model.heads.state_dict()[name], rtol=1e-5, atol=1e-6)  # = one process
    assert (out / "model.safetensors").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 4
