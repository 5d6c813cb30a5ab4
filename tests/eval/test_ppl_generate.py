"""Perplexity with a sliding window, generation tasks scored against references, and the harness bridge."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.cli import main
from lmforge.eval.ppl import perplexity, token_stream, windows
from tests.conftest import LF_DEMO, write_jsonl

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


@pytest.mark.parametrize("n, window, stride", [(10, 4, 2), (10, 4, 3), (10, 4, 1), (37, 8, 5), (3, 8, 4), (9, 9, 9)])
def test_windows_score_every_token_once_with_bounded_context(n, window, stride):
    scored = []
    for w in windows(n, window, stride):
        assert w.end - w.start <= window and 1 <= w.scored <= w.end - w.start - 1
        scored += range(w.end - w.scored, w.end)
    expected = [t for t in range(1, n) if stride < window or t % window != 0 or t < window]
    assert scored == expected


def test_perplexity_matches_the_model_loss(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    stream = token_stream(tiny_tokenizer, ["the cat sat on the mat", "a dog ran in the park today"])
    assert stream.count(tiny_tokenizer.eos_token_id) == 2
    with torch.no_grad():
        full = model(torch.tensor([stream]), labels=torch.tensor([stream])).loss.item()
    whole = perplexity(model, stream, window=len(stream), stride=len(stream))
    assert whole["tokens"] == len(stream) - 1 and whole["loss"] == pytest.approx(full, rel=1e-5)
    # sliding windows: each token scored once, with the context the window leaves it
    sliding = perplexity(model, stream, window=6, stride=2, batch_size=3)
    nll = 0.0
    with torch.no_grad():
        for w in windows(len(stream), 6, 2):
            logps = model(torch.tensor([stream[w.start: w.end]])).logits[0].log_softmax(-1)
            nll -= sum(logps[i - w.start - 1, stream[i]].item() for i in range(w.end - w.scored, w.end))
    assert sliding["tokens"] == len(stream) - 1
    assert sliding["loss"] == pytest.approx(nll / (len(stream) - 1), rel=1e-5)
    assert sliding["perplexity"] == pytest.approx(math.exp(sliding["loss"]))


def test_perplexity_task_on_a_registered_dataset(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ppl"
    assert main(["eval", f"model_name_or_path={tiny_model_dir}", "task=perplexity", "dataset=wiki_demo",
                 f"dataset_dir={LF_DEMO}", "max_samples=5", "cutoff_len=64", "stride=32", f"output_dir={out}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["documents"] == 5 and (results["window"], results["stride"]) == (64, 32)
    assert results["tokens"] > 100 and results["perplexity"] == pytest.approx(math.exp(results["loss"]))
    assert 100 < results["perplexity"] < 2000  # a random model over a 384-token vocabulary: near uniform
    assert "perplexity" in capsys.readouterr().out


def test_generation_task_scores_predictions_against_references(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "Repeat: red fox"}, {"role": "assistant", "content": "red fox"}]},
        {"messages": [{"role": "user", "content": "No reference here"}]},
    ])
    out = tmp_path / "gen"
    assert main(["eval", f"model_name_or_path={tiny_model_dir}", "task=generate", f"dataset={data}",
                 "template=chatml", "max_new_tokens=5", "batch_size=2", f"output_dir={out}"]) == 0
    results = json.loads((out / "results.json").read_text())
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl", encoding="utf-8")]
    assert (results["prompts"], results["scored"]) == (3, 2)
    assert [p["label"] for p in predictions] == ["hello", "red fox", None]
    assert predictions[0]["prompt"].startswith("<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant")
    from lmforge.metrics import text_scores

    assert {k: results[k] for k in ("rouge-1", "rouge-l", "bleu-4", "exact_match")} == {
        k: v for k, v in text_scores([p["predict"] for p in predictions[:2]], ["hello", "red fox"]).items()
        if k in ("rouge-1", "rouge-l", "bleu-4", "exact_match")}


def _accuracy_by_hand(model_dir: str, rows: list[dict], choices: list[str]) -> float:
    """The toy task scored directly: for each question, the choice whose tokens (after "question\nAnswer:" and a
    space) have the highest summed log-probability under the model; the share of questions where that is the
    answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    correct = 0
    for row in rows:
        context = f"{row['question']}\nAnswer:"
        scores = []
        for choice in choices:
            context_ids = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logps = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(logps[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole))))
        correct += max(range(len(choices)), key=scores.__getitem__) == row["answer"]
    return correct / len(rows)


def test_harness_bridge_runs_a_local_task(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    choices = ["red", "dog", "saw", "pear"]
    rows = [{"question": f"Which of these is a colour? ({i})", "choices": choices, "answer": i % 4} for i in range(6)]
    write_jsonl(tmp_path / "toy.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "toy.yaml").write_text(
        "task: lmforge_toy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: \"{{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    out = tmp_path / "harness"
    assert main(["eval", f"model_name_or_path={tiny_model_dir}", "n_shot=0", f"output_dir={out}",
                 f"harness_include_path={tmp_path / 'tasks'}", "--harness", "lmforge_toy"]) == 0
    toy = json.loads((out / "results.json").read_text())["harness"]["lmforge_toy"]
    assert toy["sample_len"] == 6
    assert toy["acc,none"] == pytest.approx(_accuracy_by_hand(tiny_model_dir, rows, choices))
    capsys.readouterr()
    assert main(["eval", f"model_name_or_path={tiny_model_dir}", f"output_dir={out}", "--harness", "nope_x"]) == 2
    assert "has no task 'nope_x'" in capsys.readouterr().err


def test_base_plus_adapter_equals_the_merged_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "merged")
    losses = {}
    for name, model_args in (("base", [f"model_name_or_path={tiny_model_dir}"]),
                             ("adapter", [f"model_name_or_path={tiny_model_dir}",
                                          f"adapter_name_or_path={tmp_path / 'adapter'}"]),
                             ("merged", [f"model_name_or_path={tmp_path / 'merged'}"])):
        assert main(["eval", *model_args, "task=perplexity", "dataset=wiki_demo", f"dataset_dir={LF_DEMO}",
                     "max_samples=2", "cutoff_len=32", f"output_dir={tmp_path / name}"]) == 0  # in this process
        losses[name] = json.loads((tmp_path / name / "results.json").read_text())["loss"]
    assert losses["adapter"] == pytest.approx(losses["merged"], rel=1e-5)
    assert abs(losses["adapter"] - losses["base"]) > 1e-3
