"""A toy stage for the registry test: sft under another name, with one more curve. A new stage is a module like this
one plus one `register_stage(...)`."""

from lmforge.train.stages.sft import build_trainer, run

__all__ = ["build_trainer", "run"]
