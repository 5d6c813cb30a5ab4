"""Every stage on every real family (`lmforge bench --suite models`, and the real-family tests, which run these same
cells): tiny random-weight models built from the families' own tokenizer files, templates and configs
(`bench/families.py`), each stage a few steps, each cell checked the way a user would check it (losses that fall,
labels exactly as the family's template renders the reply, outputs that load with plain transformers/peft, replies
that stop at the family's own end-of-turn tokens).

A cell returns a one-line detail when it passes and raises when it fails; `NotApplicable` says why a stage does not
apply to a family. `write_table` turns the results into docs/models.md."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.bench.families import Family, FamilyUnavailable, build_tiny, discover
from lmforge.config.architecture import EXPERT_COUNTS, num_experts, text_config
from lmforge.model.moe import fused_expert_parameters

logger = logging.getLogger(__name__)

# what every cell asks of the data: short, deterministic, the same for every family
SUMS = ((2, 2), (3, 5), (10, 7), (6, 6), (1, 9), (4, 8), (7, 7), (9, 3))
EXCHANGES = [[{"role": "user", "content": f"What is {a} plus {b}?"},
              {"role": "assistant", "content": f"It is {a + b}."}] for a, b in SUMS]
REASONING = [{"role": "user", "content": "What is 2 plus 3?"},
             {"role": "assistant", "reasoning_content": "Two and three make five.", "content": "It is 5."}]
TOOLS = [{"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}]
# the call id is 9 alphanumerics, as Mistral's templates demand (the others ignore it)
TOOL_CALL = [{"role": "user", "content": "What is 2 plus 3?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"id": "call00001", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
             {"role": "tool", "tool_call_id": "call00001", "name": "add", "content": "5"},
             {"role": "assistant", "content": "It is 5."}]
REFUSAL = {"role": "assistant", "content": "I do not know."}
TOPIC_WORDS = {"sports": ["goal", "match", "team", "score", "coach", "league"],
               "food": ["bread", "soup", "apple", "cheese", "salad", "pasta"]}
FILLER = ["the", "a", "today", "we", "saw", "some", "very", "and", "it", "was"]
REWARD = '''
def short(prompts, completions, **columns):
    return [1.0 / (1 + len(c)) for c in completions]
'''
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|return|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>")


class NotApplicable(Exception):
    """This stage does not apply to this family; the message says why."""


class Limited(Exception):
    """The stage passed its checks, with a limit the message names (it is part of the table's notes)."""


class CellFailed(AssertionError):
    """The stage ran but did not do what it must; the message is the one-line reason."""


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise CellFailed(reason)


@dataclass
class FamilyRun:
    """One family's models and work folder, shared by its cells (the tiny models are built once)."""

    family: Family
    root: Path
    _built: dict[str, str] = field(default_factory=dict)
    _adapter: str | None = None

    def model(self, head: str | None = None) -> str:
        """The family's tiny checkpoint as published (a causal LM, or an encoder's masked LM), or `head`."""
        head = head or ("causal" if self.family.causal else "masked")
        if head not in self._built:
            self._built[head] = build_tiny(self.family.source, self.root / f"model-{head}", head)
        return self._built[head]

    def teacher(self) -> str:
        """Another tiny model of the family (other random weights): a teacher whose outputs differ."""
        if "teacher" not in self._built:
            self._built["teacher"] = build_tiny(self.family.source, self.root / "model-teacher", seed=1)
        return self._built["teacher"]

    def variant(self, name: str, **config_changes: Any) -> str:
        """The family's tiny model with `config_changes` written into its config.json (as a user's checkpoint whose
        config asks for them)."""
        import shutil

        if name not in self._built:
            dest = self.root / f"model-{name}"
            shutil.copytree(self.model(), dest)
            config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
            (dest / "config.json").write_text(json.dumps({**config, **config_changes}, indent=2), encoding="utf-8")
            self._built[name] = str(dest)
        return self._built[name]

    def data(self, name: str, rows: list[dict]) -> str:
        path = self.root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return str(path)

    def train(self, name: str, **values: Any) -> list[dict]:
        """`lmforge train` with `values` (output_dir: the cell's folder); the run's logged records."""
        from lmforge.config import load_config
        from lmforge.runlog import read_log
        from lmforge.train import stage_runner

        values = {"output_dir": str(self.root / name), "report_to": "none", "disable_tqdm": True,
                  "save_strategy": "no", "logging_steps": 1, "seed": 0, **values}
        cfg = load_config(None, [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()])
        stage_runner(cfg.finetuning.stage)(cfg)
        return read_log(values["output_dir"])

    def adapter(self) -> str:
        """A LoRA adapter trained on the family (sft, packed, 6 steps): for the LoRA cell and the export's merge."""
        if self._adapter is None:
            self.train("sft-lora", **sft_values(self, packing=True, cutoff_len=256, per_device_train_batch_size=2),
                       finetuning_type="lora", lora_target="all")
            self._adapter = str(self.root / "sft-lora")
        return self._adapter


def sft_values(run: FamilyRun, **extra: Any) -> dict[str, Any]:
    return {"stage": "sft", "model_name_or_path": run.model(), "cutoff_len": 128, "per_device_train_batch_size": 8,
            "learning_rate": 1e-2, "max_steps": 6, "dataset": run.data("chat.jsonl", [{"messages": m}
                                                                                     for m in EXCHANGES] * 4),
            **extra}


def losses(log: list[dict], key: str = "loss") -> list[float]:
    return [r[key] for r in log if key in r]


def falling(values: list[float], what: str = "loss") -> str:
    check(len(values) >= 2 and all(math.isfinite(v) for v in values), f"{what} not logged or not finite: {values}")
    check(values[-1] < values[0], f"{what} did not fall: {values[0]:.3f} -> {values[-1]:.3f}")
    return f"{what} {values[0]:.4g} -> {values[-1]:.4g}"


def finite(values: list[float], what: str = "loss") -> str:
    check(bool(values) and all(math.isfinite(v) for v in values), f"{what} not logged or not finite: {values}")
    return f"{what} {values[0]:.4g} -> {values[-1]:.4g}"


# ---- what the family's own template says the model must write -------------------------------------------------

def expected_reply(tokenizer, messages: list[dict], tools: list | None = None) -> list[int]:
    """The tokens a model must write for each assistant turn, as the family's template renders the conversation:
    in the rendering of the whole conversation, what follows the generation prompt of the turn's history, through
    the first end-of-turn special token (issue 16's rule, derived here with nothing but `apply_chat_template`)."""
    from lmforge.data.template import stop_token_ids

    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)]
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    ids: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        # where the generation prompt is not a prefix (DeepSeek-R1's opens a <think> block the rendered turn lacks),
        # the reply starts where the two part
        reply = full[len(os.path.commonprefix([prompt, full])):]
        ends = [reply.index(s) + len(s) for s in stops if s in reply]
        check(bool(ends), f"no end-of-turn token ({stops}) after the reply in {reply!r}")
        ids += tokenizer(reply[:min(ends)], add_special_tokens=False)["input_ids"]
    return ids


def _label_cases(tokenizer) -> list[tuple[str, list[dict], list | None]]:
    template = tokenizer.chat_template or ""
    cases = [("plain", EXCHANGES[0], None)]
    if "reasoning_content" in template:  # the template writes reasoning itself (Qwen3's <think> block)
        cases.append(("reasoning", REASONING, None))
    if "tool_calls" in template:
        cases.append(("tool call", TOOL_CALL, TOOLS))
    return cases


def cell_labels(run: FamilyRun) -> str:
    """Each example's ids are the tokenization of the family's rendering (one BOS, whatever `add_bos_token` says),
    and its trained tokens exactly what the template renders for its assistant turns (reasoning and tool calls
    included where the template writes them)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from lmforge.config.data import DataArguments
    from lmforge.data.examples import build_examples
    from lmforge.data.packing import pack_examples

    tokenizer = AutoTokenizer.from_pretrained(run.model())
    cases = _label_cases(tokenizer)
    rows, replies = [], []
    for name, messages, tools in cases:
        record = {"messages": messages, **({"tools": tools} if tools else {})}
        path = run.data(f"labels-{name.replace(' ', '-')}.jsonl", [record])
        row = build_examples(DataArguments(dataset=path, dataset_dir=str(run.root), cutoff_len=1024), tokenizer, 0,
                             "sft").train[0]
        rendering = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        check(row["input_ids"] == tokenizer(rendering, add_special_tokens=False)["input_ids"],
              f"{name}: the ids are not the tokenization of the rendering (a BOS added twice, or dropped?)")
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        expected = expected_reply(tokenizer, messages, tools)
        check(trained == expected, f"{name}: trained {tokenizer.decode(trained)!r}, the template's reply is "
                                   f"{tokenizer.decode(expected)!r}")
        rows.append({"input_ids": row["input_ids"], "labels": row["labels"]})
        replies.append(expected)
    # packed into one row: the same trained tokens, example after example, positions restarting at each
    packed = pack_examples(Dataset.from_list(rows), sum(len(r["input_ids"]) for r in rows))[0]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))  # best-fit-decreasing's order
    trained = [t for t, label in zip(packed["input_ids"], packed["labels"], strict=True) if label != -100]
    check(trained == [t for i in order for t in replies[i]], "packing changed which tokens are trained")
    starts = [i for i, position in enumerate(packed["position_ids"]) if position == 0]
    check(len(starts) == len(rows), f"packed positions restart {len(starts)} times for {len(rows)} examples")
    return "exact: " + ", ".join(name for name, _, _ in cases) + "; packed alike"


# ---- training stages -------------------------------------------------------------------------------------------

def cell_sft(run: FamilyRun) -> str:
    """Full fine-tuning: the loss falls; the output loads with transformers, ties its embeddings as the family does
    (saved once) and its generation config ends a reply at the family's end of turn."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    detail = falling(losses(run.train("sft-full", **sft_values(run))))
    out = run.root / "sft-full"
    model = AutoModelForCausalLM.from_pretrained(out)
    if model.config.get_text_config().tie_word_embeddings:
        names = set().union(*(safe_open(f, "pt").keys() for f in out.glob("*.safetensors")))
        check("lm_head.weight" not in names, "a tied output layer was saved a second time")
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    tokens = set(AutoTokenizer.from_pretrained(out).convert_ids_to_tokens(eos if isinstance(eos, list) else [eos]))
    check(bool(tokens & set(END_OF_TURN)), f"the saved generation config stops at {tokens}, not an end of turn")
    return detail


def cell_sft_lora(run: FamilyRun) -> str:
    """LoRA on all linear layers with packing on (the full run is unpacked): the loss falls and the adapter loads
    with peft."""
    from peft import AutoPeftModelForCausalLM
    from safetensors import safe_open

    model = AutoPeftModelForCausalLM.from_pretrained(run.adapter())
    detail = falling(losses(read(run.root / "sft-lora")))
    if fused_expert_parameters(model.get_base_model()):  # `lora_target: all` reaches a mixture's experts
        names = safe_open(str(Path(run.adapter()) / "adapter_model.safetensors"), "pt").keys()
        check(any(".experts." in n for n in names), "no adapter on the experts' weights")
        detail += "; adapters on the experts too"
    return detail


def read(out: Path) -> list[dict]:
    from lmforge.runlog import read_log

    return read_log(str(out))


def cell_pt(run: FamilyRun) -> str:
    """Continued pretraining on raw text (the family's EOS between documents)."""
    from transformers import AutoModelForCausalLM

    docs = run.data("docs.jsonl", [{"text": f"Document {i}: the sum of {a} and {b} is {a + b}."}
                                   for i, (a, b) in enumerate(SUMS * 4)])
    detail = falling(losses(run.train("pt", stage="pt", model_name_or_path=run.model(), dataset=docs, cutoff_len=32,
                                      per_device_train_batch_size=4, learning_rate=1e-2, max_steps=4)))
    AutoModelForCausalLM.from_pretrained(run.root / "pt")
    return detail


def _pairs(run: FamilyRun) -> str:
    return run.data("pairs.jsonl", [{"messages": m[:1], "chosen": m[1], "rejected": REFUSAL} for m in EXCHANGES])


def _preference(run: FamilyRun, stage: str, dataset: str, **extra: Any) -> list[dict]:
    return run.train(stage, stage=stage, model_name_or_path=run.model(), dataset=dataset, cutoff_len=128,
                     per_device_train_batch_size=4, learning_rate=1e-3, max_steps=4, **extra)


def cell_dpo(run: FamilyRun) -> str:
    from transformers import AutoModelForCausalLM

    detail = falling(losses(_preference(run, "dpo", _pairs(run))))
    AutoModelForCausalLM.from_pretrained(run.root / "dpo")
    return detail


def cell_kto(run: FamilyRun) -> str:
    from transformers import AutoModelForCausalLM

    labelled = run.data("kto.jsonl", [{"messages": m, "label": i % 2 == 0} for i, m in enumerate(EXCHANGES)])
    detail = finite(losses(_preference(run, "kto", labelled)))
    AutoModelForCausalLM.from_pretrained(run.root / "kto")
    return detail


def cell_rm(run: FamilyRun) -> str:
    """A reward model on pairs: its score head loads as a sequence classifier."""
    from transformers import AutoModelForSequenceClassification

    detail = finite(losses(_preference(run, "rm", _pairs(run))))
    AutoModelForSequenceClassification.from_pretrained(run.root / "rm")
    return detail


def cell_grpo(run: FamilyRun) -> str:
    """2 GRPO steps with a Python reward, sampling until the family's stop tokens."""
    from transformers import AutoModelForCausalLM

    prompts = run.data("prompts.jsonl", [{"messages": m[:1]} for m in EXCHANGES])
    reward = run.root / "data" / "reward.py"
    reward.write_text(REWARD, encoding="utf-8")
    log = run.train("grpo", stage="grpo", model_name_or_path=run.model(), dataset=prompts, cutoff_len=128,
                    per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2, rollout_batch_size=2,
                    num_generations=2, max_new_tokens=6, reward_funcs=f"{reward}:short")
    detail = finite(losses(log, "reward"), "reward")
    AutoModelForCausalLM.from_pretrained(run.root / "grpo")
    return detail


def cell_kd(run: FamilyRun) -> str:
    """Distillation from a teacher of the same family (its tokenizer; other weights)."""
    from transformers import AutoModelForCausalLM

    chats = run.data("kd.jsonl", [{"messages": m} for m in EXCHANGES] * 2)
    detail = falling(losses(run.train("kd", stage="kd", model_name_or_path=run.model(), teacher_model=run.teacher(),
                                      dataset=chats, cutoff_len=128, per_device_train_batch_size=4,
                                      learning_rate=1e-2, max_steps=4)))
    AutoModelForCausalLM.from_pretrained(run.root / "kd")
    return detail


def cell_moe_aux_loss(run: FamilyRun) -> str:
    """A checkpoint whose config asks for the router's load-balancing loss (`output_router_logits`) trains with it:
    the first logged loss exceeds the same run's without it by `router_aux_loss_coef` x the model's aux loss (about
    top-k at an even routing), never by nothing."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(run.model()).get_text_config()
    if not hasattr(config, "output_router_logits") or not getattr(config, "router_aux_loss_coef", None):
        raise NotApplicable(f"'{config.model_type}' has no router auxiliary loss in transformers")
    one_step = dict(max_steps=1, per_device_train_batch_size=4)
    plain = losses(run.train("moe-plain", **sft_values(run, **one_step)))[0]
    with_aux = losses(run.train("moe-aux", **sft_values(run, **one_step, model_name_or_path=run.variant(
        "router-loss", output_router_logits=True))))[0]
    bound = config.router_aux_loss_coef * config.num_experts_per_tok * num_experts(config)
    check(0 < with_aux - plain < bound, f"with the router loss {with_aux:.6f}, without {plain:.6f}: the difference "
                                        f"is not in (0, {bound:.4f})")
    return f"aux adds {with_aux - plain:.2e} (coef {config.router_aux_loss_coef})"


# ---- data, serving and export ----------------------------------------------------------------------------------

def cell_preview(run: FamilyRun) -> str:
    """`lmforge data preview` marks exactly the family's reply (through its end of turn) as trained."""
    from transformers import AutoTokenizer

    from lmforge.config import load_config
    from lmforge.train.preview import preview

    tokenizer = AutoTokenizer.from_pretrained(run.model())
    chats = run.data("preview.jsonl", [{"messages": EXCHANGES[0]}])
    cfg = load_config(None, ["stage=sft", f"model_name_or_path={run.model()}", f"dataset={chats}",
                             f"output_dir={run.root / 'preview'}"])
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        stats = preview(cfg, 1)["stats"]
    reply = tokenizer.decode(expected_reply(tokenizer, EXCHANGES[0]))
    check(f"⟦{reply}⟧" in shown.getvalue(), f"the preview does not mark ⟦{reply}⟧:\n{shown.getvalue()[:400]}")
    return f"{stats['trained_tokens']} of {stats['tokens']} tokens trained"


def cell_serve(run: FamilyRun) -> str:
    """`lmforge api`/`chat` on the family: the engine stops at the template's end of turn and at every EOS id of the
    generation config; a chat completion pushed onto each of them (logit_bias) ends with finish_reason "stop"."""
    from fastapi.testclient import TestClient
    from transformers import GenerationConfig

    from lmforge.config.parse import load_target_config
    from lmforge.model.sampling import SamplingParams
    from lmforge.serve.api import create_app
    from lmforge.serve.chat import Conversation
    from lmforge.serve.load import load_engine

    model = run.model()
    cfg = load_target_config("serve", model, ["max_new_tokens=4", "do_sample=false"])
    engine = load_engine(cfg)
    try:
        tokenizer = engine.tokenizer
        configured = GenerationConfig.from_pretrained(model).eos_token_id
        configured = configured if isinstance(configured, list) else [configured] if configured is not None else []
        template_end = expected_reply(tokenizer, EXCHANGES[0])[-1]
        wanted = {template_end, *configured}
        check(wanted <= engine.stop_ids, f"the engine stops at {sorted(engine.stop_ids)}, not at all of "
                                         f"{sorted(wanted)}")
        with TestClient(create_app(engine, "tiny", cfg.generation)) as http:
            for token in sorted(wanted):
                body = {"messages": EXCHANGES[0][:1], "max_tokens": 4, "temperature": 0,
                        "logit_bias": {str(token): 100}}
                reply = http.post("/v1/chat/completions", json=body)
                check(reply.status_code == 200, f"/v1/chat/completions answered {reply.status_code}: {reply.text}")
                choice = reply.json()["choices"][0]
                check(choice["finish_reason"] == "stop" and reply.json()["usage"]["completion_tokens"] == 1,
                      f"a reply that writes {tokenizer.convert_ids_to_tokens(token)!r} did not stop there: {choice}")
            beyond = http.post("/v1/chat/completions", json={"messages": EXCHANGES[0][:1], "max_tokens": 4,
                                                             "logit_bias": {str(len(tokenizer) + 5): 1}})
            check(beyond.status_code == 400 and beyond.json()["error"]["param"] == "logit_bias",
                  f"a bias on a token beyond the vocabulary answered {beyond.status_code}: {beyond.text}")
        chat = Conversation(engine, None, 4)
        text = chat.reply(EXCHANGES[0][0]["content"], SamplingParams(max_tokens=4, temperature=0), out=io.StringIO())
        check(chat.turns[-1] == {"role": "assistant", "content": text}, "the chat did not keep its reply")
    finally:
        engine.close()
    return "stops at " + ", ".join(tokenizer.convert_ids_to_tokens(sorted(wanted)))


def cell_export(run: FamilyRun) -> str:
    """`lmforge export` of a LoRA run: merged weights give the adapter's logits; a GGUF converted by llama.cpp's
    converter where it knows the architecture, which llama.cpp (llama-cpp-python) loads and runs to the merged
    model's greedy tokens."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from lmforge.config.parse import load_target_config
    from lmforge.errors import ConfigError
    from lmforge.export.gguf_convert import gguf_architecture
    from lmforge.export.run import run_export

    adapter = run.adapter()
    try:
        gguf_architecture(run.model())
        no_gguf = None
    except ConfigError as err:
        no_gguf = str(err).removeprefix("Config error: ").split(". ")[0]
    out = run.root / "export"
    # float32, so that the merge itself is checked (the default keeps the checkpoint's bf16)
    cfg = load_target_config("export", adapter, [f"export_dir={out}", f"export_gguf={str(no_gguf is None).lower()}",
                                                 "gguf_outtype=f32", "infer_dtype=float32"])
    with contextlib.redirect_stdout(io.StringIO()):
        run_export(cfg)
    ids = [1, 2, 3, 4, 5]
    merged_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        merged = merged_model(torch.tensor([ids])).logits
        expected = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32)(torch.tensor([ids])).logits
    gap = (merged - expected).abs().max().item()
    check(gap < 1e-4, f"the merged model's logits differ from base + adapter by {gap:.2e}")
    if no_gguf:
        raise Limited(f"merged (logits within {gap:.0e}); no GGUF: {no_gguf}")
    if importlib.util.find_spec("llama_cpp") is None:
        raise Limited(f"merged (logits within {gap:.0e}); GGUF written, not run (llama-cpp-python is not installed)")
    from llama_cpp import Llama

    llm = Llama(str(next(out.glob("*.gguf"))), n_ctx=32, verbose=False)
    greedy = merged_model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
    got = [next(stream) for _ in greedy]
    check(got == greedy, f"llama.cpp's greedy tokens {got} differ from the merged model's {greedy}")
    return (f"merged (logits within {gap:.0e}); GGUF ({llm.metadata['general.architecture']}, "
            f"{llm.n_vocab()} tokens) gives its greedy tokens in llama.cpp")


# ---- classifiers -----------------------------------------------------------------------------------------------

def _topic_text(rng: random.Random, label: str) -> str:
    return " ".join(rng.sample(FILLER, 4) + [rng.choice(TOPIC_WORDS[label]), rng.choice(FILLER)])


def _topics(run: FamilyRun) -> str:
    """An imbalanced two-class set (sports:food = 1:3)."""
    rng = random.Random(1)
    rows = [{"text": _topic_text(rng, label), "label": label} for label, n in (("sports", 40), ("food", 120))
            for _ in range(n)]
    rng.shuffle(rows)
    return run.data("topics.jsonl", rows)


def _cls_values(run: FamilyRun, dataset: str, **extra: Any) -> dict[str, Any]:
    return {"stage": "cls", "model_name_or_path": run.model(), "dataset": dataset, "cutoff_len": 32,
            "per_device_train_batch_size": 16, "learning_rate": 3e-3, "num_train_epochs": 8, "logging_steps": 5,
            **extra}


def cell_cls(run: FamilyRun) -> str:
    """Single-label classification with balanced class weights; `lmforge predict` labels held-out rows, and a row's
    probabilities are the same alone and batched with longer rows (the pooled token is the last real one, whatever
    the padding)."""
    from transformers import AutoModelForSequenceClassification

    from lmforge.eval.classify import predict_file

    log = run.train("cls", **_cls_values(run, _topics(run), class_weights="balanced", val_size=0.25))
    values = losses(log)
    detail = falling(values)
    check(values[-1] < values[0] - 0.2, f"the loss barely fell: {values[0]:.3f} -> {values[-1]:.3f}")
    out = str(run.root / "cls")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    check(sorted(model.config.id2label.values()) == ["food", "sports"], f"labels {model.config.id2label}")
    texts = ["the goal today", "we saw some very good bread and soup today and it was a very fine salad"]
    held_out = run.data("held_out.jsonl", [{"text": t} for t in texts])
    batched = predict_file(out, held_out, None)
    alone = predict_file(out, run.data("alone.jsonl", [{"text": texts[0]}]), None)
    check([r["text"] for r in batched] == texts, "predict did not keep the rows' order")
    gap = max(abs(alone[0]["probabilities"][k] - batched[0]["probabilities"][k]) for k in ("food", "sports"))
    check(gap < 1e-4, f"a row's probabilities change by {gap:.2e} when it is padded in a batch")
    return detail


def cell_cls_pairs(run: FamilyRun) -> str:
    rng = random.Random(2)
    rows = []
    for _ in range(160):
        a, b = rng.choice(list(TOPIC_WORDS)), rng.choice(list(TOPIC_WORDS))
        rows.append({"question": f"about {rng.choice(TOPIC_WORDS[a])}",
                     "passage": f"it is {rng.choice(TOPIC_WORDS[b])} day", "label": int(a == b)})
    return falling(losses(run.train("cls-pairs", **_cls_values(run, run.data("pairs-cls.jsonl", rows),
                                                               text_column="question",
                                                               text_pair_column="passage"))))


def cell_cls_multilabel(run: FamilyRun) -> str:
    rng = random.Random(3)
    rows = []
    for _ in range(160):
        labels = rng.sample(list(TOPIC_WORDS), rng.randint(1, 2))
        rows.append({"text": " ".join([rng.choice(TOPIC_WORDS[lb]) for lb in labels] + rng.sample(FILLER, 3)),
                     "label": labels})
    log = run.train("cls-multi", **_cls_values(run, run.data("multi.jsonl", rows), val_size=0.2))
    results = json.loads((run.root / "cls-multi" / "eval_results.json").read_text())
    check("eval_f1_micro" in results, f"no multi-label metrics in {sorted(results)}")
    return falling(losses(log)) + f", f1 micro {results['eval_f1_micro']:.2f}"


def cell_cls_serve(run: FamilyRun) -> str:
    """`lmforge api` on the classifier: /v1/classify answers what `lmforge predict` says."""
    from fastapi.testclient import TestClient

    from lmforge.config.parse import load_target_config
    from lmforge.eval.classify import predict_file
    from lmforge.serve.classify import create_classify_app

    out = str(run.root / "cls")
    if not os.path.isdir(out):
        cell_cls(run)
    texts = ["the goal today", "some soup and bread"]
    expected = predict_file(out, run.data("serve.jsonl", [{"text": t} for t in texts]), None)
    cfg = load_target_config("serve", out, [])
    with TestClient(create_classify_app(cfg, "cls", None)) as http:
        reply = http.post("/v1/classify", json={"input": texts})
    check(reply.status_code == 200, f"/v1/classify answered {reply.status_code}: {reply.text}")
    labels = [d["label"] for d in reply.json()["data"]]
    check(labels == [e["predicted"] for e in expected], f"/v1/classify says {labels}, predict {expected}")
    return "labels as predict: " + ", ".join(labels)


def cell_cls_export(run: FamilyRun) -> str:
    """`lmforge export` of the classifier loads as one with the same logits."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmforge.config.parse import load_target_config
    from lmforge.export.run import run_export

    trained = run.root / "cls"
    if not trained.is_dir():
        cell_cls(run)
    out = run.root / "cls-export"
    with contextlib.redirect_stdout(io.StringIO()):
        run_export(load_target_config("export", str(trained), [f"export_dir={out}"]))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        gap = (AutoModelForSequenceClassification.from_pretrained(out)(ids).logits
               - AutoModelForSequenceClassification.from_pretrained(trained)(ids).logits).abs().max().item()
    check(gap < 1e-5, f"the exported classifier's logits differ by {gap:.2e}")
    return "loads as a classifier, same logits"


# ---- the matrix ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[FamilyRun], str]
    kinds: tuple[str, ...]  # the family kinds it applies to ("causal", "encoder"; "moe": mixtures of experts)


STAGES = (
    Stage("labels", cell_labels, ("causal",)),
    Stage("sft", cell_sft, ("causal",)),
    Stage("sft lora packed", cell_sft_lora, ("causal",)),
    Stage("pt", cell_pt, ("causal",)),
    Stage("dpo", cell_dpo, ("causal",)),
    Stage("kto", cell_kto, ("causal",)),
    Stage("rm", cell_rm, ("causal",)),
    Stage("grpo", cell_grpo, ("causal",)),
    Stage("kd", cell_kd, ("causal",)),
    Stage("moe aux loss", cell_moe_aux_loss, ("moe",)),
    Stage("preview", cell_preview, ("causal",)),
    Stage("chat/api", cell_serve, ("causal",)),
    Stage("export", cell_export, ("causal",)),
    Stage("cls", cell_cls, ("causal", "encoder")),
    Stage("cls pairs", cell_cls_pairs, ("encoder",)),
    Stage("cls multi-label", cell_cls_multilabel, ("encoder",)),
    Stage("cls api", cell_cls_serve, ("encoder",)),
    Stage("cls export", cell_cls_export, ("encoder",)),
)


def applies(stage: Stage, family: Family) -> bool:
    return family.kind in stage.kinds or ("moe" in stage.kinds and family.moe)


def run_cell(run: FamilyRun, stage: Stage) -> tuple[str, str]:
    """("ok", detail), ("failed", the one-line reason), ("n/a", why) or ("skipped", why the family cannot be built)."""
    if not applies(stage, run.family):
        return "n/a", f"{stage.name} applies to {' and '.join(stage.kinds)} families"
    try:
        return "ok", stage.run(run)
    except Limited as err:
        return "limited", str(err)
    except NotApplicable as err:
        return "n/a", str(err)
    except FamilyUnavailable as err:
        return "skipped", str(err)
    except Exception as err:  # a cell's failure is the table's content, not the end of the run
        logger.exception("%s / %s failed", run.family.name, stage.name)
        return "failed", f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err) else ''}"


def run_matrix(families_dir: str, work: str, only: list[str] | None = None) -> dict[str, Any]:
    """Every stage on every family under `families_dir` (or those named in `only`), in `work`."""
    import transformers

    results: dict[str, dict[str, tuple[str, str]]] = {}
    started = time.time()
    for family in discover(families_dir):
        if only and family.name not in only:
            continue
        run = FamilyRun(family, Path(work) / family.name)
        results[family.name] = {}
        for stage in STAGES:
            began = time.time()
            results[family.name][stage.name] = run_cell(run, stage)
            logger.info("%s / %s: %s (%.0f s)", family.name, stage.name, results[family.name][stage.name][0],
                        time.time() - began)
    return {"families": {f.name: f for f in discover(families_dir)}, "results": results,
            "transformers": transformers.__version__, "seconds": round(time.time() - started)}


MARKS = {"ok": "ok", "limited": "ok*", "failed": "**failed**", "n/a": "–", "skipped": "skipped"}


def table(matrix: dict[str, Any]) -> str:
    """docs/models.md: family x stage, each cell ok / failed with its reason / not applicable."""
    import torch

    results, families = matrix["results"], matrix["families"]
    lines = ["# Model support", "",
             "Written by `lmforge bench --suite models` (do not edit by hand): every stage run for a few steps on a "
             "tiny random-weight model of each family, built from the family's real tokenizer files, chat template, "
             "generation config and config.json (`../shared/data/real_models`, sizes shrunk to 2 layers). "
             "`ok` means the stage trained (or served, exported) and passed its checks; `–` means the stage does not "
             "apply to the family. The same cells run in the test suite (`tests/train/test_real_models.py`).", "",
             f"transformers {matrix['transformers']}, torch {torch.__version__}; the matrix took "
             f"{matrix['seconds']} s on this machine.", "",
             "`experts` and `EP plan` describe the published model: experts per layer and how many each token uses, "
             "and whether transformers ships the expert-parallel plan `expert_parallel_size` needs.", "",
             "| family | kind | experts | EP plan | " + " | ".join(s.name for s in STAGES) + " |",
             "|---|---|---|---|" + "---|" * len(STAGES)]
    notes = []
    for name, cells in results.items():
        family = families[name]
        kind = family.kind + (", MoE" if family.moe else "")
        experts, plan = moe_facts(family)
        lines.append(f"| {name} | {kind} | {experts} | {plan} | "
                     + " | ".join(MARKS[cells[s.name][0]] for s in STAGES) + " |")
        noted = {stage.name: cells[stage.name] for stage in STAGES if cells[stage.name][0] in
                 ("failed", "skipped", "limited") or (cells[stage.name][0] == "n/a" and applies(stage, family))}
        if noted and len({v for v in noted.values()}) == 1 and len(noted) > 1:  # one reason for the whole family
            status, detail = next(iter(noted.values()))
            notes.append(f"- **{name}** ({status}, every stage): {detail}")
        else:
            notes += [f"- **{name} / {stage}** ({status}): {detail}" for stage, (status, detail) in noted.items()]
    lines += ["", "## Notes", "", "`ok*`: passed, with the limit its note names.", ""]
    lines += notes or ["Every applicable cell passed."]
    details = [f"- {name} / {stage}: {detail}" for name, cells in results.items()
               for stage, (status, detail) in cells.items() if status == "ok"]
    lines += ["", "## What each passing cell measured", "", *details, ""]
    return "\n".join(lines)


def moe_facts(family: Family) -> tuple[str, str]:
    """("128, top 8", "yes") for a mixture of experts as published (its real config.json, not the tiny one); dashes
    for a dense family."""
    from transformers import AutoConfig

    if not family.moe:
        return "–", "–"
    raw = json.loads((family.source / "config.json").read_text(encoding="utf-8"))
    text = raw.get("text_config") or raw
    experts = next(text[k] for k in EXPERT_COUNTS if text.get(k))
    top = text.get("num_experts_per_tok") or text.get("experts_per_token") or text.get("moe_topk")
    try:
        config = AutoConfig.for_model(raw["model_type"])
    except (KeyError, ValueError):
        return f"{experts}, top {top}", "?"
    plan = getattr(text_config(config), "base_model_ep_plan", None)
    return f"{experts}, top {top}", "yes" if plan else "no"


def default_families_dir() -> str | None:
    """$LMFORGE_REAL_MODELS, else ../shared/data/real_models beside a source checkout."""
    if os.environ.get("LMFORGE_REAL_MODELS"):
        return os.environ["LMFORGE_REAL_MODELS"]
    checkout = Path(__file__).resolve().parents[3]
    candidate = checkout.parent / "shared" / "data" / "real_models"
    return str(candidate) if candidate.is_dir() else None
