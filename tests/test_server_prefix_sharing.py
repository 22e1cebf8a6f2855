"""`autodeco serve --prefix-sharing`: a request's n choices share one prefill of its prompt, and
give the same choices as with each row prefilled on its own (--no-prefix-sharing)."""

import pytest

from autodeco.tiny import tiny_tokenizer
from test_server import LiveServer, request

N = 4
BODY = {"model": "tiny", "prompt": "Question: What is 2 + 3? Think it through, then answer.", "max_tokens": 8, "seed": 11, "n": N, "logprobs": 1}


def _serve_once(model, share_prefixes: bool) -> tuple[dict, list[int]]:
    """The completion of BODY from a server with or without prefix sharing, and the tokens fed
    to the base model in each of its forwards meanwhile."""
    fed: list[int] = []
    hook = model.llm.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True)
    server = LiveServer(model, tiny_tokenizer(), max_batch_size=8, share_prefixes=share_prefixes)
    try:
        response = request(server, "POST", "/v1/completions", json=BODY)
    finally:
        server.close()
        hook.remove()
    assert response.status_code == 200, response.text
    return response.json(), fed


def test_n_choices_prefill_their_prompt_once_and_give_the_unshared_choices(make_model):
    model = make_model("llama")
    shared, shared_fed = _serve_once(model, share_prefixes=True)
    alone, alone_fed = _serve_once(model, share_prefixes=False)
    prompt_tokens = shared["usage"]["prompt_tokens"]
    assert prompt_tokens > 1 and alone["usage"] == shared["usage"]
    # the first forward is the prefill: the prompt once, or once per choice; the decode steps are the same
    assert shared_fed[0] == prompt_tokens and alone_fed[0] == N * prompt_tokens
    assert shared_fed[1:] == alone_fed[1:] and all(fed <= N for fed in shared_fed[1:])
    assert len(shared["choices"]) == len(alone["choices"]) == N
    for on, off in zip(shared["choices"], alone["choices"]):
        assert (on["index"], on["text"], on["logprobs"]["tokens"], on["finish_reason"]) == (off["index"], off["text"], off["logprobs"]["tokens"], off["finish_reason"])
        assert on["logprobs"]["token_logprobs"] == pytest.approx(off["logprobs"]["token_logprobs"], abs=1e-4)
        assert on["autodeco"]["temperature"] == pytest.approx(off["autodeco"]["temperature"], abs=1e-4)
        assert on["autodeco"]["top_p"] == pytest.approx(off["autodeco"]["top_p"], abs=1e-4)
    assert len({choice["text"] for choice in shared["choices"]}) > 1  # the seeded choices differ: rows did not share their sampling
