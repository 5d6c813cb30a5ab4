"""The GPU check's vision-language part (`lmforge bench --suite gpu`, check `vlm`): a tiny Qwen2-VL built from a
config, no hub, no network. Qwen2-VL is the family whose processor needs torchvision (absent on the CPU machines
the test suite runs on) and whose positions are 3D (rope over time, height and width), so it is checked here:

- lmforge's encoded ids for image conversations equal `processor.apply_chat_template(..., tokenize=True)`, every
  trained token is the assistant's, no image token is trained;
- `lmforge train` (LoRA SFT, 12 steps) lowers the loss;
- the serving engine answers a request with an image exactly as transformers' greedy `generate` does.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
# Qwen2-VL's published chat template (image and video parts; text parts; a default system prompt)
TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")


def qwen2_vl_tokenizer() -> Any:
    from lmforge.model.tokenizer import train_bpe_tokenizer
    from lmforge.resources import quickstart_corpus

    return train_bpe_tokenizer(quickstart_corpus.generate()[:2000], 1024, SPECIALS)


def save_qwen2_vl(out: str, processor: Any) -> str:
    """A tiny random Qwen2-VL (2 layers of width 64, mrope over 3 axes, a 2-block vision tower) saved with
    `processor` (whose tokenizer has SPECIALS)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = processor.tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "initializer_range": 0.3,
                     "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_qwen2_vl(out: str) -> str:
    """The tiny Qwen2-VL with Qwen2-VL's own processor (images 56x56 to 112x112 pixels)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    sizes = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes),
                                 video_processor=Qwen2VLVideoProcessor(**sizes), tokenizer=qwen2_vl_tokenizer(),
                                 chat_template=TEMPLATE)
    return save_qwen2_vl(out, processor)


def _pictures(folder: str) -> list[str]:
    """Three small pictures drawn here (the check carries no data)."""
    from PIL import Image, ImageDraw

    paths = []
    for i, (size, colour) in enumerate([((96, 64), "red"), ((64, 96), "blue"), ((80, 80), "green")]):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).ellipse([8, 8, size[0] - 8, size[1] - 8], fill=colour)
        paths.append(os.path.join(folder, f"{i}.png"))
        image.save(paths[-1])
    return paths


def _clip(folder: str) -> str:
    """A 2-second clip (8 fps) of a red circle moving right, written with PyAV."""
    import av
    import numpy as np
    from PIL import Image, ImageDraw

    path = os.path.join(folder, "clip.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(16):
            image = Image.new("RGB", (96, 64), "white")
            ImageDraw.Draw(image).ellipse([4 + 4 * i, 20, 24 + 4 * i, 40], fill="red")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_vlm_check(work: str, cuda: bool, model_dir: str | None = None) -> dict[str, Any]:
    """The checks of the module docstring on `model_dir` (default: `build_qwen2_vl`), files under `work`."""
    from lmforge.config import load_config
    from lmforge.config.data import DataArguments
    from lmforge.config.model import ModelArguments
    from lmforge.data.collate import IGNORE_INDEX
    from lmforge.data.examples import build_examples
    from lmforge.data.multimodal import MediaOptions, as_parts, media_token_ids
    from lmforge.model.multimodal import load_processor
    from lmforge.train import stage_runner

    os.makedirs(work, exist_ok=True)
    model_dir = model_dir or build_qwen2_vl(os.path.join(work, "model"))
    pictures = _pictures(work)
    colours = ["red", "blue", "green"]
    records = [{"messages": [{"role": "user", "content": f"<image>What colour is the circle? ({i})"},
                             {"role": "assistant", "content": f"It is {colours[i % 3]}."}],
                "images": [pictures[i % 3]]} for i in range(24)]
    processor = load_processor(ModelArguments(model_name_or_path=model_dir))
    with_video = getattr(processor, "video_processor", None) is not None and importlib.util.find_spec("av")
    if with_video:  # a clip of the circle moving, asked about in a few records
        clip = _clip(work)
        records += [{"messages": [{"role": "user", "content": f"<video>Where does the circle go? ({i})"},
                                  {"role": "assistant", "content": "To the right."}], "videos": [clip]}
                    for i in range(8)]
    data = os.path.join(work, "vlm.jsonl")
    with open(data, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    options = MediaOptions()
    encoded = build_examples(DataArguments(dataset=data, cutoff_len=1024), processor.tokenizer, 0, "sft",
                             processor).train
    never = media_token_ids(processor)
    mismatched = 0
    for row, record in zip(encoded, records, strict=True):
        images = [options.image(p) for p in record.get("images", [])]
        videos = [options.video(p) for p in record.get("videos", [])]
        text = processor.apply_chat_template(as_parts(record["messages"]), tokenize=False)
        expected = processor(text=[text], images=images or None, **({"videos": videos} if videos else {}))
        mismatched += list(expected["input_ids"][0]) != row["input_ids"]
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
        if any(t in never for t in trained) or processor.tokenizer.decode(trained) != \
                record["messages"][1]["content"] + "<|im_end|>":
            raise AssertionError(f"record {records.index(record)}: trained {processor.tokenizer.decode(trained)!r}")
    if mismatched:
        raise AssertionError(f"{mismatched} of {len(records)} examples differ from processor.apply_chat_template")
    out = os.path.join(work, "lora")
    args = {"stage": "sft", "model_name_or_path": model_dir, "dataset": data, "cutoff_len": 1024,
            "finetuning_type": "lora", "output_dir": out, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
            "max_steps": 12, "logging_steps": 4, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "bf16": cuda}
    stage_runner("sft")(load_config(None, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                           for k, v in args.items()]))
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(out, "trainer_log.jsonl"))) if "loss" in r]
    if not losses[-1] < losses[0]:
        raise AssertionError(f"LoRA SFT did not lower the loss: {losses}")
    return {"examples": len(encoded), "videos": bool(with_video) or "skipped: no video processor or no PyAV",
            "ids_equal_processor": True, "losses": [round(x, 3) for x in losses],
            "serve_equals_generate": _serve_equals_generate(model_dir, pictures[0], cuda)}


@torch.no_grad()
def _serve_equals_generate(model_dir: str, picture: str, cuda: bool) -> bool:
    from transformers import AutoModelForImageTextToText

    from lmforge.config.model import ModelArguments
    from lmforge.data.multimodal import MediaOptions, prompt_inputs
    from lmforge.data.template import stop_token_ids
    from lmforge.model.multimodal import load_processor
    from lmforge.model.sampling import SamplingParams
    from lmforge.serve.engine import Engine

    device = torch.device("cuda" if cuda else "cpu")
    processor = load_processor(ModelArguments(model_name_or_path=model_dir))
    model = AutoModelForImageTextToText.from_pretrained(model_dir).to(device).eval()
    image = MediaOptions().image(picture)
    messages = [{"role": "user", "content": "<image>What colour is the circle?"}]
    ids, inputs = prompt_inputs(processor, messages, [image])
    stops = stop_token_ids(processor.tokenizer)
    generated = model.generate(input_ids=torch.tensor([ids], device=device),
                               **{k: v.to(device) for k, v in inputs.items()}, max_new_tokens=8, do_sample=False,
                               eos_token_id=stops)
    expected = processor.tokenizer.decode(generated[0, len(ids):], skip_special_tokens=True)
    engine = Engine(model, processor.tokenizer, stops, processor=processor)
    try:
        served = "".join(engine.stream(ids, SamplingParams(max_tokens=8, temperature=0), media=inputs))
    finally:
        engine.close()
    if served != expected:
        raise AssertionError(f"served {served!r} but generate gives {expected!r}")
    return True
