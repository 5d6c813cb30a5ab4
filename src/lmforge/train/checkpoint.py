"""Which checkpoint a run resumes from."""

from __future__ import annotations

import logging
import os

from transformers.trainer_utils import get_last_checkpoint

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

LATEST = {"true", "latest", "last", "yes"}


def resolve_resume(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """`true` -> the newest checkpoint in output_dir (a fresh start, with a warning, if there is none);
    a path -> that checkpoint (which must exist); unset -> none."""
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if resume_from_checkpoint is None:
        if last:
            logger.warning("output_dir '%s' already holds %s; this run starts again from step 0 (set "
                           "resume_from_checkpoint=true to continue it).", output_dir, os.path.basename(last))
        return None
    if resume_from_checkpoint.lower() in LATEST:
        if last is None:
            logger.warning("resume_from_checkpoint=true, but '%s' holds no checkpoint yet: starting from step 0.",
                           output_dir)
        else:
            logger.info("Resuming from %s", last)
        return last
    if not os.path.isdir(resume_from_checkpoint):
        raise ConfigError(f"Config error: resume_from_checkpoint '{resume_from_checkpoint}' is not a directory.")
    return resume_from_checkpoint
