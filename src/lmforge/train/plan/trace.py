"""One training step of a run's recipe traced over fake tensors (torch's FakeTensorMode: shapes and dtypes, no
storage, no weights read, no GPU): the model built from its config as `build_model` builds it, with the run's
adapters, master weights, gradient checkpointing, chunked loss and optimizer, on the longest batch the run can
meet (every row `cutoff_len` tokens, every token trained). torch's MemTracker sorts what the step holds at its peak
by kind, as it does for a measured step (`memory_report`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from lmforge.config.schema import RunConfig
from lmforge.model.chunked_loss import EVERY_TOKEN_TRAINED
from lmforge.model.memory import StepMemory, peak_memory, peak_tracker
from lmforge.train.plan.low_bit_state import low_bit_state_bytes
from lmforge.train.setup import set_precision

# stages whose step is a causal LM's loss on rows of tokens (kd: against a frozen teacher's); preference stages run
# the policy on chosen and rejected rows together (and a frozen reference without gradients); rm/cls a classifier
LANGUAGE_MODEL_STAGES = ("pt", "sft", "kd")
PREFERENCE_STAGES = ("dpo", "kto")
CLASSIFIER_STAGES = ("rm", "cls")
TRACED_STEPS = 2  # the first step creates the optimizer state, the second starts with it


@dataclass
class TracedStep:
    memory: StepMemory
    rows: int  # rows the model runs per micro-batch
    tokens: int  # tokens per row
    parameters: int  # of the model trained (adapters included)
    trainable: int
    reference_parameters: int  # of a frozen reference copy (dpo/kto without LoRA), 0 when none
    largest_layer_bytes: int  # the biggest decoder layer's weights, as held (what ZeRO-3/FSDP gather at once)
    frozen_linear_parameters: int  # in the decoder layers' frozen linear weights (what QLoRA stores in 4 bits)
    frozen_linear_bytes: int  # the same weights as traced (the checkpoint's dtype)
    expert_parameters: int  # a mixture of experts' routed experts (each token runs top-k of them)
    config: Any  # the model's config
    notes: list[str]
    rollout_rows: int = 0  # ppo/grpo: the completions a device samples per step (`rows` is a training mini-batch)


class PlanError(Exception):
    """The step cannot be traced; the message says why."""


def trace_step(cfg: RunConfig) -> TracedStep:
    """The peak memory of one optimizer step of `cfg` on one device, as planned."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lmforge.model.build import planned_architecture

    stage = cfg.finetuning.stage
    if stage not in LANGUAGE_MODEL_STAGES + PREFERENCE_STAGES + CLASSIFIER_STAGES:
        raise PlanError(f"'stage: {stage}' is not planned yet (pt, sft, kd, dpo, kto, rm and cls are).")
    tokenizer = run_tokenizer(cfg)
    auto_class, config = planned_architecture(cfg.model, tokenizer, reward_head=stage == "rm",
                                              classifier={"num_labels": 2} if stage == "cls" else None)
    rows = cfg.training.per_device_train_batch_size * (2 if stage in ("dpo", "rm") else 1)
    length = cfg.data.cutoff_len
    with FakeTensorMode(allow_non_fake_inputs=True), quiet():
        outcome = _traced(cfg, tokenizer, auto_class, config, rows, length)
        release_graphs()
    if isinstance(outcome, PlanError):
        raise outcome
    return outcome


def _traced(cfg: RunConfig, tokenizer: Any, auto_class: Any, config: Any, rows: int,
            length: int) -> TracedStep | PlanError:
    """`trace_step` inside its FakeTensorMode: the step's figures, or why it cannot be traced (returned, not
    raised: a traceback would keep this frame's fake tensors alive past the mode)."""
    from lmforge.model.build import count_parameters

    stage = cfg.finetuning.stage
    notes: list[str] = []
    try:
        model = trained_model(cfg, auto_class, config)
        if stage in ("pt", "sft") and cfg.finetuning.chunked_loss and not cfg.training.use_liger_kernel:
            from lmforge.model.chunked_loss import use_chunked_loss

            if not use_chunked_loss(model):
                notes.append("chunked loss: not available for this architecture (the standard loss is planned)")
        reference = _teacher(cfg) if stage == "kd" else _reference(cfg, model, tokenizer)
        model.train()
        optimizer = run_optimizer(cfg, model)
    except PlanError as err:
        return PlanError(str(err))
    computed_state = low_bit_state_bytes(optimizer, model)
    if computed_state is not None:  # an 8/4-bit AdamW: its state computed, the step traced with a stateless one
        notes.append(f"{type(optimizer).__name__}: its 8/4-bit state computed from its layout (its step does not "
                     "run over fake tensors) - computed")
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.training.learning_rate)
    total, trainable = count_parameters(model)
    batch = _batch(cfg, config, rows, length)
    tracker = peak_tracker()
    tracker.track_external(model, optimizer, *([reference] if reference is not None else []))
    every_token = EVERY_TOKEN_TRAINED.set(True)
    try:
        with tracker, run_autocast(cfg), real_seed_draws():
            for step in range(TRACED_STEPS):
                for _ in range(min(cfg.training.gradient_accumulation_steps, 2)):
                    _loss(cfg, model, reference, batch).backward()
                if cfg.training.max_grad_norm and cfg.training.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.training.max_grad_norm)
                step_optimizer(optimizer, step, notes)
                model.zero_grad(set_to_none=True)
    except Exception as err:  # noqa: BLE001 - an op fake tensors cannot run: say which, plan nothing
        return untraceable(config, err)
    finally:
        EVERY_TOKEN_TRAINED.reset(every_token)
    reference_parameters = count_parameters(reference)[0] if reference is not None else 0
    layers = layer_sizes(model)
    memory = peak_memory(tracker)
    memory.optimizer_state += computed_state or 0  # held from the first step on, so at the peak too
    return TracedStep(memory, rows, length, total, trainable, reference_parameters, *layers, config, notes)


def release_graphs() -> None:
    """Collect the traced step's garbage while its FakeTensorMode is still open (the tracing function has returned,
    so its model, optimizer and graphs are garbage): forward passes whose backward never runs (the reference's, the
    scoring's) leave autograd nodes in reference cycles (torch's module tracker hooks their inputs' nodes with a
    closure over them), which would otherwise be destroyed at some later collection, after the mode is gone. (The
    test process crashed on a corrupted heap in such a collection; this, the kd teacher's no_grad and
    `_copy_of` together ended it.)"""
    import gc

    gc.collect()


def step_optimizer(optimizer: torch.optim.Optimizer, step: int, notes: list[str]) -> None:
    """`optimizer.step()` over fake tensors. Some optimizers branch on values from their second step on (APOLLO's
    norm-growth limiter compares this step's gradient norm with the last one's), which fake tensors do not hold: their
    state exists from the first step, and a later step's temporaries are the first's, so such a step is planned as
    the first was."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    try:
        optimizer.step()
    except DataDependentOutputException:
        if step == 0:
            raise
        notes.append(f"{type(optimizer).__name__}: its later steps branch on values, so its first step is planned")


@contextlib.contextmanager
def real_seed_draws():
    """APOLLO draws the seed of each random projection from a generator and reads it back (`.tolist()` in
    `apollo_torch.random_projector.next_seed`), a value fake tensors do not hold. While a step is traced those few
    integers are drawn on real tensors; the projections they seed stay fake. (The planner's only patch of another
    package: without it APOLLO, transformers' `optim: apollo_adamw`, could not be planned at all.)"""
    import sys

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    projector = sys.modules.get("apollo_torch.random_projector")  # imported where the run's optimizer is APOLLO's
    if projector is None:
        yield
        return
    original = projector.next_seed

    def drawn(*args: Any, **kwargs: Any) -> Any:
        with unset_fake_temporarily():
            return original(*args, **kwargs)

    projector.next_seed = drawn
    try:
        yield
    finally:
        projector.next_seed = original


def untraceable(config: Any, err: Exception) -> PlanError:
    return PlanError(f"the step of '{config.model_type}' cannot be traced over fake tensors "
                     f"({type(err).__name__}: {str(err).splitlines()[0][:200]})")


def trained_model(cfg: RunConfig, auto_class: Any, config: Any) -> torch.nn.Module:
    """The model as `build_model` and the stage set it up (under a FakeTensorMode): the checkpoint's dtype, the
    run's adapters, float32 masters for what full/freeze train, gradient checkpointing."""
    from lmforge.model.adapters import apply_finetuning_type

    torch.manual_seed(0)
    model = auto_class.from_config(config, dtype=_load_dtype(cfg, config),
                                   **({"attn_implementation": cfg.model.attn_implementation}
                                      if cfg.model.attn_implementation else {}))
    with _modules_stay_put():
        model = apply_finetuning_type(model, cfg.finetuning, 0, None)
    set_precision(model, cfg)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def layer_sizes(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(bytes of the largest decoder layer, parameters and bytes of the frozen linear weights inside the layers, the
    routed experts' parameters of a mixture of experts: `.experts.` in their names, not the shared experts' nor
    the adapters over them)."""
    from lmforge.model.chunked_loss import causal_lm
    from lmforge.model.decoder import decoder_layers

    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name and "lora_" not in name)
    try:
        _, layers = decoder_layers(causal_lm(model))
    except Exception:  # noqa: BLE001 - an architecture whose layers are not found: no layer figures
        return 0, 0, 0, experts
    largest = max((sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers), default=0)
    frozen = [m.weight for layer in layers for m in layer.modules()
              if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    return largest, sum(w.numel() for w in frozen), sum(w.numel() * w.element_size() for w in frozen), experts


def run_tokenizer(cfg: RunConfig) -> Any:
    from lmforge.model.tokenizer import chat_tokenizer, setup_tokenizer

    if cfg.finetuning.stage == "pt":
        return setup_tokenizer(cfg)
    return chat_tokenizer(cfg)[0]


def _load_dtype(cfg: RunConfig, config: Any) -> torch.dtype:
    """The dtype `build_model` loads in: the checkpoint's own (`auto`), float32 for a new model."""
    from lmforge.model.precision import config_dtype

    return torch.float32 if cfg.model.from_scratch else config_dtype(config) or torch.float32


def _teacher(cfg: RunConfig) -> torch.nn.Module:
    """kd's frozen teacher, in the dtype `load_teacher` gives it (bf16 on a CUDA GPU)."""
    from lmforge.device import cuda_available

    if not cfg.finetuning.teacher_model:
        raise PlanError("'stage: kd' needs 'teacher_model'.")
    return frozen(cfg, cfg.finetuning.teacher_model, torch.bfloat16 if cuda_available() else torch.float32)


def _reference(cfg: RunConfig, policy: torch.nn.Module, tokenizer: Any) -> torch.nn.Module | None:
    """dpo/kto's frozen reference; none for the reference-free losses."""
    from lmforge.train.losses import REFERENCE_FREE

    f = cfg.finetuning
    if f.stage not in PREFERENCE_STAGES or (f.stage == "dpo" and f.pref_loss in REFERENCE_FREE):
        return None
    return reference(cfg, policy, tokenizer)


def reference(cfg: RunConfig, policy: torch.nn.Module, tokenizer: Any) -> torch.nn.Module | None:
    """A frozen reference as `reference_model` makes it (a copy of the policy; none under LoRA), or `ref_model` from
    its config, in its checkpoint's dtype."""
    f = cfg.finetuning
    if f.ref_model:
        return frozen(cfg, f.ref_model, None)
    if f.finetuning_type == "lora":
        return None  # the policy with its adapters off (a starting adapter merged: the same size)
    return _copy_of(cfg, policy)


def _copy_of(cfg: RunConfig, policy: torch.nn.Module) -> torch.nn.Module:
    """The frozen copy of the policy `reference_model` makes, with the same dtypes (the checkpoint's half precision
    under bf16/fp16, else each weight's own), built anew from the policy's config: `copy.deepcopy` of a module of
    fake tensors reads their data pointers, which torch calls undefined behaviour (and which left the test process's
    heap corrupted, tests later)."""
    from lmforge.model.reference import copy_dtype

    half = copy_dtype(cfg, policy)
    ref = type(policy)._from_config(policy.config)
    dtypes = {name: p.dtype for name, p in policy.named_parameters()}
    for name, param in ref.named_parameters():
        dtype = half or dtypes.get(name, param.dtype)
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
    return ref.eval().requires_grad_(False)


def frozen(cfg: RunConfig, name: str, dtype: torch.dtype | None, auto_class: Any = None) -> torch.nn.Module:
    """A frozen model built from the config of `name` (a teacher, a reference, a reward model: `auto_class`), in
    `dtype` or its checkpoint's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmforge.model.precision import config_dtype

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code,
                                            cache_dir=cfg.model.cache_dir)
    except (OSError, ValueError) as err:
        raise PlanError(f"could not read the config of '{name}': {str(err).splitlines()[0]}") from None
    dtype = dtype or config_dtype(config) or torch.float32
    return (auto_class or AutoModelForCausalLM).from_config(config, dtype=dtype).eval().requires_grad_(False)


def run_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer the Trainer builds: `optimizer` (lmforge's memory-light ones), else transformers' own choice of
    class and arguments for `optim`."""
    from transformers import Trainer

    from lmforge.train.optimizers import build_optimizer
    from lmforge.train.setup import trainer_arguments

    try:
        if cfg.finetuning.optimizer:
            return build_optimizer(cfg.finetuning, model, trainer_arguments(cfg))
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer_arguments(cfg), model)
    except ImportError as err:  # planned for a machine that has the package, made on one that has not
        raise PlanError(f"the optimizer cannot be built here to be traced: {err}") from err
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        # as Trainer.create_optimizer does: newer transformers return a factory for Muon or Dion, which takes the model
        return optimizer_cls()(model, **kwargs)
    params: Any = [p for p in model.parameters() if p.requires_grad]
    for key in ("params", "model", "optimizer_dict"):  # GaLore/APOLLO's groups, LOMO's model, layer-wise optimizers
        if key in kwargs:
            params = kwargs.pop(key)
    from torch._subclasses.fake_tensor import DataDependentOutputException, unset_fake_temporarily

    try:
        return optimizer_cls(params, **kwargs)
    except DataDependentOutputException:
        # bitsandbytes computes its quantization code books and reads them back (`.tolist()`): built on real
        # tensors (a few hundred numbers); the weights it is given stay fake
        with unset_fake_temporarily():
            return optimizer_cls(params, **kwargs)


def _batch(cfg: RunConfig, config: Any, rows: int, length: int) -> dict[str, torch.Tensor]:
    """Full rows, every token trained: the longest micro-batch the run can meet (the preference and classifier
    stages pass an attention mask, as their collators do)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    ids = torch.zeros((rows, length), dtype=torch.long).random_(0, text.vocab_size)
    batch = {"input_ids": ids, "labels": ids.clone()}
    if cfg.finetuning.stage not in LANGUAGE_MODEL_STAGES:
        batch["attention_mask"] = torch.ones_like(ids)
    return batch


def _loss(cfg: RunConfig, model: torch.nn.Module, reference: torch.nn.Module | None,
          batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stage's loss on `batch`, through the functions its trainer uses."""
    stage = cfg.finetuning.stage
    if stage in CLASSIFIER_STAGES:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits.float().logsumexp(-1).mean()
    if stage in PREFERENCE_STAGES:
        return _preference_loss(cfg, model, reference, batch)
    if stage == "kd":
        from lmforge.model.chunked_loss import causal_lm
        from lmforge.train.stages.kd import distillation_step_loss

        f = cfg.finetuning
        kd = {"kind": f.kd_loss, "beta": f.kd_beta, "temperature": f.kd_temperature, "alpha": f.kd_alpha}
        return distillation_step_loss(causal_lm(model), reference, batch, kd)
    return model(**batch).loss


def _preference_loss(cfg: RunConfig, model: torch.nn.Module, reference: torch.nn.Module | None,
                     batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """dpo (chosen and rejected rows in one pass) and kto (the replies, then the mismatched KL rows without
    gradients): the policy's log-probabilities, the reference's without gradients (`ref_model`'s copy, or the
    policy with its adapters off)."""
    from lmforge.train.losses import REFERENCE_FREE, sequence_logps

    def logps(net: torch.nn.Module) -> torch.Tensor:
        logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return sequence_logps(logits, batch["labels"])[0]

    def reference_logps() -> torch.Tensor:
        with torch.no_grad():
            if reference is not None:
                return logps(reference)
            with model.disable_adapter():
                return logps(model)

    policy = logps(model)
    if cfg.finetuning.stage == "kto":
        with torch.no_grad():
            kl = logps(model) - reference_logps()  # the KL rows: the same shapes as the replies
        return torch.nn.functional.logsigmoid(policy - reference_logps() - kl.mean()).mean()
    if cfg.finetuning.pref_loss in REFERENCE_FREE:
        return torch.nn.functional.logsigmoid(policy).mean()
    return torch.nn.functional.logsigmoid(policy - reference_logps()).mean()


def run_autocast(cfg: RunConfig) -> Any:
    t = cfg.training
    if t.bf16 or t.fp16:
        return torch.autocast("cpu", dtype=torch.bfloat16 if t.bf16 else torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _modules_stay_put():
    """peft moves each new adapter to its base layer's device and dtype with `Module.to`, which swaps parameters,
    and torch cannot swap a fake parameter (it carries a weak reference). On one fake device there is nothing to
    move, and peft casts the adapters to float32 afterwards (as in a real run) by assigning their data."""
    from unittest import mock

    with mock.patch.object(torch.nn.Module, "to", lambda self, *args, **kwargs: self):
        yield


@contextlib.contextmanager
def quiet():
    """transformers' and peft's own log lines and warnings while the fake model is built say nothing about the plan
    (deprecations), nor do torch's tracebacks of an operation fake
    tensors cannot run (the PlanError says which)."""
    import logging
    import warnings

    names = {"transformers": logging.ERROR, "peft": logging.ERROR, "lmforge": logging.ERROR,
             "torch._subclasses.fake_tensor": logging.CRITICAL}
    levels = {name: logging.getLogger(name).level for name in names}
    for name, level in names.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
