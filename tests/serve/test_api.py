"""`lmforge api` on loopback, driven by the real `openai` client: plain and streaming calls, 64 concurrent streams,
the API key, malformed and hostile requests (4xx with OpenAI's error body, and the server stays up)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from lmforge.data.template import prompt_ids
from tests.conftest import GREETING, REPLY

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

KEY = "sk-test-lmforge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lmforge_server(command: str, *args: str, ready_path: str = "/") -> tuple[subprocess.Popen, str]:
    """`lmforge COMMAND ARGS port=FREE` in a child process, once `ready_path` answers 200; returns (process, URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", command, *args, f"port={port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lmforge {command} exited {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(base + ready_path, timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"lmforge {command} did not start within 120 s")


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    return start_lmforge_server("api", *args, ready_path="/health")


@pytest.fixture(scope="module")
def server(chat_model_dir):
    """A random chat model (different prompts give different texts), behind an API key."""
    proc, base = start_server(chat_model_dir, f"api_key={KEY}", "served_model_name=tiny", "max_batch_size=8")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def test_a_fine_tuned_model_answers_and_stops_at_its_end_of_turn(greeter_dir):
    """`lmforge api MODEL_DIR` with no API key: the model lmforge trained ends its reply where it learnt to."""
    proc, base = start_server(greeter_dir)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["out"]
        reply = client.chat.completions.create(model="out", messages=[{"role": "user", "content": GREETING}],
                                               temperature=0, max_tokens=40)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    choice = reply.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", REPLY, "stop")
    tok = AutoTokenizer.from_pretrained(greeter_dir)
    prompt = prompt_ids(tok, [{"role": "user", "content": GREETING}])
    reply_tokens = len(tok(REPLY, add_special_tokens=False)["input_ids"]) + 1  # + <|im_end|>
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), reply_tokens)
    assert reply.usage.total_tokens == len(prompt) + reply_tokens


def test_models_list(client):
    assert [(m.id, m.owned_by) for m in client.models.list().data] == [("tiny", "lmforge")]


def test_streaming_call(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": GREETING}],
        temperature=0, max_tokens=30, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"  # random model: no stop
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    plain = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": GREETING}],
        temperature=0, max_tokens=30)
    assert text == plain.choices[0].message.content


def test_sixty_four_concurrent_streams_each_get_their_own_output(server, client):
    questions = [f"Question {i}: what comes after {i * 7}?" for i in range(64)]
    expected = [client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                               temperature=0, max_tokens=20).choices[0].message.content
                for q in questions]
    assert len(set(expected)) > 12  # the prompts lead to different texts, so a mix-up would show

    async def stream_one(aclient: openai.AsyncOpenAI, question: str) -> tuple[str, set[str]]:
        stream = await aclient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                                       temperature=0, max_tokens=20, stream=True)
        parts, ids = [], set()
        async for chunk in stream:
            ids.add(chunk.id)
            parts.extend(c.delta.content or "" for c in chunk.choices)
        return "".join(parts), ids

    async def all_at_once():
        aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
        return await asyncio.gather(*(stream_one(aclient, q) for q in questions))

    results = asyncio.run(all_at_once())
    assert [text for text, _ in results] == expected
    ids = [i for _, i in results]
    assert all(len(i) == 1 for i in ids) and len(set().union(*ids)) == 64


def test_options_stop_n_and_text_completions(client):
    message = [{"role": "user", "content": GREETING}]
    full = client.chat.completions.create(model="tiny", messages=message, temperature=0, max_tokens=12)
    text = full.choices[0].message.content
    stop = text[4:7]
    cut = client.chat.completions.create(model="tiny", messages=message, temperature=0, max_tokens=12, stop=[stop])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (text[: text.index(stop)], "stop")
    short = client.chat.completions.create(model="tiny", messages=message, temperature=0, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    several = client.chat.completions.create(model="tiny", messages=message, n=3, temperature=1.5, seed=1,
                                             max_tokens=8)
    assert [c.index for c in several.choices] == [0, 1, 2]
    text = client.completions.create(model="tiny", prompt=["<|im_start|>user\n" + GREETING, "Once"], max_tokens=6,
                                     temperature=0, echo=True)
    assert [c.index for c in text.choices] == [0, 1]
    assert text.choices[0].text.startswith("<|im_start|>user\n" + GREETING) and text.choices[1].text.startswith("Once")
    streamed = client.completions.create(model="tiny", prompt="Once", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text.choices[1].text[len("Once"):]


def test_tools_are_passed_to_the_chat_template(client, chat_model_dir):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    message = [{"role": "user", "content": GREETING}]
    with_tools = client.chat.completions.create(model="tiny", messages=message, tools=tools, max_tokens=4)
    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    assert with_tools.usage.prompt_tokens == len(prompt_ids(tok, message, tools))
    assert with_tools.usage.prompt_tokens > len(prompt_ids(tok, message)) + 10


def test_the_api_key_is_required(server):
    for key in ("wrong-key", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(f"{server}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": GREETING}])


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ("{not json", None, "not valid JSON"),
    ({"model": "greeter"}, "messages", "Field required"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "'system'"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens", "greater than or equal to 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, "max_tokens", "leaves room for at most"),
    ({"messages": [{"role": "user", "content": "word " * 400}]}, "messages", "context is 256 tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature", "less than or equal to 2"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs", "not supported"),
])
def test_malformed_requests_get_a_400_and_the_server_stays_up(server, client, body, param, fragment):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server}/v1/chat/completions", content=content,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": GREETING}],
                                           temperature=0, max_tokens=4)
    assert reply.choices[0].finish_reason == "length"


def test_a_missing_optional_package_names_the_extra(monkeypatch, capsys, chat_model_dir):
    from lmforge.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `lmforge[serve]` were not installed
    monkeypatch.delitem(sys.modules, "lmforge.serve.api", raising=False)
    assert main(["api", chat_model_dir]) == 2
    assert "needs the 'fastapi' package: pip install 'lmforge[serve]'" in capsys.readouterr().err


def _post(server: str, path: str, body: dict | bytes, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server}{path}", content=content, timeout=60, **kw,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})


@pytest.mark.parametrize("kwargs", [
    {"chat_template": "{{ raise_exception('the client template ran') }}"},
    {"tools": [{"type": "function", "function": {"name": "x"}}]},
    {"add_generation_prompt": False},
    {"enable_thinking": {"nested": "objects are not plain values"}},
])
def test_chat_template_kwargs_never_carry_a_template(server, client, kwargs):
    response = _post(server, "/v1/chat/completions",
                     {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": kwargs})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("chat_template_kwargs")
    assert "the client template ran" not in response.text
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": GREETING}], max_tokens=3,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert plain.choices[0].finish_reason in ("length", "stop")  # plain template variables are accepted


def test_oversized_bodies_get_413_and_too_many_prompts_400(server, client):
    big = {"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    assert _post(server, "/v1/chat/completions", big).status_code == 413
    chunks = (b"x" * 1024 * 1024 for _ in range(9))  # no Content-Length: counted as it arrives
    chunked = httpx.post(f"{server}/v1/completions", content=chunks, timeout=60,
                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert chunked.status_code == 413 and "max_request_bytes" in chunked.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="At most 64 prompts"):
        client.completions.create(model="tiny", prompt=["Once"] * 65, max_tokens=1)
    assert len(client.completions.create(model="tiny", prompt=["Once"] * 64, max_tokens=1).choices) == 64


def test_with_an_api_key_the_schema_pages_are_off(server):
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(f"{server}{path}").status_code == 404


def test_a_crash_answers_internal_error_with_a_request_id_and_logs_the_detail(caplog):
    from fastapi.testclient import TestClient

    from lmforge.config.generation import GenerationArguments
    from lmforge.serve.api import create_app

    class BrokenTokenizer:
        def __call__(self, text):
            raise RuntimeError("secret path /srv/models/x")

        def get_vocab(self):
            return {"hi": 0}

    class Engine:
        tokenizer = BrokenTokenizer()
        context_length = 256

    app = create_app(Engine(), "m", GenerationArguments())
    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.post("/v1/completions", json={"prompt": "hi"})
        assert http.get("/docs").status_code == 200  # no API key: the schema pages stay
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert message.startswith("Internal error (request id ") and "secret" not in message
    request_id = message.split("request id ")[1].split(")")[0]
    assert any(request_id in r.getMessage() and "secret path" in r.getMessage() for r in caplog.records)


def test_bench_serve_compares_batching_behind_the_endpoint(chat_model_dir, tmp_path, capsys):
    from lmforge.cli import main

    out = tmp_path / "serve.json"
    assert main(["bench", chat_model_dir, "--serve", "--clients", "6", "--max-tokens", "12", "--arrival-gap", "0.02",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for engine in ("continuous batching", "static batching"):
        assert result[engine]["texts_equal_solo"] == 6  # every stream is the text its request gets alone
        assert result[engine]["completion_tokens"] == result["solo"]["completion_tokens"] > 0
        assert 0 < result[engine]["latency_p50"] <= result[engine]["latency_p95"]
    assert result["ratio"] == round(result["continuous batching"]["tokens_per_second"]
                                    / result["static batching"]["tokens_per_second"], 2)
    assert "continuous / static throughput" in capsys.readouterr().out


def test_a_text_model_refuses_image_parts(server, client):
    with pytest.raises(openai.BadRequestError, match="takes text only"):
        client.chat.completions.create(model="tiny", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])


# ---- one client never breaks the others ----------------------------------------------------------------------------

POISONED = [{"temperature": 1e-40}, {"top_p": 1e-300, "temperature": 1.0}, {"temperature": 1e-38, "top_p": 5e-324}]


def test_poisoned_sampling_values_among_concurrent_clients_fail_nobody(server, client):
    """32 concurrent clients, 8 of them with temperatures and top-p values that underflow float32: every request gets
    200 and its full output; the valid greedy ones are what they get alone."""
    questions = [f"Tell me about the number {i}." for i in range(32)]
    expected = {i: client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                                  temperature=0, max_tokens=16).choices[0].message.content
                for i, q in enumerate(questions) if i % 4}

    async def one(http: httpx.AsyncClient, i: int) -> httpx.Response:
        settings = POISONED[i // 4 % len(POISONED)] if i % 4 == 0 else {"temperature": 0}
        return await http.post("/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                               json={"messages": [{"role": "user", "content": questions[i]}], "max_tokens": 16,
                                     **settings})

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server) as http:
            return await asyncio.gather(*(one(http, i) for i in range(32)))

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses if r.status_code != 200]
    for i, response in enumerate(responses):
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] in ("length", "stop") and response.json()["usage"]["completion_tokens"] > 0
        if i in expected:
            assert choice["message"]["content"] == expected[i]


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/v1/chat/completions", "seed", 2**70), ("/v1/completions", "seed", -(2**63) - 1),
    ("/v1/chat/completions", "n", 2**70), ("/v1/completions", "max_tokens", 2**70),
    ("/v1/chat/completions", "top_logprobs", 99), ("/v1/chat/completions", "max_completion_tokens", -(2**64)),
])
def test_integer_overflows_get_a_400_and_queue_nothing(server, path, field, value):
    body = {"prompt": "Once"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    response = _post(server, path, {**body, field: value, "n": 4} if field != "n" else {**body, field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def test_nan_and_infinity_in_the_body_get_a_400(server):
    for literal in ("NaN", "Infinity", "-Infinity"):
        response = _post(server, "/v1/chat/completions",
                         b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + literal.encode() + b"}")
        assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", response.text


@pytest.fixture(scope="module")
def engine(chat_model_dir):
    """Two rows at a time: sixteen long completions take many seconds."""
    from tests.serve.test_engine import make_engine

    engine = make_engine(chat_model_dir, 2)
    yield engine
    engine.close()


def test_a_huge_prompt_is_refused_before_it_is_tokenized(engine, monkeypatch):
    """7 MB of text against a 256-token context: a 400 from its length alone (no tokenizer call, no ids)."""
    from fastapi.testclient import TestClient

    import lmforge.serve.api as api
    from lmforge.config.generation import GenerationArguments

    rendered: list[int] = []
    monkeypatch.setattr(api, "prompt_ids", lambda tok, messages, *a, **k: rendered.append(1) or [1, 2])
    monkeypatch.setattr(engine.tokenizer, "__call__", lambda *a, **k: pytest.fail("tokenized"), raising=False)
    app = api.create_app(engine, "tiny", GenerationArguments())
    huge = "word " * (7 * 1024 * 1024 // 5)
    with TestClient(app) as http:
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": huge}]}),
                           ("/v1/completions", {"prompt": huge})):
            response = http.post(path, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "context_length_exceeded" and "characters long" in error["message"]
    assert rendered == []


def test_a_non_streamed_request_stops_generating_when_its_client_goes(engine):
    """n=16 long completions, and the client gives up after a second: every choice is cancelled (it would run for
    many seconds more), none runs to its end."""
    import threading

    import uvicorn

    from lmforge.config.generation import GenerationArguments
    from lmforge.serve.api import create_app

    handles, finished = [], []
    submit = engine.submit

    def recording_submit(prompt, params, sink, n=1, **kw):
        def counted(event):
            if event.finish_reason:
                finished.append(event)
            sink(event)
        handles.append(submit(prompt, params, counted, n, **kw))
        return handles[-1]

    engine.submit = recording_submit
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, "tiny", GenerationArguments()), port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=1.0,
                       json={"prompt": "Once upon a time", "n": 16, "max_tokens": 240, "temperature": 1.0})
        deadline = time.monotonic() + 10
        while not all(h.cancelled.is_set() for h in handles) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handles and all(h.cancelled.is_set() for h in handles)
        time.sleep(1.0)
        assert len(finished) < 16
    finally:
        del engine.submit
        server.should_exit = True
        thread.join(timeout=30)


def test_a_loopback_server_refuses_other_host_names(server):
    assert httpx.get(f"{server}/health").status_code == 200
    assert httpx.get(f"{server}/health", headers={"Host": "rebound.attacker.example"}).status_code == 403
    assert httpx.get(f"{server}/health", headers={"Origin": "http://attacker.example"}).status_code == 403
