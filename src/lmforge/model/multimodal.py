"""Vision-language models: recognising one, its processor, and which of its parts train.

A model is multimodal when transformers maps its config to `AutoModelForImageTextToText` (LLaVA, LLaVA-NeXT,
Gemma 3, Qwen2-VL/2.5-VL/3-VL, Idefics, ...) or its config has a `vision_config`. Its parts are found by the module
names transformers gives them across these families (no per-model table of templates or token layouts): the vision
encoder (`vision_tower`, `visual`, `vision_model`), the projector into the language model (`multi_modal_projector`,
`connector`, Qwen's `visual.merger`) and the language model (`language_model`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from lmforge.config.model import ModelArguments
from lmforge.errors import ConfigError
from lmforge.model.source import model_not_found

logger = logging.getLogger(__name__)

VISION_TOWERS = ("vision_tower", "visual", "vision_model", "vision_encoder")
PROJECTORS = ("multi_modal_projector", "connector", "mm_projector", "visual.merger", "vision_projection")
MODALITY_PROCESSORS = {"image_processor": "image", "video_processor": "video", "feature_extractor": "audio"}


def model_config(args: ModelArguments) -> Any | None:
    """The model's config (None when it cannot be read, e.g. a model built from scratch by name)."""
    if not args.model_name_or_path or model_not_found(args.model_name_or_path, args.cache_dir):
        return None  # (the tokenizer's load says why)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code,
                                          revision=args.model_revision, cache_dir=args.cache_dir)
    except (OSError, ValueError):
        return None


def is_multimodal_config(config: Any) -> bool:
    if config is None:
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or hasattr(config, "vision_config")


# the files a saved processor is made of; a local checkpoint with none of them has no way to read images
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


def is_multimodal(args: ModelArguments) -> bool:
    """A vision-language checkpoint that comes with its processor. One saved without any processor file (its
    language model fine-tuned on text, a config-and-tokenizer copy) trains and serves as a text model."""
    if args.from_scratch or not is_multimodal_config(model_config(args)):
        return False
    folders = [p for p in (args.tokenizer_name_or_path, args.adapter_name_or_path, args.model_name_or_path) if p]
    if not os.path.isdir(args.model_name_or_path) or any(
            os.path.isfile(os.path.join(folder, name)) for folder in folders for name in PROCESSOR_FILES):
        return True  # a hub id, or a folder with its processor
    if args.model_name_or_path not in _TEXT_ONLY_NOTED:
        _TEXT_ONLY_NOTED.add(args.model_name_or_path)
        logger.warning("'%s' is a vision-language model saved without its processor (no %s): it is used as a "
                       "text model", args.model_name_or_path, " or ".join(PROCESSOR_FILES))
    return False


_TEXT_ONLY_NOTED: set[str] = set()


def load_processor(args: ModelArguments) -> Any:
    """The model's processor (tokenizer + image/video processors + chat template), with a pad token and the
    processor's chat template on the tokenizer too (lmforge renders through the tokenizer)."""
    from transformers import AutoProcessor

    path = args.tokenizer_name_or_path or args.model_name_or_path
    if not args.tokenizer_name_or_path and args.adapter_name_or_path and \
            os.path.isfile(os.path.join(args.adapter_name_or_path, "processor_config.json")):
        path = args.adapter_name_or_path  # lmforge saves the processor (and its template) with the adapter
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=args.trust_remote_code,
                                                  revision=args.model_revision, cache_dir=args.cache_dir)
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"Config error: could not load the processor of the vision-language model '{path}': "
                          f"{str(err).splitlines()[0]}") from None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not any(hasattr(processor, name) for name in MODALITY_PROCESSORS):
        raise ConfigError(f"Config error: '{path}' has no multimodal processor (a tokenizer plus an image or video "
                          "processor); lmforge cannot feed it images.")
    if isinstance(processor.chat_template, str) and not tokenizer.chat_template:
        tokenizer.chat_template = processor.chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def modalities(processor: Any) -> list[str]:
    """What a processor feeds the model besides text, in words (`lmforge env`, the run log)."""
    return ["text", *(kind for name, kind in MODALITY_PROCESSORS.items() if getattr(processor, name, None))]


def _modules(model: torch.nn.Module, names: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
    """Modules whose qualified name ends with one of `names` (outermost only)."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if any(name == n or name.endswith("." + n) for n in names) and \
                not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return found


def vision_tower(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return _modules(model, VISION_TOWERS)


def projector(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return _modules(model, PROJECTORS)


def freeze_multimodal_parts(model: torch.nn.Module, freeze_vision_tower: bool, freeze_projector: bool,
                            train_projector_only: bool) -> None:
    """Leave the vision tower and/or the projector untrained (or train only the projector)."""
    towers, projectors = vision_tower(model), projector(model)
    if not towers:
        raise ConfigError(f"Config error: could not find the vision tower of this {model.config.model_type} model "
                          f"(a module named {', '.join(VISION_TOWERS)}).")
    projector_params = {id(p) for _, m in projectors for p in m.parameters()}
    if train_projector_only:
        if not projectors:
            raise ConfigError("Config error: 'train_mm_proj_only': this model has no projector module named "
                              f"{', '.join(PROJECTORS)}.")
        for p in model.parameters():
            p.requires_grad_(id(p) in projector_params)
    else:
        for _, module in towers:
            for p in module.parameters():
                if id(p) not in projector_params:  # Qwen's merger lives inside `visual`
                    p.requires_grad_(not freeze_vision_tower)
        for _, module in projectors:
            module.requires_grad_(not freeze_projector)
    logger.info("Vision-language model: vision tower %s, projector %s", _state(towers, projector_params),
                "trained" if any(p.requires_grad for _, m in projectors for p in m.parameters()) else "frozen")


def _state(towers: list, exclude: set[int]) -> str:
    params = [p for _, m in towers for p in m.parameters() if id(p) not in exclude]
    return "trained" if any(p.requires_grad for p in params) else "frozen"


def language_model_linears(model: torch.nn.Module, include_vision: bool = False) -> list[str]:
    """Qualified names of the linear layers LoRA's `all` targets in a vision-language model: the language model's
    (the output head excluded), plus the vision tower's and projector's when `include_vision`."""
    skip = [name for name, _ in vision_tower(model) + projector(model)] if not include_vision else []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
            and not any(name == s or name.startswith(s + ".") for s in skip)]
