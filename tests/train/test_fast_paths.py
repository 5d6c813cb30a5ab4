"""Each speed/memory optimisation trains exactly what the plain path trains (never how fast: that is `lmforge
bench`): the chunked loss, gradient checkpointing, length-grouped batches; and the bench commands run."""

import copy
import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import lmforge.model.chunked_loss as chunked
from lmforge.cli import main
from lmforge.model.chunked_loss import use_chunked_loss
from tests.conftest import scratch_args
from tests.train.test_resume import losses, sft_args

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


@pytest.fixture
def pair_of_models():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True)
    plain = Qwen2ForCausalLM(cfg)
    fast = copy.deepcopy(plain)
    assert use_chunked_loss(fast)
    return plain, fast


@pytest.mark.parametrize("num_items", [None, 57])
def test_chunked_loss_equals_the_standard_loss_and_gradients(pair_of_models, monkeypatch, num_items):
    plain, fast = pair_of_models
    monkeypatch.setattr(chunked, "LOGITS_PER_CHUNK", 1000 * 7)  # 7 tokens per chunk: many chunks
    ids = torch.randint(0, 1000, (3, 24))
    labels = ids.clone()
    labels[0, :9] = -100  # a prompt
    labels[2, 15:] = -100  # padding
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    for model in (plain, fast):
        model.train()
        model(input_ids=ids, labels=labels, **kwargs).loss.backward()
    a = plain(input_ids=ids, labels=labels, **kwargs).loss
    b = fast(input_ids=ids, labels=labels, **kwargs).loss
    assert b.item() == pytest.approx(a.item(), rel=1e-6)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name


def test_chunked_loss_leaves_evaluation_and_generation_alone(pair_of_models):
    plain, fast = pair_of_models
    ids = torch.randint(0, 1000, (2, 10))
    plain.eval()
    fast.eval()
    assert torch.equal(plain(input_ids=ids).logits, fast(input_ids=ids).logits)
    assert torch.allclose(plain(input_ids=ids, labels=ids).loss, fast(input_ids=ids, labels=ids).loss)
    assert torch.equal(plain.generate(ids, max_new_tokens=4, do_sample=False),
                       fast.generate(ids, max_new_tokens=4, do_sample=False))


def test_chunked_loss_is_not_applied_where_the_loss_tail_differs():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert not use_chunked_loss(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)))


@pytest.mark.parametrize("make_args", [
    lambda model_dir, out, **kw: scratch_args(out, max_steps=6, logging_steps=1, save_strategy="no", **kw),
    lambda model_dir, out, **kw: sft_args(model_dir, out, max_steps=6, save_strategy="no", packing=True, **kw),
    lambda model_dir, out, **kw: sft_args(model_dir, out, max_steps=6, save_strategy="no", finetuning_type="lora",
                                          **kw),
], ids=["pt", "sft-packed", "sft-lora"])
def test_training_with_the_chunked_loss_gives_the_standard_losses(make_args, tiny_model_dir, tmp_path):
    assert main(["train", *make_args(tiny_model_dir, tmp_path / "fast", chunked_loss=True)]) == 0
    assert main(["train", *make_args(tiny_model_dir, tmp_path / "plain", chunked_loss=False)]) == 0
    fast, plain = losses(tmp_path / "fast"), losses(tmp_path / "plain")
    assert sorted(fast) == list(range(1, 7))
    for step in fast:
        assert fast[step] == pytest.approx(plain[step], rel=1e-4), step


def test_gradient_checkpointing_gives_the_same_losses(tiny_model_dir, tmp_path):
    for name, flag in (("plain", False), ("checkpointed", True)):
        assert main(["train", *sft_args(tiny_model_dir, tmp_path / name, max_steps=5, save_strategy="no",
                                        gradient_checkpointing=flag)]) == 0
    plain, checkpointed = losses(tmp_path / "plain"), losses(tmp_path / "checkpointed")
    for step in plain:
        assert checkpointed[step] == pytest.approx(plain[step], rel=1e-5), step


def test_length_grouped_batches_train_every_example_with_less_padding(tiny_model_dir, tmp_path):
    from lmforge.config import load_config
    from lmforge.train.stages.sft import build_trainer

    padding = {}
    for flag in (False, True):
        strategy = "group_by_length" if flag else "random"
        cfg = load_config(None, sft_args(tiny_model_dir, tmp_path / str(flag), train_sampling_strategy=strategy,
                                         per_device_train_batch_size=8, cutoff_len=1024))
        trainer = build_trainer(cfg).trainer
        batches = list(trainer.get_train_dataloader())
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        assert sum(len(b["input_ids"]) for b in batches) == len(lengths)  # every example, once
        padding[flag] = sum(b["input_ids"].numel() for b in batches) - sum(lengths)
    assert padding[True] < 0.5 * padding[False]


def test_bench_compare_and_preprocess_run(tiny_model_dir, tmp_path, capsys):
    args = sft_args(tiny_model_dir, tmp_path / "bench", max_samples=64)
    out = tmp_path / "compare.json"
    assert main(["bench", *args, "packing=true", "--compare", "--steps", "2", "--warmup", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"baseline", "lmforge", "ratios"}
    assert result["lmforge"]["packing"] and not result["baseline"]["packing"]
    base = result["baseline"]
    assert base["padded_tokens_per_second"] > base["real_tokens_per_second"] > 0  # the baseline pads
    assert "lmforge / baseline: real tokens/s x" in capsys.readouterr().out
    assert main(["bench", *args, "--preprocess"]) == 0
    assert "lmforge batched encoder" in capsys.readouterr().out
