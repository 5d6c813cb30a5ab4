"""A causal-LM loss that never materialises full-vocabulary logits for the whole batch.

Why our own: the standard forward computes `lm_head(hidden)` for every token as one (tokens x vocab) tensor, kept
for the backward pass, in float32 for the loss: at a 151,936-token vocabulary that is 4.9 GB for 8 x 1024 tokens,
usually the largest tensor of the step. Liger's fused linear cross-entropy avoids it, but only on GPUs with Triton
(`use_liger_kernel: true` uses it there). This version is plain torch and runs anywhere: only the positions that
have a label are projected (SFT prompts cost nothing), in chunks of a bounded number of logits, and each chunk's
gradients (for the hidden states and the head) are computed while its logits exist, so nothing vocabulary-sized is
kept for the backward pass. The loss equals transformers' `ForCausalLMLoss` (sum / num_items_in_batch, or mean).
"""

from __future__ import annotations

import contextvars
import logging
import types
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# set by `lmforge plan` while it traces the worst case (every token trained) over fake tensors
EVERY_TOKEN_TRAINED: contextvars.ContextVar[bool] = contextvars.ContextVar("every_token_trained", default=False)
# float32 logits held at once (256 MiB), whatever the vocabulary: smaller chunks make the head's matmuls thin and
# slower than the standard loss on the CPU (measured: 2^24 -> 1.4x slower, 2^26 -> on par).
LOGITS_PER_CHUNK = 1 << 26
# Causal LMs whose forward is exactly `lm_head(decoder(...))` followed by ForCausalLMLoss (no logit soft-capping or
# scaling, no auxiliary loss), so replacing that tail changes nothing but memory.
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo", "olmo2"}


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of CE(hidden @ weight.T, labels) * scale, with the gradients computed chunk by chunk in the
    forward pass (the backward pass only scales them)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
                chunk: int) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            # in the head's dtype (a quantized model may hand over bf16 states to a float32 head)
            h, y = hidden[start:start + chunk].to(weight.dtype), labels[start:start + chunk]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(len(y), device=y.device)
            total += (lse - logits[rows, y]).sum()
            if need_hidden or need_weight:
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad[rows, y] -= 1
                grad = grad.mul_(scale).to(h.dtype)
                if need_hidden:
                    grad_hidden[start:start + chunk] = grad @ weight
                if need_weight:
                    grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden if need_hidden else None, grad_weight if need_weight else None)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        gh = (grad_hidden * grad_output).to(hidden_dtype) if grad_hidden is not None else None
        gw = (grad_weight * grad_output).to(weight_dtype) if grad_weight is not None else None
        return gh, gw, None, None, None


def trained_rows(shift_labels: torch.Tensor, *hidden: torch.Tensor
                 ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | int]:
    """The rows of each [batch, seq, width] `hidden` at the positions `shift_labels` (labels already shifted by
    one) trains, their targets, and how many there are; on the first one's device."""
    device = hidden[0].device
    if EVERY_TOKEN_TRAINED.get():
        # `lmforge plan`'s worst case over fake tensors, which cannot take a data-dependent selection: every
        # position but each row's last is trained (the same rows, copied as the selection copies them)
        targets = shift_labels.reshape(hidden[0].shape[:-1]).to(device)[..., :-1].reshape(-1)
        return [h[..., :-1, :].reshape(-1, h.shape[-1]).to(device) for h in hidden], targets, targets.numel()
    flat = shift_labels.reshape(-1).to(device)
    keep = flat != IGNORE_INDEX
    return [h.reshape(-1, h.shape[-1]).to(device)[keep] for h in hidden], flat[keep], keep.sum()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         num_items_in_batch: torch.Tensor | int | None = None,
                         shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' ForCausalLMLoss of `hidden @ weight.T` against `labels` (shifted by one inside, unless
    `shift_labels` is given), without the full logits."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    (rows,), targets, trained = trained_rows(shift_labels, hidden)
    count = num_items_in_batch if num_items_in_batch is not None else trained
    scale = 1.0 / torch.as_tensor(count, dtype=torch.float32, device=hidden.device).clamp(min=1)
    if num_items_in_batch is None and targets.numel() == 0:
        return hidden.sum() * float("nan")  # like the mean over no tokens
    chunk = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    return _LinearCrossEntropy.apply(rows, weight, targets, scale, chunk)


def _chunked_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                     **kwargs):
    """The causal LM's forward with the loss tail replaced while training (labels given); otherwise the original
    (generation's cache arguments pass through under whichever name the caller used)."""
    if labels is None or not self.training:
        return self._lmforge_original_forward(input_ids=input_ids, attention_mask=attention_mask,
                                              position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels,
                                              **kwargs)
    num_items = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    for unused in ("use_cache", "logits_to_keep", "cache", "past_key_values"):  # training needs no cache or logits
        kwargs.pop(unused, None)
    outputs = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
    loss = linear_cross_entropy(outputs.last_hidden_state, self.lm_head.weight, labels, num_items, shift_labels)
    return CausalLMOutputWithPast(loss=loss, logits=None)


def causal_lm(model: Any) -> Any:
    """The transformers model inside a peft model (its adapters live in that model's modules), or the model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def use_chunked_loss(model: Any) -> bool:
    """Route the training loss of `model` through `linear_cross_entropy`. Returns False (and keeps the standard
    loss) for architectures whose loss tail is not plain `lm_head` + cross-entropy."""
    lm = causal_lm(model)
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    head = getattr(lm, "lm_head", None)
    if (model_type not in SUPPORTED_MODEL_TYPES or type(head) is not torch.nn.Linear or head.bias is not None
            or getattr(lm.config, "final_logit_softcapping", None) or not hasattr(lm, "get_decoder")):
        logger.info("chunked_loss: not available for %s (%s); using the standard loss.", type(lm).__name__,
                    model_type)
        return False
    if getattr(lm, "tp_size", None) and lm.tp_size > 1:
        # the output layer is split over the processes by the tensor-parallel plan, which gathers its logits
        logger.info("chunked_loss: the output layer is split by tensor parallelism; using the model's own loss.")
        return False
    if not hasattr(lm, "_lmforge_original_forward"):
        lm._lmforge_original_forward = lm.forward
        lm.forward = types.MethodType(_chunked_forward, lm)
    return True
