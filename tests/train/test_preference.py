"""Stages rm, dpo and kto end to end on a tiny model and lmforge's generated preference task: each one learns the
preference on held-out pairs, saves plain HF/PEFT artefacts, and bad settings are clear errors."""

from __future__ import annotations

import copy
import json
import os
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.data import DataArguments
from lmforge.data.chat_templates import apply_template_choice
from lmforge.data.collate import PairCollator
from lmforge.data.examples import build_examples
from lmforge.resources.preference_quickstart import REFUSALS, kto_examples, pairs
from lmforge.train.losses import sequence_logps
from tests.conftest import LF_DEMO, write_jsonl

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """Train pairs / kto records and held-out pairs (another seed: prompts and answers the runs never saw)."""
    root = tmp_path_factory.mktemp("preference-task")
    return {"pairs": str(write_jsonl(root / "pairs.jsonl", pairs(800, seed=1))),
            "kto": str(write_jsonl(root / "kto.jsonl", kto_examples(800, seed=1))),
            "held_out": str(write_jsonl(root / "held_out.jsonl", pairs(400, seed=2)))}


def stage_args(stage: str, model_dir: str, out, dataset: str, **extra) -> list[str]:
    args = {"stage": stage, "model_name_or_path": model_dir, "template": "chatml", "dataset": dataset,
            "cutoff_len": 64, "output_dir": str(out), "per_device_train_batch_size": 16, "learning_rate": 3e-3,
            "max_steps": 60, "logging_steps": 10, "save_steps": 30, "report_to": "none", "disable_tqdm": True,
            "seed": 3}
    args.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]


@pytest.fixture(scope="module")
def held_out_pairs(task, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    apply_template_choice(tok, "chatml")
    data = build_examples(DataArguments(dataset=task["held_out"], cutoff_len=64), tok, seed=0, kind="pair")
    return data.train.select_columns(["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"])


@torch.no_grad()
def mean_margin(model_dir: str, rows) -> float:
    """Mean over pairs of log p(chosen reply) - log p(rejected reply) under the causal LM in `model_dir`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = PairCollator(pad_token_id=0)(list(rows))
    sums, _ = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
    chosen, rejected = sums.chunk(2)
    return (chosen - rejected).mean().item()


def test_reward_model_ranks_held_out_pairs_and_scores_text(tiny_model_dir, task, tmp_path):
    out = tmp_path / "rm"
    assert main(["train", *stage_args("rm", tiny_model_dir, out, task["pairs"], eval_dataset=task["held_out"],
                                      max_steps=150, plot_loss=True)]) == 0
    results = json.load(open(out / "eval_results.json"))
    # chance is 0.5; 0.575 is 3 standard deviations above it on 400 held-out pairs, and 2.5x below what 150 steps
    # reach (0.69 measured; the former bar of 0.6 left less than a 2x margin)
    assert results["eval_accuracy"] >= 0.575, results
    assert (out / "training_eval_accuracy.png").exists()
    # `lmforge score` ranks the held-out pairs the same way, and a refusal always below the right answer
    held_out = [json.loads(line) for line in open(task["held_out"])]
    conversations = [[{"role": "user", "content": p["instruction"]}, {"role": "assistant", "content": p[side]}]
                     for p in held_out for side in ("chosen", "rejected")]
    inputs = write_jsonl(tmp_path / "score.jsonl", [{"messages": c} for c in conversations])
    assert main(["score", str(out), str(inputs), "--output", str(tmp_path / "scored.jsonl"), "--batch-size", "7"]) == 0
    scores = [json.loads(line)["score"] for line in open(tmp_path / "scored.jsonl")]
    assert "reply" not in json.loads(open(tmp_path / "scored.jsonl").readline())  # the file: input lines + score
    right = [scores[2 * i] > scores[2 * i + 1] for i in range(len(held_out))]
    assert sum(right) / len(right) == pytest.approx(results["eval_accuracy"], abs=0.01)
    refused = [ok for ok, p in zip(right, held_out, strict=True) if p["rejected"] in REFUSALS]
    assert len(refused) > 50 and sum(refused) / len(refused) >= 0.9
    # a plain transformers reward model: loads without lmforge and scores one rendered conversation alike
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        direct = [model(**tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False,
                              return_tensors="pt")).logits[0, 0].item() for c in conversations[:6]]
    assert scores[:6] == pytest.approx(direct, abs=1e-4)


def test_score_rejects_a_model_that_is_not_a_reward_model(tiny_model_dir, tmp_path, capsys):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    assert main(["score", tiny_model_dir, str(inputs)]) == 2
    assert "is not a reward model" in capsys.readouterr().err
    assert main(["score", tiny_model_dir, str(write_jsonl(tmp_path / "bad.jsonl", ["{nope"]))]) == 2
    assert "bad.jsonl line 1: not valid JSON" in capsys.readouterr().err
    assert main(["score", tiny_model_dir, str(inputs), "--reduction", "last"]) == 2
    assert "--reduction applies to a process reward model" in capsys.readouterr().err


def test_dpo_raises_the_held_out_margin(tiny_model_dir, task, held_out_pairs, tmp_path, capsys):
    out = tmp_path / "dpo"
    assert main(["train", *stage_args("dpo", tiny_model_dir, out, task["pairs"], plot_loss=True)]) == 0
    printed = capsys.readouterr()
    # one compact line per log event (the raw dict stays in trainer_log.jsonl): the headline numbers, DPO's
    # accuracy and margin, and none of the parts they are made of
    lines = [line for line in printed.err.splitlines() if line.startswith("[lmforge] step ")]
    assert [line.split()[2] for line in lines[:6]] == ["10/60", "20/60", "30/60", "40/60", "50/60", "60/60"]
    assert all(re.search(r"loss \S+ +lr \S+ +grad \S+ +tok/s [\d,]+ .*acc \S+ +margin ", line)
               for line in lines[:6]), lines
    assert "{'loss'" not in printed.out + printed.err and max(map(len, lines)) < 160
    assert not any("logps/" in line or "rewards/chosen" in line for line in lines)
    before, after = mean_margin(tiny_model_dir, held_out_pairs), mean_margin(str(out), held_out_pairs)
    assert after > before + 3.0, (before, after)
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    train = [r for r in log if "rewards/margins" in r]
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"] and train[-1]["rewards/accuracies"] > 0.6
    assert (out / "training_rewards_margins.png").exists()


@pytest.mark.parametrize("extra", [{"pref_loss": "hinge"}, {"pref_loss": "ipo", "pref_beta": 0.5},
                                   {"pref_loss": "orpo"}, {"pref_loss": "simpo", "pref_beta": 2.0},
                                   {"pref_loss": "sigmoid", "dpo_label_smoothing": 0.1, "pref_ftx": 0.5}])
def test_every_preference_loss_raises_the_held_out_margin(tiny_model_dir, task, held_out_pairs, tmp_path, extra):
    out = tmp_path / "variant"
    assert main(["train", *stage_args("dpo", tiny_model_dir, out, task["pairs"], max_steps=40, **extra)]) == 0
    # measured rises over the base's 12.6: hinge 4.5, ipo 3.1, orpo 1.5, simpo 4.6, smoothed sigmoid + ftx 6.1; the
    # bar leaves ORPO (no reference, the weakest pull) a 3x margin
    assert mean_margin(str(out), held_out_pairs) > mean_margin(tiny_model_dir, held_out_pairs) + 0.5


def test_lora_dpo_uses_the_base_with_adapters_off_as_reference(tiny_model_dir, task, held_out_pairs, tmp_path):
    from peft import PeftModel

    from lmforge.train.stages.dpo import build_trainer

    out = tmp_path / "lora"
    cfg = load_config(None, stage_args("dpo", tiny_model_dir, out, task["pairs"], finetuning_type="lora",
                                       lora_rank=8, learning_rate=1e-2))
    trainer = build_trainer(cfg)
    assert trainer.ref_model is None  # no second copy of the weights
    trainer.train()
    trainer.save_model()
    batch = PairCollator(pad_token_id=0)(list(held_out_pairs.select(range(8))))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = sequence_logps(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  batch["labels"])[0]
    trainer.model.eval()
    reference = trainer.reference_logps(trainer.model, batch)[0]
    assert torch.allclose(reference, expected, atol=1e-4)
    policy = trainer.sequence_logps(trainer.model, batch)[0]
    assert not torch.allclose(policy, expected, atol=1e-2)  # the adapter did learn something
    assert os.path.exists(out / "adapter_model.safetensors")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert mean_margin(str(tmp_path / "merged"), held_out_pairs) > mean_margin(tiny_model_dir, held_out_pairs)


def test_kto_raises_the_held_out_margin(tiny_model_dir, task, held_out_pairs, tmp_path):
    out = tmp_path / "kto"
    assert main(["train", *stage_args("kto", tiny_model_dir, out, task["kto"], kto_rejected_weight=1.2,
                                      val_size=64, eval_strategy="steps", eval_steps=30)]) == 0
    assert mean_margin(str(out), held_out_pairs) > mean_margin(tiny_model_dir, held_out_pairs) + 3.0
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    last_eval = [r for r in log if "eval_rewards/chosen" in r][-1]
    assert last_eval["eval_rewards/chosen"] > last_eval["eval_rewards/rejected"] and "eval_kl" in last_eval
    assert "eval_perplexity" not in last_eval  # a preference loss is not a language-model loss


@pytest.mark.parametrize("extra, message", [
    ({"stage": "dpo", "packing": True}, "'packing' applies to 'stage: sft'"),
    ({"stage": "sft", "pref_beta": 0.2},
     "'pref_beta' does not apply to 'stage: sft' (it applies to dpo, kto, online_dpo)"),
    ({"stage": "dpo", "pref_loss": "orpo", "ref_model": "/tmp"}, "uses no reference model"),
    ({"stage": "kto", "pref_loss": "ipo"}, "'pref_loss' does not apply to 'stage: kto'"),
    ({"stage": "dpo", "dpo_label_smoothing": 0.6}, "'dpo_label_smoothing' must be in [0, 0.5)"),
])
def test_preference_settings_that_cannot_work_are_clear_errors(tiny_model_dir, tmp_path, capsys, extra, message):
    args = stage_args(extra.pop("stage"), tiny_model_dir, tmp_path / "x", "dpo_en_demo", **extra)
    assert main(["train", *args]) == 2
    assert message in capsys.readouterr().err


def test_data_dump_and_preview_show_chosen_and_rejected(tiny_model_dir, task, tmp_path, capsys):
    args = stage_args("dpo", tiny_model_dir, tmp_path / "unused", task["pairs"], max_samples=5)
    dump = tmp_path / "pairs.jsonl"
    assert main(["data", "dump", *args, "--output", str(dump)]) == 0
    rows = [json.loads(line) for line in open(dump)]
    assert len(rows) == 5 and {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"} <= set(
        rows[0])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    source = [json.loads(line) for line in open(task["pairs"])][rows[0]["record"]]
    chosen = [t for t, label in zip(rows[0]["chosen_input_ids"], rows[0]["chosen_labels"], strict=True)
              if label != -100]
    assert tok.decode(chosen).replace(" ", "") == (source["chosen"] + "<|im_end|>").replace(" ", "")
    capsys.readouterr()
    assert main(["data", "preview", *args, "--num", "1"]) == 0
    out = capsys.readouterr().out
    assert "example 0 chosen" in out and "example 0 rejected" in out and "sequences: 10" in out
    assert f"⟦{source['rejected']}<|im_end|>⟧" in out


def test_a_frozen_reference_copy_keeps_the_checkpoints_half_precision(real_model, tmp_path):
    """Full dpo of a bf16 checkpoint (Qwen3's real config) under bf16 autocast: the policy trains float32 master
    weights; its reference copy never trains, so it stays bf16 (half the memory). Without autocast the whole model,
    reference too, is float32."""
    from lmforge.model.reference import reference_model
    from lmforge.train.setup import set_precision

    model_dir = real_model("qwen3")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for bf16, expected in ((True, torch.bfloat16), (False, torch.float32)):
        cfg = load_config(None, ["stage=dpo", f"model_name_or_path={model_dir}", "dataset=dpo_en_demo",
                                 f"dataset_dir={LF_DEMO}", f"output_dir={tmp_path / 'x'}", f"bf16={str(bf16).lower()}",
                                 "use_cpu=true", "template=chatml"])
        policy = AutoModelForCausalLM.from_pretrained(model_dir)
        set_precision(policy, cfg)
        assert {p.dtype for p in policy.parameters()} == {torch.float32}
        assert {p.dtype for p in reference_model(cfg, policy, tokenizer).parameters()} == {expected}
