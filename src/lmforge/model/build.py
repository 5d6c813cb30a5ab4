"""Build the model a run trains: a pretrained checkpoint, or a fresh one from an architecture + overrides."""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lmforge.config.architecture import (
    DEQUANTIZED_AT_LOAD,
    base_config,
    check_architecture,
    checkpoint_quantization,
    num_experts,
)
from lmforge.config.model import ModelArguments
from lmforge.errors import ConfigError
from lmforge.model import multimodal
from lmforge.model.load_report import held_load_report, report_new_head
from lmforge.model.moe import experts_per_process, with_router_loss

logger = logging.getLogger(__name__)

_META_KEYS = ("transformers_version", "_name_or_path", "architectures", "model_type", "dtype", "torch_dtype")


def _derivable_keys(cls: type[PretrainedConfig], values: dict) -> set[str]:
    """Keys the config class recomputes to the same value from the others (head_dim, layer_types, kv heads of a
    multi-head model, ...). They must follow an override of what they derive from, so they are dropped."""
    derivable = set()
    for key in values:
        if key in _META_KEYS:
            continue
        trial = {k: v for k, v in values.items() if k != key}
        try:
            if getattr(cls.from_dict(trial), key, object()) == values[key]:
                derivable.add(key)
        except Exception:  # noqa: BLE001 - a key the config cannot do without is simply not derivable
            continue
    return derivable


def scratch_config(args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The base architecture with `config_overrides` applied and the vocabulary/special ids of `tokenizer`."""
    base = base_config(args)
    cls = type(base)
    values = {k: v for k, v in base.to_dict().items() if k not in _META_KEYS}
    check_architecture(args)
    overrides = dict(args.config_overrides)
    if overrides:
        for key in _derivable_keys(cls, values) - set(overrides):
            values.pop(key)
        base_kv, heads = getattr(base, "num_key_value_heads", None), overrides.get("num_attention_heads")
        if base_kv and heads and "num_key_value_heads" not in overrides:
            # Multi-head stays multi-head; grouped-query keeps its heads-per-kv-head ratio where it divides.
            ratio = max(base.num_attention_heads // base_kv, 1)
            values["num_key_value_heads"] = heads // ratio if heads % ratio == 0 else heads
    values.update(overrides)
    values.update(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    try:
        config = cls.from_dict(values)
    except Exception as err:  # noqa: BLE001 - config validators raise several types; all mean a bad override
        cause = getattr(err, "__cause__", None) or err
        raise ConfigError(f"Config error: config_overrides do not give a valid '{base.model_type}' architecture: "
                          f"{str(cause).splitlines()[0]}") from None
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if heads and kv and heads % kv:
        raise ConfigError(f"Config error: num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
                          f"({kv}).")
    return config


def is_sequence_classifier(args: ModelArguments, config: Any = None) -> bool:
    """A checkpoint saved with a sequence-classification head, or a base whose adapter was trained with one (an
    adapter directory holding `cls_head.json`). `config`: the model's, when the caller has read it already."""
    if args.from_scratch or not args.model_name_or_path:
        return False
    adapter = args.adapter_name_or_path
    if adapter and os.path.isfile(os.path.join(adapter, CLS_HEAD_FILE)):
        return True
    config = config if config is not None else multimodal.model_config(args)
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


CLS_HEAD_FILE = "cls_head.json"  # the classification head an adapter was trained with (num_labels, id2label, ...)


def classifier_head_of(adapter: str | None) -> dict[str, Any]:
    """The head settings saved beside a classifier's adapter (`CLS_HEAD_FILE`), as from_pretrained takes them."""
    path = os.path.join(adapter or "", CLS_HEAD_FILE)
    if not adapter or not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        head = {k: v for k, v in json.load(fh).items() if k != "threshold"}
    if "id2label" in head:
        head["id2label"] = {int(k): v for k, v in head["id2label"].items()}
    return head


PRM_FILE = "prm.json"  # a process reward model's step separator and head, beside its weights or adapter
STEP_HEAD = {"num_labels": 2, "id2label": {0: "incorrect", 1: "correct"}, "label2id": {"incorrect": 0, "correct": 1}}


def is_step_classifier(args: ModelArguments, config: Any = None) -> bool:
    """A saved process reward model (`stage: prm`: a token-classification head), or a base whose adapter is one."""
    if args.from_scratch or not args.model_name_or_path:
        return False
    if args.adapter_name_or_path and os.path.isfile(os.path.join(args.adapter_name_or_path, PRM_FILE)):
        return True
    config = config if config is not None else multimodal.model_config(args)
    return any(a.endswith("ForTokenClassification") for a in (getattr(config, "architectures", None) or []))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters; tied weights counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def quantization_config(bits: int, method: str = "bitsandbytes") -> Any:
    """The base model's quantization for QLoRA, as transformers loads it: bitsandbytes 4-bit (NF4, double
    quantization) or 8-bit, or torchao weight-only int8 (the CPU too) or int4; None for HQQ, which quantizes the
    loaded model (model/hqq_base.py); a clear error where it cannot run."""
    import importlib.util

    if method == "hqq":
        from lmforge.model.hqq_base import HQQ_BITS

        if importlib.util.find_spec("hqq") is None:
            raise ConfigError("Config error: 'quantization_method: hqq' needs the hqq package: pip install hqq")
        if bits not in HQQ_BITS:
            raise ConfigError(f"Config error: HQQ quantizes to {', '.join(map(str, HQQ_BITS))} bits "
                              f"('quantization_bit'), not {bits}.")
        return None
    if method == "torchao":
        if importlib.util.find_spec("torchao") is None:
            raise ConfigError("Config error: 'quantization_method: torchao' needs the torchao package: "
                              "pip install torchao")
        if bits == 4 and not torch.cuda.is_available():
            raise ConfigError("Config error: torchao's int4 weight-only base ('quantization_bit: 4') runs on a CUDA "
                              "GPU (its tinygemm kernel); on the CPU use 'quantization_bit: 8'.")
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int4WeightOnlyConfig(group_size=128) if bits == 4 else Int8WeightOnlyConfig())
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("Config error: 'quantization_bit' needs the bitsandbytes package: pip install bitsandbytes")
    if not torch.cuda.is_available():
        raise ConfigError("Config error: 'quantization_bit' (bitsandbytes QLoRA) needs a CUDA GPU; none is available "
                          "('quantization_method: torchao' with 'quantization_bit: 8' runs on the CPU).")
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


def with_head(config: PretrainedConfig, head: dict[str, Any]) -> PretrainedConfig:
    """`config` with a classification head's settings (num_labels first: it resets the label names), and the pad
    id on the text config too, where a vision-language model's classifier reads it."""
    if "num_labels" in head:
        config.num_labels = head["num_labels"]
    for key, value in head.items():
        if key != "num_labels":
            setattr(config, key, value)
    if "pad_token_id" in head:
        config.get_text_config().pad_token_id = head["pad_token_id"]
    return config


# rope types whose frequencies depend on the context they were trained for
_ORIGINAL_CONTEXT_TYPES = ("yarn", "dynamic", "longrope", "llama3")


def with_context(config: PretrainedConfig, args: ModelArguments) -> PretrainedConfig:
    """`config` with the context `rope_scaling` / `max_position_embeddings` ask for, checked by transformers' own
    rope validation. `factor` extends the model's current context that many times: on an unscaled model the
    scaling starts from its base (`rope_theta` kept, `original_max_position_embeddings` = its context); on a model
    already scaled the same way (Llama 3.x's llama3, GPT-OSS's yarn) its factor is multiplied and its original
    context kept, so the positions it learned keep their encoding. Another rope type than the checkpoint's would
    re-encode all of them: an error, unless `original_max_position_embeddings` is given (a deliberate switch)."""
    if not args.rope_scaling and not args.max_position_embeddings:
        return config
    text = config.get_text_config()
    before = text.max_position_embeddings
    factor = None
    if args.rope_scaling:
        scaling = dict(args.rope_scaling)
        kind = scaling.pop("rope_type", None) or scaling.pop("type", None)
        if kind is None:
            raise ConfigError("Config error: rope_scaling needs a `rope_type` (linear, dynamic, yarn, longrope, "
                              f"llama3), got {args.rope_scaling}.")
        factor = scaling.get("factor")
        # transformers 5 keeps the base and the scaling in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`
        field = "rope_parameters" if hasattr(text, "validate_rope") else "rope_scaling"
        current = dict(getattr(text, field, None) or {})
        have = current.get("rope_type", current.get("type"))
        have = None if have in (None, "default") else have
        if have == kind:
            if factor and current.get("factor"):
                scaling["factor"] = current["factor"] * factor
            base = current
        elif have and "original_max_position_embeddings" not in scaling:
            raise ConfigError(
                f"Config error: rope_scaling: '{config.model_type}' is already scaled with {have} (factor "
                f"{current.get('factor')} from {current.get('original_max_position_embeddings', '?')} tokens); "
                f"{kind} would re-encode every position it learned. Extend it with `rope_type: {have}` (its factor "
                "is multiplied by yours), or give `original_max_position_embeddings` to replace its scaling.")
        else:
            base = {k: v for k, v in current.items() if k in ("rope_theta", "partial_rotary_factor")}
        if kind in _ORIGINAL_CONTEXT_TYPES:
            scaling.setdefault("original_max_position_embeddings", base.get("original_max_position_embeddings",
                                                                             before))
        setattr(text, field, {**base, **scaling, "rope_type": kind})
    text.max_position_embeddings = args.max_position_embeddings or (int(before * factor) if factor else before)
    try:
        if hasattr(text, "validate_rope"):
            text.validate_rope()
        else:
            from transformers.modeling_rope_utils import rope_config_validation

            rope_config_validation(text)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"Config error: rope_scaling {args.rope_scaling} does not fit '{config.model_type}': "
                          f"{str(err).strip(chr(34))}") from None
    rope = dict(getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {})
    logger.info("Context: %d -> %d tokens (rope %s%s)", before, text.max_position_embeddings,
                rope.get("rope_type", "unchanged") if args.rope_scaling else "unchanged",
                f", factor {rope['factor']:g} from {rope['original_max_position_embeddings']:,} tokens"
                if args.rope_scaling and rope.get("factor") and rope.get("original_max_position_embeddings") else "")
    return config


def model_class(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, config: Any, reward_head: bool = False,
                classifier: dict[str, Any] | None = None, step_head: bool = False) -> tuple[Any, dict[str, Any]]:
    """(the Auto class to build with, the classification head to put on the config) for `build_model`'s arguments;
    `config` is the checkpoint's (None from scratch)."""
    step = {**STEP_HEAD, "pad_token_id": tokenizer.pad_token_id}  # a process reward model: correct or not per token
    if step_head:
        return AutoModelForTokenClassification, step
    adapter_head = classifier_head_of(args.adapter_name_or_path)  # a base for its classifier adapter: that head
    if reward_head or classifier or adapter_head:
        head = {**(classifier or adapter_head or {"num_labels": 1}), "pad_token_id": tokenizer.pad_token_id}
        return AutoModelForSequenceClassification, head
    if not args.from_scratch:  # what the checkpoint is, from its config
        if is_step_classifier(args, config):  # a saved `stage: prm` model (or a base for its adapter)
            return AutoModelForTokenClassification, step
        if is_sequence_classifier(args, config):  # a saved `stage: cls` (or reward) model loads as what it is
            return AutoModelForSequenceClassification, {}
        if multimodal.is_multimodal_config(config):
            return AutoModelForImageTextToText, {}
    return AutoModelForCausalLM, {}


def planned_architecture(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, reward_head: bool = False,
                         classifier: dict[str, Any] | None = None, step_head: bool = False
                         ) -> tuple[Any, PretrainedConfig]:
    """What `build_model` builds with the same arguments, as its class and final config, without reading a weight
    (`lmforge plan` builds it over fake tensors)."""
    config = None if args.from_scratch else multimodal.model_config(args)
    if config is None and not args.from_scratch:
        raise ConfigError(f"Config error: could not read a model config from '{args.model_name_or_path}'.")
    auto_class, head = model_class(args, tokenizer, config, reward_head, classifier, step_head)
    base = scratch_config(args, tokenizer) if args.from_scratch else config
    return auto_class, with_router_loss(with_context(with_head(base, head), args), args.router_aux_loss_coef)


def build_model(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, reward_head: bool = False,
                dtype: Any = "auto", classifier: dict[str, Any] | None = None,
                split: dict[str, Any] | None = None, step_head: bool = False, training: bool = True
                ) -> PreTrainedModel:
    """The causal LM to train, or with `reward_head` the same backbone with a one-output sequence-classification head
    (a reward model: `AutoModelForSequenceClassification`, score read at the last non-pad token), or with
    `classifier` (num_labels, id2label, label2id, problem_type) a classifier, or with `step_head` a process reward
    model (`AutoModelForTokenClassification`, correct/incorrect at each step's end). A pretrained model loads in `dtype`
    (`auto`: as saved), split over the processes as it loads with `split` (`model.parallel.load_kwargs`). Not
    `training` (inference): its parameters take no gradients, and the log does not count trainable ones."""
    kwargs: dict[str, Any] = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    kwargs.update(split or {})
    config = None if args.from_scratch else multimodal.model_config(args)  # the checkpoint's, read once
    auto_class, head = model_class(args, tokenizer, config, reward_head, classifier, step_head)
    if args.quantization_bit and (quantization := quantization_config(args.quantization_bit,
                                                                       args.quantization_method)):
        kwargs["quantization_config"] = quantization
    if args.from_scratch:
        config = with_router_loss(with_context(with_head(scratch_config(args, tokenizer), head), args),
                                  args.router_aux_loss_coef)
        model = auto_class.from_config(config, trust_remote_code=args.trust_remote_code, **kwargs)
        origin = f"new {config.model_type} model (random init)"
    else:
        changed = head or args.rope_scaling or args.max_position_embeddings or args.router_aux_loss_coef is not None
        if changed and config is not None:  # on the config: a composite one (Gemma 3) passes unknown keywords on
            kwargs["config"] = with_router_loss(with_context(with_head(config, head), args), args.router_aux_loss_coef)
        else:
            kwargs.update(head)
        saved_quantized = checkpoint_quantization(config) if config is not None else None
        if saved_quantized in DEQUANTIZED_AT_LOAD:  # compressed-tensors: its own loader makes the weights dense
            from transformers import CompressedTensorsConfig

            kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
        try:
            with warnings.catch_warnings(), held_load_report() as report:
                # "the quantization_config from the model will be used", as asked
                warnings.filterwarnings("ignore", message=".*already has a `quantization_config` attribute")
                model, loading = auto_class.from_pretrained(
                    args.model_name_or_path, trust_remote_code=args.trust_remote_code, revision=args.model_revision,
                    cache_dir=args.cache_dir, dtype=dtype, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(f"Config error: could not load a model from '{args.model_name_or_path}': "
                              f"{str(err).splitlines()[0]}") from None
        except ImportError as err:  # a checkpoint saved quantized, whose quantizer's package is missing
            raise ConfigError(f"Config error: '{args.model_name_or_path}' is saved quantized ({saved_quantized}): "
                              f"{str(err).splitlines()[0]}") from None
        if training:
            report_new_head(model, loading, report)  # a reward/classifier head the stage is about to train
        else:
            report.release()
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        origin = f"{args.model_name_or_path}"
        if saved_quantized:
            origin += f" (saved quantized: {saved_quantized}" + (
                "; decompressed as it loaded, so it takes an unquantized model's memory)"
                if saved_quantized in DEQUANTIZED_AT_LOAD else ")")
        if args.quantization_bit and args.quantization_method == "bitsandbytes":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        if args.quantization_bit and args.quantization_method == "hqq":
            from lmforge.model.hqq_base import quantize_with_hqq

            quantize_with_hqq(model, args.quantization_bit)
        # a torchao or HQQ base needs no preparation: its other weights keep their dtype
        if args.quantization_bit:
            origin += f" ({args.quantization_bit}-bit, {args.quantization_method})"
    if not training:
        model.requires_grad_(False)
    total, trainable = count_parameters(model)
    logger.info("Model: %s — %s parameters%s", origin, f"{total:,}", f" ({trainable:,} trainable)" if training else "")
    if held := experts_per_process(model):
        logger.info("Experts: %d of %d per layer on each process (expert parallel)", held, num_experts(model.config))
    return model
