"""Checks that need more than one key: combinations that cannot work are rejected before any work starts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lmforge.config.architecture import check_architecture
from lmforge.config.exporting import EXPORT_MARKER
from lmforge.config.launch import process_count
from lmforge.config.schema import key_index
from lmforge.config.stages import STAGES
from lmforge.errors import ConfigError

if TYPE_CHECKING:
    from lmforge.config.schema import EvalConfig, ExportConfig, RunConfig, ServeConfig

    CommandConfig = EvalConfig | ServeConfig | ExportConfig


def _fail(cfg: RunConfig | CommandConfig, message: str) -> None:
    raise ConfigError(f"Config error ({cfg.source}): {message}")


def validate(cfg: RunConfig) -> None:
    m, d, t = cfg.model, cfg.data, cfg.training

    if not d.dataset:
        _fail(cfg, "'dataset' is required: name the training sources (registry names, files or hub ids).")
    if d.cutoff_len < 2:
        _fail(cfg, f"'cutoff_len' must be at least 2, got {d.cutoff_len}.")

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


def _validate_stage(cfg: RunConfig) -> None:
    m, d, f, g = cfg.model, cfg.data, cfg.finetuning, cfg.generation
    if f.stage == "pt":
        sft_only = [k for k in ("template", "packing", "mask_history", "train_on_prompt") if getattr(d, k)]
        if sft_only:
            hint = " (pretraining blocks are already packed; 'neat_packing' masks across documents)" \
                if sft_only[0] == "packing" else ""
            _fail(cfg, f"'{sft_only[0]}' applies to 'stage: sft', not 'stage: pt'{hint}.")
    if f.stage == "kd":
        if not 0 <= f.kd_alpha <= 1 or not 0 <= f.kd_beta <= 1 or f.kd_temperature <= 0:
            _fail(cfg, "'kd_alpha' and 'kd_beta' must be in [0, 1] and 'kd_temperature' positive.")
        if not f.teacher_model:
            _fail(cfg, "'stage: kd' needs 'teacher_model': the directory (or hub id) of the model to learn from.")
        if f.kd_on_policy and (d.packing or d.neat_packing):
            _fail(cfg, "'kd_on_policy' samples completions of each example's prompt: it does not work with "
                  "'packing' (rows of several examples); set `packing: false`.")
        if not 0 <= f.lmbda <= 1:
            _fail(cfg, f"'lmbda' must be in [0, 1], got {f.lmbda}.")
    if f.stage == "sft":
        if d.streaming:
            _fail(cfg, "'streaming: true' is supported for 'stage: pt' only; SFT datasets are read whole.")
        if m.from_scratch and m.train_tokenizer:
            _fail(cfg, "'stage: sft' starts from a trained model; train a tokenizer with 'stage: pt' first.")
    for key in sorted(cfg.raw):  # keys that say which stages they are for (`option(..., stages=...)`)
        spec = key_index("train").get(key)
        if spec is not None and spec.stages is not None and f.stage not in spec.stages:
            _fail(cfg, f"'{key}' does not apply to 'stage: {f.stage}' (it applies to {', '.join(spec.stages)}).")
    ignored = [k for k in STAGES[f.stage].ignores if k in cfg.raw]
    if ignored:
        hint = ("shard the policy with 'data_shard_size: N' (FSDP2) instead" if ignored[0] in
                ("deepspeed", "fsdp", "fsdp_config") else "remove it")
        _fail(cfg, f"'{ignored[0]}' has no effect in 'stage: {f.stage}' (its own loop does not use it): {hint}.")
    kind = STAGES[f.stage].kind
    if kind in ("pair", "kto", "prompt"):
        _validate_preference(cfg)
    if kind == "prompt":
        _validate_rl(cfg)
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
    if m.quantization_bit not in (None, 4, 8):
        _fail(cfg, f"'quantization_bit' must be 4 or 8, got {m.quantization_bit}.")
    if f.lora_rank < 1:
        _fail(cfg, f"'lora_rank' must be at least 1, got {f.lora_rank}.")
    if f.loraplus_lr_ratio is not None and f.loraplus_lr_ratio <= 0:
        _fail(cfg, f"'loraplus_lr_ratio' must be positive, got {f.loraplus_lr_ratio}.")


def _validate_preference(cfg: RunConfig) -> None:
    d, f = cfg.data, cfg.finetuning
    for key in ("packing", "neat_packing", "mask_history", "train_on_prompt", "streaming"):
        if getattr(d, key, False):
            _fail(cfg, f"'{key}' applies to 'stage: sft' (or pt), not 'stage: {f.stage}': this stage trains "
                  "whole examples, one per row.")
    if cfg.model.from_scratch:
        _fail(cfg, f"'stage: {f.stage}' starts from a trained model (usually the output of 'stage: sft'), not "
              "'from_scratch'.")
    if f.stage == "dpo" and f.pref_loss in ("orpo", "simpo") and f.ref_model:
        _fail(cfg, f"'pref_loss: {f.pref_loss}' uses no reference model; drop 'ref_model'.")
    if not 0 <= f.dpo_label_smoothing < 0.5:
        _fail(cfg, f"'dpo_label_smoothing' must be in [0, 0.5), got {f.dpo_label_smoothing}.")
    if f.dpo_label_smoothing and f.pref_loss != "sigmoid":
        _fail(cfg, "'dpo_label_smoothing' applies to 'pref_loss: sigmoid' only.")
    if f.pref_beta <= 0:
        _fail(cfg, f"'pref_beta' must be positive, got {f.pref_beta}.")
    if min(f.kto_chosen_weight, f.kto_rejected_weight) < 0 or f.pref_ftx < 0:
        _fail(cfg, "'kto_chosen_weight', 'kto_rejected_weight' and 'pref_ftx' must not be negative.")


def _validate_rl(cfg: RunConfig) -> None:
    r, t = cfg.rl, cfg.training
    if not (r.reward_model or r.reward_funcs):
        _fail(cfg, f"'stage: {cfg.finetuning.stage}' needs a reward: set 'reward_model' (a 'stage: rm' output "
              "directory) and/or 'reward_funcs' (module:function).")
    if t.max_steps is None or t.max_steps <= 0:
        _fail(cfg, f"'stage: {cfg.finetuning.stage}' needs 'max_steps' (each step is one rollout and its update).")
    for key in ("rollout_batch_size", "num_generations", "ppo_epochs"):
        if getattr(r, key) < 1:
            _fail(cfg, f"'{key}' must be at least 1, got {getattr(r, key)}.")
    if cfg.finetuning.stage == "grpo" and r.num_generations < 2:
        _fail(cfg, "'num_generations' must be at least 2: GRPO compares completions of the same prompt.")
    if r.kl_coef < 0 or not 0 < r.cliprange < 1:
        _fail(cfg, "'kl_coef' must not be negative and 'cliprange' must be in (0, 1).")
    if r.env_funcs and r.max_turns < 1:
        _fail(cfg, f"'max_turns' must be at least 1, got {r.max_turns}.")
    if r.epsilon_high is not None and r.epsilon_high <= 0:
        _fail(cfg, f"'epsilon_high' must be positive (the upper clip range, e.g. 0.28), got {r.epsilon_high}.")
    for key in ("eval_strategy", "save_strategy", "logging_strategy"):
        if getattr(getattr(t, key), "value", getattr(t, key)) == "epoch":
            _fail(cfg, f"'{key}: epoch' has no meaning in 'stage: {cfg.finetuning.stage}' (a step is a rollout, "
                  "there are no epochs): use 'steps'.")
    if r.rollout_backend == "vllm":
        _validate_vllm_rollouts(cfg)
    if cfg.parallelism.data_shard_size > 1:
        rows = r.rollout_batch_size * (r.num_generations if cfg.finetuning.stage == "grpo" else 1)
        minibatch = cfg.training.per_device_train_batch_size * process_count(cfg.launch)
        if rows % minibatch:
            _fail(cfg, f"with 'data_shard_size', every process must take part in every mini-batch (FSDP2 gathers "
                  f"the weights collectively): the {rows} completions of a step must be a multiple of "
                  f"'per_device_train_batch_size' x processes ({minibatch}).")
        if r.env_funcs:
            _fail(cfg, "'env_funcs' (multi-turn tool use) does not run with 'data_shard_size' yet: the processes' "
                  "conversations end after different numbers of turns.")
    processes = process_count(cfg.launch)
    if r.rollout_batch_size % processes:
        _fail(cfg, f"'rollout_batch_size' ({r.rollout_batch_size}) must be a multiple of the number of processes "
              f"({processes}): each process samples an equal share of a step's prompts.")


def _validate_parallelism(cfg: RunConfig) -> None:
    """tensor/context/sequence parallelism and FSDP2 sharding: sizes that fit the processes, the model and the
    sequence length, on an engine that can run them here."""
    import importlib.util

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
            if importlib.util.find_spec("deepspeed") is None:
                _fail(cfg, "'sequence_parallel_size' runs DeepSpeed Ulysses: `pip install deepspeed`.")
            if not t.deepspeed:
                _fail(cfg, "'sequence_parallel_size' runs on DeepSpeed: set 'deepspeed' to a ZeRO config (e.g. "
                      "examples/deepspeed/ds_z3_config.json).")
    if layout.tensor > 1 or layout.sequence > 1:
        _check_head_split(cfg, layout.tensor * layout.sequence)


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


def _validate_vllm_rollouts(cfg: RunConfig) -> None:
    """`rollout_backend: vllm`: vLLM installed, a CUDA GPU where it runs in the training processes (and for the NCCL
    weight push to a server), and the features its rollouts do not cover refused by name."""
    import importlib.util

    r = cfg.rl
    if importlib.util.find_spec("vllm") is None:
        _fail(cfg, "'rollout_backend: vllm' needs vLLM installed (`pip install vllm`, CUDA GPUs only); "
              "'rollout_backend: hf' samples with the training model on any device.")
    from lmforge.device import cuda_available

    if not cuda_available():
        where = ("runs vLLM inside the training processes" if r.vllm_mode == "colocate"
                 else "pushes the weights to the rollout server over NCCL")
        _fail(cfg, f"'vllm_mode: {r.vllm_mode}' {where} and needs CUDA GPUs, and this machine has none; "
              "use 'rollout_backend: hf'.")
    if r.env_funcs:
        _fail(cfg, "'env_funcs' (multi-turn tool use) rolls out with 'rollout_backend: hf' only: each turn is "
              "rendered with the chat template between model turns.")
    if cfg.finetuning.use_dora:
        _fail(cfg, "'use_dora' with 'rollout_backend: vllm': a DoRA adapter's merged weights are not the base plus "
              "its update, so they are not synced to vLLM; use plain LoRA or 'rollout_backend: hf'.")
    if not 0 < r.vllm_gpu_memory_utilization <= 1:
        _fail(cfg, f"'vllm_gpu_memory_utilization' must be in (0, 1], got {r.vllm_gpu_memory_utilization}.")
    if not r.vllm_server_base_url.startswith(("http://", "https://")):
        _fail(cfg, f"'vllm_server_base_url' must be an http(s) URL, got '{r.vllm_server_base_url}'.")


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
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            _fail(cfg, "'infer_backend: vllm' needs vLLM installed (`pip install vllm`, CUDA only).")


def validate_export(cfg: ExportConfig) -> None:
    """`lmforge export`: a model, a fresh place to write it, a sensible shard size."""
    x = cfg.export
    _validate_saved_model(cfg, "export", "export")
    if not x.export_dir:
        _fail(cfg, "'export_dir' is required: where the exported model is written.")
    if x.export_size <= 0:
        _fail(cfg, f"'export_size' (GB per shard) must be positive, got {x.export_size}.")
    if cfg.model.quantization_bit:
        _fail(cfg, "'quantization_bit' does not apply to export: weights are merged and saved unquantized.")
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


VALIDATORS = {"eval": validate_eval, "serve": validate_serve, "export": validate_export, "synth": validate_synth}


def check_engine_configs(training: dict, source: str) -> None:
    """`deepspeed` and `fsdp_config` files exist and parse, and DeepSpeed is installed, before transformers reads
    them (its own errors are tracebacks about package metadata)."""
    import importlib.util
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
    if training.get("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"Config error ({source}): 'deepspeed' needs the DeepSpeed package: `pip install "
                          "deepspeed` (it builds against your CUDA toolkit), or train with DDP/FSDP instead.")
