"""What one client can send never breaks the others: sampling values at the edge of float32 choose a token instead of
nan, every numeric field is range-checked (400, never 500), a server reachable from other machines needs a key, and a
server on loopback answers loopback host names only (no DNS rebinding)."""

from __future__ import annotations

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from lmforge.config.serving import ServeArguments
from lmforge.errors import ConfigError
from lmforge.model.sampling import SamplingError, SamplingParams, choose_next, choose_one
from lmforge.serve.http_app import LoopbackNames, answered_names
from lmforge.serve.protocol import ChatCompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("settings", [
    {"temperature": 1e-40}, {"temperature": 1e-30, "top_k": 3}, {"temperature": 0.7, "top_p": 1e-300},
    {"temperature": 1.0, "top_p": 5e-324}, {"temperature": 2e-5, "top_p": 0.5},
])
def test_extreme_sampling_values_choose_the_top_token(settings):
    torch.manual_seed(0)
    logits = torch.randn(50) * 30
    for seed in range(5):
        token = choose_one(logits, SamplingParams(max_tokens=1, **settings), [1, 2], [], torch.Generator().manual_seed(
            seed))
        assert token == int(logits.argmax()), settings


def test_overflowing_scores_and_nan_rows():
    logits = torch.zeros(8)
    logits[3] = 3e38  # divided by a small temperature this overflows to +inf: it stays the most likely token
    assert choose_one(logits, SamplingParams(max_tokens=1, temperature=1e-3), [], [], torch.Generator()) == 3
    with pytest.raises(SamplingError, match="not numbers"):
        choose_one(torch.full((8,), float("nan")), SamplingParams(max_tokens=1), [], [], torch.Generator())
    with pytest.raises(SamplingError, match="no token is left"):
        choose_one(torch.full((8,), float("-inf")), SamplingParams(max_tokens=1), [], [], torch.Generator())
    # ordinary settings draw what a plain softmax + multinomial draws (RL rollouts and seeded requests unchanged)
    row = torch.randn(50)
    params = SamplingParams(max_tokens=1, temperature=0.7)
    expected = int(torch.multinomial((row / 0.7).softmax(-1), 1, generator=torch.Generator().manual_seed(3)))
    assert choose_next(row[None], [(params, [], [], torch.Generator().manual_seed(3))]) == [expected]


def test_logit_bias_moves_a_token_as_openai_defines_it():
    """+100 makes a token the choice whatever else scores, -100 rules the top one out, greedy or sampled."""
    torch.manual_seed(0)
    logits = torch.randn(50) * 3
    top, low = int(logits.argmax()), int(logits.argmin())
    for temperature in (0.0, 0.8):
        forced = SamplingParams(max_tokens=1, temperature=temperature, logit_bias={low: 100.0})
        banned = SamplingParams(max_tokens=1, temperature=0.0, logit_bias={top: -100.0})
        generator = torch.Generator().manual_seed(1)
        assert choose_one(logits, forced, [], [], generator) == low
        assert choose_one(logits, banned, [], [], generator) == int(logits.topk(2).indices[1])
    assert float(logits[low]) == float(logits.min())  # the caller's scores are not changed


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("seed", 2**70, "less than or equal to 9223372036854775807"),
    ("seed", -(2**63) - 1, "greater than or equal to -9223372036854775808"),
    ("n", 2**70, "less than or equal to 16"),
    ("max_tokens", -(2**70), "greater than or equal to 1"),
    ("top_k", -1, "greater than or equal to 0"),
    ("top_logprobs", 21, "less than or equal to 20"),
    ("top_logprobs", 3, "logprobs are not supported"),
    ("temperature", float("nan"), "finite number"),
    ("top_p", float("inf"), "finite number"),
    ("repetition_penalty", 1e-300, "greater than or equal to 0.01"),
    ("presence_penalty", float("-inf"), "finite number"),
    ("frequency_penalty", 1e308, "less than or equal to 2"),
    ("logit_bias", {"12": 100.5}, "biases go from -100 to 100"),
    ("logit_bias", {"12": float("nan")}, "biases go from -100 to 100"),
    ("logit_bias", {"<|im_end|>": 5}, "keys are token ids"),
    ("logit_bias", {str(i): 1 for i in range(301)}, "at most 300 tokens"),
])
def test_every_numeric_field_is_range_checked(field, value, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ChatCompletionRequest(messages=MESSAGES, **{field: value})
    assert ChatCompletionRequest(messages=MESSAGES, seed=2**63 - 1).seed == 2**63 - 1


def test_a_server_for_other_machines_needs_a_key_or_an_explicit_opt_in():
    assert answered_names(ServeArguments(), None) == []
    assert answered_names(ServeArguments(allowed_hosts=["lab.example"]), None) == ["lab.example"]
    with pytest.raises(ConfigError, match=r"`host: 0.0.0.0` serves other machines, and there is no API key.*"
                                          r"allow_unauthenticated: true"):
        answered_names(ServeArguments(host="0.0.0.0"), None)
    assert answered_names(ServeArguments(host="0.0.0.0"), "sk-key") is None
    assert answered_names(ServeArguments(host="0.0.0.0", allow_unauthenticated=True), None) is None


def test_the_cli_refuses_an_open_api_before_loading_anything(capsys, tiny_model_dir, monkeypatch):
    from lmforge.cli import main

    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    assert main(["api", tiny_model_dir, "host=0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "allow_unauthenticated" in err and "Traceback" not in err


@pytest.fixture()
def loopback_app():
    app = FastAPI()

    @app.post("/start")
    async def start() -> dict:
        return {"started": True}

    app.add_middleware(LoopbackNames, allowed=["lab.example"])
    return app


@pytest.mark.parametrize(("headers", "status"), [
    ({"Host": "127.0.0.1:7860"}, 200),
    ({"Host": "localhost:7860", "Origin": "http://localhost:7860"}, 200),
    ({"Host": "[::1]:7860", "Origin": "http://[::1]:7860"}, 200),
    ({"Host": "lab.example"}, 200),  # allowed_hosts
    ({"Host": "attacker.example:7860"}, 403),  # DNS rebinding: the page's own name, resolved to 127.0.0.1
    ({"Host": "127.0.0.1:7860", "Origin": "http://attacker.example"}, 403),  # a cross-site form or fetch
    ({"Host": "127.0.0.1:7860", "Origin": "null"}, 403),  # a sandboxed frame
    ({"Host": "127.0.0.1.attacker.example"}, 403),
])
def test_a_loopback_server_answers_loopback_names_only(loopback_app, headers, status):
    with TestClient(loopback_app, base_url="http://127.0.0.1:7860") as http:
        response = http.post("/start", headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["code"] == "host_not_allowed"
