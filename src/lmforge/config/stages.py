"""The stage registry: one `StageSpec` per training stage, read by every surface that depends on the stage
(validation, `lmforge help` and usage, `data preview/dump`, `lmforge bench`, the web UI, plots, the runner).

Adding a stage is one recipe module plus one `register_stage(...)`: a stage built on a transformers Trainer gives
`build_trainer(cfg, resume)` and the runner all Trainer stages share runs it (train/run.py); a loop of its own gives
`run(cfg)`. Its own config rules are listed in its entry (`checks`, config/stage_checks.py). The keys a stage owns
say so at their definition (`option(..., stages=(...))`), so "key X is for stage Y" errors and the docs come from
the same place. The recipe is named as a module path, so this config-layer registry imports nothing of the training
code."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config import stage_checks as rules
from lmforge.config.stage_checks import Check


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str  # one line for help, usage and the web UI
    kind: str  # what it trains on: "pt" (raw text blocks) or an example kind ("sft", "pair", "kto", "prompt", "steps")
    recipe: str  # module with `build_trainer(cfg, resume)` (Trainer stages) or `run(cfg) -> dict` (a loop of its own)
    curves: tuple[str, ...] = ()  # log keys plotted besides loss/eval_loss (train and eval_ versions)
    trainer: bool = True  # built on a transformers Trainer (what `lmforge bench` times)
    ignores: tuple[str, ...] = ()  # accepted keys the stage's own loop does not use: setting one is a config error
    checks: tuple[Check, ...] = ()  # the rules this stage owns (config/stage_checks.py), run by validation


STAGES: dict[str, StageSpec] = {}


def register_stage(spec: StageSpec) -> StageSpec:
    STAGES[spec.name] = spec
    return spec


def stage_names() -> tuple[str, ...]:
    return tuple(STAGES)


def stage_help() -> str:
    """The `stage` key's help, from the registry."""
    return "Training stage: " + "; ".join(f"`{s.name}` ({s.summary})" for s in STAGES.values()) + "."


# Trainer keys the PPO/GRPO loop does not honour (a stage of its own, not a transformers Trainer).
ONLINE_RL_IGNORES = (
    "num_train_epochs", "torch_compile", "deepspeed", "fsdp", "fsdp_config", "use_liger_kernel", "chunked_loss",
    "neftune_noise_alpha", "label_smoothing_factor", "train_sampling_strategy", "auto_find_batch_size",
    "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "eval_accumulation_steps", "dataloader_num_workers", "data_seed", "do_predict", "predict_with_generate",
    "save_only_model", "push_to_hub")

PAIRS = (rules.whole_examples,)
for _spec in (
    StageSpec("pt", "pretraining / continued pretraining on raw text", "pt", "lmforge.train.stages.pt",
              checks=(rules.raw_text_only,)),
    StageSpec("sft", "supervised fine-tuning on conversations", "sft", "lmforge.train.stages.sft",
              checks=(rules.conversations_read_whole,)),
    StageSpec("rm", "reward model on chosen/rejected pairs", "pair", "lmforge.train.stages.rm", ("accuracy", "margin"),
              checks=PAIRS),
    StageSpec("prm", "process reward model: judges each step of a reply (prompt, completions, per-step labels)",
              "steps", "lmforge.train.stages.prm", ("step_accuracy", "error_f1"),
              checks=(rules.whole_examples, rules.step_labels)),
    StageSpec("dpo", "preference optimisation on pairs: DPO and its variants, see `pref_loss`", "pair",
              "lmforge.train.stages.dpo",
              ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"),
              checks=(rules.whole_examples, rules.reference_free_losses)),
    StageSpec("kto", "preference optimisation on replies labelled desirable or not", "kto", "lmforge.train.stages.kto",
              ("rewards/chosen", "rewards/rejected", "kl"), checks=PAIRS),
    StageSpec("ppo", "online RL on prompts with a value head, rewarded by a reward model or functions", "prompt",
              "lmforge.train.rl.recipe", ("reward", "kl", "entropy", "clip_fraction", "value_loss"), trainer=False,
              ignores=ONLINE_RL_IGNORES, checks=(rules.whole_examples, rules.ppo_rollouts)),
    StageSpec("grpo", "online RL on prompts, group-relative advantages", "prompt", "lmforge.train.rl.recipe",
              ("reward", "kl", "entropy", "clip_fraction"), trainer=False, ignores=ONLINE_RL_IGNORES,
              checks=(rules.whole_examples, rules.grpo_rollouts)),
    StageSpec("online_dpo", "online DPO: two samples per prompt from the current policy, the one a reward model, "
              "PRM, reward functions or a judge prefers is chosen, DPO loss on the pair", "prompt",
              "lmforge.train.rl.recipe", ("reward", "rewards/margins", "rewards/accuracies", "kl"), trainer=False,
              ignores=ONLINE_RL_IGNORES, checks=(rules.whole_examples, rules.online_dpo_pairs)),
    StageSpec("kd", "knowledge distillation: a student learns a teacher's token distributions on SFT data", "sft",
              "lmforge.train.stages.kd", ("kd_loss",), checks=(rules.distillation,)),
    StageSpec("cls", "sequence classification (single-label, multi-label, regression; texts or text pairs)", "cls",
              "lmforge.train.stages.cls", ("accuracy", "f1_weighted")),
):
    register_stage(_spec)
