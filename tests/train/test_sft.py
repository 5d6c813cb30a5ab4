"""SFT end to end on a tiny model: packing is exact, each fine-tuning type trains what it should, adapters save and
resume, prediction writes its files, `lmforge data` shows what is trained."""

import copy
import importlib.util
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lmforge.cli import main
from lmforge.config.data import DataArguments
from lmforge.data.chat_templates import apply_template_choice
from lmforge.data.collate import IGNORE_INDEX, SftCollator
from lmforge.data.examples import build_examples
from lmforge.data.packing import best_fit_decreasing, pack_examples
from lmforge.data.template import render
from tests.conftest import LF_DEMO

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


def test_best_fit_decreasing_places_every_example_once_within_capacity():
    lengths = [7, 3, 9, 1, 5, 5, 2, 8, 4, 6, 10, 1]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == -(-sum(lengths) // 10)  # this set packs perfectly
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([11], 10)


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    apply_template_choice(tok, "chatml")
    mp = pytest.MonkeyPatch()
    data = build_examples(DataArguments(dataset="identity", dataset_dir=str(LF_DEMO), cutoff_len=128, max_samples=12),
                          tok, seed=0)
    mp.undo()
    return tok, data.train.select_columns(["input_ids", "labels"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_the_unpacked_loss_of_the_same_examples(tiny_model_dir, examples, attn):
    tok, ds = examples
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # larger weights than the init, so that attending across examples would show
        for p in model.parameters():
            p.normal_(0, 0.3)
    collate = SftCollator(tok.pad_token_id or 0)
    rows = pack_examples(ds, 128)
    assert len(rows) < len(ds)
    assert sum(len(r) for r in rows["input_ids"]) == sum(len(x) for x in ds["input_ids"])  # nothing dropped
    with torch.no_grad():
        unpacked = model(**collate(list(ds))).loss
        packed_batch = collate(list(rows))
        packed = model(**packed_batch).loss
    assert packed.item() == pytest.approx(unpacked.item(), rel=1e-5)
    # and packing really changes the attention: without position ids the same rows give another loss
    with torch.no_grad():
        leaky = model(input_ids=packed_batch["input_ids"], labels=packed_batch["labels"]).loss
    assert abs(leaky.item() - unpacked.item()) > 5e-4  # 10x the tolerance above


def sft_args(model_dir, out, **extra) -> list[str]:
    args = {"stage": "sft", "model_name_or_path": model_dir, "template": "chatml", "dataset": "identity",
            "dataset_dir": str(LF_DEMO), "cutoff_len": 128, "output_dir": str(out), "per_device_train_batch_size": 4,
            "learning_rate": 5e-3, "max_steps": 6, "logging_steps": 2, "save_steps": 3, "report_to": "none",
            "disable_tqdm": True, "seed": 3}
    args.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]


def changed_parameters(before_dir, after_dir) -> set[str]:
    before = load_file(os.path.join(before_dir, "model.safetensors"))
    after = load_file(os.path.join(after_dir, "model.safetensors"))
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_full_sft_with_packing_and_prediction(tiny_model_dir, tmp_path):
    out = tmp_path / "full"
    assert main(["train", *sft_args(tiny_model_dir, out, packing=True, val_size=6, do_predict=True,
                                    predict_with_generate=True, max_new_tokens=4, do_sample=False)]) == 0
    assert "model.layers.0.self_attn.q_proj.weight" in changed_parameters(tiny_model_dir, out)
    predictions = [json.loads(line) for line in open(out / "generated_predictions.jsonl")]
    assert len(predictions) == 6 and set(predictions[0]) == {"prompt", "predict", "label"}
    assert predictions[0]["prompt"].endswith("<|im_start|>assistant\n")
    scores = json.load(open(out / "predict_results.json"))
    assert set(scores) == {"predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_bleu-4",
                           "predict_exact_match"}
    # generation stops at the template's end of turn
    config = json.load(open(out / "generation_config.json"))
    assert 2 in (config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]])


def test_freeze_trains_only_the_last_layers(tiny_model_dir, tmp_path):
    out = tmp_path / "freeze"
    assert main(["train", *sft_args(tiny_model_dir, out, finetuning_type="freeze", freeze_trainable_layers=1,
                                    freeze_trainable_modules="mlp")]) == 0
    changed = changed_parameters(tiny_model_dir, out)
    assert changed and all(k.startswith("model.layers.1.mlp.") for k in changed)


def test_lora_saves_a_peft_adapter_that_loads_and_resumes(tiny_model_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    args = sft_args(tiny_model_dir, out, finetuning_type="lora", lora_rank=4, lora_target="all", use_rslora=True,
                    loraplus_lr_ratio=4.0, neftune_noise_alpha=5.0)
    assert main(["train", *args]) == 0
    adapter = json.load(open(out / "adapter_config.json"))
    assert adapter["r"] == 4 and adapter["use_rslora"] and adapter["lora_alpha"] == 8
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} == {
        name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}
    assert not (out / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(out))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with model.disable_adapter():
            plain = model(ids).logits
        adapted = model(ids).logits
    assert not torch.allclose(plain, adapted)

    # resume from the step-3 checkpoint gives the same final adapter as the uninterrupted run
    final = load_file(str(out / "adapter_model.safetensors"))
    resumed_out = tmp_path / "lora-resumed"
    os.makedirs(resumed_out)
    import shutil

    shutil.copytree(out / "checkpoint-3", resumed_out / "checkpoint-3")
    resume_args = sft_args(tiny_model_dir, resumed_out, finetuning_type="lora", lora_rank=4, lora_target="all",
                           use_rslora=True, loraplus_lr_ratio=4.0, neftune_noise_alpha=5.0,
                           resume_from_checkpoint=True)
    assert main(["train", *resume_args]) == 0
    again = load_file(str(resumed_out / "adapter_model.safetensors"))
    assert final.keys() == again.keys()
    for key in final:
        assert torch.allclose(final[key], again[key], atol=1e-5), key


def test_quantization_without_bitsandbytes_or_gpu_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    code = main(["train", *sft_args(tiny_model_dir, tmp_path / "q", finetuning_type="lora", quantization_bit=4)])
    assert code == 2
    err = capsys.readouterr().err
    assert "quantization_bit" in err and ("bitsandbytes" in err or "CUDA" in err) and "Traceback" not in err
    if not torch.cuda.is_available():  # torchao's int4 kernel is CUDA's; its int8 runs here
        code = main(["train", *sft_args(tiny_model_dir, tmp_path / "q", finetuning_type="lora", quantization_bit=4,
                                        quantization_method="torchao")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert "int4 weight-only base ('quantization_bit: 4') runs on a CUDA GPU" in err or "pip install torchao" in err
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "q", quantization_method="torchao")]) == 2
    assert "quantizes the base only with 'quantization_bit'" in capsys.readouterr().err
    lora = {"finetuning_type": "lora"}
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "q", quantization_bit=3, **lora)]) == 2
    assert "'quantization_bit' must be 4 or 8 (or 1, 2, 3 with 'quantization_method: hqq'), got 3" in \
        capsys.readouterr().err
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "q", quantization_bit=5, quantization_method="hqq",
                                    **lora)]) == 2
    assert "'quantization_bit' must be 4 or 8 (or 1, 2, 3 with 'quantization_method: hqq'), got 5" in \
        capsys.readouterr().err


def test_an_hqq_base_without_its_package_is_a_clear_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "hqq" else real_find_spec(name, *rest))
    args = sft_args(tiny_model_dir, tmp_path / "q", finetuning_type="lora", quantization_bit=2,
                    quantization_method="hqq")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "'quantization_method: hqq' needs the hqq package: pip install hqq" in err and "Traceback" not in err


# (quantization_method, quantization_bit, the class holding a quantized weight, how close the losses and the logits
# stay to those over the unquantized base; measured, losses at every step and logits: torchao int8 0.003 and 0.004,
# HQQ 4-bit 0.012 and 0.021)
LOW_BIT_BASES = {"torchao": (8, "Int8Tensor", 0.02, 0.05), "hqq": (4, "HQQLinear", 0.03, 0.06)}


@pytest.mark.slow
@pytest.mark.parametrize("method", LOW_BIT_BASES)
def test_qlora_over_a_low_bit_base_trains_on_the_cpu(method, real_model, tmp_path, capsys):
    """LoRA over a base whose linear weights torchao holds in int8 or HQQ in 4 bits (peft's torchao and HQQ LoRA
    layers): the loss falls step by step as it does over the unquantized base, the adapter covers every linear
    layer and, on the unquantized base, gives the trained model's logits closely."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from lmforge.config.model import ModelArguments
    from lmforge.model.build import build_model
    from lmforge.runlog import read_log

    bits, quantized_class, loss_tolerance, logits_tolerance = LOW_BIT_BASES[method]
    if importlib.util.find_spec(method) is None and not os.environ.get("CI"):
        pytest.skip(f"{method} is not installed (the dev extra installs it)")
    model_dir = real_model("qwen3")  # the published tokenizer, chat template and config, tiny random weights

    out, plain_out = tmp_path / "low-bit", tmp_path / "bf16"
    lora = {"finetuning_type": "lora", "lora_target": "all", "learning_rate": 2e-2, "max_steps": 10,
            "logging_steps": 1, "save_steps": 10}
    assert main(["train", *sft_args(model_dir, plain_out, **lora)]) == 0
    capsys.readouterr()
    assert main(["train", *sft_args(model_dir, out, quantization_bit=bits, quantization_method=method,
                                    **lora)]) == 0
    err = capsys.readouterr().err
    assert f"({bits}-bit, {method})" in err and "Failed to load" not in err  # import notices are quieted
    losses, plain_losses = ([r["loss"] for r in read_log(str(d)) if "loss" in r] for d in (out, plain_out))
    assert losses[-1] < losses[0] - 0.15, losses
    assert losses == pytest.approx(plain_losses, abs=loss_tolerance), (losses, plain_losses)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert {k.split(".")[-3] for k in adapter if "lora_A" in k} >= {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                   "gate_proj", "up_proj", "down_proj"}
    tokenizer = AutoTokenizer.from_pretrained(out)
    quantized = build_model(ModelArguments(model_name_or_path=model_dir, quantization_bit=bits,
                                           quantization_method=method), tokenizer)
    ids = torch.tensor([tokenizer("Who are you?")["input_ids"]])
    with torch.no_grad():
        trained = PeftModel.from_pretrained(quantized, out)(input_ids=ids).logits
        unquantized = AutoModelForCausalLM.from_pretrained(model_dir)
        plain = PeftModel.from_pretrained(unquantized, out)(input_ids=ids).logits
    layer = quantized.model.layers[0].mlp.up_proj.base_layer
    assert quantized_class in (type(layer).__name__, type(getattr(layer, "weight", None)).__name__)
    torch.testing.assert_close(plain, trained, atol=logits_tolerance, rtol=logits_tolerance)  # the base's rounding


@pytest.mark.slow
def test_fp8_training_follows_the_bf16_run(real_model, tmp_path, capsys):
    """`fp8: true` on the CPU (torch emulates the float8 matmuls): the decoder's linears compute in float8, the loss
    falls as the bf16 run's does (measured: within 0.001 at every step, 0.17 in 8 steps), and the saved model is a
    plain checkpoint with the base's tensor names that loads back."""
    from lmforge.runlog import read_log

    model_dir = real_model("qwen3")
    full = {"bf16": True, "learning_rate": 1e-3, "max_steps": 8, "logging_steps": 1, "save_steps": 8}
    assert main(["train", *sft_args(model_dir, tmp_path / "bf16", **full)]) == 0
    capsys.readouterr()
    assert main(["train", *sft_args(model_dir, tmp_path / "fp8", fp8=True, **full)]) == 0
    err = capsys.readouterr().err
    assert "fp8: 14 linear layers of the decoder compute in float8" in err  # 7 per layer, 2 layers
    losses, plain = ([r["loss"] for r in read_log(str(tmp_path / d)) if "loss" in r] for d in ("fp8", "bf16"))
    assert losses[-1] < losses[0] - 0.1, losses
    assert losses == pytest.approx(plain, abs=0.01), (losses, plain)
    saved = load_file(str(tmp_path / "fp8" / "model.safetensors"))
    assert saved.keys() == load_file(os.path.join(model_dir, "model.safetensors")).keys()
    AutoModelForCausalLM.from_pretrained(tmp_path / "fp8")


@pytest.mark.parametrize("extra, message", [
    ({"finetuning_type": "lora"}, "a LoRA run's base is frozen: quantize it with 'quantization_bit' instead"),
    ({}, "'fp8: true' runs its float8 matmuls inside bf16 mixed precision: set 'bf16: true'"),
])
def test_fp8_that_cannot_run_is_a_config_error(extra, message, tiny_model_dir, tmp_path, capsys):
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "x", fp8=True, **extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_fp8_on_a_gpu_without_float8_tensor_cores_names_it(monkeypatch):
    from lmforge.device import planning_for_gpus
    from lmforge.errors import ConfigError
    from lmforge.model.fp8 import check_fp8_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"float8 tensor cores .*this NVIDIA A100-SXM4-80GB is 8\.0"):
        check_fp8_device()
    with planning_for_gpus():  # `lmforge plan --gpus H100` made on this A100: it answers for the H100s
        check_fp8_device()


def test_data_dump_and_preview_show_what_is_trained(tiny_model_dir, tmp_path, capsys):
    dump = tmp_path / "dump.jsonl"
    base = sft_args(tiny_model_dir, tmp_path / "unused", dataset="alpaca_en_demo,identity", max_samples=5,
                    val_size=2)
    assert main(["data", "dump", *base, "--output", str(dump)]) == 0
    rows = [json.loads(line) for line in open(dump)]
    assert len(rows) == 10 and {r["split"] for r in rows} == {"train", "eval"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_template_choice(tok, "chatml")
    records = json.load(open(LF_DEMO / "identity.json"))
    for row in rows:
        if row["source"] != "identity":
            continue
        assert len(row["input_ids"]) == len(row["labels"])
        record = records[row["record"]]
        messages = [{"role": "user", "content": record["instruction"]},
                    {"role": "assistant", "content": record["output"]}]
        assert tok.decode(row["input_ids"], skip_special_tokens=False) == render(tok, messages)
        trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True)
                              if lab != IGNORE_INDEX], skip_special_tokens=False)
        assert trained.strip() == record["output"] + "<|im_end|>"

    capsys.readouterr()
    assert main(["data", "preview", *base, "--num", "1"]) == 0
    shown = capsys.readouterr().out
    assert "── example 0" in shown and "⟦" in shown and "packing_efficiency" in shown
    assert "length_p95" in shown and "truncated" in shown and "skipped" in shown

    # --json (what the web UI's preview panel reads): the same example as segments, exactly the trained text
    assert main(["data", "preview", *base, "--num", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    first, dumped = summary["examples"][0], rows[0]  # the dump's first row is example 0 of the train split
    assert (first["source"], first["record"], first["tokens"]) == (dumped["source"], dumped["record"],
                                                                  len(dumped["input_ids"]))
    assert first["trained_tokens"] == sum(label != IGNORE_INDEX for label in dumped["labels"])
    trained = "".join(text for kind, text in first["segments"] if kind == "trained")
    assert trained == tok.decode([t for t, lab in zip(dumped["input_ids"], dumped["labels"], strict=True)
                                  if lab != IGNORE_INDEX], skip_special_tokens=False)
    assert "".join(text for _, text in first["segments"]) == tok.decode(dumped["input_ids"], skip_special_tokens=False)
    assert {kind for kind, _ in first["segments"]} == {"trained", "context"}
    assert len(summary["examples"]) == 2 and summary["stats"]["examples"] == 8
    assert 0 < summary["stats"]["packing_efficiency"] <= 1


def test_sft_quickstart_data_is_learned(tiny_model_dir, tmp_path):
    from lmforge.runlog import read_log

    out = tmp_path / "quick"
    args = sft_args(tiny_model_dir, out, dataset="lmforge_sft_quickstart", dataset_dir=str(tmp_path), max_samples=800,
                    packing=True, max_steps=60, learning_rate=1e-2, per_device_train_batch_size=8, logging_steps=10,
                    val_size=50, eval_strategy="steps", eval_steps=30)
    assert main(["train", *args]) == 0
    log = read_log(str(out))
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [r["eval_loss"] for r in log if "eval_loss" in r]
    # measured: the mean loss of steps 1-10 is 4.85 and of steps 51-60 2.22 (a 2.6 drop); the held-out loss ends at
    # 2.03, from ln(384) = 5.95 for the random model. Both bars are half of that
    assert losses[-1] < losses[0] - 1.3
    assert evals[-1] < 4.0


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bf16")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to(torch.bfloat16).save_pretrained(path)
    for name in os.listdir(tiny_model_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(tiny_model_dir, name), path)
    return str(path)


def _changed_large_weights(before_dir, after_dir) -> float:
    """Of the decoder layers' matrix weights of magnitude >= 2^-6 (where one Adam step at lr 5e-5 is below half a bf16
    step), the fraction the run changed (the layers: what both full and freeze fine-tuning train)."""
    before = load_file(os.path.join(before_dir, "model.safetensors"))
    after = load_file(os.path.join(after_dir, "model.safetensors"))
    changed = total = 0
    for name, weight in before.items():
        if weight.dim() == 2 and ".layers." in name:
            large = weight.float().abs() >= 2 ** -6
            changed += int((weight.float() != after[name].float())[large].sum())
            total += int(large.sum())
    return changed / total


@pytest.mark.slow
@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_a_bf16_checkpoint_trains_float32_master_weights_and_saves_bf16(bf16_model_dir, tmp_path, finetuning_type):
    """Updates smaller than half a bf16 step accumulate in float32 masters (20 steps at lr 5e-5 move most weights
    of magnitude >= 2^-6); pure bf16 training loses them. The output is saved in the checkpoint's dtype."""
    common = {"learning_rate": 5e-5, "max_steps": 20, "lr_scheduler_type": "constant", "save_steps": 100,
              "bf16": True, "finetuning_type": finetuning_type, "freeze_trainable_layers": 2}
    out = tmp_path / "masters"
    assert main(["train", *sft_args(bf16_model_dir, out, **common)]) == 0
    saved = load_file(os.path.join(out, "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.load(open(out / "config.json"))["dtype"] == "bfloat16"
    masters = _changed_large_weights(bf16_model_dir, out)
    assert masters > 0.45  # measured 0.95 for both (counted over every matrix, freeze's frozen head gave 0.57)
    pure = tmp_path / "pure"
    assert main(["train", *sft_args(bf16_model_dir, pure, pure_bf16=True, **common)]) == 0
    assert _changed_large_weights(bf16_model_dir, pure) < masters / 5
    float32 = tmp_path / "float32"
    assert main(["train", *sft_args(bf16_model_dir, float32, save_dtype="float32", **common)]) == 0
    assert {t.dtype for t in load_file(os.path.join(float32, "model.safetensors")).values()} == {torch.float32}
