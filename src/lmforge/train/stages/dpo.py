"""Stage `dpo`: preference optimisation on chosen/rejected pairs (DPO, SLiC hinge, IPO, ORPO, SimPO)."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.data.collate import PairCollator
from lmforge.model.reference import reference_model
from lmforge.train.losses import REFERENCE_FREE
from lmforge.train.preference import PreferenceTrainer
from lmforge.train.run import run_training
from lmforge.train.runtime.checkpoint import resolve_resume
from lmforge.train.shared_setup import policy_model, prepare_chat_stage, trainer_kwargs


def build_trainer(cfg: RunConfig, resume: str | None = None) -> PreferenceTrainer:
    f = cfg.finetuning
    stage = prepare_chat_stage(cfg, resume)
    model = policy_model(cfg, stage)
    ref = None if f.pref_loss in REFERENCE_FREE else reference_model(cfg, model, stage.tokenizer)
    return PreferenceTrainer(
        model=model, ref_model=ref, train_dataset=stage.train_rows(),
        data_collator=stage.collator(PairCollator(stage.tokenizer.pad_token_id)), loss_type=f.pref_loss,
        beta=f.pref_beta,
        ftx=f.pref_ftx, label_smoothing=f.dpo_label_smoothing, simpo_gamma=f.simpo_gamma,
        loraplus_lr_ratio=f.loraplus_lr_ratio, **trainer_kwargs(cfg, stage))


def run(cfg: RunConfig) -> dict:
    resume = resolve_resume(cfg.training.output_dir, cfg.training.resume_from_checkpoint)
    trainer = build_trainer(cfg, resume)
    return run_training(cfg, trainer, resume, chat=True, stop_ids=trainer.model.generation_config.eos_token_id)
