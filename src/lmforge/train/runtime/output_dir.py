"""A run never clobbers another: an output_dir that holds a run is continued (`resume_from_checkpoint`) or, when
asked (`overwrite_output_dir`), cleared of what lmforge wrote there, never silently reused.

Why not the Trainer's behaviour: it appends to nothing and checks nothing, so a second run rewrites
trainer_log.jsonl, replaces same-step checkpoints and mixes its checkpoints with the first run's (resume would then
pick a checkpoint of the wrong run)."""

from __future__ import annotations

import logging
import os
import re
import shutil

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

# What an lmforge run writes into output_dir (model files by transformers/peft/tokenizers, run files by lmforge).
_RUN_MARKERS = re.compile(r"^(trainer_log\.jsonl|lmforge_config\.yaml|checkpoint-\d+|\.checkpoint-in-progress"
                          r"|\.final-in-progress|\.deleting-.*)$")
_WRITTEN = re.compile(
    r"^(trainer_log\.jsonl|lmforge_config\.yaml|checkpoint-\d+|\.checkpoint-in-progress|\.final-in-progress"
    r"|\.deleting-.*|trainer_state\.json|training_args\.bin|(all|train|eval|predict)_results\.json"
    r"|generated_predictions\.jsonl|samples\.jsonl|stream_state\.json|rl_state\.pt|value_head\.safetensors"
    r"|training_.*\.png|runs|swanlog|config\.json|generation_config\.json"
    r"|(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?|adapter_config\.json"
    r"|tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|vocab\.json"
    r"|merges\.txt|chat_template\.(jinja|json))$")


def previous_run(output_dir: str) -> list[str]:
    """The entries of output_dir that show an lmforge run was there (empty for a new or foreign directory)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if _RUN_MARKERS.match(name))


def claim_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run where one already is (exit 2), unless it is resumed or `overwrite` clears it."""
    found = previous_run(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ConfigError(
            f"Config error: output_dir '{output_dir}' already holds a run ({shown}). Continue it with "
            f"`resume_from_checkpoint: true`, start it again with `overwrite_output_dir: true` (removes only what an "
            f"lmforge run wrote there), or choose another output_dir.")
    removed = [name for name in sorted(os.listdir(output_dir)) if _WRITTEN.match(name)]
    for name in removed:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    kept = len(os.listdir(output_dir))
    logger.warning("overwrite_output_dir: removed %d entries of the previous run from %s%s", len(removed), output_dir,
                   f" ({kept} other entries left as they were)" if kept else "")
