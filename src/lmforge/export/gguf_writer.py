"""A GGUF file (llama.cpp, Ollama) from a merged Llama-, Mistral-, Qwen2- or Qwen3-family model, through the `gguf`
package.

Follows llama.cpp's convert_hf_to_gguf.py for these architectures: its tensor names (gguf's TensorNameMap), its
metadata keys, Llama's q/k rows permuted for GGML's rotary layout, Llama 3's rope scaling as a `rope_freqs` tensor,
the vocabulary padded to the embedding rows, and norms and biases kept in f32. Only byte-level BPE tokenizers
(GPT-2, Llama 3, Qwen2 style) are written.
"""

from __future__ import annotations

import json
import logging

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
                 "qwen3": gguf.MODEL_ARCH.QWEN3}
TENSOR_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _rope_scaling(config) -> dict:
    scaling = dict(getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear", "llama3", "yarn"):
        raise ConfigError(f"Config error: GGUF export does not write rope scaling of type '{kind}'; export the "
                          "safetensors and convert them with llama.cpp's convert_hf_to_gguf.py.")
    return scaling if kind != "default" else {}


def llama3_rope_factors(config, head_dim: int) -> np.ndarray:
    """Llama 3.1+'s rope scaling as llama.cpp takes it: a divisor per rotary frequency (the `rope_freqs` tensor):
    1 for short wavelengths, `factor` for long ones, and a smooth blend between `original_max_position_embeddings`
    / high_freq_factor and / low_freq_factor (transformers' `_compute_llama3_parameters`)."""
    scaling = _rope_scaling(config)
    base, factor = _rope_theta(config), float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelengths = 2 * np.pi / freqs
    smooth = (old_context / wavelengths - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelengths < old_context / high, 1.0, np.where(wavelengths > old_context / low, factor,
                                                                            blended))
    return factors.astype(np.float32)


# The split patterns of the pre-tokenizers llama.cpp knows by name (it identifies the rest by a hash of their output).
_SPLIT_PATTERNS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
             r"\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+",
}


def tokenizer_pre(tokenizer: PreTrainedTokenizerBase) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (how text is split before BPE)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder") or {}):
        raise ConfigError("Config error: GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 style); "
                          f"this tokenizer is {model.get('type')}. Export the safetensors and convert them with "
                          "llama.cpp's convert_hf_to_gguf.py.")
    steps = pre.get("pretokenizers", [pre])
    patterns = {(step.get("pattern") or {}).get("Regex") for step in steps if step.get("type") == "Split"}
    for name, pattern in _SPLIT_PATTERNS.items():
        if pattern in patterns:
            return name
    if not patterns and any(step.get("type") == "ByteLevel" and step.get("use_regex") for step in steps):
        return "gpt2"
    logger.warning("GGUF: this tokenizer's pre-tokenization is not one llama.cpp knows by name; writing 'default'")
    return "default"


def _vocabulary(tokenizer: PreTrainedTokenizerBase, size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded to the embedding rows, and their GGUF types."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _permute_for_ggml_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF Llama stores q/k rows as two rotary halves per head; GGML's Llama rope wants them interleaved."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _encoded(data: np.ndarray, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    if data.ndim == 1 or outtype == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = TENSOR_TYPES[outtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:  # rows that do not split into whole blocks stay f16, as llama.cpp does
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokenizer_dir: str, path: str,
               outtype: str, name: str, end_of_turn_id: int | None = None) -> int:
    """Write `model` to `path`; returns the number of tensors written."""
    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(f"Config error: GGUF export supports {', '.join(ARCHITECTURES)} models, not "
                          f"'{config.model_type}'. The safetensors export works for any model.")
    arch = ARCHITECTURES[config.model_type]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = _rope_scaling(config)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in ("linear", "yarn"):  # llama.cpp's keys for these (llama3 travels as the rope_freqs tensor)
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if kind == "yarn":
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    writer.add_file_type(FILE_TYPES[outtype])

    tokens, types = _vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_vocab_size(len(tokens))
    gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)
    if end_of_turn_id is not None and end_of_turn_id != tokenizer.eos_token_id:
        writer.add_eot_token_id(end_of_turn_id)  # llama.cpp ends a chat reply there

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    count = 0
    if scaling.get("rope_type") == "llama3":  # llama.cpp reads Llama 3's rope scaling from this tensor
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                          llama3_rope_factors(config, head_dim))
        count += 1
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd for the output when `output` is absent
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConfigError(f"Config error: GGUF export does not know where tensor '{hf_name}' goes.")
        data = tensor.detach().to(torch.float32).numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _permute_for_ggml_rope(data, heads if "q_proj" in hf_name else kv_heads)
        encoded, qtype = _encoded(data, outtype)
        quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        writer.add_tensor(new_name, encoded, raw_dtype=qtype if quantized else None)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count
