"""Mixtures of experts on the real Qwen3-MoE config (tiny): `router_aux_loss_coef` adds the model's own
load-balancing loss exactly as transformers computes it (sft), in the losses lmforge computes itself (dpo, grpo) too;
`freeze_router` keeps every router fixed while the experts train; both are config errors on a dense model; each
logged step carries every layer's expert loads."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.bench.model_matrix import EXCHANGES, REFUSAL
from lmforge.cli import main
from lmforge.runlog import read_log
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow  # training runs

MOE = "qwen3-moe"


def _train(tmp_path, name: str, **values) -> list[dict]:
    out = tmp_path / name
    values = {"output_dir": str(out), "cutoff_len": 64, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
              "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0,
              **values}
    assert main(["train", *(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items())]) == 0
    return read_log(str(out))


def test_router_aux_loss_coef_adds_the_models_own_load_balancing_loss(real_model, tmp_path):
    """One batch of four chats, one step: the logged loss is what the Qwen3-MoE forward itself returns with its
    router loss at that weight (cross-entropy + coef x aux), and without the key the checkpoint's choice (off)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.config.data import DataArguments
    from lmforge.data.collate import SftCollator
    from lmforge.data.examples import build_examples

    model_dir = real_model(MOE)
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES[:4]])
    first = {coef: _train(tmp_path, f"coef-{coef}", stage="sft", model_name_or_path=model_dir, dataset=str(data),
                          max_steps=1, **({"router_aux_loss_coef": coef} if coef is not None else {}))[0]["loss"]
             for coef in (None, 0.0, 0.05)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = build_examples(DataArguments(dataset=str(data), dataset_dir=str(tmp_path), cutoff_len=64), tokenizer, 0,
                          "sft").train
    batch = SftCollator(tokenizer.pad_token_id)([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(model_dir, output_router_logits=True, router_aux_loss_coef=0.05)
    with torch.no_grad():
        own = model(**batch)
    assert first[0.05] == pytest.approx(float(own.loss), abs=1e-4)
    assert first[0.05] - first[0.0] == pytest.approx(0.05 * float(own.aux_loss), abs=1e-4)
    assert first[None] == pytest.approx(first[0.0], abs=1e-6)  # the checkpoint's config leaves the loss off

    # the trained model's config keeps the router loss on; serving it decodes with the KV cache all the same
    from lmforge.config.parse import load_target_config
    from lmforge.model.sampling import SamplingParams
    from lmforge.serve.load import load_engine

    trained = tmp_path / "coef-0.05"
    assert AutoModelForCausalLM.from_pretrained(trained).config.output_router_logits
    engine = load_engine(load_target_config("serve", str(trained), []))
    try:
        text = "".join(engine.stream(engine.tokenizer("What is 2 plus 2?")["input_ids"],
                                     SamplingParams(max_tokens=6, temperature=0)))
    finally:
        engine.close()
    assert isinstance(text, str)


def test_gradient_accumulation_weighs_the_router_loss_once(real_model, tmp_path):
    """The same four chats as one batch or as two accumulated micro-batches of two: the router loss adds about
    coef x 2 either way (its value at an even top-2-of-4 routing), not once per micro-batch (the Trainer leaves a
    loss summed over the step's tokens undivided, and transformers' forward adds the per-micro-batch mean)."""
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES[:4]])
    run = {"stage": "sft", "model_name_or_path": real_model(MOE), "dataset": str(data), "max_steps": 1}
    added = {}
    for accumulation in (1, 2):
        shape = {"per_device_train_batch_size": 4 // accumulation, "gradient_accumulation_steps": accumulation}
        loss = {coef: _train(tmp_path, f"ga{accumulation}-{coef}", **run, **shape, router_aux_loss_coef=coef)[0]["loss"]
                for coef in (0.0, 0.5)}
        added[accumulation] = loss[0.5] - loss[0.0]
    assert 0.5 * 1.9 < added[1] < 0.5 * 2.5, added
    assert added[2] == pytest.approx(added[1], rel=0.1), added


def test_the_router_loss_reaches_the_losses_lmforge_computes(real_model, tmp_path):
    """dpo logs the policy's router loss and adds it; grpo's loss moves by about coef x aux."""
    model_dir = real_model(MOE)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"messages": m[:1], "chosen": m[1], "rejected": REFUSAL}
                                                   for m in EXCHANGES[:4]])
    log = _train(tmp_path, "dpo", stage="dpo", model_name_or_path=model_dir, dataset=str(pairs), max_steps=1,
                 router_aux_loss_coef=0.5)
    assert log[0]["router_loss"] > 0 and math.isfinite(log[0]["loss"])
    assert log[0]["loss"] > 0.5 * log[0]["router_loss"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": m[:1]} for m in EXCHANGES[:4]])
    (tmp_path / "reward.py").write_text("def short(prompts, completions, **kw):\n"
                                        "    return [1.0 / (1 + len(c)) for c in completions]\n")
    rl = {"stage": "grpo", "model_name_or_path": model_dir, "dataset": str(prompts), "max_steps": 1,
          "rollout_batch_size": 2, "num_generations": 2, "max_new_tokens": 4,
          "reward_funcs": f"{tmp_path / 'reward.py'}:short", "importance_sampling_level": "sequence"}  # GSPO
    without = [r["loss"] for r in _train(tmp_path, "grpo-0", **rl, router_aux_loss_coef=0.0) if "loss" in r]
    with_aux = [r["loss"] for r in _train(tmp_path, "grpo-1", **rl, router_aux_loss_coef=1.0) if "loss" in r]
    # the aux loss of top-2 of 4 experts is about 2 (its value at an even routing); the policy loss is unchanged
    assert 1.0 < with_aux[0] - without[0] < 4.0, (with_aux, without)


def test_freeze_router_keeps_the_routers_and_trains_the_experts(real_model, tmp_path, capsys):
    from safetensors.torch import load_file

    model_dir = real_model(MOE)
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES])
    log = _train(tmp_path, "frozen", stage="sft", model_name_or_path=model_dir, dataset=str(data), max_steps=3,
                 learning_rate=1e-2, freeze_router=True, plot_loss=True)
    assert (tmp_path / "frozen" / "training_expert_load_max_over_mean.png").is_file()  # the report plots them
    # every logged step says how the tokens spread over each layer's 4 experts (shares that sum to one)
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 3 and all(sorted(r["expert_load"]) == ["0", "1"] for r in steps)
    for record in steps:
        for shares in record["expert_load"].values():
            assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-5)
        peak = max(max(shares) for shares in record["expert_load"].values())
        assert 1.0 <= record["expert_load_max_over_mean"] <= 4 * peak + 1e-3
        assert 0 < record["expert_load_entropy"] <= 1.0
    before, after = load_file(f"{model_dir}/model.safetensors"), load_file(str(tmp_path / "frozen" /
                                                                             "model.safetensors"))
    routers = [name for name in before if name.endswith("mlp.gate.weight")]
    experts = [name for name in before if ".mlp.experts." in name]
    assert len(routers) == 2 and experts
    assert all(torch.equal(before[n], after[n]) for n in routers)
    assert all(not torch.equal(before[n], after[n]) for n in experts)

    capsys.readouterr()
    dense = real_model("qwen2.5-instruct")
    for key in ("freeze_router=true", "router_aux_loss_coef=0.01"):
        assert main(["train", "stage=sft", f"model_name_or_path={dense}", f"dataset={data}", key, "max_steps=1",
                     f"output_dir={tmp_path / key.split('=')[0]}", "report_to=none"]) == 2
        err = capsys.readouterr().err
        assert ("no mixture-of-experts router" in err or "has no router load-balancing loss" in err), err


def test_lora_reaches_the_experts_and_merges_exactly(real_model, tmp_path, capsys):
    """`lora_target: all` puts adapters on attention and on the fused 3-D expert weights (peft's target_parameters);
    `experts` names those alone; the merged export gives the adapter's logits."""
    from peft import AutoPeftModelForCausalLM
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model_dir = real_model(MOE)
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES])
    for target in ("all", "experts"):
        log = _train(tmp_path, target, stage="sft", model_name_or_path=model_dir, dataset=str(data), max_steps=3,
                     learning_rate=1e-2, finetuning_type="lora", lora_target=target)
        losses = [r["loss"] for r in log if "loss" in r]
        assert losses[-1] < losses[0], losses
        names = set(safe_open(str(tmp_path / target / "adapter_model.safetensors"), "pt").keys())
        assert any("experts" in n for n in names)
        assert any("q_proj" in n for n in names) == (target == "all"), sorted(names)[:6]
    out = tmp_path / "merged"
    assert main(["export", str(tmp_path / "all"), f"export_dir={out}", "infer_dtype=float32"]) == 0
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        adapted = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "all", dtype=torch.float32)(ids).logits
    assert (merged - adapted).abs().max().item() < 1e-4

    capsys.readouterr()
    assert main(["train", "stage=sft", f"model_name_or_path={real_model('qwen2.5-instruct')}", f"dataset={data}",
                 "finetuning_type=lora", "lora_target=experts", "max_steps=1", f"output_dir={tmp_path / 'dense'}",
                 "report_to=none"]) == 2
    assert "no fused expert weights" in capsys.readouterr().err


def test_the_router_loss_reaches_reward_models_and_classifiers(real_model, tmp_path):
    """Transformers' classification heads drop their decoder's router loss: rm and cls add it (one step's loss
    rises by about coef x 2, the loss at an even routing of top-2 of 4 experts)."""
    from lmforge.bench.model_matrix import FILLER, TOPIC_WORDS

    model_dir = real_model(MOE)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"messages": m[:1], "chosen": m[1], "rejected": REFUSAL}
                                                   for m in EXCHANGES[:4]])
    texts = write_jsonl(tmp_path / "cls.jsonl", [{"text": f"{FILLER[i]} {w}", "label": topic} for i, (topic, words)
                                                 in enumerate(TOPIC_WORDS.items()) for w in words[:2]])
    # (cls without class weights and rm share the Trainer's loss path; the weighted one computes its own)
    for stage, data, extra in (("rm", pairs, {}), ("cls", texts, {"class_weights": "balanced"})):
        first = {coef: _train(tmp_path, f"{stage}-{coef}-{len(extra)}", stage=stage, model_name_or_path=model_dir,
                              dataset=str(data), max_steps=1, router_aux_loss_coef=coef, **extra)[0]["loss"]
                 for coef in (0.0, 1.0)}
        assert 1.0 < first[1.0] - first[0.0] < 4.0, (stage, extra, first)


def test_a_resumed_mixture_of_experts_continues_with_its_trained_experts(real_model, tmp_path):
    """Checkpoints hold the experts per expert, as published (`experts.N.down_proj.weight`); the model holds them
    fused. Resuming from step 3 reproduces steps 4..6 exactly (the Trainer's own resume loaded nothing into the
    fused experts and went on with the ones it started from)."""
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in EXCHANGES])
    run = {"stage": "sft", "model_name_or_path": real_model(MOE), "dataset": str(data), "max_steps": 6,
           "save_steps": 3, "save_strategy": "steps", "learning_rate": 5e-3}
    full = {r["step"]: r["loss"] for r in _train(tmp_path, "full", **run) if "loss" in r}
    saved = load_file(tmp_path / "full" / "checkpoint-3" / "model.safetensors")
    assert "model.layers.0.mlp.experts.3.down_proj.weight" in saved
    (tmp_path / "part").mkdir()
    shutil.copytree(tmp_path / "full/checkpoint-3", tmp_path / "part/checkpoint-3")
    resumed = {r["step"]: r["loss"] for r in _train(tmp_path, "part", **run, resume_from_checkpoint=True)
               if "loss" in r}
    assert {s: resumed[s] for s in (4, 5, 6)} == {s: full[s] for s in (4, 5, 6)}
