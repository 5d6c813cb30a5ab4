"""The generation engine: batched decoding equals `model.generate`, text streams are final, sampling settings do
what they say, tool calls round-trip."""

from __future__ import annotations

import queue
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.data.template import prompt_ids, stop_token_ids
from lmforge.data.tool_calls import parse_tool_calls
from lmforge.model.sampling import SamplingParams, choose_next
from lmforge.serve.detokenize import TextStream
from lmforge.serve.engine import Engine, RequestError
from lmforge.serve.tools import template_message

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

QUESTIONS = ["What is the capital of France?", "Name three colours.", "hello", "Write a haiku about rain.",
             "2+2=?", "Tell me a story about a dragon who liked tea.", "Why?", "List the planets."]


def make_engine(model_dir: str, max_batch_size: int) -> Engine:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return Engine(model, tokenizer, stop_token_ids(tokenizer), max_batch_size=max_batch_size)


@pytest.fixture(scope="module")
def engine(chat_model_dir):
    engine = make_engine(chat_model_dir, 8)
    yield engine
    engine.close()


def run(engine: Engine, prompt: list[int], params: SamplingParams, n: int = 1):
    """Texts, finish reasons and token counts per choice."""
    events: queue.Queue = queue.Queue()
    engine.submit(prompt, params, events.put, n)
    texts, finished = [""] * n, {}
    while len(finished) < n:
        event = events.get(timeout=60)
        texts[event.index] += event.text
        if event.finish_reason:
            finished[event.index] = (event.finish_reason, event.completion_tokens)
    return texts, [finished[i] for i in range(n)]


def reference(engine: Engine, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy ids from transformers' own generate, at batch 1, up to and including a stop token."""
    with torch.no_grad():
        out = engine.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.pad_id)
    return out[0, len(prompt):].tolist()


def test_concurrent_batched_greedy_decoding_equals_generate_for_each_request(engine):
    tok = engine.tokenizer
    prompts = [prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    expected = []
    for p in prompts:
        ids = reference(engine, p, 24)
        stopped = ids[-1] in engine.stop_ids
        expected.append((tok.decode(ids[:-1] if stopped else ids, skip_special_tokens=True),
                         ("stop" if stopped else "length", len(ids))))
    assert len({text for text, _ in expected}) == len(QUESTIONS)  # distinct outputs: a mix-up would show
    results: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, run(engine, prompts[i], SamplingParams(max_tokens=24, temperature=0)))) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (text, finish) in enumerate(expected):
        assert results[i] == ([text], [finish]), QUESTIONS[i]


def _staggered(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[list[str], list[tuple]]:
    """Request 0 alone; the others submitted from its sink once it has streamed two pieces of text (mid-decode).
    Returns each request's text and the order of events as (request, 'text'|'end')."""
    texts, order, done = [""] * len(prompts), [], threading.Event()
    lock = threading.Lock()
    started = []

    def sink_for(i: int):
        def sink(event):
            with lock:
                texts[i] += event.text
                order.append((i, "end" if event.finish_reason else "text"))
                finished = sum(kind == "end" for _, kind in order)
            if i == 0 and event.text and not started and len(order) >= 2:
                started.append(True)
                for j in range(1, len(prompts)):
                    engine.submit(prompts[j], SamplingParams(max_tokens=max_tokens, temperature=0), sink_for(j))
            if finished == len(prompts):
                done.set()
        return sink

    engine.submit(prompts[0], SamplingParams(max_tokens=max_tokens, temperature=0), sink_for(0))
    assert done.wait(120)
    return texts, order


def test_requests_join_a_running_batch_and_decode_as_they_would_alone(engine):
    tok = engine.tokenizer
    prompts = [prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    alone = [reference(engine, p, 32) for p in prompts]
    first = max(range(len(prompts)), key=lambda i: len(alone[i]))  # the longest runs while the others arrive
    assert len(alone[first]) >= 12
    prompts = [prompts[first]] + prompts[:first] + prompts[first + 1:]
    alone = [alone[first]] + alone[:first] + alone[first + 1:]
    expected = [tok.decode(ids[:-1] if ids[-1] in engine.stop_ids else ids, skip_special_tokens=True)
                for ids in alone]
    texts, order = _staggered(engine, prompts, 32)
    assert texts == expected
    first_end = order.index((0, "end"))
    assert all(_first_event(order, i) < first_end for i in range(1, len(prompts)))  # newcomers streamed meanwhile

    static = Engine(engine.model, tok, sorted(engine.stop_ids), max_batch_size=8, continuous=False)
    try:
        texts, order = _staggered(static, prompts, 32)
    finally:
        static.close()
    assert texts == expected
    first_end = order.index((0, "end"))
    assert all(_first_event(order, i) > first_end for i in range(1, len(prompts)))  # they waited


def _first_event(order: list[tuple], request: int) -> int:
    return next(k for k, (i, _) in enumerate(order) if i == request)


def test_max_tokens_stop_strings_and_seeds(engine):
    prompt = prompt_ids(engine.tokenizer, [{"role": "user", "content": QUESTIONS[0]}])
    (full,), [(reason, count)] = run(engine, prompt, SamplingParams(max_tokens=5, temperature=0))
    assert (reason, count) == ("length", 5)
    (longer,), _ = run(engine, prompt, SamplingParams(max_tokens=12, temperature=0))
    assert longer.startswith(full) and len(longer) > len(full)
    stop = longer[len(full) - 2: len(full) + 1]
    (cut,), [(reason, _)] = run(engine, prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop]))
    assert (cut, reason) == (longer[: longer.index(stop)], "stop")
    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=123)
    texts, _ = run(engine, prompt, sampled, n=3)
    assert run(engine, prompt, sampled, n=3)[0] == texts  # the same seed gives the same choices
    assert len(set(texts)) > 1  # and each choice draws its own


def test_prompts_that_do_not_fit_the_context_are_refused(engine):
    assert engine.check_fits(200, None) == 56  # the tiny model's context is 256 tokens
    with pytest.raises(RequestError, match="leaves room for at most 56") as err:
        engine.check_fits(200, 57)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="no room for a completion"):
        engine.submit(list(range(10, 266)), SamplingParams(max_tokens=1), lambda event: None)


def test_text_stream_holds_back_partial_characters_and_stop_prefixes(tiny_tokenizer):
    tok = tiny_tokenizer
    e_acute = tok.convert_tokens_to_ids(["Ã", "©"])  # byte-level halves of "é"
    stream = TextStream(tok, [])
    assert stream.push(e_acute[0]) == ("", False)
    assert stream.push(e_acute[1]) == ("é", False)
    stream = TextStream(tok, ["END"])
    deltas = [stream.push(i) for i in tok("ok EN")["input_ids"]]
    assert "".join(d for d, _ in deltas) == "ok "  # "EN" might begin the stop string
    deltas = [stream.push(i) for i in tok("D more")["input_ids"]]
    assert deltas[-1][1] and "".join(d for d, _ in deltas) == ""  # the stop string ends it, unseen
    stream = TextStream(tok, ["END"])
    for i in tok("ok EN")["input_ids"]:
        stream.push(i)
    assert stream.flush() == "EN"  # a completion that ends (token limit) hands out what it held back


def test_sampling_settings():
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    best = logits.argmax(-1).tolist()
    gen = [torch.Generator().manual_seed(i) for i in range(2)]
    greedy = SamplingParams(max_tokens=1, temperature=0)
    assert choose_next(logits, [(greedy, [], [], gen[0])] * 2) == best
    for narrow in (SamplingParams(max_tokens=1, temperature=1.5, top_k=1),
                   SamplingParams(max_tokens=1, temperature=1.5, top_p=1e-6)):
        assert choose_next(logits, [(narrow, [], [], gen[0]), (narrow, [], [], gen[1])]) == best
    penalised = SamplingParams(max_tokens=1, temperature=0, frequency_penalty=2.0)
    row = logits[:1].clone()
    row[0, 7] = row.max() + 1.0  # token 7 leads by 1.0; generated twice, the penalty (2 x 2.0) removes it
    assert choose_next(row, [(penalised, [], [7, 7], gen[0])]) != [7]
    assert choose_next(row, [(greedy, [], [7, 7], gen[0])]) == [7]
    draws = {choose_next(logits[:1], [(SamplingParams(max_tokens=1, temperature=1.0), [], [],
                                       torch.Generator().manual_seed(s))])[0] for s in range(30)}
    assert len(draws) > 3  # plain sampling really samples


def test_tool_calls_round_trip():
    message = template_message({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]})
    assert message["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert "content" not in message
    assert template_message({"role": "developer", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}) == \
        {"role": "system", "content": "ab"}
    content, calls = parse_tool_calls('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                      '{"city": "Paris"}}\n</tool_call>')
    assert content == "Let me check."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", '{"city": "Paris"}')]
    assert parse_tool_calls("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])


def test_an_adapter_directory_loads_its_base_with_the_adapter_merged(greeter_adapter_dir, greeter_base_dir):
    from peft import PeftModel

    from lmforge.config.parse import load_command_config, model_target_overrides
    from lmforge.serve.load import load_engine

    cfg = load_command_config("serve", None, model_target_overrides(greeter_adapter_dir))
    assert (cfg.model.model_name_or_path, cfg.model.adapter_name_or_path) == (greeter_base_dir, greeter_adapter_dir)
    engine = load_engine(cfg)
    try:
        prompt = prompt_ids(engine.tokenizer, [{"role": "user", "content": QUESTIONS[0]}])
        (text,), _ = run(engine, prompt, SamplingParams(max_tokens=16, temperature=0))
        base = AutoModelForCausalLM.from_pretrained(greeter_base_dir)
        peft_model = PeftModel.from_pretrained(base, greeter_adapter_dir).eval()
        with torch.no_grad():
            out = peft_model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                      eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.pad_id)
        assert text == engine.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        base_engine = Engine(AutoModelForCausalLM.from_pretrained(greeter_base_dir).eval(), engine.tokenizer,
                             sorted(engine.stop_ids))
        base_text, _ = run(base_engine, prompt, SamplingParams(max_tokens=16, temperature=0))
        base_engine.close()
        assert base_text != [text]  # the adapter changes what the model says
    finally:
        engine.close()


def test_a_sequence_whose_sampling_fails_ends_its_request_alone(engine):
    """A row whose scores turn to nan (an infinite penalty, as a caller other than the validated API could set)
    ends its own request with a clear error; the greedy requests decoded in the same batch finish as they would
    alone."""
    prompts = [prompt_ids(engine.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
    alone = [run(engine, p, SamplingParams(max_tokens=10, temperature=0))[0][0] for p in prompts]
    events: dict[str, queue.Queue] = {name: queue.Queue() for name in ("bad", *map(str, range(4)))}
    engine.submit(prompts[0], SamplingParams(max_tokens=10, temperature=1.0, presence_penalty=float("inf")),
                  events["bad"].put, n=3)
    for i, prompt in enumerate(prompts):
        engine.submit(prompt, SamplingParams(max_tokens=10, temperature=0), events[str(i)].put)
    texts = []
    for i in range(4):
        text, event = "", None
        while event is None or not event.finish_reason:
            event = events[str(i)].get(timeout=60)
            text += event.text
        assert event.error is None
        texts.append(text)
    assert texts == alone
    failure = events["bad"].get(timeout=60)
    while not failure.finish_reason:
        failure = events["bad"].get(timeout=60)
    assert failure.finish_reason == "error" and not failure.internal
    assert "not numbers (nan)" in failure.error
