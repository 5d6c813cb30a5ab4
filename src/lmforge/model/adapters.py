"""Which parameters train: all (`full`), the last layers (`freeze`), or LoRA adapters through peft (`lora`)."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from lmforge.config.finetuning import FinetuningArguments
from lmforge.errors import ConfigError
from lmforge.model import multimodal
from lmforge.model.build import count_parameters
from lmforge.model.decoder import decoder_layers
from lmforge.model.moe import freeze_router, fused_expert_parameters, router_modules

logger = logging.getLogger(__name__)


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def freeze(model: PreTrainedModel, args: FinetuningArguments) -> None:
    prefix, layers = decoder_layers(model)
    n = args.freeze_trainable_layers
    if n == 0 or abs(n) > len(layers):
        raise ConfigError(f"Config error: 'freeze_trainable_layers' must be between 1 and {len(layers)} (or -1 and "
                          f"-{len(layers)}), got {n}.")
    layer_ids = range(len(layers) - n, len(layers)) if n > 0 else range(-n)
    modules = _names(args.freeze_trainable_modules)
    extra = _names(args.freeze_extra_modules)
    trainable_prefixes = [f"{prefix}.{i}." for i in layer_ids]
    matched_extra = set()
    heads = reward_head_names(model)  # a reward model's new head always learns
    for name, param in model.named_parameters():
        in_layer = any(name.startswith(p) for p in trainable_prefixes)
        module_ok = modules == ["all"] or any(f".{m}." in name for m in modules)
        hit_extra = [m for m in extra if f".{m}." in f".{name}" or name.startswith(f"{m}.")]
        matched_extra.update(hit_extra)
        param.requires_grad_((in_layer and module_ok) or bool(hit_extra) or name.split(".")[0] in heads)
    missing = set(extra) - matched_extra
    if missing:
        raise ConfigError(f"Config error: 'freeze_extra_modules': no parameter of the model belongs to "
                          f"'{sorted(missing)[0]}'.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"Config error: 'freeze_trainable_modules: {args.freeze_trainable_modules}' matches no "
                          f"module in the trainable layers (module names: {_layer_module_names(layers)}).")
    logger.info("Freeze: training layers %s%s", list(layer_ids),
                f" ({', '.join(modules)})" if modules != ["all"] else "")


def _layer_module_names(layers: torch.nn.ModuleList) -> str:
    return ", ".join(name for name, _ in layers[0].named_children())


REWARD_HEADS = ("score", "classifier")  # the head of a sequence-classification (reward) model, by architecture


def reward_head_names(model: torch.nn.Module) -> list[str]:
    return [name for name in REWARD_HEADS if isinstance(getattr(model, name, None), torch.nn.Module)]


def expert_targets(model: torch.nn.Module, targets: str | list[str]) -> list[str]:
    """The fused expert weights that get adapters (peft's `target_parameters`): with `all` or `experts` in a
    mixture of experts whose experts are 3-D tensors. `experts` in a model without such weights is an error."""
    if targets != "all-linear" and "experts" not in targets:
        return []
    fused = fused_expert_parameters(model)
    if "experts" in targets and not fused:
        raise ConfigError("Config error: 'lora_target' names `experts`, but the model has no fused expert weights "
                          "(a dense model, or experts that are linear layers: name those, e.g. `w1,w2,w3`).")
    if fused:
        logger.info("LoRA on the experts' weights too: %s", ", ".join(fused))
    return fused


def hqq_linear_names(model: torch.nn.Module) -> list[str]:
    """The names (last part) of the HQQ layers of `model` (model/hqq_base.py): peft's `all-linear` finds
    `nn.Linear` only, so `lora_target: all` over an HQQ base targets these. (By class name: no import of hqq.)"""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if type(module).__name__ == "HQQLinear"})


def add_lora(model: PreTrainedModel, args: FinetuningArguments, adapter: str | None = None) -> torch.nn.Module:
    """New LoRA adapters, or (`adapter`) a saved one continued."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter:
        logger.info("LoRA: continuing from the adapter in %s", adapter)
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    targets: str | list[str] = "all-linear" if args.lora_target.strip() == "all" else _names(args.lora_target)
    if targets == "all-linear" and (quantized := hqq_linear_names(model)):
        targets = quantized  # peft's `all-linear` finds nn.Linear only
    parameters = expert_targets(model, targets)
    if isinstance(targets, list):  # `experts` is parameters; `router` the routers' modules
        targets = [t for t in targets if t != "experts"]
        if "router" in targets:
            targets = [t for t in targets if t != "router"] + (router_modules(model) or ["router"])
    to_save = _names(args.additional_target)
    if multimodal.is_multimodal_config(model.config):
        if targets == "all-linear":  # the language model's linears (and the vision tower's when it trains)
            targets = multimodal.language_model_linears(model, include_vision=not args.freeze_vision_tower)
        if not args.freeze_multi_modal_projector:  # trained fully and saved with the adapter
            to_save += [name for name, _ in multimodal.projector(model)]
    # A reward model's new head is trained fully and saved with the adapter (peft's SEQ_CLS and TOKEN_CLS tasks do
    # that); a process reward model's is a token classifier's.
    task_type, head = "CAUSAL_LM", {}
    if reward_head_names(model):
        task_type = "TOKEN_CLS" if type(model).__name__.endswith("ForTokenClassification") else "SEQ_CLS"
    if task_type == "TOKEN_CLS":  # peft's `all-linear` leaves out a SEQ_CLS head, not a TOKEN_CLS one
        head = {"exclude_modules": reward_head_names(model)}
    config = LoraConfig(task_type=task_type, r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                        lora_dropout=args.lora_dropout, target_modules=targets, use_rslora=args.use_rslora,
                        use_dora=args.use_dora, modules_to_save=to_save or None,
                        **({"target_parameters": parameters} if parameters else {}), **head)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"Config error: 'lora_target: {args.lora_target}': {str(err).splitlines()[0]}") from None


def apply_finetuning_type(model: PreTrainedModel, args: FinetuningArguments, added_tokens: int = 0,
                          adapter: str | None = None) -> torch.nn.Module:
    """The model with only the parameters `finetuning_type` trains left trainable (`adapter`: a LoRA to continue)."""
    if args.finetuning_type == "freeze":
        freeze(model, args)
    if multimodal.is_multimodal_config(model.config) and (args.finetuning_type != "lora" or args.train_mm_proj_only):
        multimodal.freeze_multimodal_parts(model, args.freeze_vision_tower, args.freeze_multi_modal_projector,
                                           args.train_mm_proj_only)
    elif args.finetuning_type == "lora":
        if added_tokens and not any(n in _names(args.additional_target) for n in ("embed_tokens", "lm_head")):
            logger.warning("The template added %d token(s) whose embeddings start random, and LoRA does not train "
                           "embeddings: set `additional_target: embed_tokens,lm_head` to learn them.", added_tokens)
        model = add_lora(model, args, adapter)
    if args.freeze_router:
        freeze_router(model)
    if args.finetuning_type != "full":
        total, trainable = count_parameters(model)
        logger.info("%s: training %s of %s parameters (%.2f%%)", args.finetuning_type, f"{trainable:,}",
                    f"{total:,}", 100 * trainable / max(total, 1))
    return model
