"""`lmforge merge`: fine-tunes of one base (full models or LoRA adapters) combined into one model by mergekit.

Why mergekit: its methods (linear, SLERP, task arithmetic, TIES, DARE) are the published algorithms, maintained
against the papers and used by most merged models on the hubs; lmforge adds what a run's outputs need around it: a
LoRA adapter as a member (merged into the base its adapter_config.json names, by mergekit's `base+adapter` form), the
dtype of the base, checks of the config before any weight is read, and a merge that appears in `output_dir` whole or
not at all."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from lmforge.config.merging import TASK_VECTOR_METHODS
from lmforge.errors import ConfigError, LmforgeError

logger = logging.getLogger(__name__)


def member_path(path: str, base_model: str | None) -> str:
    """What mergekit reads for one member: a model as it is, a LoRA adapter as `BASE+ADAPTER` (its own
    adapter_config.json's base, or `base_model` where that base is not found here)."""
    adapter_config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(adapter_config):
        return path
    with open(adapter_config, encoding="utf-8") as fh:
        base = json.load(fh).get("base_model_name_or_path")
    if (not base or (base.startswith(("/", ".")) and not os.path.exists(base))) and base_model:
        base = base_model
    if not base:
        raise ConfigError(f"Config error: the adapter '{path}' names no base model: set 'base_model'.")
    return f"{base}+{path}"


def mergekit_config(m: Any) -> dict[str, Any]:
    """The mergekit configuration of the `merge` group `m` (MergeArguments)."""
    def entry(item: dict[str, Any]) -> dict[str, Any]:
        parameters = {"weight": item.get("weight", 1.0)}
        if "density" in item:
            parameters["density"] = item["density"]
        return {"model": member_path(item["model"], m.base_model), "parameters": parameters}

    models = [entry(item) for item in m.models]
    config: dict[str, Any] = {"merge_method": m.merge_method, "dtype": merge_dtype(m), "models": models}
    normalize = {} if m.normalize is None else {"normalize": m.normalize}
    if m.merge_method == "slerp":
        others = [e["model"] for e in models if e["model"] != m.base_model]
        config.update(base_model=m.base_model, parameters={"t": m.t},
                      models=[{"model": m.base_model}, *({"model": o} for o in others)])
    elif m.merge_method in TASK_VECTOR_METHODS:
        config.update(base_model=m.base_model, parameters=normalize)
    else:  # linear: the base, when given, is one more member unless listed
        config["parameters"] = normalize
        if m.base_model and m.base_model not in {e["model"] for e in models}:
            config["models"].append({"model": m.base_model, "parameters": {"weight": 1.0}})
    return config


def merge_dtype(m: Any) -> str:
    """`merge_dtype`, or for `auto` the dtype `base_model` (else the first model) was saved in."""
    if m.merge_dtype != "auto":
        return m.merge_dtype
    from transformers import AutoConfig

    source = m.base_model or member_path(m.models[0]["model"], None).split("+")[0]
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"Config error: could not read the config of '{source}': {str(err).splitlines()[0]}") \
            from None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def run_merge(cfg: Any) -> str:
    """Merge the models of `cfg` (a MergeConfig) into `cfg.merge.output_dir`; returns it."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_merge
    from mergekit.options import MergeOptions

    m = cfg.merge
    config = mergekit_config(m)
    logger.info("Merging %d models (%s, %s) into %s", len(config["models"]), m.merge_method, config["dtype"],
                m.output_dir)
    parent = os.path.dirname(os.path.abspath(m.output_dir))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".merge-", dir=parent)  # beside it: the final move is a rename
    try:
        options = MergeOptions(copy_tokenizer=True, random_seed=m.merge_seed, trust_remote_code=m.trust_remote_code,
                               lora_merge_cache=os.path.join(partial, ".lora"), quiet=True, write_model_card=True)
        out = os.path.join(partial, "model")
        root_handlers = logging.root.handlers[:]
        try:
            mergekit_merge(MergeConfiguration.model_validate(config), out, options=options)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise LmforgeError(f"lmforge merge: the models could not be merged ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else err!r})") from None
        finally:
            logging.root.handlers[:] = root_handlers  # mergekit calls logging.basicConfig: lmforge's log stays one
        if os.path.isdir(m.output_dir):
            os.rmdir(m.output_dir)  # checked empty
        os.replace(out, m.output_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("Merged model saved to %s", m.output_dir)
    return m.output_dir
