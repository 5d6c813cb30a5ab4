"""Stage `kd`: knowledge distillation on SFT data. The student learns the teacher's token distributions at the
positions SFT trains (the assistant's tokens, labels derived by rendering as for `sft`), mixed with the SFT loss by
`kd_alpha`; `model/distill_loss.py` computes the loss in chunks of positions, never either model's full logits for
the whole batch. The teacher runs frozen, in inference mode, in bf16 where the device has it; it must share the
student's tokenizer. Works with LoRA and packing (position ids pass to both models); the Trainer resumes exactly.
`kd_on_policy` (GKD) trains a `lmbda` share of the batches on the student's own completions of the prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.config.generation import GenerationArguments
from lmforge.config.model import ModelArguments
from lmforge.config.schema import RunConfig
from lmforge.data.collate import IGNORE_INDEX, SftCollator
from lmforge.errors import ConfigError
from lmforge.model.chunked_loss import causal_lm
from lmforge.model.distill_loss import LogitHead, distillation_loss
from lmforge.model.inference import load_inference_model
from lmforge.model.moe import decoder_router_loss, router_loss_coef, with_router_loss_added
from lmforge.model.tokenizer import load_tokenizer
from lmforge.train.rl.rollout import sample_completions
from lmforge.train.shared_setup import policy_model, prepare_chat_stage, trainer_kwargs
from lmforge.train.stages.sft import training_rows
from lmforge.train.trainer import LoraPlusTrainer

CHAT_SAMPLES = True  # the sample prompts are chat turns, stopped at the end of turn


class DistillationTrainer(LoraPlusTrainer):
    def __init__(self, *args: Any, teacher: torch.nn.Module, kd_loss: str, kd_beta: float, kd_temperature: float,
                 kd_alpha: float, on_policy: OnPolicy | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher, self.on_policy = teacher, on_policy
        self.kd = {"kind": kd_loss, "beta": kd_beta, "temperature": kd_temperature, "alpha": kd_alpha}
        self.model_accepts_loss_kwargs = False  # a per-batch mean: the Trainer scales for accumulation itself

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.on_policy is not None and model.training and self.on_policy.draw(self.state.global_step):
            inputs = self.on_policy.student_batch(self.accelerator.unwrap_model(model), inputs,
                                                  self.state.global_step)
        loss = distillation_step_loss(causal_lm(self.accelerator.unwrap_model(model)), self.teacher, inputs, self.kd)
        return (loss, {}) if return_outputs else loss


def distillation_step_loss(student: torch.nn.Module, teacher: torch.nn.Module, inputs: dict[str, torch.Tensor],
                           kd: dict[str, Any]) -> torch.Tensor:
    """The student's loss on a batch: both decoders' hidden states (the teacher's without gradients), projected by
    each one's output layer chunk by chunk inside `distillation_loss`; a mixture of experts adds its router loss as
    its LM loss would. (Also what `lmforge plan` traces.)"""
    passed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    decoded = student.get_decoder()(**passed, use_cache=False)
    # no_grad, not inference_mode: an inference tensor needs a copy to enter the student's graph (and `lmforge plan`
    # traces this function over fake tensors, which inference mode did not serve well)
    with torch.no_grad():
        teacher_hidden = teacher.get_decoder()(**{k: v.to(teacher.device) for k, v in passed.items()},
                                               use_cache=False).last_hidden_state
    loss = distillation_loss(decoded.last_hidden_state, student.get_output_embeddings().weight, teacher_hidden,
                             teacher.get_output_embeddings().weight.detach(), inputs["labels"], **kd,
                             student_head=LogitHead.of(student.config), teacher_head=LogitHead.of(teacher.config))
    coef = router_loss_coef(student)
    if coef:
        loss = with_router_loss_added(loss, decoder_router_loss(student, decoded, passed.get("attention_mask")), coef)
    return loss


class OnPolicy:
    """GKD's on-policy batches: for a `lmbda` share of the steps (a coin seeded by the step, so a resumed run draws
    the same), each example's prompt (its tokens before the first trained one) is completed by the student, sampled
    with one generator per row (`rollout.sample_completions`), and the completion becomes the trained tokens."""

    def __init__(self, lmbda: float, seed: int, gen: GenerationArguments, pad_id: int, stop_ids: list[int]):
        self.lmbda, self.seed, self.gen, self.pad_id, self.stop_ids = lmbda, seed, gen, pad_id, stop_ids

    def draw(self, step: int) -> bool:
        return bool(torch.rand((), generator=torch.Generator().manual_seed(self.seed * 7919 + step)) < self.lmbda)

    @torch.no_grad()
    def student_batch(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], step: int
                      ) -> dict[str, torch.Tensor]:
        ids, labels, mask = inputs["input_ids"], inputs["labels"], inputs["attention_mask"]
        prompts = []
        for row in range(len(ids)):
            trained = (labels[row] != IGNORE_INDEX).nonzero()
            start = int(trained[0]) if len(trained) else int(mask[row].sum())
            prompts.append(ids[row, :start].tolist())
        seeds = [self.seed * 1_000_003 + step * 257 + row for row in range(len(prompts))]
        rollout = sample_completions(model, prompts, self.gen, self.pad_id, self.stop_ids, seeds)
        rows = []
        for row, prompt in enumerate(prompts):
            completion = rollout.input_ids[row, rollout.prompt_width:][rollout.completion_mask[row].bool()].tolist()
            rows.append({"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion})
        batch = SftCollator(self.pad_id)(rows)
        return {k: v.to(ids.device) for k, v in batch.items()}


def load_teacher(cfg: RunConfig, student_tokenizer: Any) -> torch.nn.Module:
    """The frozen teacher (adapter merged), on the training device, bf16 where it is supported; its tokenizer must
    be the student's."""
    f, m = cfg.finetuning, cfg.model
    if not f.teacher_model:
        raise ConfigError(f"Config error ({cfg.source}): 'stage: kd' needs 'teacher_model' (a directory or hub id).")
    args = ModelArguments(model_name_or_path=f.teacher_model, adapter_name_or_path=f.teacher_adapter,
                          trust_remote_code=m.trust_remote_code, cache_dir=m.cache_dir)
    tokenizer = load_tokenizer(f.teacher_model, m.trust_remote_code, cache_dir=m.cache_dir)
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ConfigError(f"Config error ({cfg.source}): the teacher '{f.teacher_model}' and the student do not share "
                          f"a tokenizer ({len(tokenizer):,} vs {len(student_tokenizer):,} tokens, or other ids): "
                          "distillation compares their distributions token by token.")
    device = cfg.training.device
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    teacher = load_inference_model(args, tokenizer, device=device, dtype=dtype)
    return teacher.eval().requires_grad_(False)


def build_trainer(cfg: RunConfig, resume: str | None = None) -> DistillationTrainer:
    stage = prepare_chat_stage(cfg, resume)
    teacher = load_teacher(cfg, stage.tokenizer)
    f = cfg.finetuning
    return DistillationTrainer(
        model=policy_model(cfg, stage), train_dataset=training_rows(stage.data.train, cfg.data),
        data_collator=SftCollator(stage.tokenizer.pad_token_id), teacher=teacher, kd_loss=f.kd_loss,
        kd_beta=f.kd_beta, kd_temperature=f.kd_temperature, kd_alpha=f.kd_alpha,
        on_policy=OnPolicy(f.lmbda, cfg.training.seed, cfg.generation, stage.tokenizer.pad_token_id,
                           list(stage.stop_ids)) if f.kd_on_policy else None,
        loraplus_lr_ratio=f.loraplus_lr_ratio, optimizer_settings=f, **trainer_kwargs(cfg, stage))
