"""Text generated from prompts at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.fields import option


@dataclass
class GenerationArguments:
    sample_prompts: list[str] = option(
        default_factory=list, help="Prompts to generate from at the end of training (written to samples.jsonl)."
    )
    predict_with_generate: bool = option(
        False, "With `do_predict`: generate an answer for every prediction prompt and score it (ROUGE, BLEU).")
    max_new_tokens: int = option(64, "Tokens generated per prompt.")
    do_sample: bool = option(True, "Sample (true) or decode greedily (false).")
    temperature: float = option(0.8, "Sampling temperature.")
    top_p: float = option(0.95, "Nucleus sampling probability mass.")
    top_k: int = option(50, "Sample among the k most likely tokens (0 disables).")
    repetition_penalty: float = option(1.0, "Penalty on repeated tokens (1.0 disables).")
