"""Stage `kto`: preference optimisation on single replies labelled desirable or undesirable."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.data.collate import KtoCollator
from lmforge.model.reference import reference_model
from lmforge.train.preference import KtoTrainer
from lmforge.train.run import run_training
from lmforge.train.runtime.checkpoint import resolve_resume
from lmforge.train.shared_setup import policy_model, prepare_chat_stage, trainer_kwargs


def build_trainer(cfg: RunConfig, resume: str | None = None) -> KtoTrainer:
    f = cfg.finetuning
    stage = prepare_chat_stage(cfg, resume)
    model = policy_model(cfg, stage)
    return KtoTrainer(
        model=model, ref_model=reference_model(cfg, model, stage.tokenizer), train_dataset=stage.train_rows(),
        data_collator=KtoCollator(stage.tokenizer.pad_token_id), beta=f.pref_beta, ftx=f.pref_ftx,
        desirable_weight=f.kto_chosen_weight, undesirable_weight=f.kto_rejected_weight,
        loraplus_lr_ratio=f.loraplus_lr_ratio, **trainer_kwargs(cfg, stage))


def run(cfg: RunConfig) -> dict:
    resume = resolve_resume(cfg.training.output_dir, cfg.training.resume_from_checkpoint)
    trainer = build_trainer(cfg, resume)
    return run_training(cfg, trainer, resume, chat=True, stop_ids=trainer.model.generation_config.eos_token_id)
