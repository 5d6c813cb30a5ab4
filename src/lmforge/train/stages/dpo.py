"""Stage `dpo`: preference optimisation on chosen/rejected pairs (DPO, SLiC hinge, IPO, ORPO, SimPO)."""

from __future__ import annotations

from lmforge.config.schema import RunConfig
from lmforge.data.collate import PairCollator
from lmforge.model.reference import reference_model
from lmforge.train.losses import REFERENCE_FREE
from lmforge.train.preference import PreferenceTrainer
from lmforge.train.shared_setup import policy_model, prepare_chat_stage, trainer_kwargs

CHAT_SAMPLES = True  # the sample prompts are chat turns, stopped at the end of turn


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
        loraplus_lr_ratio=f.loraplus_lr_ratio, optimizer_settings=f, **trainer_kwargs(cfg, stage))
