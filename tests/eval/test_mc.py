"""Multiple-choice evaluation end to end: prefix reuse equals the plain path, a random model scores near chance on
CMMLU, and a model fine-tuned by lmforge scores far above chance on a held-out synthetic benchmark."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from lmforge.eval.scoring import Request, score_questions
from tests.conftest import SHARED_DATA, TINY_MODEL, write_jsonl

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

CMMLU = str(SHARED_DATA / "cmmlu")


def run_lmforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def long_context_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """The tiny model with room for 5-shot CMMLU prompts (byte-level Chinese is long)."""
    from lmforge.config.model import ModelArguments
    from lmforge.model.build import build_model

    path = tmp_path_factory.mktemp("tiny-long")
    model = build_model(ModelArguments(from_scratch=True, model_type="qwen2",
                                       config_overrides={**TINY_MODEL, "max_position_embeddings": 4096}),
                        tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_reuse_scores_equal_the_plain_path(attn):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64,
                                         attn_implementation=attn)).eval()
    rng = random.Random(0)
    for shared_len in (20, 0):  # a shared prefix, and none at all
        shared = [rng.randrange(1, 100) for _ in range(shared_len)]
        questions = []
        for _ in range(9):
            question = [rng.randrange(1, 100) for _ in range(rng.randrange(1, 8))]
            options = [[rng.randrange(1, 100) for _ in range(rng.randrange(1, 4))] for _ in range(rng.choice([1, 4]))]
            questions.append([Request(shared + question + o, n_target=len(o), candidates=[3, 5, 7]) for o in options])
        reused = score_questions(model, questions, 5, 0, reuse=True)
        plain = score_questions(model, questions, 5, 0, reuse=False)
        for q_reused, q_plain in zip(reused, plain, strict=True):
            for a, b in zip(q_reused, q_plain, strict=True):
                assert len(a.target_logps) == len(b.target_logps) and len(a.candidate_logps) == 3
                torch.testing.assert_close(a.target_logps + a.candidate_logps, b.target_logps + b.candidate_logps,
                                           atol=1e-5, rtol=1e-5)
        # the plain path agrees with a single unbatched forward of the whole sequence
        request = questions[0][0]
        logps = model(torch.tensor([request.ids])).logits[0].log_softmax(-1)
        expected = [logps[i - 1, request.ids[i]].item() for i in range(len(request.ids) - request.n_target,
                                                                            len(request.ids))]
        torch.testing.assert_close(plain[0][0].target_logps, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain[0][0].candidate_logps, logps[-1, [3, 5, 7]].tolist(), atol=1e-5, rtol=1e-5)


def _results(out) -> dict:
    with open(out / "results.json", encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.parametrize("scoring", ["letter", "loglik_norm"])
def test_cmmlu_prefix_reuse_gives_identical_results(long_context_model_dir, tmp_path, scoring):
    from lmforge.config.parse import load_eval_config
    from lmforge.eval.run import run_eval

    common = [f"model_name_or_path={long_context_model_dir}", "task=cmmlu", f"task_dir={CMMLU}", "n_shot=2",
              "max_samples=4", "subjects=[agronomy,virology,arts]", f"scoring={scoring}", "batch_size=3"]
    reused = run_eval(load_eval_config(None, [*common, f"output_dir={tmp_path / 'a'}"]))
    plain = run_eval(load_eval_config(None, [*common, "prefix_reuse=false", f"output_dir={tmp_path / 'b'}"]))
    assert reused["subjects"] == plain["subjects"]
    a = [json.loads(line) for line in open(tmp_path / "a" / "predictions.jsonl", encoding="utf-8")]
    b = [json.loads(line) for line in open(tmp_path / "b" / "predictions.jsonl", encoding="utf-8")]
    assert [p["prediction"] for p in a] == [p["prediction"] for p in b] and len(a) == 12
    for p, q in zip(a, b, strict=True):
        assert p["scores"] == pytest.approx(q["scores"], abs=1e-4)


def test_random_model_scores_near_chance_on_cmmlu(long_context_model_dir, tmp_path, capsys):
    from lmforge.cli import main

    out = tmp_path / "eval"
    assert main(["eval", f"model_name_or_path={long_context_model_dir}", "task=cmmlu", f"task_dir={CMMLU}",
                 "n_shot=5", "max_samples=4", f"output_dir={out}"]) == 0
    results = _results(out)
    assert results["unit"] == "percent" and results["questions"] == 268 and len(results["subjects"]) == 67
    assert 15 <= results["average"] <= 35, results["average"]  # 25 % +- 3.8 standard deviations
    agronomy = results["subjects"]["agronomy"]
    assert (agronomy["category"], agronomy["questions"], agronomy["shots"]) == ("Other", 4, 5)
    assert set(results["categories"]) == {"STEM", "Humanities", "Social Sciences", "Other"}
    assert results["config"]["eval"]["n_shot"] == 5 and results["prompt_style"] == "plain"
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl", encoding="utf-8")]
    assert len(predictions) == 268
    assert sum(p["correct"] for p in predictions) == round(results["average"] * 268 / 100)
    printed = capsys.readouterr().out
    assert "Average" in printed and "Humanities" in printed


def test_finetuned_model_scores_far_above_chance_on_held_out_questions(tiny_model_dir, tmp_path):
    from lmforge.resources.mc_quickstart import training_records, write_benchmark

    bench = write_benchmark(str(tmp_path / "bench"), n_test=25, n_dev=3)
    train = write_jsonl(tmp_path / "train.jsonl", training_records(scoring="loglik"))
    sft = tmp_path / "sft"
    from lmforge.cli import main  # in this process: the CLI runs the same code as a subprocess would

    assert main(["train", "stage=sft", f"model_name_or_path={tiny_model_dir}", f"dataset={train}", "template=chatml",
                 "cutoff_len=128", f"output_dir={sft}", "max_steps=400", "per_device_train_batch_size=16",
                 "learning_rate=5e-3", "lr_scheduler_type=cosine", "warmup_steps=10", "report_to=none",
                 "save_strategy=no", "disable_tqdm=true", "seed=1"]) == 0
    scores = {}
    for name, model in (("before", tiny_model_dir), ("after", str(sft))):
        assert main(["eval", f"model_name_or_path={model}", "template=chatml", "task=bench", f"task_dir={bench}",
                     "n_shot=0", "scoring=loglik", f"output_dir={tmp_path / name}"]) == 0
        scores[name] = _results(tmp_path / name)
    assert scores["after"]["prompt_style"] == "chat" and scores["after"]["questions"] == 100
    assert scores["before"]["average"] < 50
    assert scores["after"]["average"] >= 80, scores["after"]["subjects"]


def test_eval_config_errors_exit_2_without_traceback(tmp_path, tiny_model_dir, capsys):
    """In this process (the CLI's own exit path; test_cli runs a config error in a real process)."""
    from lmforge.cli import main

    cases = [
        (["task=cmmlu", f"output_dir={tmp_path}"], "'model_name_or_path' is required"),
        ([f"model_name_or_path={tiny_model_dir}", "task=cmmlu"], "'output_dir' is required"),
        ([f"model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}", "n_shots=3"], "Did you mean 'n_shot'"),
        ([f"model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}", "task=perplexity"], "needs 'dataset'"),
        ([f"model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}", f"task_dir={tmp_path / 'none'}"],
         "no folder with dev/ and test/"),
        ([f"model_name_or_path={tiny_model_dir}", f"output_dir={tmp_path}", "scoring=best"],
         "'scoring' expects one of 'letter', 'loglik', 'loglik_norm'"),
    ]
    for args, message in cases:
        code, err = main(["eval", *args]), capsys.readouterr().err
        assert code == 2, (args, err[-2000:])
        assert message in err and "Traceback" not in err, err[-2000:]
