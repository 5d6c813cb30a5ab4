"""Where the training text comes from and how it is cut into training examples."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option


def cache_home() -> str:
    """lmforge's cache folder: $LMFORGE_CACHE, else ~/.cache/lmforge (`tokenized_cache_dir` moves the data part)."""
    return os.environ.get("LMFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmforge")


@dataclass
class DataArguments:
    dataset: str | None = option(
        None,
        "Comma-separated sources: names in `dataset_dir`/dataset_info.json (LLaMA-Factory format), files "
        "(.txt .json .jsonl .csv .parquet), directories (`save_to_disk` output or a folder of such files), "
        "or hub dataset ids.",
    )
    eval_dataset: str | None = option(None, "Sources for evaluation, same syntax as `dataset` (instead of `val_size`).")
    dataset_dir: str = option("data", "Folder holding dataset_info.json and the files it names.")
    allow_absolute_file_name: bool = option(
        False, "dataset_info.json entries may name an absolute `file_name` outside `dataset_dir`. Without it an entry "
        "whose file resolves outside `dataset_dir` (`../`, an absolute path, a symbolic link out) is refused: a "
        "registry from elsewhere cannot make a run read any file on this machine.")
    text_column: str = option("text", "Column holding the text, for sources that do not name one in dataset_info.json.")
    text_pair_column: str | None = option(
        None, "cls: the column of each row's second text (sentence-pair classification, reranking).",
        stages=("cls",))
    label_column: str = option("label", "cls: the column holding each row's label.", stages=("cls",))
    step_separator: str = option(
        "\n", "prm: the text that ends each step. Each step is tokenized on its own and followed by the "
        "separator's ids, whose last token carries the step's label, so the separator never merges with the step's "
        "text; a special token of the tokenizer (e.g. Qwen's `<extra_0>`) keeps it apart from any text. Saved with "
        "the model: `lmforge score` and a PRM reward split completions at it.", stages=("prm",))
    cutoff_len: int = option(
        1024, "pt: tokens per training block. sft: the longest example (longer ones lose their oldest turns).")
    max_samples: int | None = option(
        None, "Use at most this many documents from each source (for quick runs); eval: questions per subject.")
    val_size: float = option(
        0.0, "Held-out documents for evaluation: a fraction in (0, 1) or a count (>= 1). Split before tokenization."
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = option(
        "concat",
        "How several sources are combined: concatenated, or interleaved until the first (`under`) or last (`over`) "
        "source is exhausted.",
    )
    interleave_probs: list[float] | None = option(
        None, "Sampling ratio of each source when interleaving, e.g. `0.7,0.3` (equal when unset)."
    )
    streaming: bool = option(
        False, "pt: read sources lazily (corpora larger than memory); needs `max_steps`. Checkpoints store the stream "
        "position, so a resumed run continues there instead of re-reading.")
    buffer_size: int = option(
        16384, "Shuffle buffer (documents) for streaming sources; its contents are stored in each checkpoint.")
    neat_packing: bool = option(
        False,
        "Document masking: position ids restart at each document and attention never crosses documents, "
        "so each document is trained as if alone.",
    )
    template: str | None = option(
        None,
        "sft: chat template for a tokenizer that has none: `chatml`, `llama3`, `alpaca`, `default`, or a .jinja "
        "file. Unset: the tokenizer's own template.",
    )
    mask_history: bool = option(False, "sft: train only the last assistant turn of each conversation.")
    train_on_prompt: bool = option(False, "sft: train on every token, prompts included.")
    enable_thinking: bool = option(
        True,
        "sft: keep the assistants' reasoning (trained) and pass `enable_thinking` to templates that have it; false "
        "drops the reasoning from the data.",
    )
    packing: bool = option(
        False,
        "sft: pack examples into rows of `cutoff_len` tokens (best-fit decreasing over the whole dataset); each "
        "example keeps its own positions and attends only to itself.",
    )
    image_max_pixels: int = option(
        768 * 768, "Vision-language models: images larger than this many pixels are scaled down (aspect kept) "
        "before the processor sees them, which bounds their tokens and memory.")
    image_min_pixels: int = option(
        32 * 32, "Vision-language models: images (and video frames) smaller than this many pixels are scaled up "
        "(aspect kept).")
    video_fps: float = option(
        2.0, "Vision-language models: frames taken per second of a video (evenly spaced; read with PyAV).")
    video_maxlen: int = option(128, "Vision-language models: the most frames taken from one video.")
    video_max_pixels: int = option(
        256 * 256, "Vision-language models: video frames larger than this many pixels are scaled down (aspect "
        "kept); a video costs its frames' tokens, so this bound is lower than `image_max_pixels`.")
    preprocessing_num_workers: int | None = option(
        None, "Processes used for tokenization. Unset: for conversation data one per CPU core (at most 8) from 4,000 "
        "records of a source (below that, starting workers costs more than it saves); for pretraining text one (the "
        "batched tokenizer already uses every core).")
    preprocessing_batch_size: int = option(1000, "Documents per tokenization batch.")
    tokenized_cache_dir: str | None = option(
        None,
        "Where tokenized datasets are cached, keyed by a fingerprint of sources, tokenizer and settings "
        "(default: $LMFORGE_CACHE or ~/.cache/lmforge).",
    )
    tokenized_dir: str | None = option(
        None, "A folder holding the run's tokenized examples, as LLaMA-Factory's `tokenized_path`: `lmforge data "
        "prepare` (or the first run) writes them there; a run whose folder holds them trains on them without reading "
        "the raw data, which need not be on its machine (the settings that shape the examples, such as the "
        "tokenizer, template and cutoff_len, must match those it was prepared with). The stages that train on "
        "examples (not pt's blocks of raw text, nor cls).")
    overwrite_cache: bool = option(False, "Tokenize again even if a cached result exists.")
