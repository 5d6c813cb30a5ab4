"""Which model and tokenizer a run starts from, or how to build them from scratch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config.fields import option


@dataclass
class ModelArguments:
    model_name_or_path: str | None = option(
        None,
        "A local Hugging Face model directory or a hub id. With `from_scratch: true` only its config (architecture) "
        "is used and the weights are initialised randomly.",
    )
    from_scratch: bool = option(
        False, "Build a randomly initialised model from `model_type` (or `model_name_or_path`'s config) + overrides."
    )
    model_type: str | None = option(
        None, "Named architecture for a model built from scratch, e.g. `qwen2`, `llama`, `mistral`, `gpt2`."
    )
    config_overrides: dict[str, Any] = option(
        default_factory=dict,
        help="Architecture fields to change on the base config, e.g. `{hidden_size: 256, num_hidden_layers: 4}`. "
        "Every key must be a field of that architecture's config.",
    )
    tokenizer_name_or_path: str | None = option(
        None, "Tokenizer directory or hub id; defaults to `model_name_or_path`."
    )
    train_tokenizer: bool = option(
        False, "Train a byte-level BPE tokenizer on the training corpus (needs `from_scratch: true`)."
    )
    tokenizer_vocab_size: int = option(8192, "Vocabulary size of a trained tokenizer, special tokens included.")
    tokenizer_special_tokens: list[str] = option(
        default_factory=lambda: ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        help="Special tokens of a trained tokenizer; the first is used as EOS and pad token.",
    )
    tokenizer_max_samples: int | None = option(
        None, "Train the tokenizer on at most this many documents (all of the training split when unset)."
    )
    adapter_name_or_path: str | None = option(
        None, "A saved LoRA adapter (PEFT directory). Training with `finetuning_type: lora` continues it instead of "
        "adding new adapters; eval, chat, api and export load it on top of `model_name_or_path` (merged).")
    infer_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "eval/chat/api: the dtype the weights are loaded in; export: the dtype they are saved in (`auto`: as "
        "saved in the checkpoint).")
    trust_remote_code: bool = option(False, "Allow model/tokenizer code from the model repository to run.")
    attn_implementation: str | None = option(
        None, "Attention kernel: `sdpa`, `eager`, `flash_attention_2`, ... (transformers' default when unset)."
    )
    quantization_bit: int | None = option(
        None, "Load the base model quantized to this many bits by `quantization_method` (4 or 8; HQQ also 1, 2 or "
        "3) and train LoRA adapters over it (QLoRA; needs `finetuning_type: lora`).")
    quantization_method: Literal["bitsandbytes", "torchao", "hqq"] = option(
        "bitsandbytes", "What quantizes the base for `quantization_bit`: `bitsandbytes` (4-bit NF4 with double "
        "quantization or LLM.int8; a CUDA GPU), `torchao` (weight-only int8, which runs on the CPU too, or int4 "
        "in groups of 128 on a CUDA GPU; `pip install torchao`) or `hqq` (HQQ, 1 to 8 bits in groups of 64 with no "
        "calibration data, the CPU too; `pip install hqq`).")
    rope_scaling: dict[str, Any] | None = option(
        None, "Extend the context of a pretrained (or new) model `factor` times by RoPE scaling, e.g. `{rope_type: "
        "yarn, factor: 4.0}`: linear, dynamic, yarn, longrope or llama3, as transformers implements them for the "
        "architecture. `original_max_position_embeddings` defaults to the model's context and its rope base "
        "(`rope_theta`) is kept; a checkpoint already scaled the same way multiplies its factor and keeps its "
        "original context; another type than the checkpoint's needs `original_max_position_embeddings` (it "
        "re-encodes every position). Saved with the model, so chat, api, eval and export use the longer context.")
    max_position_embeddings: int | None = option(
        None, "The context, in tokens, the model is trained and served for (default with `rope_scaling`: the "
        "model's context x `factor`).")
    router_aux_loss_coef: float | None = option(
        None, "Mixtures of experts: the weight of the router's load-balancing loss (the model's own) added to the "
        "training loss in every stage (pt, sft, dpo, kto, kd, ppo, grpo); 0 turns it off. Unset: as the checkpoint's "
        "config says (`output_router_logits` and its coefficient). An error for a model without one.")
    cache_dir: str | None = option(None, "Where downloaded hub models are stored.")
    hub: Literal["huggingface", "modelscope"] = option(
        "huggingface", "Where hub ids are fetched from: the Hugging Face hub (or the mirror `hf_endpoint`), or "
        "ModelScope (also `$USE_MODELSCOPE_HUB=1`; `pip install modelscope`): model, tokenizer, adapter, `ref_model`, "
        "`reward_model` and registry entries with `ms_hub_url`; ModelScope's local cache is used when it holds them.")
    hf_endpoint: str | None = option(
        None, "A Hugging Face hub mirror for every hub call, models and datasets (e.g. https://hf-mirror.com; "
        "default `$HF_ENDPOINT`).")
    model_revision: str = option("main", "Hub branch, tag or commit of the model.")
