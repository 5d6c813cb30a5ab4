"""What kind of training a run does, which parameters it trains, and what it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option
from lmforge.config.stages import stage_help, stage_names


@dataclass
class FinetuningArguments:
    stage: str = option("pt", stage_help, choices=stage_names)
    finetuning_type: Literal["full", "freeze", "lora"] = option(
        "full", "Which parameters are trained: `full` (all), `freeze` (the last layers only) or `lora` (adapters).")
    freeze_trainable_layers: int = option(
        2, "With `freeze`: train the last N decoder layers (negative: the first N).")
    freeze_trainable_modules: str = option(
        "all", "With `freeze`: comma-separated module names inside the trainable layers (e.g. `mlp,self_attn`), "
        "or `all`.")
    freeze_extra_modules: str | None = option(
        None, "With `freeze`: comma-separated modules outside the layers to train too (e.g. `embed_tokens,norm`).")
    freeze_router: bool = option(
        False, "Mixtures of experts: keep every router (the gate that picks each token's experts) fixed while the "
        "rest trains, with any `finetuning_type`.")
    teacher_model: str | None = option(
        None, "With `kd`: the teacher's directory or hub id (it must share the student's tokenizer).", stages=("kd",))
    teacher_adapter: str | None = option(
        None, "With `kd`: a LoRA adapter merged into the teacher.", stages=("kd",))
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = option(
        "forward_kl", "With `kd`: KL(teacher || student), KL(student || teacher), or GKD's generalised JSD "
        "(`kd_beta`).", stages=("kd",))
    kd_beta: float = option(
        0.5, "With `kd_loss: jsd`: the teacher's weight in the mixture (0: forward KL, 1: reverse KL).",
        stages=("kd",))
    kd_temperature: float = option(1.0, "With `kd`: both distributions are softened by this temperature.",
                                   stages=("kd",))
    kd_alpha: float = option(
        1.0, "With `kd`: the loss is kd_alpha x distillation + (1 - kd_alpha) x the SFT cross-entropy.",
        stages=("kd",))
    kd_on_policy: bool = option(
        False, "With `kd`: GKD. For a `lmbda` share of the batches the student first writes its own completions of "
        "the batch's prompts (sampled with the `generation` settings), and the distillation loss is taken on those "
        "tokens (the teacher's distribution at the student's own samples). Not with `packing`.", stages=("kd",))
    lmbda: float = option(0.5, "With `kd_on_policy`: the share of batches trained on the student's samples.",
                          stages=("kd",))
    problem_type: Literal["single_label_classification", "multi_label_classification", "regression"] | None = \
        option(None, "With `cls`: one label per text, any number of labels (sigmoid + BCE), or one number (MSE). "
               "Unset: multi-label when the label cells are lists, regression when they are non-integer numbers, "
               "single-label otherwise.", stages=("cls",))
    class_weights: list[float] | str | None = option(
        None, "With `cls` (single-label): a weight per class in the cross-entropy, e.g. `[1, 2, 6]`, or `balanced` "
        "(n_samples / (n_classes * count), from the training split; logged).", stages=("cls",))
    threshold: float = option(
        0.5, "With `cls` and multi-label: a label is predicted when its sigmoid probability reaches this.",
        stages=("cls",))
    freeze_vision_tower: bool = option(
        True, "Vision-language models: keep the vision encoder's weights fixed (LoRA's `all` then leaves it out too).")
    freeze_multi_modal_projector: bool = option(
        True, "Vision-language models: keep the projector from vision features to the language model fixed (full "
        "and freeze fine-tuning).")
    train_mm_proj_only: bool = option(
        False, "Vision-language models: train only the projector (full fine-tuning of it; everything else fixed).")
    lora_rank: int = option(8, "LoRA rank.")
    lora_alpha: int | None = option(None, "LoRA scaling alpha (default: twice the rank).")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.")
    lora_target: str = option(
        "all", "Comma-separated module names that get adapters, or `all` (every linear layer except the output "
        "head, and a mixture of experts' fused expert weights; in a vision-language model the language model's, "
        "and the vision tower's too with `freeze_vision_tower: false`). In a mixture of experts, `experts` names "
        "the experts' weights and `router` the routers (e.g. `q_proj,v_proj,experts`).")
    additional_target: str | None = option(
        None, "Comma-separated modules trained fully and saved with the adapter (e.g. `embed_tokens,lm_head` when "
        "the template added tokens).")
    use_rslora: bool = option(False, "Rank-stabilised LoRA scaling (alpha / sqrt(rank)).")
    use_dora: bool = option(False, "Weight-decomposed LoRA (DoRA).")
    loraplus_lr_ratio: float | None = option(
        None, "LoRA+: the B matrices learn this many times faster than the A matrices.")
    optimizer: Literal["muon", "adam_mini", "badam"] | None = option(
        None, "A memory-light optimizer transformers' `optim` does not name (it replaces `optim`): `muon` (torch's "
        "Muon for the decoder layers' weight matrices, one momentum buffer, with AdamW for embeddings, the output "
        "layer and norms; one `learning_rate` serves both); `adam_mini` (Adam-mini: one second moment per attention "
        "head or output row instead of per weight, about half of AdamW's state); `badam` (BAdam, full fine-tuning "
        "on one process: one decoder layer trains at a time with AdamW, switching every `badam_switch_interval` "
        "steps; gradients and optimizer state for that layer only; embeddings and the output layer stay frozen). "
        "GaLore, APOLLO, 8-bit and paged AdamW go through `optim` (`galore_adamw`, `apollo_adamw`, "
        "`adamw_torch_8bit`, `paged_adamw_8bit`, ...).",
        stages=("pt", "sft", "dpo", "kto", "kd", "cls"))
    badam_switch_interval: int = option(
        50, "`optimizer: badam`: optimizer steps before the next decoder layer becomes the one trained.",
        stages=("pt", "sft", "dpo", "kto", "kd", "cls"))
    badam_switch_mode: Literal["ascending", "descending", "random"] = option(
        "ascending", "`optimizer: badam`: the order the layers train in (random: a new shuffle every round, seeded "
        "by `seed`).", stages=("pt", "sft", "dpo", "kto", "kd", "cls"))
    chunked_loss: bool = option(
        True, "pt/sft: compute the language-modelling loss in chunks, only at labelled positions, without "
        "full-vocabulary logits for the whole batch (same loss and gradients; far less memory at large vocabularies). "
        "Standard loss for architectures it does not cover, and under `use_liger_kernel` (Liger's fused version).")
    pure_bf16: bool = option(
        False, "full/freeze: train bfloat16 weights directly, without float32 master copies (less memory; updates "
        "smaller than a bfloat16 step are lost). By default the trained parameters of a bf16/fp16 checkpoint are kept "
        "in float32 and computed under `bf16`/`fp16` autocast (DeepSpeed and FSDP keep float32 masters of their own).")
    fp8: bool = option(
        False, "full/freeze: compute the decoder layers' linear matmuls in float8 (torchao's float8 training, dynamic "
        "tensor-wise scales; the weights, optimizer and saved model keep their dtype). Needs `bf16: true`, torchao, "
        "and for its speed a CUDA GPU with float8 tensor cores (compute capability 8.9: L4, RTX 4090, H100 and "
        "newer); on the CPU torch emulates it.", stages=("pt", "sft", "dpo", "kto", "kd", "cls", "rm", "prm"))
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "full/freeze: the dtype the final model is saved in (`auto`: the dtype of the checkpoint trained; "
        "float32 for a new model). Checkpoints keep the training precision, so a resumed run continues exactly.")
    plot_loss: bool = option(False, "Save PNG plots of the train and eval loss in `output_dir`.")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "orpo", "simpo"] = option(
        "sigmoid", "With `dpo`: the preference loss. `sigmoid` (DPO), `hinge` (SLiC), `ipo` (on per-token mean "
        "log-probabilities) use a reference model; `orpo` (odds ratio plus SFT loss) and `simpo` (length-normalised, "
        "target margin `simpo_gamma`) use none. With `online_dpo`: `sigmoid` or `ipo` (on summed log-probabilities, "
        "as TRL's online DPO).", stages=("dpo", "online_dpo"))
    pref_beta: float = option(
        0.1, "With `dpo`/`kto`/`online_dpo`: beta, the strength of the preference term (how far the policy may move "
        "from the reference; for `orpo`, the weight of the odds-ratio term).", stages=("dpo", "kto", "online_dpo"))
    pref_ftx: float = option(
        0.0, "With `dpo`/`kto`: weight of an added SFT loss (per-token negative log-likelihood of the chosen or "
        "desirable replies).", stages=("dpo", "kto"))
    dpo_label_smoothing: float = option(
        0.0, "With `pref_loss: sigmoid`: the assumed probability that a pair's preference is flipped (conservative "
        "DPO), in [0, 0.5).", stages=("dpo",))
    simpo_gamma: float = option(0.5, "With `pref_loss: simpo`: the target reward margin gamma.", stages=("dpo",))
    kto_chosen_weight: float = option(1.0, "With `kto`: weight of the desirable examples' loss.", stages=("kto",))
    kto_rejected_weight: float = option(1.0, "With `kto`: weight of the undesirable examples' loss.", stages=("kto",))
    ref_model: str | None = option(
        None, "With `dpo`/`kto`/`ppo`/`grpo`/`online_dpo`: the reference model's directory. Default: the model "
        "the run starts from (a frozen copy; under LoRA the same weights with the adapters switched off, so no "
        "second copy is held).",
        stages=("dpo", "kto", "ppo", "grpo", "online_dpo"))
