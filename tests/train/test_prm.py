"""Stage `prm` (process reward models): step encoding that is token-exact on a real tokenizer, bad step records
skipped with their reason, and a tiny PRM that learns to judge steps it never saw, scored by `lmforge score` and
used as a grpo/ppo reward."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from lmforge.cli import main
from lmforge.config.data import DataArguments
from lmforge.data.examples import build_examples
from lmforge.data.steps import separator_ids, split_steps
from lmforge.data.template import IGNORE_INDEX, prompt_ids
from lmforge.errors import ConfigError
from lmforge.model.process_reward import StepScorer, reduce_steps
from lmforge.train.rl.rewards import Rewarder
from tests.conftest import write_jsonl


def counting(n: int, seed: int) -> list[dict]:
    """TRL's stepwise layout on a task a tiny model can learn: count up one at a time; a reply may end with one
    wrong step (labelled false), as a first-error annotation does."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start = rng.randint(0, 5)
        steps = [str(start + i) for i in range(rng.randint(3, 9 - start))]
        labels = [True] * len(steps)
        if rng.random() < 0.6:
            bad = rng.randint(1, len(steps) - 1)
            steps = steps[:bad] + [str(rng.choice([d for d in range(10) if d != start + bad]))]
            labels = labels[:bad] + [False]
        rows.append({"prompt": f"Count up from {start}.", "completions": steps, "labels": labels})
    return rows


def test_steps_are_token_exact_on_a_real_tokenizer(real_model, tmp_path):
    """Each step is followed by the separator's own ids (never merged with the step's last characters, as tokenizing
    the joined text would), and each step's label sits on its separator: the position `lmforge score` reads."""
    tok = AutoTokenizer.from_pretrained(real_model("qwen3"))
    rows = [{"prompt": "Solve 12 * 3 + 4.", "completions": ["12 * 3 = 36.", "36 + 4 = 41.", "The answer is 41."],
             "labels": [True, False, False]},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
             "completions": ["2 + 2 = 4."], "labels": [1]}]
    data = build_examples(DataArguments(dataset=str(write_jsonl(tmp_path / "steps.jsonl", rows)), cutoff_len=512,
                                        step_separator="\n\n"), tok, seed=0, kind="steps").train
    sep = separator_ids(tok, "\n\n")
    assert len(sep) == 1 and tok.decode(sep) == "\n\n"
    # joined, the text would tokenize ".\n\n" as one token: the separator would vanish into the step
    assert sep[0] not in tok("12 * 3 = 36.\n\n36 + 4 = 41.", add_special_tokens=False)["input_ids"]
    for row, encoded in zip(rows, data, strict=True):
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        expected = prompt_ids(tok, prompt)
        labels = [IGNORE_INDEX] * len(expected)
        for step, label in zip(row["completions"], row["labels"], strict=True):
            piece = tok(step, add_special_tokens=False)["input_ids"] + sep
            expected += piece
            labels += [IGNORE_INDEX] * (len(piece) - 1) + [int(label)]
        assert encoded["input_ids"] == expected
        assert encoded["labels"] == labels
        marked = [i for i, label in enumerate(encoded["labels"]) if label != IGNORE_INDEX]
        assert [encoded["input_ids"][i] for i in marked] == sep * len(row["completions"])
    assert tok.decode(data[0]["input_ids"]).endswith(
        "<|im_start|>assistant\n12 * 3 = 36.\n\n36 + 4 = 41.\n\nThe answer is 41.\n\n")


def test_step_records_that_cannot_be_trained_are_skipped_with_their_reason(real_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(real_model("qwen3"))
    good = {"prompt": "Count.", "completions": ["1", "2"], "labels": [True, False]}
    rows = [good,
            {"prompt": "Count.", "completions": ["1", "2"], "labels": [True]},
            {"prompt": "Count.", "completions": ["1", "  "], "labels": [True, True]},
            {"prompt": "Count.", "completions": [], "labels": []},
            {"prompt": "Count.", "completions": ["1"], "labels": ["yes"]},
            {"prompt": "Count.", "completions": ["1 2 3 4 5 6 7 8 9 " * 3, "10"], "labels": [True, True]},
            {"prompt": "Count.", "completions": ["1", "2 3 4 5 6 7 8 9 10 11 12 " * 3], "labels": [True, True]}]
    data = build_examples(DataArguments(dataset=str(write_jsonl(tmp_path / "steps.jsonl", rows)), cutoff_len=24),
                          tok, seed=0, kind="steps")
    stats = next(iter(data.stats.values()))
    prompt = len(prompt_ids(tok, [{"role": "user", "content": "Count."}]))
    assert stats["skip_reasons"] == {
        "'labels' must be a list with one label per step (2)": 1,
        "'completions' holds a step that is not text or is empty": 1,
        "'completions' must be a non-empty list of step texts": 1,
        "'labels' holds a label that is not true/false: 'yes'": 1,
        f"no whole step fits within cutoff_len=24 after the prompt ({prompt} tokens)": 1,
    }, stats
    # the last record keeps its first step (the second does not fit) and says it was cut
    assert len(data.train) == 2 and data.train["truncated"] == [False, True]
    assert sum(label != IGNORE_INDEX for label in data.train[1]["labels"]) == 1


def test_reducing_step_scores():
    assert reduce_steps([0.9, 0.2, 0.8], "min") == 0.2
    assert reduce_steps([0.9, 0.2, 0.8], "last") == 0.8
    assert reduce_steps([0.9, 0.2, 0.8], "mean") == pytest.approx(1.9 / 3)
    assert reduce_steps([0.9, 0.2, 0.8], "prod") == pytest.approx(0.144)
    assert reduce_steps([], "min") == 0.0
    with pytest.raises(ConfigError, match="got 'max'"):
        reduce_steps([], "max")
    assert split_steps("1\n2\n\n3\n", "\n") == ["1", "2", "3"]


@pytest.mark.slow
def test_a_tiny_prm_judges_steps_it_never_saw(tiny_model_dir, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", counting(800, seed=1))
    held = counting(200, seed=2)
    held_out = write_jsonl(tmp_path / "held.jsonl", held)
    out = tmp_path / "prm"
    args = {"stage": "prm", "model_name_or_path": tiny_model_dir, "template": "chatml", "dataset": str(train),
            "eval_dataset": str(held_out), "cutoff_len": 64, "output_dir": str(out),
            "per_device_train_batch_size": 16, "learning_rate": 3e-3, "max_steps": 500, "logging_steps": 10,
            "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 3}
    assert main(["train", *[f"{k}={v}" for k, v in args.items()]]) == 0
    results = json.load(open(out / "eval_results.json"))
    log = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert results["eval_step_accuracy"] >= 0.9, results
    assert results["eval_error_f1"] >= 0.8, results
    assert json.load(open(out / "prm.json"))["step_separator"] == "\n"

    # `lmforge score`: each step's P(correct); the reply's score is its weakest step
    lines = [{"prompt": "Count up from 2.", "completions": ["2", "3", "4", "5"]},
             {"prompt": "Count up from 2.", "completion": "2\n3\n7\n5"},
             {"messages": [{"role": "user", "content": "Count up from 1."},
                           {"role": "assistant", "content": "1\n2\n3\n9"}]}]
    inputs = write_jsonl(tmp_path / "score.jsonl", lines)
    assert main(["score", str(out), str(inputs), "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = [json.loads(line) for line in open(tmp_path / "scored.jsonl")]
    good, bad_middle, bad_last = (s["step_scores"] for s in scored)
    assert len(good) == 4 and min(good) > 0.7, good
    assert bad_middle[2] < 0.3 and min(bad_middle[:2]) > 0.7, bad_middle
    assert bad_last[3] < 0.3 and min(bad_last[:3]) > 0.7, bad_last
    assert [s["score"] for s in scored] == [min(good), min(bad_middle), min(bad_last)]
    capsys.readouterr()
    assert main(["score", str(out), str(inputs), "--reduction", "last"]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[1] == (f"{bad_middle[-1]:.6f}\tsteps: "
                                           + " ".join(f"{s:.4f}" for s in bad_middle) + "\t2 3 7 5")
    assert printed.out.splitlines()[0].endswith("\t2 | 3 | 4 | 5")  # each score beside what it scored
    assert "Scored 3 lines" in printed.err
    assert main(["score", str(out), str(inputs), "--reduction", "max"]) == 2
    assert "must be one of min, last, mean, prod, got 'max'" in capsys.readouterr().err

    # the saved model is a plain transformers token classifier: its P(correct) at the separators is the score
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    scorer = StepScorer(str(out))
    ids, positions = scorer.encode([{"role": "user", "content": "Count up from 2."}], ["2", "3", "4", "5"])
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)[positions, 1].tolist()
    assert direct == pytest.approx(good, abs=1e-5)
    assert model.config.id2label == {0: "incorrect", 1: "correct"}

    # as an RL reward (grpo/ppo `reward_model`): completions split at the separator, steps reduced by prm_reduction
    from lmforge.config.rl import RLArguments

    prompts = [[{"role": "user", "content": "Count up from 2."}]] * 2
    for reduction, expected in (("min", [min(good), min(bad_middle)]), ("last", [good[-1], bad_middle[-1]])):
        rewarder = Rewarder(None, str(out), rl=RLArguments(prm_reduction=reduction))
        rewards, parts = rewarder(prompts, ["2\n3\n4\n5", "2\n3\n7\n5"], prompts, [None, None])
        rewarder.close()
        assert rewards == pytest.approx(expected, abs=1e-5)
        assert parts["reward/model"] == pytest.approx(sum(expected) / 2, abs=1e-5)
    # and a grpo run takes it as its reward model
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in held[:16]])
    grpo = {"stage": "grpo", "model_name_or_path": tiny_model_dir, "template": "chatml", "dataset": str(prompts_file),
            "reward_model": str(out), "prm_reduction": "mean", "cutoff_len": 64, "output_dir": str(tmp_path / "grpo"),
            "per_device_train_batch_size": 8, "rollout_batch_size": 4, "num_generations": 2, "max_steps": 2,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "max_new_tokens": 8}
    assert main(["train", *[f"{k}={v}" for k, v in grpo.items()]]) == 0
    logged = [json.loads(line) for line in open(tmp_path / "grpo" / "trainer_log.jsonl")]
    assert all(0 <= r["reward/model"] <= 1 and r["reward"] == r["reward/model"] for r in logged if "reward" in r)


@pytest.mark.slow
def test_a_lora_prm_saves_its_head_and_separator_and_scores(tiny_model_dir, tmp_path, capsys):
    """A LoRA PRM: the adapter holds the trained head (peft's TOKEN_CLS task) and `prm.json`; scoring merges it
    onto the base it names, and a bad config is refused before any model loads."""
    train = write_jsonl(tmp_path / "train.jsonl", counting(400, seed=1))
    out = tmp_path / "prm-lora"
    args = {"stage": "prm", "model_name_or_path": tiny_model_dir, "template": "chatml", "dataset": str(train),
            "cutoff_len": 64, "output_dir": str(out), "finetuning_type": "lora", "lora_rank": 8,
            "step_separator": ";", "per_device_train_batch_size": 16, "learning_rate": 5e-3, "max_steps": 60,
            "logging_steps": 50, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 3}
    assert main(["train", *[f"{k}={v}" for k, v in args.items()]]) == 0
    assert (out / "adapter_config.json").exists()
    assert json.load(open(out / "adapter_config.json"))["task_type"] == "TOKEN_CLS"
    assert json.load(open(out / "prm.json"))["step_separator"] == ";"
    from peft import PeftModel
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as saved:
        assert any(".score." in key for key in saved.keys())  # the trained head travels with the adapter
    scorer = StepScorer(str(out))
    prompt = [{"role": "user", "content": "Count up from 3."}]
    (steps,) = scorer.step_scores([prompt], [["3", "4", "9"]])
    assert scorer.score_replies([prompt], ["3;4;9;"]) == pytest.approx([min(steps)], abs=1e-6)
    base = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    ids, positions = scorer.encode(prompt, ["3", "4", "9"])
    assert ids[positions[0]] == AutoTokenizer.from_pretrained(out)(";", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)[positions, 1].tolist()
    assert direct == pytest.approx(steps, abs=1e-5)

    assert main(["train", *[f"{k}={v}" for k, v in {**args, "packing": True}.items()]]) == 2
    assert "'packing' applies to 'stage: sft'" in capsys.readouterr().err
    assert main(["train", *[f"{k}={v}" for k, v in {**args, "step_separator": '""'}.items()]]) == 2
    assert "'step_separator' is empty" in capsys.readouterr().err


def test_data_preview_shows_each_steps_label(real_model, tmp_path, capsys):
    rows = [{"prompt": "Count up from 2.", "completions": ["2", "3", "5"], "labels": [True, True, False]}]
    data = write_jsonl(tmp_path / "steps.jsonl", rows)
    assert main(["data", "preview", "stage=prm", f"model_name_or_path={real_model('qwen3')}", f"dataset={data}",
                 "cutoff_len=64", f"output_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert "steps correct correct incorrect" in out and "3 trained" in out
    assert "<|im_start|>assistant\n2⟦\n⟧3⟦\n⟧5⟦\n⟧" in out
