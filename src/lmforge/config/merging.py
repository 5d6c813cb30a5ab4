"""What `lmforge merge` combines: fine-tunes (full models or LoRA adapters) of one base, by one of the published
merge methods, written as one model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config.fields import option

# methods that add each model's difference from `base_model` (its task vector), which they need
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
# methods that drop part of each task vector, by `density` (the share kept)
SPARSIFYING_METHODS = ("ties", "dare_ties", "dare_linear")


@dataclass
class MergeArguments:
    merge_method: Literal["linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"] = option(
        "linear", "How the models combine (mergekit's implementations of the published methods): `linear` (a "
        "weighted mean of the weights), `slerp` (spherical interpolation of two models, `t` of the way from "
        "`base_model` to the other), `task_arithmetic` (base + the weighted sum of each model's difference from "
        "it), `ties` (TIES-merging: each difference trimmed to its largest `density`, a sign elected per weight, "
        "the agreeing ones averaged), `dare_ties` / `dare_linear` (DARE: a random `1 - density` of each "
        "difference dropped and the rest rescaled, then TIES' sign election or a plain sum).")
    models: list[dict[str, Any]] | None = option(
        None, "The models to merge, each `{model: PATH, weight: W, density: D}`: a full model directory (or hub "
        "id) or a LoRA adapter directory (merged into the base it names first); `weight` (default 1) scales its "
        "share, `density` (task-vector methods, default 1) is the share of its difference kept.")
    base_model: str | None = option(
        None, "The model the others were fine-tuned from (required by `slerp` and the task-vector methods; with "
        "`linear` it is one more member, of weight 1, unless `models` lists it). Its tokenizer and chat template "
        "are copied to the output (else the first model's).")
    t: float = option(0.5, "`slerp`: how far from `base_model` (0) to the other model (1) the merge lies.")
    normalize: bool | None = option(
        None, "Divide the weighted sum by the sum of the weights (weights 1 and 1 then mean half of each); unset: "
        "each method's published default (`linear` and `ties` normalize, `task_arithmetic` and DARE add).")
    merge_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "The dtype the merge computes in and the merged model is saved in (`auto`: `base_model`'s, else "
        "the first model's, as saved).")
    merge_seed: int = option(42, "The seed of DARE's random drops (the same seed, the same merge).")
    output_dir: str | None = option(None, "Where the merged model is written (required; must be empty or new).")
    trust_remote_code: bool = option(False, "Allow model code from the models' repositories to run.")
