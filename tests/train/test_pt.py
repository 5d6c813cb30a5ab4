"""End-to-end pretraining through the CLI on a tiny model: learning, outputs, logs, resume."""

import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.cli import main
from lmforge.runlog import read_log
from tests.conftest import LF_DEMO, scratch_args

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One from-scratch run shared by the assertions below (the expensive part)."""
    out = tmp_path_factory.mktemp("pt-run")
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LMFORGE_CACHE", str(cache))
    code = main(["train", *scratch_args(out, max_steps=80, val_size=0.1, eval_strategy="steps", eval_steps=40,
                                        plot_loss=True, sample_prompts=["One morning,", "Two plus"],
                                        max_new_tokens=8)])
    mp.undo()
    assert code == 0
    return out


def test_eval_loss_falls_well_below_the_start(trained):
    log = read_log(str(trained))
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    train = [r["loss"] for r in log if "loss" in r]
    assert train[-1] < train[0] - 1.0
    # a random model over a 384-token vocabulary starts near ln(384) = 5.95
    assert evals[-1] < 4.5
    with open(trained / "eval_results.json") as fh:
        results = json.load(fh)
    assert results["eval_perplexity"] == pytest.approx(torch.tensor(results["eval_loss"]).exp().item(), rel=1e-4)


def test_trainer_log_has_one_line_per_log_step(trained):
    log = read_log(str(trained))
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(5, 85, 5))
    for r in steps:
        assert {"lr", "grad_norm", "tokens_per_second", "epoch"} <= set(r)
        assert r["tokens_per_second"] > 0
    assert any("eval_perplexity" in r for r in log)


def test_outputs_load_with_plain_transformers(trained):
    model = AutoModelForCausalLM.from_pretrained(trained)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
    assert model.config.vocab_size == len(tokenizer) == 384
    ids = tokenizer("One morning, Mia went", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    assert tokenizer.decode(tokenizer("Hello, world!")["input_ids"]) == "Hello, world!"


def test_plots_samples_and_config_are_written(trained):
    assert (trained / "training_loss.png").stat().st_size > 1000
    assert (trained / "training_eval_loss.png").stat().st_size > 1000
    with open(trained / "samples.jsonl") as fh:
        samples = [json.loads(line) for line in fh]
    assert [s["prompt"] for s in samples] == ["One morning,", "Two plus"]
    assert all(isinstance(s["completion"], str) and s["completion"] for s in samples)
    assert (trained / "lmforge_config.yaml").exists()


def test_resume_continues_from_the_checkpoint_step(tmp_path, isolated_cache, caplog):
    out = tmp_path / "run"
    assert main(["train", *scratch_args(out, max_steps=10, save_steps=10)]) == 0
    assert os.path.isdir(out / "checkpoint-10")
    shutil.rmtree(isolated_cache)  # the resumed run must take the checkpoint's tokenizer, not retrain one
    with caplog.at_level("INFO", logger="lmforge"):
        assert main(["train", *scratch_args(out, max_steps=20, save_steps=10), "resume_from_checkpoint=true"]) == 0
    assert "Using the tokenizer saved with" in caplog.text
    with open(out / "trainer_state.json") as fh:
        state = json.load(fh)
    assert state["global_step"] == 20
    log = read_log(str(out))
    assert [r["step"] for r in log if "loss" in r] == [5, 10, 15, 20]


def test_neat_packing_run_trains(tmp_path):
    out = tmp_path / "neat"
    assert main(["train", *scratch_args(out, max_steps=20, neat_packing=True)]) == 0
    losses = [r["loss"] for r in read_log(str(out)) if "loss" in r]
    assert losses[-1] < losses[0]


def test_continued_pretraining_from_a_model_dir(tmp_path, tiny_model_dir):
    out = tmp_path / "cpt"
    code = main(["train", "stage=pt", f"model_name_or_path={tiny_model_dir}", "dataset=c4_demo",
                 f"dataset_dir={LF_DEMO}", "cutoff_len=64", f"output_dir={out}", "max_steps=6", "logging_steps=2",
                 "per_device_train_batch_size=4", "report_to=none", "disable_tqdm=true", "save_strategy=no"])
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)


def test_streaming_run_trains_with_a_held_out_count(tmp_path):
    out = tmp_path / "stream"
    assert main(["train", *scratch_args(out, max_steps=12, streaming=True, val_size=40, eval_strategy="steps",
                                        eval_steps=6, save_strategy="no")]) == 0
    log = read_log(str(out))
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert len(evals) >= 2 and evals[-1] < evals[0]
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 384


def test_loss_plot_smoothing_follows_the_curve():
    from lmforge.train.runtime.plots import smooth

    values = [6.0 - 0.1 * i for i in range(30)]
    smoothed = smooth(values)
    assert len(smoothed) == 30 and smoothed[0] == values[0]
    assert all(s >= v for s, v in zip(smoothed, values, strict=True))  # an average lags a falling curve...
    assert smoothed[-1] - values[-1] < 0.2  # ...but not by much on a short run
