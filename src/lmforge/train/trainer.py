"""The Trainer subclass used by language-modelling stages: adds perplexity to evaluation metrics."""

from __future__ import annotations

from transformers import Trainer

from lmforge.train.callbacks import perplexity


class LanguageModelTrainer(Trainer):
    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        for key in [k for k in output.metrics if k.endswith("_loss")]:
            output.metrics[key[: -len("loss")] + "perplexity"] = perplexity(output.metrics[key])
        return output
