"""Tiny random-weight models of real families, built from what users bring: a folder with a family's own tokenizer
files, chat template, generation config and config.json (no weights), with only the sizes shrunk (2 layers, hidden
size 32, 4 experts) through transformers' own classes. The vocabulary, special tokens, template, EOS ids and config
quirks (tied embeddings, rope scaling, layer types, MoE routing, MLA ranks, nested text configs) stay the family's.

The real-family test matrix and `lmforge bench --suite models` build their models here. A family that cannot be
built raises `FamilyUnavailable` with the reason (the installed transformers lacks its architecture, its tokenizer
files are missing)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config.architecture import EXPERT_COUNTS

# The sizes every family shrinks to; a key the family's config lacks is not added. Widths are kept divisible the way
# the real ones are (heads x head_dim, experts over groups).
SHRUNK: dict[str, int] = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 8, "intermediate_size": 64,
    "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16, "ffn_hidden_size": 64,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "experts_per_token": 2,
    "max_window_layers": 2, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    # multi-head latent attention (DeepSeek-V2/V3, Kimi): the ranks and the rope/nope split of each head
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
    # ModernBERT: a global layer every other layer, so 2 layers keep one of each
    "global_attn_every_n_layers": 2,
}
# list-valued rope parameters with one entry per rotary frequency (Phi-3's longrope factors)
_PER_FREQUENCY = ("short_factor", "long_factor")


class FamilyUnavailable(Exception):
    """This family cannot be built here; the message says why."""


@dataclass(frozen=True)
class Family:
    name: str
    source: Path
    kind: str  # "causal" (a decoder LM) or "encoder" (BERT-style, trained as a classifier)
    moe: bool

    @property
    def causal(self) -> bool:
        return self.kind == "causal"


def discover(root: str | os.PathLike) -> list[Family]:
    """Every family folder under `root` (a folder with a config.json), sorted by name."""
    families = []
    for path in sorted(Path(root).iterdir()):
        if (path / "config.json").is_file():
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
            text = raw.get("text_config") or raw
            moe = any((text.get(key) or 0) > 1 for key in EXPERT_COUNTS)
            families.append(Family(path.name, path, _kind(raw), moe))
    return families


def _kind(raw: dict[str, Any]) -> str:
    """Encoder families are those whose checkpoints are masked LMs or plain encoders (BERT, RoBERTa, ModernBERT);
    the rest are decoders. Without `architectures`, transformers' masked-LM table decides."""
    architectures = raw.get("architectures") or []
    if architectures:
        causal = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
        return "causal" if any(a.endswith(causal) for a in architectures) else "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    # no decoder family has a masked-LM class; a config older than `model_type` is named by its folder (BERT, RoBERTa)
    model_type = raw.get("model_type")
    return "encoder" if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type is None else "causal"


def load_tokenizer(source: Path):
    """The family's tokenizer as users load it; a 2019 RoBERTa folder (vocab.json + merges.txt, no tokenizer
    config) loads with its class, as transformers' own examples did."""
    from transformers import AutoTokenizer, RobertaTokenizer

    files = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spm.model", "tiktoken.model")
    if not any((source / name).is_file() for name in files):
        raise FamilyUnavailable(f"the folder has no tokenizer vocabulary ({', '.join(files)})")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as err:
        if (source / "vocab.json").is_file() and (source / "merges.txt").is_file():
            return RobertaTokenizer.from_pretrained(source)
        raise FamilyUnavailable(f"its tokenizer does not load here ({str(err).splitlines()[0][:160]})") from err


def shrunk_config(source: Path):
    """The family's config with the sizes of `SHRUNK`, its other settings kept."""
    from transformers import AutoConfig, __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = json.loads((source / "config.json").read_text(encoding="utf-8"))
    try:
        if "model_type" not in raw:  # a config from before `model_type`: named by its folder, as transformers once did
            known = [name for name in CONFIG_MAPPING if name in source.name]
            if not known:
                raise FamilyUnavailable("its config.json has no model_type and the folder name names none")
            config = CONFIG_MAPPING[max(known, key=len)].from_pretrained(source)
        else:
            config = AutoConfig.from_pretrained(source)
    except (KeyError, ValueError) as err:
        raise FamilyUnavailable(f"transformers {__version__} cannot read its config "
                                f"({str(err).splitlines()[0][:160]})") from err
    # the tiny weights are written unquantized, whatever the checkpoint was stored as (FP8, MXFP4, ...)
    for sub in _configs(config):
        if hasattr(sub, "quantization_config"):
            del sub.quantization_config
    for sub in _configs(config):
        _shrink(sub)
    return config


def _configs(config) -> list:
    """The config and every nested one (text, vision, audio) that has its own sizes."""
    found = [config]
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            found += _configs(sub)
    return found


def _shrink(config) -> None:
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    rotary_before = _rotary_dim(config)
    config.update({k: v for k, v in SHRUNK.items() if getattr(config, k, None) is not None})
    if heads is not None and kv_heads is not None:  # multi-head stays multi-head, grouped stays grouped
        config.num_key_value_heads = config.num_attention_heads if kv_heads == heads else 2
    layers = getattr(config, "num_hidden_layers", None)
    if layers and getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    if getattr(config, "mlp_only_layers", None):  # Qwen-MoE's dense layers: both tiny layers keep their experts
        config.mlp_only_layers = []
    _fit_rope_factors(config, rotary_before)


def _rotary_dim(config) -> int | None:
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if not heads or not hidden:
        return None
    head_dim = getattr(config, "qk_rope_head_dim", None) or getattr(config, "head_dim", None) or hidden // heads
    return int(head_dim * getattr(config, "partial_rotary_factor", 1.0))


def _fit_rope_factors(config, rotary_before: int | None) -> None:
    """Longrope keeps a factor per rotary frequency (head_dim / 2 of them): cut the lists to the new head size."""
    rotary_after = _rotary_dim(config)
    for key in ("rope_parameters", "rope_scaling"):
        params = getattr(config, key, None)
        if not isinstance(params, dict) or not rotary_before or not rotary_after:
            continue
        for name in _PER_FREQUENCY:
            factors = params.get(name)
            if isinstance(factors, list) and len(factors) == rotary_before // 2:
                params[name] = factors[: rotary_after // 2]


def build_tiny(source: str | os.PathLike, dest: str | os.PathLike, head: str = "causal", seed: int = 0,
               sizes: dict[str, Any] | None = None) -> str:
    """`dest` holds a tiny model of the family in `source`, with the family's real tokenizer (and chat template,
    generation config): `head` "causal" (AutoModelForCausalLM), "masked" (an encoder as its checkpoints are
    published: AutoModelForMaskedLM) or "cls" (AutoModelForSequenceClassification, 2 labels); `seed` draws the
    random weights; `sizes` replaces some of the small sizes (the fields the config has) for a larger model."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    source, dest = Path(source), Path(dest)
    tokenizer, config = load_tokenizer(source), shrunk_config(source)
    config.update({k: v for k, v in (sizes or {}).items() if hasattr(config, k)})
    if head == "cls":
        config.num_labels = 2
    auto = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM,
            "cls": AutoModelForSequenceClassification}[head]
    torch.manual_seed(seed)
    try:
        model = auto.from_config(config)
    except ValueError as err:  # "Unrecognized configuration class ... for this kind of AutoModel"
        raise FamilyUnavailable(f"transformers {transformers.__version__} has no {auto.__name__[9:]} class for "
                                f"'{config.model_type}' ({str(err).splitlines()[0][:160]})") from err
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    for name in ("generation_config.json", "chat_template.jinja"):  # the family's own, not what saving derived
        if (source / name).is_file():
            shutil.copy(source / name, dest / name)
    return str(dest)
