"""`lmforge export`: merge, save safetensors shards and the tokenizer, optionally GGUF + Modelfile; all written to a
staging directory that becomes `export_dir` only when everything is complete."""

from __future__ import annotations

import json
import logging
import os
import shutil

from lmforge.config.exporting import EXPORT_MARKER
from lmforge.config.model import ModelArguments
from lmforge.config.schema import ExportConfig
from lmforge.data.template import stop_token_ids
from lmforge.errors import ConfigError
from lmforge.export.merge import merged_model
from lmforge.export.modelfile import modelfile, role_pieces
from lmforge.jsonl import atomic_dir
from lmforge.model import multimodal
from lmforge.model.build import PRM_FILE

logger = logging.getLogger(__name__)


def run_export(cfg: ExportConfig) -> str:
    x = cfg.export
    processor = multimodal.load_processor(cfg.model) if multimodal.is_multimodal(cfg.model) else None
    if processor is not None and x.export_gguf:
        raise ConfigError(f"Config error ({cfg.source}): 'export_gguf' with a vision-language model: lmforge writes "
                          "GGUF for text models only (llama.cpp keeps a vision tower in a separate mmproj file). "
                          "Export the safetensors (`export_gguf: false`) and convert them with llama.cpp's "
                          "convert_hf_to_gguf.py, once with --mmproj.")
    model, tokenizer = merged_model(cfg.model, cfg.data.template)
    name = os.path.basename(os.path.normpath(x.export_dir))
    compressor = None
    if x.export_quantization != "none":
        from lmforge.export.serving_quantization import quantize_for_serving

        calibration = None
        if x.export_quantization == "gptq":
            from lmforge.export.calibration import calibration_tokens

            calibration = calibration_tokens(cfg, tokenizer)
        compressor = quantize_for_serving(model, x.export_quantization, x.export_quantization_group_size,
                                          calibration)
        compressor.compress_model(model)
    with atomic_dir(x.export_dir, replace=x.overwrite_export) as staging:
        model.save_pretrained(staging, max_shard_size=f"{max(1, int(x.export_size * 1e6))}KB")
        if compressor is not None:
            compressor.update_config(staging)  # the quantization config vLLM and transformers read
        if processor is not None:  # tokenizer, image processor and chat template, as AutoProcessor loads them
            processor.chat_template = tokenizer.chat_template
            processor.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _keep_process_reward_settings(cfg.model, staging)
        _keep_sentencepiece_model(tokenizer, staging)
        _record_bos_and_eos(tokenizer, staging)
        with open(os.path.join(staging, EXPORT_MARKER), "w", encoding="utf-8") as fh:
            fh.write("Written by lmforge export; `overwrite_export: true` may replace this directory.\n")
        files = sorted(f for f in os.listdir(staging) if f.endswith(".safetensors"))
        logger.info("Saved %d safetensors file(s), the tokenizer and its chat template", len(files))
        stop_ids = stop_token_ids(tokenizer) if tokenizer.chat_template else []
        if x.export_gguf:
            imatrix = _importance_matrix(cfg, model, tokenizer, staging) if x.gguf_imatrix else None
            gguf_name = _write_gguf(staging, name, x.gguf_outtype, stop_ids, imatrix)
            if x.export_ollama and tokenizer.chat_template:
                stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
                with open(os.path.join(staging, "Modelfile"), "w", encoding="utf-8") as fh:
                    fh.write(modelfile(gguf_name, role_pieces(tokenizer), stops))
                logger.info("Wrote an Ollama Modelfile: `ollama create %s -f %s/Modelfile`", name, x.export_dir)
    print(f"Exported to {x.export_dir}")
    return x.export_dir


def _keep_process_reward_settings(args: ModelArguments, staging: str) -> None:
    """A process reward model's step separator (`prm.json`, beside its adapter or weights) travels with the export,
    so `lmforge score` and a grpo `reward_model` split completions as training did."""
    for source in (args.adapter_name_or_path, args.model_name_or_path):
        if source and os.path.isfile(os.path.join(source, PRM_FILE)):
            shutil.copyfile(os.path.join(source, PRM_FILE), os.path.join(staging, PRM_FILE))
            return


def _record_bos_and_eos(tokenizer, staging: str) -> None:
    """transformers 5 keeps whether the tokenizer adds BOS/EOS in tokenizer.json's post-processor only; llama.cpp's
    converter reads `add_bos_token`/`add_eos_token` from tokenizer_config.json (else llama.cpp adds a BOS to every
    SentencePiece prompt, Yi's included, whose tokenizer adds none). They are written as the tokenizer behaves."""
    path = os.path.join(staging, "tokenizer_config.json")
    if not os.path.isfile(path):
        return
    ids = tokenizer("a")["input_ids"]
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config.setdefault("add_bos_token", tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    config.setdefault("add_eos_token", tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id])
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, ensure_ascii=False)


def _keep_sentencepiece_model(tokenizer, staging: str) -> None:
    """transformers 5 saves a SentencePiece tokenizer as tokenizer.json only; the SentencePiece model it was loaded
    from goes with the export, as the checkpoint shipped it (llama.cpp's converter reads Gemma's, Llama 2's, Mistral's
    and Phi-3's vocabulary, scores and token types from it)."""
    source = tokenizer.init_kwargs.get("vocab_file")
    target = os.path.join(staging, "tokenizer.model")
    if isinstance(source, str) and source.endswith(".model") and os.path.isfile(source) and not os.path.exists(target):
        shutil.copyfile(source, target)


def _importance_matrix(cfg: ExportConfig, model, tokenizer, staging: str):
    from lmforge.export.calibration import calibration_tokens
    from lmforge.export.gguf_convert import tensor_names
    from lmforge.export.gguf_imatrix import importance_matrix

    return importance_matrix(model, calibration_tokens(cfg, tokenizer), tensor_names(staging))


def _write_gguf(staging: str, name: str, outtype: str, stop_ids: list[int], imatrix=None) -> str:
    """`NAME-OUTTYPE.gguf` in `staging`, converted by llama.cpp's converter from the safetensors saved there; for
    llama.cpp's quantized types converted in 16 bits (the checkpoint's bf16, else f16) and quantized by llama.cpp.
    Returns its file name."""
    from lmforge.export.gguf_convert import CONVERTER_TYPES, convert_to_gguf
    from lmforge.export.gguf_quantize import quantize_gguf

    gguf_name = f"{name}-{outtype}.gguf"
    target = os.path.join(staging, gguf_name)
    written = outtype if outtype in CONVERTER_TYPES else "bf16" if _saved_dtype(staging) == "bfloat16" else "f16"
    path = os.path.join(staging, f".{name}-{written}.gguf") if written != outtype else target
    count = convert_to_gguf(staging, path, written, name, stop_ids[-1] if stop_ids else None)
    if path != target:
        quantize_gguf(path, target, outtype, imatrix=imatrix)
        os.remove(path)
        logger.info("Wrote %s (%d tensors; quantized by llama.cpp from %s%s)", gguf_name, count, written,
                    " with the importance matrix" if imatrix else "")
    else:
        logger.info("Wrote %s (%d tensors)", gguf_name, count)
    return gguf_name


def _saved_dtype(staging: str) -> str | None:
    with open(os.path.join(staging, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return config.get("dtype") or config.get("torch_dtype")
