"""Vision-language training end to end on tiny random LLaVA- and Gemma-3-style models: LoRA SFT lowers the loss and
its adapter loads with PEFT on AutoModelForImageTextToText, the vision tower stays frozen by default, DPO with images
raises the held-out margin."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from lmforge.cli import main
from lmforge.config.model import ModelArguments
from lmforge.data.collate import PairCollator
from lmforge.data.examples import build_examples
from lmforge.data.multimodal import MediaOptions, MultimodalCollator, per_token_outputs
from lmforge.model.multimodal import load_processor
from lmforge.train.losses import sequence_logps
from tests.conftest import LF_DEMO, write_jsonl
from tests.data.conftest import data_args

pytestmark = pytest.mark.slow  # training runs

IMAGES = LF_DEMO / "mllm_demo_data"


def train_args(model_dir: str, out, **extra) -> list[str]:
    args = {"stage": "sft", "model_name_or_path": model_dir, "dataset": "mllm_demo", "dataset_dir": str(LF_DEMO),
            "cutoff_len": 512, "output_dir": str(out), "per_device_train_batch_size": 2, "learning_rate": 1e-2,
            "max_steps": 20, "logging_steps": 5, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "seed": 0}
    args.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(out / "trainer_log.jsonl")) if "loss" in r]


@pytest.fixture(scope="module")
def lora_run(llava_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm-lora") / "lora"
    assert main(["train", *train_args(llava_dir, out, finetuning_type="lora", lora_rank=8)]) == 0
    return out


def test_lora_sft_lowers_the_loss_and_the_adapter_loads_with_peft(llava_dir, lora_run):
    from peft import PeftModel

    out = lora_run
    curve = losses(out)
    assert curve[-1] < curve[0] - 0.5, curve
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(".language_model." in key for key in adapter), sorted(adapter)[:3]
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(llava_dir), str(out)).eval()
    processor = AutoProcessor.from_pretrained(out)  # saved beside the adapter
    examples = build_examples(data_args(dataset="mllm_demo", cutoff_len=512), processor.tokenizer, 0, "sft",
                              load_processor(ModelArguments(model_name_or_path=str(out)))).train
    collate = MultimodalCollator(lambda f: _sft_batch(f, processor), processor, MediaOptions())
    with torch.no_grad():
        loss = model(**collate([examples[i] for i in range(4)])).loss.item()
    assert loss < curve[0] - 0.5


def _sft_batch(features, processor):
    from lmforge.data.collate import SftCollator

    return SftCollator(processor.tokenizer.pad_token_id)(features)


def test_full_sft_keeps_the_vision_tower_frozen_by_default(gemma3_dir, tmp_path):
    out = tmp_path / "full"
    assert main(["train", *train_args(gemma3_dir, out, max_steps=5, freeze_multi_modal_projector=False)]) == 0
    before = AutoModelForImageTextToText.from_pretrained(gemma3_dir).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(".vision_tower." in k for k in changed)
    assert any(".multi_modal_projector." in k for k in changed)
    assert any(".language_model." in k for k in changed)
    assert AutoProcessor.from_pretrained(out).image_seq_length == 4


def _pairs(questions: list[str]) -> list[dict]:
    images = sorted(str(p) for p in IMAGES.glob("*.jpg"))
    return [{"messages": [{"role": "user", "content": f"<image>{q}"}],
             "chosen": {"role": "assistant", "content": "Football players celebrating."},
             "rejected": {"role": "assistant", "content": "A bowl of soup."},
             "images": [images[i % len(images)]]} for i, q in enumerate(questions)]


@torch.no_grad()
def mean_margin(model_dir: str, processor, rows) -> float:
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    collate = MultimodalCollator(PairCollator(processor.tokenizer.pad_token_id), processor, MediaOptions(),
                                 tuple(per_token_outputs(processor)))
    batch = collate(list(rows))
    labels = batch.pop("labels")
    sums, _ = sequence_logps(model(**batch).logits, labels)
    chosen, rejected = sums.chunk(2)
    return (chosen - rejected).mean().item()


def test_dpo_with_images_raises_the_held_out_margin(llava_dir, tmp_path):
    train = write_jsonl(tmp_path / "pairs.jsonl", _pairs([f"What do you see? ({i})" for i in range(24)]))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", _pairs(["Describe the picture.", "What is happening here?",
                                                                  "Tell me about this image."]))
    out = tmp_path / "dpo"
    assert main(["train", *train_args(llava_dir, out, stage="dpo", dataset=str(train), max_steps=15,
                                      learning_rate=5e-3, pref_beta=0.1)]) == 0
    processor = load_processor(ModelArguments(model_name_or_path=llava_dir))
    rows = build_examples(data_args(dataset=str(held_out), cutoff_len=512), processor.tokenizer, 0, "pair",
                          processor).train
    before, after = mean_margin(llava_dir, processor, rows), mean_margin(str(out), processor, rows)
    assert after > before + 1.0, (before, after)


def test_export_merges_the_adapter_into_the_vlm_and_saves_the_processor(llava_dir, lora_run, tmp_path):
    from peft import PeftModel

    export = tmp_path / "export"
    assert main(["export", f"model_name_or_path={llava_dir}", f"adapter_name_or_path={lora_run}",
                 f"export_dir={export}"]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(export).eval()
    reference = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(llava_dir), str(lora_run))
    reference = reference.merge_and_unload().eval()
    processor = AutoProcessor.from_pretrained(export)
    assert type(processor).__name__ == "LlavaProcessor" and processor.chat_template
    example = build_examples(data_args(dataset="mllm_demo", cutoff_len=512), processor.tokenizer, 0, "sft",
                             load_processor(ModelArguments(model_name_or_path=str(export)))).train[0]
    batch = MultimodalCollator(lambda f: _sft_batch(f, processor), processor, MediaOptions())([example])
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, reference(**batch).logits, atol=1e-5)
    assert main(["export", f"model_name_or_path={llava_dir}", f"adapter_name_or_path={lora_run}",
                 f"export_dir={tmp_path / 'gguf'}", "export_gguf=true"]) == 2
    assert not (tmp_path / "gguf").exists()


def test_eval_generate_answers_image_prompts(llava_dir, tmp_path):
    from lmforge.data import media
    from lmforge.data.template import stop_token_ids

    out = tmp_path / "eval"
    assert main(["eval", f"model_name_or_path={llava_dir}", "task=generate", "dataset=mllm_demo",
                 f"dataset_dir={LF_DEMO}", "max_new_tokens=6", "do_sample=false", f"output_dir={out}"]) == 0
    predictions = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert len(predictions) == 6 and predictions[1]["label"] == "Because he's sliding on his knees to celebrate."
    # the answer to record 1 is transformers' own greedy answer for its prompt and picture
    processor = AutoProcessor.from_pretrained(llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()
    image = media.load_image(str(IMAGES / "2.jpg"), 768 * 768, 32 * 32)
    prompt = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Who is he?"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "He's Thomas Muller from Bayern Munich."}]},
              {"role": "user", "content": [{"type": "text", "text": "Why is he on the ground?"}]}]
    inputs = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=stop_token_ids(
            processor.tokenizer))
    assert predictions[1]["predict"] == processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:],
                                                                    skip_special_tokens=True)


def test_the_gpu_checks_qwen2_vl_part_runs_here_with_an_image_only_processor(tmp_path):
    """Qwen2-VL (3D rope positions, mm_token_type_ids stored beside the ids): ids equal the processor's, LoRA SFT
    lowers the loss, the engine's answer to an image request equals generate's: the `vlm` check of the GPU suite."""
    from lmforge.bench.vlm_check import run_vlm_check
    from tests.multimodal_models import build_qwen2_vl_image_only

    model_dir = build_qwen2_vl_image_only(str(tmp_path / "qwen2vl"))
    result = run_vlm_check(str(tmp_path / "work"), cuda=False, model_dir=model_dir)
    assert result["ids_equal_processor"] and result["serve_equals_generate"]
    assert result["losses"][-1] < result["losses"][0]


def test_llava_next_anyres_images_train(llava_next_dir, tmp_path):
    """Images of different shapes get different numbers of tokens and tiles; the collator hands the model each
    image's size (`image_sizes`) the way the processor batches them."""
    out = tmp_path / "next"
    assert main(["train", *train_args(llava_next_dir, out, max_steps=10, freeze_vision_tower=False)]) == 0
    curve = losses(out)
    assert curve[-1] < curve[0] - 0.5, curve
