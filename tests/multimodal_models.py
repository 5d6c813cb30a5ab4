"""Tiny random vision-language models built from configs (no hub), with their processors' PIL image backends and
the published chat templates of LLaVA-1.5 and Gemma 3: what the multimodal tests train and compare against."""

from __future__ import annotations

from lmforge.model.tokenizer import train_bpe_tokenizer

# llava-hf/llava-1.5-7b-hf chat_template.json: content parts only (the assistant's too), no end-of-turn token
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

# google/gemma-3-4b-it processor chat template: BOS, system folded into the first user turn, `trim`med texts
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")


def _text_config(cls, vocab: int, **extra):
    # initialised wide (std 0.3, as the chat fixtures): at width 32 and std 0.02 the logits leave LoRA no room
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=1024, initializer_range=0.3,
               **extra)


def _build_llava_family(out: str, texts: list[str], crop: int, processor_cls, image_processor, config_cls, model_cls,
                        **config_extra) -> str:
    """A LLaVA-family model: CLIP tower with `crop`-pixel images in 14 px patches, Llama language model, the
    LLaVA-1.5 template; its processor counts the CLS token the "default" feature strategy drops."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig

    tokenizer = train_bpe_tokenizer(texts, 600, ["</s>", "<s>", "<image>"])
    tokenizer.bos_token = "<s>"
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_15_TEMPLATE)
    config = config_cls(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=crop, patch_size=14, projection_dim=32),
        text_config=_text_config(LlamaConfig, len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, **config_extra)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llava(out: str, texts: list[str]) -> str:
    """LLaVA-1.5-style: 28 px images, 4 tokens per image."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    return _build_llava_family(
        out, texts, 28, LlavaProcessor,
        LlavaImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        LlavaConfig, LlavaForConditionalGeneration)


def build_gemma3(out: str, texts: list[str]) -> str:
    """Gemma-3-style: SigLIP vision tower pooled to 4 tokens per image between <start_of_image>/<end_of_image>,
    token_type_ids marking them, Gemma 3 language model."""
    import torch
    from transformers import (
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    base = train_bpe_tokenizer(texts, 600, specials)
    base.pad_token, base.eos_token, base.bos_token = "<pad>", "<eos>", "<bos>"
    base.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out, extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                                tokenizer=tokenizer, chat_template=GEMMA3_TEMPLATE, image_seq_length=4)
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=28, patch_size=7),
        text_config=_text_config(Gemma3TextConfig, len(tokenizer), head_dim=16, sliding_window=64),
        mm_tokens_per_image=4, boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"), image_token_index=tokenizer.image_token_id)
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_qwen2_vl_image_only(out: str) -> str:
    """The GPU check's tiny Qwen2-VL (3D rope) with Qwen2-VL's processor minus its video half: the shipped video
    processor needs torchvision, which cannot load beside this machine's CPU torch; the image half has a PIL backend.
    The processor class is registered for Qwen2-VL configs in this process (AutoProcessor loads it)."""
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    from lmforge.bench.vlm_check import TEMPLATE, qwen2_vl_tokenizer, save_qwen2_vl

    class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageProcessorOnly, exist_ok=True)
    processor = Qwen2VLImageProcessorOnly(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=qwen2_vl_tokenizer(), chat_template=TEMPLATE)
    return save_qwen2_vl(out, processor)


def build_llava_next(out: str, texts: list[str]) -> str:
    """LLaVA-NeXT-style: "anyres" images (a base view plus tiles on a grid of pinpoints, so the number of image
    tokens depends on each image's shape, and the model needs `image_sizes`)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112]]
    return _build_llava_family(
        out, texts, 56, LlavaNextProcessor,
        LlavaNextImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                                   image_grid_pinpoints=pinpoints),
        LlavaNextConfig, LlavaNextForConditionalGeneration, image_grid_pinpoints=pinpoints)
