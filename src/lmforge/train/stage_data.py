"""The data a stage trains on, as its run builds it and as `lmforge data preview|dump|prepare` shows it: the
tokenizer (chat template applied, or trained for pretraining) and the encoded examples or pretraining blocks. Only
the data stack is imported here (no model code, peft or trl): the data commands import this and no more."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lmforge.config.data import DataArguments
from lmforge.config.schema import RunConfig
from lmforge.data.cache import cache_root
from lmforge.data.examples import ExampleData, build_examples, media_options, model_columns, stage_kind
from lmforge.data.formats import ExampleKind
from lmforge.data.multimodal import MediaOptions, MultimodalCollator, per_token_outputs
from lmforge.data.pretrain import PretrainData, build_pretrain_data
from lmforge.data.template import stop_token_ids
from lmforge.model.tokenizer import chat_processor, chat_tokenizer, setup_tokenizer

logger = logging.getLogger(__name__)


def world_size(args: Any) -> int:
    """Processes of the run: TrainingArguments know; the plain values `lmforge data` checks stand for one."""
    return getattr(args, "world_size", 1)


def first_process_prepares(args: Any, data: DataArguments, desc: str) -> contextlib.AbstractContextManager:
    """Under torchrun one process tokenizes (into the cache or `tokenized_dir`) while the others wait, then read what
    it wrote: the first of all when every node sees the folder it writes (a shared filesystem), else the first of
    each node. `lmforge data` (the plain config values, no TrainingArguments) is one process."""
    first = getattr(args, "main_process_first", None)
    if first is None:
        return contextlib.nullcontext()
    return first(local=not shared_by_all_nodes(args, data_folder(data)), desc=desc)


def data_folder(data: DataArguments) -> str:
    """Where the run's prepared data is written: beside `tokenized_dir`, or the cache."""
    if data.tokenized_dir:
        return os.path.dirname(os.path.abspath(data.tokenized_dir))
    return cache_root(data.tokenized_cache_dir)


def shared_by_all_nodes(args: Any, folder: str) -> bool:
    """Whether every process of a run over several machines sees the same `folder`: the first process writes a probe
    file there and every process looks for it (a collective: all processes call this together). False on one
    machine, where the first process of the node is the first of all anyway."""
    if world_size(args) <= 1:  # also sets up the process group, which the probe's collectives need
        return False
    import torch.distributed as dist

    world = dist.get_world_size()
    if int(os.environ.get("LOCAL_WORLD_SIZE", world)) >= world:
        return False
    token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(token, src=0)
    probe = os.path.join(folder, f".lmforge-shared-probe-{token[0]}")
    if dist.get_rank() == 0:
        try:
            os.makedirs(folder, exist_ok=True)
            open(probe, "w").close()
        except OSError:  # no probe: every process sees none, each node prepares (and the write reports the folder)
            pass
    dist.barrier()  # every process reaches the collectives, whatever the first one's write did
    seen: list[Any] = [None] * world
    dist.all_gather_object(seen, os.path.exists(probe))
    if dist.get_rank() == 0 and os.path.exists(probe):
        os.remove(probe)
        logger.info("The data folder %s is %s: %s", folder,
                    "seen by every node" if all(seen) else "not shared by every node",
                    "one process prepares the data" if all(seen) else "the first process of each node prepares it")
    return all(seen)


@dataclass
class ChatStage:
    tokenizer: PreTrainedTokenizerBase
    data: ExampleData
    stop_ids: list[int]  # EOS and the template's end-of-turn token
    added_tokens: int  # tokens the template added to the vocabulary
    kind: ExampleKind
    processor: Any = None  # a vision-language model's processor (its tokenizer is `tokenizer`)
    media_options: MediaOptions | None = None

    def train_rows(self) -> Dataset:
        return self.data.train.select_columns(model_columns(self.kind, self.data.train))

    def eval_rows(self) -> Dataset | None:
        if self.data.eval is None:
            return None
        return self.data.eval.select_columns(model_columns(self.kind, self.data.eval))

    def collator(self, text_collator: Any) -> Any:
        """`text_collator` as is for a text model; for a vision-language model, wrapped to add the batch's pixel
        inputs and the processor's per-token outputs."""
        if self.processor is None:
            return text_collator
        return MultimodalCollator(text_collator, self.processor, self.media_options,
                                  tuple(per_token_outputs(self.processor)))


def chat_examples(cfg: RunConfig, resume: str | None = None) -> ChatStage:
    """The chat tokenizer (its template applied) and the stage's encoded examples: what a stage after pt trains on
    and what `lmforge data preview|dump` shows (the first process builds them, the others read the cache)."""
    kind = stage_kind(cfg.finetuning.stage)
    processor = chat_processor(cfg)
    with first_process_prepares(cfg.training, cfg.data, f"encoding {kind} data"):
        tokenizer, added = chat_tokenizer(cfg, resume, processor)
        data = build_examples(cfg.data, tokenizer, cfg.training.seed, kind, processor)
    return ChatStage(tokenizer, data, stop_token_ids(tokenizer), added, kind, processor, media_options(cfg.data))


def pretrain_inputs(cfg: RunConfig, resume: str | None = None) -> tuple[PreTrainedTokenizerBase, PretrainData]:
    """The tokenizer (loaded or trained) and the pretraining blocks: what `stage: pt` trains on and what `lmforge
    data preview|dump` shows. Under torchrun the first process trains the tokenizer and fills the cache."""
    args = cfg.training
    with first_process_prepares(args, cfg.data, "preparing tokenizer and pretraining data"):
        tokenizer = setup_tokenizer(cfg, resume)
        # the rows one optimizer step consumes over all processes (where a streamed corpus's checkpoint can fall)
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(world_size(args), 1)
        return tokenizer, build_pretrain_data(cfg.data, tokenizer, args.seed, blocks_per_step=per_step)
