"""Stage `kto`: preference optimisation on single replies labelled desirable or undesirable."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.data.collate import KtoCollator
from lmforge.model.reference import reference_model
from lmforge.train.preference import KtoTrainer
from lmforge.train.shared_setup import policy_model, prepare_chat_stage, trainer_kwargs

CHAT_SAMPLES = True  # the sample prompts are chat turns, stopped at the end of turn


def build_trainer(cfg: RunConfig, resume: str | None = None) -> KtoTrainer:
    f = cfg.finetuning
    stage = prepare_chat_stage(cfg, resume)
    model = policy_model(cfg, stage)
    return KtoTrainer(
        model=model, ref_model=reference_model(cfg, model, stage.tokenizer), train_dataset=stage.train_rows(),
        data_collator=KtoCollator(stage.tokenizer.pad_token_id), beta=f.pref_beta, ftx=f.pref_ftx,
        desirable_weight=f.kto_chosen_weight, undesirable_weight=f.kto_rejected_weight,
        loraplus_lr_ratio=f.loraplus_lr_ratio, optimizer_settings=f, **trainer_kwargs(cfg, stage))
