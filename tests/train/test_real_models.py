"""The model families people fine-tune, as tiny random-weight models built from their real tokenizer files, templates
and configs (tests/real_models.py): the labels of each family's template, a few SFT steps (full and LoRA) that load
back with plain transformers/peft, and pretrained encoders (a WordPiece tokenizer with no EOS) through `stage: cls`
and `lmforge predict`. Families that cannot be built here are skipped with the reason."""

from __future__ import annotations

import csv
import json
import random

import pytest

from lmforge.cli import main
from lmforge.runlog import read_log
from tests.conftest import write_jsonl
from tests.real_models import CAUSAL, ENCODERS
from tests.train.test_cls import WORDS, _text

pytestmark = pytest.mark.slow  # training runs

SUMS = ((2, 2), (3, 5), (10, 7), (6, 6), (1, 9), (4, 8), (7, 7), (9, 3))
EXCHANGES = [[{"role": "user", "content": f"What is {a} plus {b}?"},
              {"role": "assistant", "content": f"It is {a + b}."}] for a, b in SUMS]


def _args(**values) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


@pytest.mark.parametrize("family", CAUSAL)
def test_the_trained_tokens_are_the_reply_as_the_family_template_renders_it(real_model, family, tmp_path):
    """Exactly what the family's own template puts after its generation prompt, through its end-of-turn token (a
    Qwen3 reply keeps the empty think block its template writes)."""
    from transformers import AutoTokenizer

    from lmforge.config.data import DataArguments
    from lmforge.data.examples import build_examples
    from lmforge.data.template import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(real_model(family))
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES[:2]])
    examples = build_examples(DataArguments(dataset=str(data), dataset_dir=str(tmp_path), cutoff_len=512), tokenizer,
                              0, "sft").train
    stops = {tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)}
    for messages, row in zip(EXCHANGES, examples, strict=False):
        prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        reply = full[len(prompt):]
        end = min(reply.index(s) + len(s) for s in stops if s in reply)
        expected = tokenizer(reply[:end], add_special_tokens=False)["input_ids"]
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        assert trained == expected, (tokenizer.decode(trained), reply[:end])


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
@pytest.mark.parametrize("family", CAUSAL)
def test_sft_trains_each_family_and_the_output_loads(real_model, family, finetuning_type, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES] * 4)
    out = tmp_path / "out"
    model_dir = real_model(family)
    assert main(["train", *_args(stage="sft", model_name_or_path=model_dir, dataset=str(data), cutoff_len=128,
                                 output_dir=str(out), finetuning_type=finetuning_type, lora_target="all",
                                 per_device_train_batch_size=8, learning_rate=1e-2, max_steps=6, logging_steps=1,
                                 save_strategy="no", report_to="none", disable_tqdm=True, seed=0)]) == 0
    losses = [r["loss"] for r in read_log(str(out)) if "loss" in r]
    # measured over 6 steps: full 11.8-12.0 -> 10.0-10.5, LoRA -> 11.5-11.7 (ln of a 128k-152k vocabulary is ~11.8)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    if finetuning_type == "lora":
        from peft import AutoPeftModelForCausalLM

        AutoPeftModelForCausalLM.from_pretrained(out)
        return
    model = AutoModelForCausalLM.from_pretrained(out)
    if model.config.get_text_config().tie_word_embeddings:  # Llama-3.2: the output layer is the embedding, saved once
        assert "lm_head.weight" not in safe_open(out / "model.safetensors", "pt").keys()
        assert model.lm_head.weight is model.get_input_embeddings().weight
    eos = GenerationConfig.from_pretrained(out).eos_token_id  # generation stops at the family's end of turn
    tokenizer = AutoTokenizer.from_pretrained(out)
    end_of_turn = {"<|im_end|>", "<|eot_id|>", "<|return|>", "<|end|>"}
    assert end_of_turn & set(tokenizer.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos]))


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> tuple[str, str]:
    """An imbalanced 2-class CSV (sports:food = 1:3) for training, and a held-out JSONL to predict."""
    rng = random.Random(1)
    rows = [{"text": _text(rng, label), "label": label} for label, n in (("sports", 40), ("food", 120))
            for _ in range(n)]
    rng.shuffle(rows)
    root = tmp_path_factory.mktemp("topics")
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    held_out = write_jsonl(root / "held_out.jsonl", [{"text": f"the {w} today"} for w in WORDS["sports"][:3]])
    return str(root / "train.csv"), str(held_out)


@pytest.mark.parametrize("family", ENCODERS)
def test_a_pretrained_encoder_trains_cls_with_balanced_weights_and_predicts(real_model, family, topics, tmp_path,
                                                                             capsys):
    """A saved BERT/RoBERTa with its real tokenizer (WordPiece with no EOS for BERT), as users start: balanced class
    weights, losses that fall, an output that loads as a classifier naming its classes, `lmforge predict`."""
    from transformers import AutoModelForSequenceClassification

    train, held_out = topics
    out = tmp_path / "cls"
    assert main(["train", *_args(stage="cls", model_name_or_path=real_model(family, "cls"), dataset=train,
                                 class_weights="balanced", cutoff_len=32, val_size=0.25, learning_rate=3e-3,
                                 per_device_train_batch_size=16, num_train_epochs=8, logging_steps=8,
                                 save_strategy="no", output_dir=str(out), report_to="none", disable_tqdm=True,
                                 seed=0)]) == 0
    losses = [r["loss"] for r in read_log(str(out)) if "loss" in r]
    assert losses[-1] < losses[0] - 0.2, losses  # measured: 0.70 -> 0.16 (BERT), 0.70 -> 0.19 (RoBERTa)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert sorted(model.config.id2label.values()) == ["food", "sports"]
    capsys.readouterr()
    assert main(["predict", str(out), held_out]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == [f"the {w} today" for w in WORDS["sports"][:3]]
    assert all(r["predicted"] in ("food", "sports") and set(r["probabilities"]) == {"food", "sports"} for r in rows)


def test_pretraining_a_tokenizer_without_eos_says_what_it_needs(real_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one document"}, {"text": "another one"}])
    assert main(["train", *_args(stage="pt", model_name_or_path=real_model("bert-base-uncased", "cls"),
                                 dataset=str(data), output_dir=str(tmp_path / "pt"), max_steps=1,
                                 report_to="none")]) == 2
    err = capsys.readouterr().err
    assert "has no EOS token; pretraining needs one to separate documents" in err and "Traceback" not in err


def test_tensor_parallel_saves_a_tied_model_with_the_names_of_one_process(real_model, tmp_path):
    """Llama-3.2 ties its output layer to the embedding: 2-way tensor parallelism saves it once, as one process
    does (the tensor names are the same; the file no larger)."""
    from safetensors import safe_open

    from tests.train.test_distributed import run_lmforge_train

    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES] * 2)
    run = _args(stage="sft", model_name_or_path=real_model("llama-3.2-instruct"), dataset=str(data), cutoff_len=64,
                per_device_train_batch_size=4, learning_rate=1e-2, max_steps=2, save_strategy="no", report_to="none",
                disable_tqdm=True, seed=0)
    single, split = tmp_path / "single", tmp_path / "tp"
    assert main(["train", *run, f"output_dir={single}"]) == 0
    proc = run_lmforge_train([*run, f"output_dir={split}", "nproc_per_node=2", "tensor_parallel_size=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [set(safe_open(d / "model.safetensors", "pt").keys()) for d in (single, split)]
    assert names[0] == names[1] and "lm_head.weight" not in names[1]
    assert (split / "model.safetensors").stat().st_size == (single / "model.safetensors").stat().st_size


REWARD = '''
def short(prompts, completions, **columns):
    return [1.0 / (1 + len(c)) for c in completions]
'''


@pytest.mark.parametrize("family", CAUSAL)
def test_preference_and_rl_stages_run_on_each_family(real_model, family, tmp_path):
    """dpo, kto and grpo (2 steps, a Python reward) on the family's own template and stop tokens: finite logged
    values and outputs that load with plain transformers."""
    import math

    from transformers import AutoModelForCausalLM

    model_dir = real_model(family)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"messages": m[:1], "chosen": m[1], "rejected": {"role": "assistant", "content": "I do not know."}}
        for m in EXCHANGES])
    labelled = write_jsonl(tmp_path / "kto.jsonl", [{"messages": m, "label": i % 2 == 0}
                                                      for i, m in enumerate(EXCHANGES)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": m[:1]} for m in EXCHANGES])
    (tmp_path / "reward.py").write_text(REWARD)
    common = dict(model_name_or_path=model_dir, cutoff_len=128, per_device_train_batch_size=4, learning_rate=1e-3,
                  logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    runs = {"dpo": dict(dataset=str(pairs), max_steps=2),
            "kto": dict(dataset=str(labelled), max_steps=2),
            "grpo": dict(dataset=str(prompts), max_steps=2, rollout_batch_size=2, num_generations=2,
                         max_new_tokens=6, reward_funcs=f"{tmp_path / 'reward.py'}:short")}
    for stage, extra in runs.items():
        out = tmp_path / stage
        assert main(["train", *_args(stage=stage, output_dir=str(out), **common, **extra)]) == 0, stage
        values = [r.get("loss", r.get("reward")) for r in read_log(str(out)) if "loss" in r or "reward" in r]
        assert values and all(math.isfinite(v) for v in values), (stage, values)
        AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("family", CAUSAL)
def test_pt_rm_and_kd_run_on_each_family(real_model, family, tmp_path):
    """Continued pretraining on raw text (the family's EOS between documents), a reward model on pairs (its score
    head loads as a sequence classifier), and distillation with the family as its own teacher."""
    import math

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model_dir = real_model(family)
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"Document {i}: the sum of {a} and {b} is {a + b}."}
                                                 for i, (a, b) in enumerate(SUMS * 4)])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"messages": m[:1], "chosen": m[1], "rejected": {"role": "assistant", "content": "I do not know."}}
        for m in EXCHANGES])
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES])
    common = dict(model_name_or_path=model_dir, per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2,
                  logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    runs = {"pt": (dict(dataset=str(docs), cutoff_len=32), AutoModelForCausalLM),
            "rm": (dict(dataset=str(pairs), cutoff_len=128), AutoModelForSequenceClassification),
            "kd": (dict(dataset=str(chats), cutoff_len=128, teacher_model=model_dir), AutoModelForCausalLM)}
    for stage, (extra, loader) in runs.items():
        out = tmp_path / stage
        assert main(["train", *_args(stage=stage, output_dir=str(out), **common, **extra)]) == 0, stage
        losses = [r["loss"] for r in read_log(str(out)) if "loss" in r]
        assert losses and all(math.isfinite(v) for v in losses), (stage, losses)
        loader.from_pretrained(out)
