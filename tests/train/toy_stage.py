"""A toy stage for the registry test: sft under another name, with one more curve. A new stage is a module like this
one plus one `register_stage(...)`: a Trainer stage gives `build_trainer` (and, if it needs them, the runner's hooks);
the shared runner does the rest."""

from lmforge.train.stages.sft import CHAT_SAMPLES, after_evaluation, build_trainer

__all__ = ["CHAT_SAMPLES", "after_evaluation", "build_trainer"]
